"""RoPE without Transformer Engine: Megatron's unfused path, minus its repeated work.

``apply_rope_fusion`` needs TE (CUDA), so on CPU Megatron-Core 0.16 applies RoPE with
``_apply_rotary_pos_emb_bshd``: per call (q and k of every layer, forward and recompute) it
takes cos and sin of the whole [s, b, 1, d] frequency tensor, builds ``rotate_half`` with a
negation and a concatenation, and concatenates an empty pass-through part. The profile of
a tiny-model RL step put that at ~14% of the forward. ``fast_rope_bshd`` computes the same
numbers (bit for bit: ``a + (-b) * s`` is ``a - b * s`` in IEEE arithmetic) with cos/sin of
half the frequencies once per forward (every layer of a model chunk gets the same ``freqs``
tensor; with VPP each chunk has its own, so they are recomputed per chunk) and one
concatenation. Interleaved, multi-latent and partial-rotary calls keep Megatron's code.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings import rope_utils
from torch import Tensor

__all__ = ["enable_fast_rope", "fast_rope_bshd"]

_megatron_bshd = rope_utils._apply_rotary_pos_emb_bshd
_cache: dict[str, object] = {}


def _half_cos_sin(freqs: Tensor, mscale: float, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """cos/sin of the first half of ``freqs``, cached for the tensor it was computed from;
    None when the two halves differ (not the non-interleaved ``cat(f, f)`` layout)."""
    key = (id(freqs), freqs._version, freqs.shape, mscale, dtype)
    if _cache.get("key") == key and _cache.get("freqs") is freqs:
        return _cache["value"]  # type: ignore[return-value]
    half = freqs.shape[-1] // 2
    value = None
    if torch.equal(freqs[..., :half], freqs[..., half:]):
        f = freqs[..., :half]
        value = ((torch.cos(f) * mscale).to(dtype), (torch.sin(f) * mscale).to(dtype))
    _cache.update(key=key, freqs=freqs, value=value)
    return value


def fast_rope_bshd(t: Tensor, freqs: Tensor, rotary_interleaved: bool = False,
                   multi_latent_attention: bool = False, mscale: float = 1.0) -> Tensor:
    """Drop-in for Megatron's ``_apply_rotary_pos_emb_bshd`` (same arguments and result)."""
    rot = freqs.shape[-1]
    cos_sin = None
    if not (rotary_interleaved or multi_latent_attention) and rot == t.shape[-1] and rot % 2 == 0:
        cos_sin = _half_cos_sin(freqs, mscale, t.dtype)
    if cos_sin is None:
        return _megatron_bshd(t, freqs, rotary_interleaved=rotary_interleaved,
                              multi_latent_attention=multi_latent_attention, mscale=mscale)
    cos, sin = cos_sin
    x1, x2 = t.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def enable_fast_rope() -> None:
    """Route Megatron's unfused bshd RoPE through ``fast_rope_bshd`` (idempotent)."""
    rope_utils._apply_rotary_pos_emb_bshd = fast_rope_bshd
