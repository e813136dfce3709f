"""Invariants of the PRIME maths that every implementation detail must keep."""

import pytest
import torch

from prime_mcore import algo

torch.manual_seed(0)


def random_batch(groups=3, k=4, width=9, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = groups * k
    lengths = torch.randint(1, width + 1, (b,), generator=g)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    lp = -torch.rand(b, width, generator=g, dtype=dtype) * 3
    lr = -torch.rand(b, width, generator=g, dtype=dtype) * 3
    scores = torch.randint(0, 2, (b,), generator=g).to(dtype)
    return mask, lp, lr, scores


def test_outcome_rloo_sums_to_zero_per_group():
    mask, _, _, scores = random_batch()
    x, m = algo.advantages.outcome_tensor(scores, mask)
    per_row = algo.masked_rloo(x, m, group_size=4).sum(-1)
    # r_i - mean_{j != i} r_j sums to 0 over a group
    torch.testing.assert_close(per_row.view(-1, 4).sum(-1), torch.zeros(3, dtype=torch.float64))
    # and equals plain leave-one-out
    s = scores.view(-1, 4)
    loo = s - (s.sum(-1, keepdim=True) - s) / 3
    torch.testing.assert_close(per_row, loo.reshape(-1))


def test_process_rloo_per_sample_means_sum_to_zero():
    mask, lp, lr, _ = random_batch()
    rm = algo.process_rewards(lp, lr, mask, beta=0.05)
    out = algo.masked_rloo(rm, mask, group_size=4)
    means = algo.masked_mean(out, mask, dim=-1)
    torch.testing.assert_close(means.view(-1, 4).sum(-1), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("convention", ["orig", "verl"])
def test_masked_positions_never_change_outputs(convention):
    mask, lp, lr, scores = random_batch()
    rm = algo.process_rewards(lp, lr, mask, beta=0.05, convention=convention)
    adv, ret = algo.rloo_advantages(rm, scores, mask, group_size=4, convention=convention)
    loss = algo.prm_ce_loss(lp, lr, mask, scores, beta=0.05)
    ppo, _ = algo.ppo_policy_loss(lp, lr, adv, mask)
    # poison every padding position, including with inf and NaN
    poison = torch.where(torch.rand_like(lp) < 0.5, torch.tensor(float("nan")),
                         torch.tensor(float("-inf"))).to(lp.dtype)
    lp2, lr2 = torch.where(mask, lp, poison), torch.where(mask, lr, poison * 3)
    rm2 = algo.process_rewards(lp2, lr2, mask, beta=0.05, convention=convention)
    adv_pad = torch.where(mask, adv, poison)
    adv2, ret2 = algo.rloo_advantages(torch.where(mask, rm2, poison), scores, mask,
                                      group_size=4, convention=convention)
    torch.testing.assert_close(rm2, rm)
    torch.testing.assert_close(adv2, adv)
    torch.testing.assert_close(ret2, ret)
    assert algo.prm_ce_loss(lp2, lr2, mask, scores, beta=0.05).item() == pytest.approx(loss.item())
    ppo2, _ = algo.ppo_policy_loss(lp2, lr2, adv_pad, mask)
    assert ppo2.item() == pytest.approx(ppo.item())
    assert algo.dpo_accuracy(rm2, scores, mask, group_size=4) == algo.dpo_accuracy(
        rm, scores, mask, group_size=4)


@pytest.mark.parametrize("convention", ["orig", "verl"])
def test_float32_agrees_with_float64(convention):
    mask, lp, lr, scores = random_batch(groups=4, width=16)
    outs = {}
    for dtype in (torch.float32, torch.float64):
        rm = algo.process_rewards(lp.to(dtype), lr.to(dtype), mask, beta=0.05,
                                  convention=convention)
        adv, ret = algo.rloo_advantages(rm, scores.to(dtype), mask, group_size=4,
                                        convention=convention)
        ce = algo.prm_ce_loss(lp.to(dtype), lr.to(dtype), mask, scores.to(dtype), beta=0.05)
        pg, _ = algo.ppo_policy_loss(lp.to(dtype) + 0.1, lp.to(dtype), adv, mask)
        outs[dtype] = [rm, adv, ret, ce, pg]
    for a, b in zip(outs[torch.float32], outs[torch.float64]):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_gradients_flow_only_through_prm_and_policy_logprobs():
    mask, lp, lr, scores = random_batch()
    lp = lp.requires_grad_(True)
    lr = lr.requires_grad_(True)
    algo.prm_ce_loss(lp, lr, mask, scores, beta=0.05).backward()
    assert lp.grad is not None and lp.grad[mask].abs().sum() > 0
    assert lr.grad is None
    assert torch.all(lp.grad[~mask] == 0)

    logp = lp.detach().clone().requires_grad_(True)
    old = (lp.detach() - 0.05).requires_grad_(True)
    adv = torch.randn(lp.shape, dtype=lp.dtype).requires_grad_(True)
    loss, _ = algo.ppo_policy_loss(logp, old, adv, mask)
    loss.backward()
    assert logp.grad is not None and logp.grad[mask].abs().sum() > 0
    assert old.grad is None and adv.grad is None


def test_ppo_clipping_hand_example():
    # one token, A = +1, ratio = e^0.5 = 1.6487 > 1.2: the clipped term (-1.2) wins
    logp, old = torch.tensor([[0.0]]), torch.tensor([[-0.5]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, m = algo.ppo_policy_loss(logp, old, torch.tensor([[1.0]]), mask)
    assert loss.item() == pytest.approx(-1.2)
    assert m["pg_clipfrac"] == 1.0 and m["ppo_kl"] == pytest.approx(-0.5)
    # A = -1, ratio = e^2 = 7.389: PPO loss 7.389, dual clip c = 3 bounds it at 3
    logp2, old2 = torch.tensor([[0.0]]), torch.tensor([[-2.0]])
    loss2, _ = algo.ppo_policy_loss(logp2, old2, torch.tensor([[-1.0]]), mask)
    assert loss2.item() == pytest.approx(7.389056, rel=1e-6)
    loss3, m3 = algo.ppo_policy_loss(logp2, old2, torch.tensor([[-1.0]]), mask, dual_clip=3.0)
    assert loss3.item() == pytest.approx(3.0) and m3["pg_clipfrac_lower"] == 1.0


def test_loss_aggregations_differ_for_unequal_lengths():
    # row 0: 1 token with loss 3; row 1: 3 tokens with loss 1 (ratio 1, advantage -loss)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([[-3.0, 0, 0], [-1.0, -1.0, -1.0]])
    zeros = torch.zeros(2, 3)
    tok, _ = algo.ppo_policy_loss(zeros, zeros, adv, mask, agg="token-mean")
    seq, _ = algo.ppo_policy_loss(zeros, zeros, adv, mask, agg="seq-mean-token-mean")
    assert tok.item() == pytest.approx((3 + 3) / 4)  # 6 / 4 tokens
    assert seq.item() == pytest.approx((3 + 1) / 2)  # mean of per-sequence means


def test_filter_bounds_are_inclusive():
    # K = 4: accuracies 0, .25, .5, .75, 1 -> only the middle three survive [0.2, 0.8]
    scores = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1.0])
    assert algo.accuracy_filter(scores, group_size=4).tolist() == [False, True, True, True, False]
    # K = 5: 1/5 = 0.2 and 4/5 = 0.8 sit exactly on the bounds and are kept
    s5 = torch.tensor([1, 0, 0, 0, 0, 1, 1, 1, 1, 0.0])
    assert algo.accuracy_filter(s5, group_size=5).tolist() == [True, True]
    # fractional code scores just outside are dropped
    assert algo.accuracy_filter(torch.tensor([0.19, 0.19]), group_size=2).tolist() == [False]


def test_errors_name_the_bad_argument():
    mask, lp, lr, scores = random_batch()
    with pytest.raises(ValueError, match="convention"):
        algo.process_rewards(lp, lr, mask, beta=0.05, convention="trl")
    with pytest.raises(ValueError, match="group_size=5"):
        algo.rloo_advantages(None, scores, mask, group_size=5)
    with pytest.raises(ValueError, match="agg"):
        algo.ppo_policy_loss(lp, lr, lp, mask, agg="sum")
    with pytest.raises(ValueError, match="low"):
        algo.accuracy_filter(scores, group_size=4, low=0.9, high=0.1)
