"""LogprobGapMonitor: statistics, warning threshold, NaN/inf errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from prime_mcore.rollout import LogprobGapMonitor, LogprobGapWarning


def _k3(logp: float, ref: float) -> float:
    r = ref - logp
    return math.exp(r) - r - 1


def test_metrics_over_masked_tokens():
    rollout = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.1, 9.0]])
    trainer = torch.tensor([[-1.1, -2.0, -2.7], [-0.5, -0.3, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the 9 vs -9 outlier is padding
    m = LogprobGapMonitor(warn_threshold=0.5).check(rollout, trainer, mask, weights_checksum=3.5)
    gaps = [0.1, 0.0, 0.3, 0.0, 0.2]
    assert m["rollout/gap_tokens"] == 5
    assert m["rollout/logprob_gap_mean"] == pytest.approx(sum(gaps) / 5, abs=1e-6)
    assert m["rollout/logprob_gap_max"] == pytest.approx(0.3, abs=1e-6)
    pairs = [(-1.0, -1.1), (-2.0, -2.0), (-3.0, -2.7), (-0.5, -0.5), (-0.1, -0.3)]
    assert m["rollout/kl_k3"] == pytest.approx(sum(_k3(a, b) for a, b in pairs) / 5, rel=1e-5)
    assert m["rollout/gap_warn"] == 0.0 and m["rollout/weights_checksum"] == 3.5


def test_warns_above_threshold_only():
    rollout = torch.zeros(2, 4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    monitor = LogprobGapMonitor(warn_threshold=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail here
        assert monitor.check(rollout, rollout - 0.04, mask)["rollout/gap_warn"] == 0.0
    with pytest.warns(LogprobGapWarning, match="0.06"):
        m = monitor.check(rollout, rollout - 0.06, mask)
    assert m["rollout/gap_warn"] == 1.0 and m["rollout/kl_k3"] > 0


@pytest.mark.parametrize("where", ["rollout", "trainer"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_sampled_logprob_is_an_error(where: str, bad: float):
    good = torch.full((2, 3), -1.0)
    broken = good.clone()
    broken[1, 2] = bad
    mask = torch.ones(2, 3, dtype=torch.bool)
    args = (broken, good) if where == "rollout" else (good, broken)
    with pytest.raises(FloatingPointError, match=where):
        LogprobGapMonitor().check(*args, mask)
    mask[1, 2] = False  # padding may hold anything
    assert LogprobGapMonitor().check(*args, mask)["rollout/logprob_gap_max"] == 0.0


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shapes"):
        LogprobGapMonitor().check(x, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(FloatingPointError, match="checksum"):
        LogprobGapMonitor().check(x, x, torch.ones(2, 3), weights_checksum=float("nan"))
    with pytest.raises(ValueError):
        LogprobGapMonitor(warn_threshold=0.0)
    empty = LogprobGapMonitor().check(x, x, torch.zeros(2, 3))
    assert empty["rollout/gap_tokens"] == 0 and empty["rollout/gap_warn"] == 0.0
