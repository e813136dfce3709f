"""Masked reductions shared by the PRIME maths (spec 4.2, verl ``masked_whiten``).

Masked positions are selected with ``torch.where`` rather than multiplied by the mask, so
padding that holds inf or NaN can never leak into a result or its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_fill_zero(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask is true, 0 elsewhere."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x over the true positions of mask (over all dims when dim is None)."""
    x = masked_fill_zero(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, *, eps: float = 0.0) -> Tensor:
    """Mean of x over the true positions of mask; ``eps`` is added to the count (verl)."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / (count + eps)


def reverse_cumsum(x: Tensor) -> Tensor:
    """G[..., t] = sum_{s >= t} x[..., s] along the last dim (returns with gamma = 1)."""
    return x.flip(-1).cumsum(-1).flip(-1)


def last_valid_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the last true position of each row of ``mask [B, T]`` and whether it exists.

    The response mask marks tokens up to and including EOS, so this is the EOS (or the
    truncation) position, where the outcome reward sits.
    """
    mask = mask.bool()
    num_cols = mask.shape[-1]
    idx = num_cols - 1 - mask.flip(-1).to(torch.int8).argmax(-1)
    return idx, mask.any(-1)


def masked_whiten(x: Tensor, mask: Tensor, *, count_eps: float = 0.0) -> Tensor:
    """Whiten x over all true positions of mask (the whole batch, per token; spec 4.2).

    mean = sum(x m) / (N + count_eps); var = sum((x - mean)^2 m) / (N + count_eps) * N/(N-1)
    (Bessel); out = (x - mean) / sqrt(var + 1e-8). Padding positions come back as 0.
    """
    n = mask.to(x.dtype).sum()
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 valid positions, got {int(n)}")
    mean = masked_sum(x, mask) / (n + count_eps)
    var = masked_sum((x - mean) ** 2, mask) / (n + count_eps) * (n / (n - 1))
    return masked_fill_zero((x - mean) * torch.rsqrt(var + 1e-8), mask)
