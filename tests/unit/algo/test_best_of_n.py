"""Implicit-PRM best-of-N scoring and the eval estimators (spec 11)."""

import pytest
import torch

from prime_mcore.algo.best_of_n import (
    aggregate_steps,
    best_of_n,
    implicit_q_values,
    majority_vote,
    pass_at_k,
    step_scores,
)


def test_step_scores_are_cumulative_q_at_step_ends():
    # log-ratios per token: [1, -2, 0.5, 0.5 | pad]; beta = 0.1 -> Q = [.1, -.1, -.05, 0]
    lp = torch.tensor([[0.0, -2.0, 0.5, 0.5, 9.0]])
    lr = torch.tensor([[-1.0, 0.0, 0.0, 0.0, -9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    q = implicit_q_values(lp, lr, mask, beta=0.1)
    torch.testing.assert_close(q, torch.tensor([[0.1, -0.1, -0.05, 0.0, 0.0]]))
    per_step = step_scores(q, [[1, 3]])  # two steps ending at tokens 1 and 3
    torch.testing.assert_close(per_step[0], torch.tensor([-0.1, 0.0]))
    assert aggregate_steps(per_step, "min").item() == pytest.approx(-0.1)
    assert aggregate_steps(per_step, "last").item() == pytest.approx(0.0)


def test_best_of_n_picks_per_group_first_on_ties():
    scores = torch.tensor([0.1, 0.5, 0.5, -1.0, 2.0, 0.0])
    assert best_of_n(scores, n=3).tolist() == [1, 1]


def test_majority_vote_and_pass_at_k():
    assert majority_vote(["3", None, "4", "4", "3"]) == "3"  # tie: first seen
    assert majority_vote(["1", "2", "2"]) == "2"
    assert majority_vote([None, None]) is None
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - (2 / 4) * (1 / 3))
    assert pass_at_k(5, 4, 2) == 1.0
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
