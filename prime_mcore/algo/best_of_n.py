"""Inference-time scaling with the implicit PRM and the eval estimators (spec 10-11).

Best-of-N with an implicit PRM scores a response by its implicit Q at step boundaries:
q^(k) = beta * sum_{tokens <= end of step k} (log pi_prm - log pi_ref), the cumulative
reward up to the last token of step k (not the per-step increment). EurusPRM-Stage1
aggregates with the minimum over steps; "last" is the whole-response implicit reward.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from prime_mcore.algo.masking import masked_fill_zero

AGGREGATIONS = ("min", "last")


def implicit_q_values(logp_prm: Tensor, logp_ref: Tensor, response_mask: Tensor, *,
                      beta: float) -> Tensor:
    """Implicit Q [B, T]: beta * cumulative log-ratio; 0 on padding."""
    q = masked_fill_zero(logp_prm - logp_ref, response_mask)
    return masked_fill_zero(beta * q.cumsum(-1), response_mask)


def step_scores(q_values: Tensor, step_ends: Sequence[Sequence[int]]) -> list[Tensor]:
    """Per row, the implicit Q at each step's last token (positions given per row)."""
    out = []
    for row, ends in zip(q_values, step_ends):
        if not len(ends):
            raise ValueError("every response needs at least one step end (its last token)")
        out.append(row[torch.as_tensor(list(ends), dtype=torch.long)])
    return out


def aggregate_steps(per_step: Sequence[Tensor], how: str = "min") -> Tensor:
    """One score per response: the minimum over steps or the last step's (final) value."""
    if how not in AGGREGATIONS:
        raise ValueError(f"how={how!r} is not one of {list(AGGREGATIONS)}")
    return torch.stack([s.min() if how == "min" else s[-1] for s in per_step])


def best_of_n(scores: Tensor, *, n: int) -> Tensor:
    """Index (0..n-1) of the best candidate within each consecutive group of n; the first
    wins ties so the choice is deterministic."""
    if scores.numel() % n:
        raise ValueError(f"{scores.numel()} candidates are not divisible by n={n}")
    return scores.view(-1, n).argmax(-1)


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent non-None answer; ties go to the answer seen first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if not 0 <= c <= n or k > n or k < 1:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))
