"""RLOO advantages and returns for PRIME and the outcome-only baseline (spec 4).

This follows the reference code, not the paper's Eq. 5 literally (spec 4.2, pitfall 12):

masked RLOO on X [B, T] with mask M, per contiguous group of K rows:
    m_j = mean_{t in M_j} X_{j,t};  b_g = sum_{j in g} m_j / (K - 1)
    X'_{i,t} = X_{i,t} * K / (K - 1) - b_g   on M, 0 elsewhere.
Process rewards use M = response mask; the outcome reward sits on the last valid token only.
F = rm_coef * RLOO(rm) + gt_coef * RLOO(gt); returns G = reverse cumsum of F (gamma = 1);
advantages = masked whitening of G over the whole batch (per token).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prime_mcore.algo.implicit_prm import CONVENTIONS
from prime_mcore.algo.masking import (
    last_valid_index,
    masked_fill_zero,
    masked_whiten,
    reverse_cumsum,
)

# Coefficient defaults per convention: ORIG weighs both sources 1:1 (its reward_coef=5
# only scales logs), veRL uses reward_dpo_coef = reward_gt_coef = 5 (spec 4.2).
DEFAULT_COEFS = {"orig": (1.0, 1.0), "verl": (5.0, 5.0)}
# veRL adds 1e-8 to the token count inside whitening; ORIG does not.
_WHITEN_COUNT_EPS = {"orig": 0.0, "verl": 1e-8}


def masked_rloo(x: Tensor, mask: Tensor, *, group_size: int) -> Tensor:
    """Leave-one-out baseline per contiguous group of ``group_size`` rows (spec 4.2).

    Rows with no valid entry contribute a per-sample mean of 0 to their group's baseline.
    """
    k = group_size
    if k < 2:
        raise ValueError(f"RLOO needs group_size >= 2, got {k}")
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rows are not divisible by group_size={k}")
    mask = mask.bool()
    x = masked_fill_zero(x, mask)
    count = mask.sum(-1).to(x.dtype)
    per_sample = x.sum(-1) / count.clamp_min(1.0)
    baseline = per_sample.view(-1, k).sum(-1, keepdim=True) / (k - 1)  # sum includes i itself
    baseline = baseline.expand(-1, k).reshape(-1, 1)
    return masked_fill_zero(x * (k / (k - 1)) - baseline, mask)


def outcome_tensor(scores: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The outcome reward placed on each row's last valid token, and that one-hot mask."""
    last, has_any = last_valid_index(response_mask)
    rows = torch.arange(scores.shape[0], device=scores.device)[has_any]
    dtype = torch.promote_types(scores.dtype, torch.float32)
    x = torch.zeros(response_mask.shape, dtype=dtype, device=scores.device)
    m = torch.zeros(response_mask.shape, dtype=torch.bool, device=scores.device)
    x[rows, last[has_any]] = scores[has_any].to(dtype)
    m[rows, last[has_any]] = True
    return x, m


def rloo_advantages(
    rm_scores: Tensor | None,
    scores: Tensor,
    response_mask: Tensor,
    *,
    group_size: int,
    convention: str = "orig",
    rm_coef: float | None = None,
    gt_coef: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PRIME advantages and returns, both ``[B, T]`` (spec 4.2).

    Args:
        rm_scores: process rewards from ``process_rewards`` (after batch_norm), or None for
            the outcome-only RLOO baseline.
        scores: verifier outcome scores ``[B]`` in [0, 1].
        response_mask: valid response tokens (EOS included).
        group_size: K; the K responses of a prompt are consecutive rows.
        convention: "orig" or "verl" (whitening epsilon and default coefficients).
        rm_coef, gt_coef: source weights; None = the convention's default (1/1 or 5/5). A
            coefficient of 0 skips that source.

    Returns:
        (advantages, returns); both 0 on padding positions.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is not one of {list(CONVENTIONS)}")
    default_rm, default_gt = DEFAULT_COEFS[convention]
    rm_coef = default_rm if rm_coef is None else rm_coef
    gt_coef = default_gt if gt_coef is None else gt_coef
    mask = response_mask.bool()
    dtype = torch.promote_types(scores.dtype, torch.float32)
    if rm_scores is not None:
        dtype = torch.promote_types(dtype, rm_scores.dtype)
    combined = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    if rm_scores is not None and rm_coef != 0:
        combined = combined + rm_coef * masked_rloo(rm_scores.to(dtype), mask, group_size=group_size)
    if gt_coef != 0:
        x_gt, m_gt = outcome_tensor(scores.to(dtype), mask)
        combined = combined + gt_coef * masked_rloo(x_gt, m_gt, group_size=group_size)
    returns = reverse_cumsum(masked_fill_zero(combined, mask))
    returns = masked_fill_zero(returns, mask)
    advantages = masked_whiten(returns, mask, count_eps=_WHITEN_COUNT_EPS[convention])
    return advantages, returns
