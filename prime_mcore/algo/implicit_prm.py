"""Implicit process rewards and the PRM's cross-entropy loss (spec 2-3, PAPER Eq. 3).

The implicit PRM is a full causal LM pi_prm next to a frozen reference pi_ref. Its token
reward is r_t = beta * log(pi_prm(y_t) / pi_ref(y_t)); it is trained as an outcome reward
model on z = beta * sum_t q_t with a (soft-label) BCE against the verifier's score.

Conventions (spec 2.3-2.4, [DIFF]):
- "orig" (PRIME-RL/PRIME, the paper's run): score_t = q_t on every valid token, EOS included,
  not multiplied by beta.
- "verl" (the veRL port): score_t = beta * q_t for t <= L-2; the last valid token gets 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prime_mcore.algo.masking import last_valid_index, masked_fill_zero, reverse_cumsum

CONVENTIONS = ("orig", "verl")
_BATCH_NORM_EPS = 1e-6


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def log_ratio(logp_prm: Tensor, logp_ref: Tensor, response_mask: Tensor) -> Tensor:
    """q [B, T] = log pi_prm - log pi_ref on valid tokens, 0 on padding."""
    return masked_fill_zero(logp_prm - logp_ref, response_mask)


def batch_norm_denominator(scores: Tensor) -> Tensor:
    """D = max_{i,t} |reverse_cumsum(scores)| + 1e-6 over the batch given (spec 2.4).

    The reference repos take the max over one DP rank's shard; to normalise globally,
    all-reduce (MAX) the value of ``(D - 1e-6)`` across ranks and pass it to
    ``process_rewards(..., denominator=...)``.
    """
    return reverse_cumsum(scores).abs().max() + _BATCH_NORM_EPS


def process_rewards(
    logp_prm: Tensor,
    logp_ref: Tensor,
    response_mask: Tensor,
    *,
    beta: float,
    convention: str = "orig",
    granularity: str = "token",
    norm: str = "batch_norm",
    denominator: Tensor | float | None = None,
    norm_floor: float = 0.0,
) -> Tensor:
    """Token-level process rewards ``rm_scores [B, T]`` (spec 2.3-2.4).

    Args:
        logp_prm, logp_ref: per-token log-probs of the response tokens under PRM and reference.
        response_mask: valid response tokens, EOS included.
        beta: the implicit reward's beta ("verl" scales q by it, "orig" feeds unscaled q;
            both use it to express ``norm_floor`` in logit units).
        convention: "orig" or "verl" (see module docstring).
        granularity: "token" (dense) or "whole" (the summed reward on the last valid token).
        norm: "batch_norm" (divide by max |reverse cumsum| + 1e-6 over this batch) or "none".
        denominator: a precomputed batch_norm D (e.g. a global max across DP ranks).
        norm_floor: a lower bound on batch_norm's D, in units of the implicit reward
            beta * sum q (the PRM's outcome logit), whatever the convention. 0 (the reference
            repos) scales the largest process return to 1 however little the PRM knows, so
            an untrained PRM's noise weighs as much as the outcome reward (spec 12.5); with
            a floor f, returns are beta-scaled log-ratios divided by max(max|G|, f): they
            reach full weight only once the PRM is confident (|logit| >= f).
    """
    _check("convention", convention, CONVENTIONS)
    _check("granularity", granularity, ("token", "whole"))
    _check("norm", norm, ("batch_norm", "none"))
    if norm_floor < 0:
        raise ValueError(f"norm_floor={norm_floor} must be >= 0")
    mask = response_mask.bool()
    q = log_ratio(logp_prm, logp_ref, mask)
    scale = 1.0 if convention == "orig" else beta
    last, has_any = last_valid_index(mask)
    rows = torch.arange(q.shape[0], device=q.device)
    if granularity == "token":
        scores = q * scale
        if convention == "verl":  # the EOS (last valid) token gets no process reward
            scores = scores.clone()
            scores[rows[has_any], last[has_any]] = 0.0
    else:  # the whole-response implicit reward on the last valid token (ORIG's sum)
        scores = torch.zeros_like(q)
        scores[rows[has_any], last[has_any]] = (q.sum(-1) * scale)[has_any]
    if norm == "batch_norm":
        d = batch_norm_denominator(scores) if denominator is None else denominator
        if norm_floor > 0:  # score units: orig's are q (beta * q = logit units), verl's beta q
            d = torch.clamp(torch.as_tensor(d, dtype=scores.dtype, device=scores.device),
                            min=norm_floor * scale / beta)
        scores = scores / d
    return scores


def prm_ce_loss(
    logp_prm: Tensor, logp_ref: Tensor, response_mask: Tensor, scores: Tensor, *, beta: float
) -> Tensor:
    """Mean over responses of BCE(sigmoid(beta * sum_t q_t), score) (spec 3.1).

    The sum runs over every valid token, EOS included, in both conventions. Scores may be
    fractional (code partial credit): a soft-label BCE. Gradients flow only through
    ``logp_prm``; the reference is treated as a constant.
    """
    q = log_ratio(logp_prm, logp_ref.detach(), response_mask)
    z = beta * q.sum(-1)
    return F.binary_cross_entropy_with_logits(z, scores.to(z.dtype), reduction="mean")


def dpo_accuracy(rm_scores: Tensor, scores: Tensor, response_mask: Tensor, *, group_size: int) -> float:
    """PRM classification accuracy within prompt groups (spec 2.5, PAPER Fig. 5).

    x_i = sum_t rm_scores; over pairs i<j of a group a pair is correct when
    (x_i > x_j) == (a_i > a_j), weighted by |a_i - a_j|; a group whose scores are all equal
    counts 0.5. Returns the mean over groups.
    """
    x = torch.where(response_mask.bool(), rm_scores, 0.0).sum(-1).double()
    a = scores.double()
    if x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} rows are not divisible by group_size={group_size}")
    x, a = x.view(-1, group_size), a.view(-1, group_size)
    dx = x.unsqueeze(2) - x.unsqueeze(1)  # [G, K, K]: x_i - x_j
    da = a.unsqueeze(2) - a.unsqueeze(1)
    upper = torch.triu(torch.ones(group_size, group_size, dtype=torch.bool), diagonal=1)
    w = da.abs() * upper
    correct = ((dx > 0) == (da > 0)).double()
    wsum = w.sum((1, 2))
    acc = torch.where(wsum > 0, (w * correct).sum((1, 2)) / wsum.clamp_min(1e-30), 0.5)
    return float(acc.mean())


def dpo_accuracy_abs(rm_scores: Tensor, scores: Tensor, response_mask: Tensor) -> float:
    """verl's dpo_acc_abs: mean of [sign(x_i) == sign(2 a_i - 1)] (spec 2.5)."""
    x = torch.where(response_mask.bool(), rm_scores, 0.0).sum(-1)
    return float((torch.sign(x) == torch.sign(2 * scores.to(x.dtype) - 1)).double().mean())
