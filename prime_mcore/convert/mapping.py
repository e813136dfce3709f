"""HF <-> Megatron-Core name, shape and config mapping for Qwen2/Qwen2.5 and Llama.

Megatron's GPTModel fuses what HF keeps apart:
- ``linear_qkv``: per query group g, the rows [q heads of g | k_g | v_g] (GQA interleaving),
  for the weight [(heads + 2 * groups) * head_dim, hidden] and the optional bias;
- ``linear_fc1``: [gate; up] stacked on dim 0 (SwiGLU);
- the embedding and output layer padded to ``padded_vocab_size`` rows (zeros on the way in,
  dropped on the way out).
The "full" mcore tensors here are the TP=1 layout; the engine shards and gathers them.
Norm names follow the spec in use: the local spec has ``input_layernorm``/``pre_mlp_layernorm``,
the Transformer Engine spec fuses them into ``linear_qkv``/``linear_fc1`` as ``layer_norm_weight``.

Everything is table-driven (``_LAYER_TABLE``), so streaming, random access (``mcore_sources``)
and shapes agree by construction. No I/O and no megatron import here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from prime_mcore.config import ModelConfig

SUPPORTED_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
ARCH_TO_HF = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
_HF_DTYPES = {"float32": "fp32", "bfloat16": "bf16"}


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message names the bad item."""


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int = 1) -> int:
    """Megatron pads the vocab to a multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


@dataclass(frozen=True)
class Layout:
    """Shapes the mapping needs, derived once from a ModelConfig."""

    num_layers: int
    hidden: int
    heads: int
    groups: int
    head_dim: int
    vocab: int
    padded_vocab: int
    tied: bool
    qkv_bias: bool
    te_norms: bool = False
    ffn: int = 0
    """FFN width; only the shape helpers need it."""

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, tp: int = 1, te_norms: bool = False,
                    pad_vocab: bool = True) -> Layout:
        """``pad_vocab=False`` gives the engine's canonical tensors (unpadded vocabulary)."""
        head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
        padded = (padded_vocab_size(cfg.vocab_size, cfg.make_vocab_size_divisible_by, tp)
                  if pad_vocab else cfg.vocab_size)
        return cls(cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads,
                   cfg.num_query_groups, head_dim, cfg.vocab_size, padded,
                   cfg.tie_word_embeddings, cfg.qkv_bias, te_norms, cfg.ffn_hidden_size)


# ---------------------------------------------------------------- configs


