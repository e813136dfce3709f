"""prime_mcore.algo vs the loop-based reference (reference_impl.py) on random inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prime_mcore import algo
from tests.unit.algo import reference_impl as ref

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def batches(draw, binary=True):
    k = draw(st.integers(2, 5))
    groups = draw(st.integers(1, 3))
    width = draw(st.integers(1, 7))
    b = k * groups
    lengths = [draw(st.integers(1, width)) for _ in range(b)]
    floats = st.floats(-4.0, 0.0, allow_nan=False, width=64)
    lp = [[draw(floats) for _ in range(width)] for _ in range(b)]
    lr = [[draw(floats) for _ in range(width)] for _ in range(b)]
    if binary:
        scores = [float(draw(st.integers(0, 1))) for _ in range(b)]
    else:
        scores = [draw(st.integers(0, 10)) / 10 for _ in range(b)]
    return k, width, lengths, lp, lr, scores


def tensors(width, lengths, *rows):
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return (mask, *[torch.tensor(r, dtype=torch.float64) for r in rows])


@SETTINGS
@given(batches(), st.sampled_from(["orig", "verl"]), st.sampled_from(["token", "whole"]),
       st.sampled_from(["batch_norm", "none"]))
def test_process_rewards(batch, convention, granularity, norm):
    k, width, lengths, lp, lr, _ = batch
    mask, lp_t, lr_t = tensors(width, lengths, lp, lr)
    got = algo.process_rewards(lp_t, lr_t, mask, beta=0.05, convention=convention,
                               granularity=granularity, norm=norm)
    want = ref.process_rewards(lp, lr, lengths, 0.05, convention, granularity, norm, width)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-9, rtol=1e-9)


@SETTINGS
@given(batches(binary=False))
def test_prm_ce_loss(batch):
    _, width, lengths, lp, lr, scores = batch
    mask, lp_t, lr_t, s_t = tensors(width, lengths, lp, lr, scores)
    got = algo.prm_ce_loss(lp_t, lr_t, mask, s_t, beta=0.05)
    assert got.item() == pytest.approx(ref.prm_ce_loss(lp, lr, lengths, scores, 0.05), abs=1e-10)


@SETTINGS
@given(batches(binary=False), st.sampled_from(["orig", "verl"]), st.booleans(),
       st.sampled_from([None, 0.0, 2.0]))
def test_rloo_advantages(batch, convention, outcome_only, rm_coef):
    k, width, lengths, lp, lr, scores = batch
    if sum(lengths) < 2:
        return
    mask, lp_t, lr_t, s_t = tensors(width, lengths, lp, lr, scores)
    rm = None if outcome_only else algo.process_rewards(lp_t, lr_t, mask, beta=0.05,
                                                        convention=convention)
    if rm_coef == 0.0 and outcome_only:
        rm_coef = None
    adv, ret = algo.rloo_advantages(rm, s_t, mask, group_size=k, convention=convention,
                                    rm_coef=rm_coef)
    rm_list = None if rm is None else rm.tolist()
    want_adv, want_ret = ref.rloo_advantages(rm_list, scores, lengths, k, convention, rm_coef,
                                             None, width)
    torch.testing.assert_close(ret, torch.tensor(want_ret, dtype=torch.float64),
                               atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(adv, torch.tensor(want_adv, dtype=torch.float64),
                               atol=1e-6, rtol=1e-6)


@SETTINGS
@given(batches(), st.sampled_from(["token-mean", "seq-mean-token-mean"]),
       st.sampled_from([None, 3.0]), st.lists(st.floats(-3, 3), min_size=64, max_size=64))
def test_ppo_policy_loss(batch, agg, dual_clip, adv_pool):
    _, width, lengths, lp, lr, _ = batch
    # lr plays the old policy; advantages from the pool
    adv = [[adv_pool[(i * width + t) % 64] for t in range(width)] for i in range(len(lengths))]
    mask, lp_t, old_t, adv_t = tensors(width, lengths, lp, lr, adv)
    loss, metrics = algo.ppo_policy_loss(lp_t, old_t, adv_t, mask, clip_eps=0.2,
                                         dual_clip=dual_clip, agg=agg)
    want, clipfrac, kl = ref.ppo_loss(lp, lr, adv, lengths, 0.2, dual_clip, agg)
    assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert metrics["pg_clipfrac"] == pytest.approx(clipfrac, abs=1e-12)
    assert metrics["ppo_kl"] == pytest.approx(kl, abs=1e-9)


@SETTINGS
@given(st.integers(1, 6), st.lists(st.integers(0, 10), min_size=1, max_size=24),
       st.sampled_from([(0.2, 0.8), (0.0, 1.0), (0.25, 0.75), (0.5, 0.5)]))
def test_accuracy_filter(k, raw, bounds):
    scores = [v / 10 for v in raw][: len(raw) // k * k]
    if not scores:
        return
    got = algo.accuracy_filter(torch.tensor(scores), group_size=k, low=bounds[0], high=bounds[1])
    assert got.tolist() == ref.accuracy_filter(scores, k, *bounds)


@SETTINGS
@given(batches(binary=False))
def test_dpo_accuracy(batch):
    k, width, lengths, lp, lr, scores = batch
    mask, lp_t, lr_t, s_t = tensors(width, lengths, lp, lr, scores)
    rm = algo.process_rewards(lp_t, lr_t, mask, beta=0.05)
    want = ref.dpo_accuracy(rm.tolist(), scores, lengths, k)
    assert algo.dpo_accuracy(rm, s_t, mask, group_size=k) == pytest.approx(want, abs=1e-12)
