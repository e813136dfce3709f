"""Rollout padding and group layout."""

from __future__ import annotations

import pytest
import torch

from prime_mcore.data.batching import assert_groups_contiguous, make_group_ids, pad_rollouts

PAD, EOS = 0, 2


def test_pad_rollouts_hand_example():
    b = pad_rollouts([[5, 6, 7], [8]], [[10, 11, EOS, 12], [13, EOS]], PAD, eos_id=EOS)
    assert b.prompt_len == 3
    assert b.input_ids.tolist() == [[5, 6, 7, 10, 11, EOS, 12],
                                    [PAD, PAD, 8, 13, EOS, PAD, PAD]]
    # EOS counts; the token generated after EOS (12) does not
    assert b.response_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 5], [0, 0, 0, 1, 2, 2, 2]]
    assert b.responses.tolist() == [[10, 11, EOS, 12], [13, EOS, PAD, PAD]]
    assert b.prompts.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert b.response_lengths.tolist() == [3, 2]
    assert set(b.as_dict()) >= {"input_ids", "attention_mask", "response_mask", "position_ids"}


def test_truncated_response_and_fixed_shapes():
    b = pad_rollouts([[4]], [[9, 9, 9]], PAD, eos_id=EOS, prompt_len=2, response_len=5)
    assert b.input_ids.tolist() == [[PAD, 4, 9, 9, 9, PAD, PAD]]
    assert b.response_mask.tolist() == [[1, 1, 1, 0, 0]]  # no EOS: all generated tokens
    assert b.input_ids.dtype == torch.long
    # without eos_id every response token counts, including a pad-valued one
    assert pad_rollouts([[4]], [[EOS, 7]], PAD).response_mask.tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="longer"):
        pad_rollouts([[1, 2, 3]], [[1]], PAD, prompt_len=2)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        pad_rollouts([[1], [2]], [[1]], PAD)


def test_group_contiguity():
    ids = make_group_ids(3, 4)
    assert ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert_groups_contiguous(ids, 4)
    assert_groups_contiguous([7, 7, 3, 3], 2)  # ids need not be sorted
    with pytest.raises(ValueError, match="group 1 .* mixes"):
        assert_groups_contiguous([0, 0, 1, 2], 2)
    with pytest.raises(ValueError, match="more than one block"):
        assert_groups_contiguous([0, 0, 1, 1, 0, 0], 2)
    with pytest.raises(ValueError, match="do not split"):
        assert_groups_contiguous([0, 0, 0], 2)
