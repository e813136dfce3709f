"""Spec section 14, Test 1: one prompt, K = 4, R = 5, in both conventions.

Every expected number is copied from the spec (float64 NumPy reference of the original
code paths). Pad positions hold garbage (-9 vs -1, q = -8) that must be ignored (C3).
"""

import pytest
import torch

from prime_mcore.algo import (
    dpo_accuracy,
    dpo_accuracy_abs,
    prm_ce_loss,
    process_rewards,
    rloo_advantages,
)

BETA = 0.05
LENGTHS = [5, 3, 4, 2]
ACC = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
LOGP_PRM = torch.tensor([
    [-0.5, -1.0, -0.25, -2.0, -0.25],
    [-2.0, -1.0, -0.25, -9.0, -9.0],
    [-0.25, -2.0, -2.5, -0.5, -9.0],
    [-3.25, -0.75, -9.0, -9.0, -9.0],
], dtype=torch.float64)
LOGP_REF = torch.tensor([
    [-1.5, -1.5, -0.75, -2.5, -0.75],
    [-1.0, -0.5, -0.25, -1.0, -1.0],
    [-0.5, -0.75, -1.5, -0.5, -1.0],
    [-1.0, -0.25, -1.0, -1.0, -1.0],
], dtype=torch.float64)
MASK = torch.arange(5)[None, :] < torch.tensor(LENGTHS)[:, None]

RM_VERL = [
    [0.3999968, 0.1999984, 0.1999984, 0.1999984, 0],
    [-0.3999968, -0.1999984, 0, 0, 0],
    [0.0999992, -0.4999960, -0.3999968, 0, 0],
    [-0.8999928, 0, 0, 0, 0],
]
RM_ORIG = [
    [0.3333332, 0.1666666, 0.1666666, 0.1666666, 0.1666666],
    [-0.3333332, -0.1666666, 0, 0, 0],
    [0.0833333, -0.4166665, -0.3333332, 0, 0],
    [-0.7499998, -0.1666666, 0, 0, 0],
]
ADV_VERL = [
    [1.969202, 1.382910, 1.005076, 0.627243, 0.249410],
    [-1.079529, -0.831983, -0.792897, 0, 0],
    [-0.076308, -0.349911, 0.001864, 0.249410, 0],
    [-1.561592, -0.792897, 0, 0, 0],
]
RET_VERL = [
    [15.41657, 11.6666, 9.249953, 6.833305, 4.416658],
    [-4.083327, -2.500007, -2.250009, 0, 0],
    [2.333341, 0.583355, 2.833337, 4.416658, 0],
    [-7.166636, -2.250009, 0, 0, 0],
]
ADV_ORIG = [
    [1.844712, 1.350691, 1.027759, 0.704828, 0.381896],
    [-1.025315, -0.834978, -0.815731, 0, 0],
    [-0.018025, -0.255412, 0.020470, 0.210807, 0],
    [-1.604881, -0.986820, 0, 0, 0],
]
RET_ORIG = [
    [2.986110, 2.344444, 1.925000, 1.505555, 1.086111],
    [-0.741667, -0.494445, -0.469445, 0, 0],
    [0.566667, 0.258333, 0.616667, 0.863889, 0],
    [-1.494444, -0.691667, 0, 0, 0],
]


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_prm_ce_loss_and_gradient():
    logp = LOGP_PRM.clone().requires_grad_(True)
    loss = prm_ce_loss(logp, LOGP_REF, MASK, ACC, beta=BETA)
    # z = beta * sum q = [0.15, -0.075, -0.1, -0.1375]; BCE mean = 0.6621156
    assert loss.item() == pytest.approx(0.6621156, abs=1e-7)
    loss.backward()
    # dL/dz = (sigmoid(z) - acc) / 4; dL/dq_t = beta * dL/dz on every valid token, 0 on pads
    dz = torch.tensor([-0.1156425, 0.1203147, -0.1312448, 0.1164198], dtype=torch.float64)
    expected = (BETA * dz)[:, None].expand(-1, 5) * MASK
    torch.testing.assert_close(logp.grad, expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("convention,expected", [("verl", RM_VERL), ("orig", RM_ORIG)])
def test_token_process_rewards(convention, expected):
    rm = process_rewards(LOGP_PRM, LOGP_REF, MASK, beta=BETA, convention=convention)
    torch.testing.assert_close(rm, t(expected), atol=1e-7, rtol=0)


def test_whole_granularity_orig():
    rm = process_rewards(LOGP_PRM, LOGP_REF, MASK, beta=BETA, granularity="whole")
    expected = torch.zeros(4, 5, dtype=torch.float64)
    # sum q = [3, -1.5, -2, -2.75] at t = L-1; D = 3.000001
    for i, (length, v) in enumerate(zip(LENGTHS, [0.9999997, -0.4999998, -0.6666664, -0.9166664])):
        expected[i, length - 1] = v
    torch.testing.assert_close(rm, expected, atol=1e-7, rtol=0)


def test_no_norm_scales_differ_by_beta():
    orig = process_rewards(LOGP_PRM, LOGP_REF, MASK, beta=BETA, norm="none")
    verl = process_rewards(LOGP_PRM, LOGP_REF, MASK, beta=BETA, convention="verl", norm="none")
    assert orig[0].tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]  # raw q, EOS included
    torch.testing.assert_close(verl[0], t([0.05, 0.025, 0.025, 0.025, 0.0]))


