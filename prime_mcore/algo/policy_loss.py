"""PPO-clip policy loss and KL estimators (spec 5.1, PAPER Eq. 6).

l_t = max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps)), rho_t = exp(logp - logp_old);
with dual-clip (veRL) l_t = min(l_t, -A_t c) where A_t < 0.
Aggregation:
- "token-mean": sum of l over all valid tokens / number of valid tokens (veRL).
- "seq-mean-token-mean": token mean per sequence, then mean over sequences (ORIG with one
  sequence per micro-batch, the paper's run).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prime_mcore.algo.masking import masked_fill_zero, masked_mean

AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def aggregate(loss_bt: Tensor, mask: Tensor, agg: str) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar with the named normalizer."""
    if agg == "token-mean":
        return masked_mean(loss_bt, mask)
    if agg == "seq-mean-token-mean":
        valid = mask.bool().any(-1)
        per_seq = masked_mean(loss_bt, mask, dim=-1)[valid]
        return per_seq.mean() if per_seq.numel() else loss_bt.sum() * 0.0
    raise ValueError(f"agg={agg!r} is not one of {list(AGGREGATIONS)}")


def ppo_policy_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_eps: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate (spec 5.1).

    Args:
        logp: current policy log-probs of the sampled tokens [B, T] (differentiable).
        logp_old: log-probs at rollout time (recomputed by the trainer) [B, T].
        advantages: per-token advantages [B, T].
        response_mask: valid response tokens.
        clip_eps: epsilon of the clip range.
        dual_clip: constant c > 1 bounding the loss of negative advantages; None disables.
        agg: "token-mean" or "seq-mean-token-mean".
        log_ratio_clamp: |log rho| is clamped here before exp (veRL; only bites when the
            ratio is astronomically off, where it prevents inf).

    Returns:
        (loss, metrics) with float metrics "pg_clipfrac" (fraction of valid tokens where
        the clipped term is the active one), "ppo_kl" (masked mean of logp_old - logp) and
        "pg_clipfrac_lower" (fraction where the dual clip is active).
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg={agg!r} is not one of {list(AGGREGATIONS)}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip={dual_clip} must be > 1")
    mask = response_mask.bool()
    logp_old = logp_old.detach()
    adv = masked_fill_zero(advantages.detach(), mask)
    neg_log_ratio = masked_fill_zero(logp_old - logp, mask)
    ratio = torch.exp((-neg_log_ratio).clamp(-log_ratio_clamp, log_ratio_clamp))
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss_bt = torch.maximum(pg_unclipped, pg_clipped)
    clipfrac = masked_mean((pg_clipped > pg_unclipped).to(loss_bt.dtype), mask)
    lower = torch.zeros((), dtype=loss_bt.dtype)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (loss_bt > bound)
        lower = masked_mean(dual_active.to(loss_bt.dtype), mask)
        loss_bt = torch.where(adv < 0, torch.minimum(loss_bt, bound), loss_bt)
    loss = aggregate(loss_bt, mask, agg)
    metrics = {
        "pg_clipfrac": float(clipfrac),
        "ppo_kl": float(masked_mean(neg_log_ratio.detach(), mask)),
        "pg_clipfrac_lower": float(lower),
    }
    return loss, metrics


def kl_k3(logp: Tensor, logp_ref: Tensor, response_mask: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(r) - r - 1, r = ref - logp.

    Always >= 0 and unbiased; used by the rollout/trainer logprob-gap monitor.
    """
    r = masked_fill_zero(logp_ref - logp, response_mask)
    return masked_fill_zero(torch.exp(r) - r - 1.0, response_mask)
