"""fast_rope_bshd is Megatron's unfused RoPE, bit for bit, values and gradients."""

from __future__ import annotations

import pytest
import torch

import prime_mcore.engine  # noqa: F401  (CPU patches before megatron)
from prime_mcore.engine import rope


def _freqs(seq: int, dim: int, *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    half = torch.rand(seq, batch, 1, dim // 2, generator=torch.Generator().manual_seed(seed)) * 50
    return torch.cat((half, half), dim=-1)  # Megatron's non-interleaved layout


@pytest.mark.parametrize("mscale", [1.0, 0.7])
@pytest.mark.parametrize("batch", [1, 3])
def test_equals_megatron_bitwise_with_gradients(mscale, batch):
    t = torch.randn(11, 3, 4, 16, requires_grad=True)
    freqs = _freqs(11, 16, batch=batch)
    ours = rope.fast_rope_bshd(t, freqs, mscale=mscale)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), t)
    ref = rope._megatron_bshd(t, freqs, mscale=mscale)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), t)
    assert torch.equal(ours, ref)
    assert float((g_ours - g_ref).abs().max()) <= 1e-6 * float(g_ref.abs().max())


def test_other_layouts_fall_back_and_cache_follows_in_place_edits():
    t = torch.randn(5, 2, 2, 8)
    interleaved = torch.rand(5, 1, 1, 8)
    assert torch.equal(rope.fast_rope_bshd(t, interleaved, rotary_interleaved=True),
                       rope._megatron_bshd(t, interleaved, rotary_interleaved=True))
    assert torch.equal(rope.fast_rope_bshd(t, interleaved), rope._megatron_bshd(t, interleaved))
    partial = _freqs(5, 4)  # rotary on the first half of the head only
    assert torch.equal(rope.fast_rope_bshd(t, partial), rope._megatron_bshd(t, partial))
    freqs = _freqs(5, 8)
    rope.fast_rope_bshd(t, freqs)
    freqs.mul_(2.0)  # same tensor, new values: the cached cos/sin must not be reused
    assert torch.equal(rope.fast_rope_bshd(t, freqs), rope._megatron_bshd(t, freqs))


def test_megatron_uses_it():
    from megatron.core.models.common.embeddings import rope_utils

    assert rope_utils._apply_rotary_pos_emb_bshd is rope.fast_rope_bshd