@pytest.mark.parametrize("convention,rm_rows", [("verl", RM_VERL), ("orig", RM_ORIG)])
def test_dpo_accuracy(convention, rm_rows):
    rm = process_rewards(LOGP_PRM, LOGP_REF, MASK, beta=BETA, convention=convention)
    # pairs with |d acc| = 1: (0,1) ok, (0,3) ok, (1,2) wrong, (2,3) ok -> 0.75
    assert dpo_accuracy(rm, ACC, MASK, group_size=4) == pytest.approx(0.75)
    assert dpo_accuracy_abs(rm, ACC, MASK) == pytest.approx(0.75)


@pytest.mark.parametrize("convention,adv_rows,ret_rows", [
    ("verl", ADV_VERL, RET_VERL),
    ("orig", ADV_ORIG, RET_ORIG),
])
def test_end_to_end_advantages(convention, adv_rows, ret_rows):
    rm = process_rewards(LOGP_PRM, LOGP_REF, MASK, beta=BETA, convention=convention)
    adv, ret = rloo_advantages(rm, ACC, MASK, group_size=4, convention=convention)
    torch.testing.assert_close(ret, t(ret_rows), atol=2e-5, rtol=0)
    torch.testing.assert_close(adv, t(adv_rows), atol=2e-6, rtol=0)


def test_verl_rloo_components():
    # 5 * RLOO(gt): baseline sum(acc)/3 = 2/3 -> +-3.333333 on each EOS token
    rm = process_rewards(LOGP_PRM, LOGP_REF, MASK, beta=BETA, convention="verl")
    _, ret_outcome = rloo_advantages(None, ACC, MASK, group_size=4, convention="verl")
    assert ret_outcome[0, 0].item() == pytest.approx(3.333333, abs=1e-6)
    assert ret_outcome[1, 0].item() == pytest.approx(-3.333333, abs=1e-6)
    # process part alone: 5 * RLOO(rm), row 0 = [3.74997, 2.416647, 2.416647, 2.416647, 1.083325]
    _, ret_rm = rloo_advantages(rm, ACC, MASK, group_size=4, convention="verl", gt_coef=0.0)
    per_token = ret_rm[0] - torch.cat([ret_rm[0, 1:], ret_rm.new_zeros(1)])
    torch.testing.assert_close(per_token, t([3.74997, 2.416647, 2.416647, 2.416647, 1.083325]),
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("convention", ["orig", "verl"])
def test_norm_floor_bounds_the_denominator_in_logit_units(convention):
    """The spec 12.5 remedy: D >= norm_floor, measured as beta * sum q in both conventions."""
    kw = dict(beta=BETA, convention=convention)
    plain = process_rewards(LOGP_PRM, LOGP_REF, MASK, **kw)
    # the largest |return| here is beta * 3 = 0.15 logits: a lower floor changes nothing
    torch.testing.assert_close(process_rewards(LOGP_PRM, LOGP_REF, MASK, norm_floor=0.1, **kw),
                               plain)
    # a floor of 2 logits: rewards are beta * q / 2 (verl's EOS slot still 0), not scaled to 1
    floored = process_rewards(LOGP_PRM, LOGP_REF, MASK, norm_floor=2.0, **kw)
    raw = process_rewards(LOGP_PRM, LOGP_REF, MASK, norm="none", **kw)
    scale = BETA if convention == "orig" else 1.0
    torch.testing.assert_close(floored, raw * scale / 2.0)
    assert floored[0].tolist()[0] == pytest.approx(0.025)  # q = 1 on row 0's first token
    with pytest.raises(ValueError, match="norm_floor"):
        process_rewards(LOGP_PRM, LOGP_REF, MASK, norm_floor=-1.0, **kw)