def _rope_theta(hf: dict) -> float:
    """RoPE base from either config style; scaled RoPE variants are refused (the engine
    implements plain RoPE only, and silently dropping a scaling would change the logits)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for field, spec in (("rope_parameters", params), ("rope_scaling", scaling)):
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind not in ("default", None):
            raise ConversionError(f"config.json {field}={spec!r}: only plain RoPE "
                                  "(rope_type 'default') is supported")
    if scaling and set(scaling) - {"rope_type", "type", "rope_theta"}:
        raise ConversionError(f"config.json rope_scaling={scaling!r} is not supported")
    return float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)


def model_config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """Our ModelConfig from an HF ``config.json`` dict; unsupported features raise
    ConversionError naming the field."""
    archs = hf.get("architectures") or [ARCH_TO_HF.get(hf.get("model_type"), hf.get("model_type"))]
    arch = SUPPORTED_ARCHITECTURES.get(archs[0])
    if arch is None:
        raise ConversionError(f"unsupported architecture {archs[0]!r} in config.json; "
                              f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in hf]
    if missing:
        raise ConversionError(f"config.json lacks {missing}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json hidden_act={hf['hidden_act']!r}: only silu is supported")
    if hf.get("mlp_bias"):
        raise ConversionError("config.json mlp_bias=true is not supported")
    if arch == "llama" and hf.get("attention_bias"):
        # Llama's attention_bias also puts a bias on o_proj, which the engine does not have.
        raise ConversionError("config.json attention_bias=true (Llama: q/k/v and o_proj biases) "
                              "is not supported")
    if hf.get("quantization_config"):
        raise ConversionError(f"config.json quantization_config={hf['quantization_config']!r}: "
                              "quantized checkpoints are not supported (dequantize first)")
    if hf.get("use_sliding_window"):
        raise ConversionError("config.json use_sliding_window=true is not supported")
    heads = hf["num_attention_heads"]
    if heads % (hf.get("num_key_value_heads") or heads):
        raise ConversionError(f"config.json num_key_value_heads={hf['num_key_value_heads']} "
                              f"does not divide num_attention_heads={heads}")
    head_dim = hf.get("head_dim")
    kv_channels = head_dim if head_dim and head_dim != hf["hidden_size"] // heads else None
    dtype = _HF_DTYPES.get(str(hf.get("dtype") or hf.get("torch_dtype") or "float32"), "fp32")
    fields = dict(
        arch=arch, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_attention_heads=heads, num_query_groups=hf.get("num_key_value_heads") or heads,
        kv_channels=kv_channels, max_position_embeddings=hf.get("max_position_embeddings", 4096),
        rope_theta=_rope_theta(hf), norm_eps=hf.get("rms_norm_eps", 1e-6),
        qkv_bias=arch == "qwen2", tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        params_dtype=dtype,
    )
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except ValueError as err:  # e.g. heads not divisible by KV heads
        raise ConversionError(f"config.json: {err}") from err


def hf_config_from_model(cfg: ModelConfig, *, base: dict | None = None, dtype: str = "float32") -> dict:
    """An HF ``config.json`` dict for cfg; ``base`` (the original config) keeps token ids etc.
    Both RoPE spellings are written: transformers 5 reads ``rope_parameters``, older readers
    ``rope_theta``."""
    # The weights written are never quantized, whatever the source was.
    out = {k: v for k, v in (base or {}).items() if k != "quantization_config"}
    head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    rope = {**(out.get("rope_parameters") or {}), "rope_theta": cfg.rope_theta}
    rope.setdefault("rope_type", "default")
    out.update({
        "architectures": [ARCH_TO_HF[cfg.arch]], "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups, "head_dim": head_dim,
        "max_position_embeddings": cfg.max_position_embeddings, "rope_theta": cfg.rope_theta,
        "rope_parameters": rope, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings, "hidden_act": "silu",
        "torch_dtype": dtype, "dtype": dtype,
    })
    if cfg.arch == "llama":
        out["attention_bias"] = False
        out["mlp_bias"] = False
    return out


def check_parallel(cfg: ModelConfig, *, tp: int, pp: int) -> None:
    """ConversionError unless the model splits evenly over TP x PP (Megatron's constraints)."""
    if tp < 1 or pp < 1:
        raise ConversionError(f"--tp {tp} / --pp {pp} must be >= 1")
    for field, value in (("num_attention_heads", cfg.num_attention_heads),
                         ("num_key_value_heads", cfg.num_query_groups),
                         ("intermediate_size", cfg.ffn_hidden_size)):
        if value % tp:
            raise ConversionError(f"--tp {tp} does not divide {field}={value}")
    if cfg.num_layers % pp:
        raise ConversionError(f"--pp {pp} does not divide num_hidden_layers={cfg.num_layers}")


# ---------------------------------------------------------------- tensors


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, lay: Layout) -> Tensor:
    """HF q/k/v (weights [out, hidden] or biases [out]) -> mcore's group-interleaved QKV."""
    per_group = lay.heads // lay.groups
    tail = q.shape[1:]
    q = q.reshape(lay.groups, per_group * lay.head_dim, *tail)
    k = k.reshape(lay.groups, lay.head_dim, *tail)
    v = v.reshape(lay.groups, lay.head_dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def split_qkv(qkv: Tensor, lay: Layout) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of fuse_qkv."""
    per_group = lay.heads // lay.groups
    tail = qkv.shape[1:]
    grouped = qkv.reshape(lay.groups, (per_group + 2) * lay.head_dim, *tail)
    q, k, v = torch.split(grouped, [per_group * lay.head_dim, lay.head_dim, lay.head_dim], dim=1)
    return (q.reshape(-1, *tail).contiguous(), k.reshape(-1, *tail).contiguous(),
            v.reshape(-1, *tail).contiguous())


def pad_vocab(w: Tensor, lay: Layout) -> Tensor:
    if w.shape[0] != lay.vocab:
        raise ConversionError(f"vocab rows: tensor has {w.shape[0]}, config says {lay.vocab}")
    if lay.padded_vocab == lay.vocab:
        return w
    return torch.cat([w, w.new_zeros(lay.padded_vocab - lay.vocab, *w.shape[1:])])


# (mcore suffix under decoder.layers.{i}, HF suffixes under model.layers.{i}, how to combine)
_LAYER_TABLE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("input_layernorm.weight", ("input_layernorm.weight",), "norm_in"),
    ("self_attention.linear_qkv.weight",
     ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "qkv"),
    ("self_attention.linear_qkv.bias",
     ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), "qkv_bias"),
    ("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), "direct"),
    ("pre_mlp_layernorm.weight", ("post_attention_layernorm.weight",), "norm_mlp"),
    ("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "fc1"),
    ("mlp.linear_fc2.weight", ("mlp.down_proj.weight",), "direct"),
)
_TE_NORMS = {"norm_in": "self_attention.linear_qkv.layer_norm_weight",
             "norm_mlp": "mlp.linear_fc1.layer_norm_weight"}


def _layer_rows(lay: Layout) -> list[tuple[str, tuple[str, ...], str]]:
    rows = []
    for mc, hf, kind in _LAYER_TABLE:
        if kind == "qkv_bias" and not lay.qkv_bias:
            continue
        rows.append((_TE_NORMS[kind] if lay.te_norms and kind in _TE_NORMS else mc, hf, kind))
    return rows


def mcore_sources(lay: Layout) -> dict[str, tuple[str, ...]]:
    """Full mcore name -> the HF tensors it is built from, in checkpoint order."""
    out = {"embedding.word_embeddings.weight": ("model.embed_tokens.weight",)}
    for i in range(lay.num_layers):
        for mc, hf, _ in _layer_rows(lay):
            out[f"decoder.layers.{i}.{mc}"] = tuple(f"model.layers.{i}.{h}" for h in hf)
    out["decoder.final_layernorm.weight"] = ("model.norm.weight",)
    if not lay.tied:
        out["output_layer.weight"] = ("lm_head.weight",)
    return out


def expected_hf_names(lay: Layout) -> list[str]:
    """Every tensor an HF checkpoint of this layout must hold."""
    return [h for hf in mcore_sources(lay).values() for h in hf]


def expected_mcore_names(lay: Layout) -> list[str]:
    """Every tensor of the full mcore state (no ``_extra_state``) of this layout."""
    return list(mcore_sources(lay))


def hf_shapes(lay: Layout) -> dict[str, tuple[int, ...]]:
    """HF name -> shape (needs ``lay.ffn``)."""
    q, kv, h = lay.heads * lay.head_dim, lay.groups * lay.head_dim, lay.hidden
    per = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
           "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
           "self_attn.v_proj.weight": (kv, h), "self_attn.q_proj.bias": (q,),
           "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
           "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (lay.ffn, h),
           "mlp.up_proj.weight": (lay.ffn, h), "mlp.down_proj.weight": (h, lay.ffn)}
    out = {"model.embed_tokens.weight": (lay.vocab, h), "model.norm.weight": (h,),
           "lm_head.weight": (lay.vocab, h)}
    shapes = {}
    for name in expected_hf_names(lay):
        m = _HF_LAYER.fullmatch(name)
        shapes[name] = per[m.group(2)] if m else out[name]
    return shapes


def mcore_shapes(lay: Layout) -> dict[str, tuple[int, ...]]:
    """Full mcore name -> shape (vocab rows: ``lay.padded_vocab``)."""
    hf = hf_shapes(lay)
    out = {}
    for mc, sources in mcore_sources(lay).items():
        rows = sum(hf[s][0] for s in sources)
        out[mc] = (rows, *hf[sources[0]][1:])
        if mc in ("embedding.word_embeddings.weight", "output_layer.weight"):
            out[mc] = (lay.padded_vocab, lay.hidden)
    return out


_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_MC_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def combine_to_mcore(mcore_name: str, parts: list[Tensor], lay: Layout) -> Tensor:
    """One full mcore tensor from its HF sources (in ``mcore_sources`` order)."""
    if mcore_name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return pad_vocab(parts[0], lay)
    if mcore_name.endswith("linear_qkv.weight") or mcore_name.endswith("linear_qkv.bias"):
        return fuse_qkv(*parts, lay)
    if mcore_name.endswith("linear_fc1.weight"):
        return torch.cat(parts)
    return parts[0]


def hf_to_mcore(named: Iterable[tuple[str, Tensor]], lay: Layout) -> Iterator[tuple[str, Tensor]]:
    """Stream HF tensors into full mcore tensors; q/k/v and gate/up are held only until their
    partners arrive (HF checkpoints keep a layer's tensors together)."""
    target: dict[str, str] = {}
    sources = mcore_sources(lay)
    for mc, hf in sources.items():
        target.update({h: mc for h in hf})
    pending: dict[str, dict[str, Tensor]] = {}
    for name, t in named:
        if name == "lm_head.weight" and lay.tied:
            continue  # some tied checkpoints still store lm_head; mcore shares the embedding
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some exporters save; recomputed from rope_theta
        mc = target.get(name)
        if mc is None:
            m = _HF_LAYER.fullmatch(name)
            if m and int(m.group(1)) >= lay.num_layers:
                raise ConversionError(f"tensor {name!r}: layer {m.group(1)} >= "
                                      f"num_hidden_layers {lay.num_layers}")
            if m and m.group(2).endswith("_proj.bias") and not lay.qkv_bias:
                raise ConversionError(f"tensor {name!r}: the config has no attention bias")
            raise ConversionError(f"unexpected tensor {name!r} in the HF checkpoint")
        group = pending.setdefault(mc, {})
        group[name] = t
        if len(group) == len(sources[mc]):
            del pending[mc]
            yield mc, combine_to_mcore(mc, [group[s] for s in sources[mc]], lay)
    if pending:
        lacking = sorted(s for mc, got in pending.items() for s in sources[mc] if s not in got)
        raise ConversionError(f"incomplete layers: missing {lacking[:8]}")


def mcore_to_hf(named: Iterable[tuple[str, Tensor]], lay: Layout) -> Iterator[tuple[str, Tensor]]:
    """Stream full mcore tensors into HF tensors (vocab unpadded, fused tensors split)."""
    sources = mcore_sources(lay)
    for name, t in named:
        if name.endswith("_extra_state"):
            continue
        if name == "output_layer.weight" and lay.tied:
            continue
        hf = sources.get(name)
        if hf is None:
            raise ConversionError(f"unexpected tensor {name!r} in the Megatron state")
        if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            yield hf[0], t[: lay.vocab]
        elif len(hf) == 3:
            yield from zip(hf, split_qkv(t, lay))
        elif len(hf) == 2:
            gate, up = torch.chunk(t, 2, dim=0)
            yield hf[0], gate.contiguous()
            yield hf[1], up.contiguous()
        else:
            yield hf[0], t


@dataclass(frozen=True)
class Piece:
    """Rows ``[mcore_row, mcore_row + rows)`` of a full mcore tensor are rows
    ``[hf_row, hf_row + rows)`` of one HF tensor (``hf`` None: vocabulary padding, zeros).
    Rows are whole trailing slices (elements for 1-D tensors), so each piece is one
    contiguous byte range on both sides: conversion is a list of range copies."""

    mcore: str
    mcore_row: int
    hf: str | None
    hf_row: int
    rows: int


def pieces(lay: Layout) -> list[Piece]:
    """Every piece of every mcore tensor, in ``mcore_sources`` order."""
    hf = hf_shapes(lay)
    out = []
    for mc, sources in mcore_sources(lay).items():
        if len(sources) == 3:  # QKV: per group [q heads of g, k_g, v_g]
            per_q = lay.heads // lay.groups * lay.head_dim
            sizes = (per_q, lay.head_dim, lay.head_dim)
            row = 0
            for g in range(lay.groups):
                for src, size in zip(sources, sizes):
                    out.append(Piece(mc, row, src, g * size, size))
                    row += size
        elif len(sources) == 2:  # fc1 = [gate; up]
            out.append(Piece(mc, 0, sources[0], 0, lay.ffn))
            out.append(Piece(mc, lay.ffn, sources[1], 0, lay.ffn))
        else:
            rows = hf[sources[0]][0]
            out.append(Piece(mc, 0, sources[0], 0, rows))
            if mc in ("embedding.word_embeddings.weight", "output_layer.weight") and \
                    lay.padded_vocab > rows:
                out.append(Piece(mc, rows, None, 0, lay.padded_vocab - rows))
    return out
