"""Online prompt filtering by group accuracy (spec 6).

Keep a prompt iff low <= mean_k acc_k <= high, both bounds inclusive (both repos). With
K = 4 binary rewards, groups with 1, 2 or 3 correct answers survive.
"""

from __future__ import annotations

from torch import Tensor

# Group means are computed in float64; this slack keeps a mean that equals a bound in exact
# arithmetic (e.g. 1/5 == 0.2) on the inclusive side despite rounding.
_BOUND_SLACK = 1e-9


def group_accuracy(scores: Tensor, *, group_size: int) -> Tensor:
    """Mean score per contiguous group of ``group_size`` rows, as float64 ``[num_groups]``."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores are not divisible by group_size={group_size}")
    return scores.double().view(-1, group_size).mean(-1)


def accuracy_filter(
    scores: Tensor, *, group_size: int, low: float = 0.2, high: float = 0.8
) -> Tensor:
    """BoolTensor ``[num_groups]``: True for groups whose mean score lies in [low, high]."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low} high={high}")
    acc = group_accuracy(scores, group_size=group_size)
    return (acc >= low - _BOUND_SLACK) & (acc <= high + _BOUND_SLACK)


def truncation_filter(truncated: Tensor, *, group_size: int) -> Tensor:
    """BoolTensor ``[num_groups]``: True for groups with no truncated response (ORIG rule)."""
    return ~truncated.bool().view(-1, group_size).any(-1)


def expand_group_mask(group_mask: Tensor, *, group_size: int) -> Tensor:
    """Row mask ``[num_groups * group_size]`` from a group mask, keeping groups contiguous."""
    return group_mask.repeat_interleave(group_size)
