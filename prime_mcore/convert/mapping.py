"""HF <-> Megatron-Core name and layout mapping for Qwen2/Qwen2.5 and Llama (streaming).

Megatron's GPTModel fuses what HF keeps apart:
- ``linear_qkv``: per query group g, the rows [q heads of g | k_g | v_g] (GQA interleaving),
  for the weight [(heads + 2 * groups) * head_dim, hidden] and the optional bias;
- ``linear_fc1``: [gate; up] stacked on dim 0 (SwiGLU);
- the embedding and output layer padded to ``padded_vocab_size`` rows (zeros on the way in,
  dropped on the way out).
The "full" mcore tensors here are the TP=1 layout; the engine shards and gathers them.
Norm names follow the spec in use: the local spec has ``input_layernorm``/``pre_mlp_layernorm``,
the Transformer Engine spec fuses them into ``linear_qkv``/``linear_fc1`` as ``layer_norm_weight``.
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

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, tp: int = 1, te_norms: bool = False,
                    pad_vocab: bool = True) -> Layout:
        """``pad_vocab=False`` gives the engine's canonical tensors (unpadded vocabulary)."""
        head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
        padded = (padded_vocab_size(cfg.vocab_size, cfg.make_vocab_size_divisible_by, tp)
                  if pad_vocab else cfg.vocab_size)
        return cls(cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads,
                   cfg.num_query_groups, head_dim, cfg.vocab_size, padded,
                   cfg.tie_word_embeddings, cfg.qkv_bias, te_norms)


# ---------------------------------------------------------------- configs


def model_config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """Our ModelConfig from an HF ``config.json`` dict; unsupported features raise."""
    archs = hf.get("architectures") or [ARCH_TO_HF.get(hf.get("model_type"), hf.get("model_type"))]
    arch = SUPPORTED_ARCHITECTURES.get(archs[0])
    if arch is None:
        raise ConversionError(f"unsupported architecture {archs[0]!r} in config.json; "
                              f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json hidden_act={hf['hidden_act']!r}: only silu is supported")
    if hf.get("rope_scaling"):
        raise ConversionError(f"config.json rope_scaling={hf['rope_scaling']!r} is not supported")
    bias = arch == "qwen2" or bool(hf.get("attention_bias", False))
    if hf.get("mlp_bias"):
        raise ConversionError("config.json mlp_bias=true is not supported")
    heads = hf["num_attention_heads"]
    rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    head_dim = hf.get("head_dim")
    kv_channels = head_dim if head_dim and head_dim != hf["hidden_size"] // heads else None
    fields = dict(
        arch=arch, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_attention_heads=heads, num_query_groups=hf.get("num_key_value_heads") or heads,
        kv_channels=kv_channels, max_position_embeddings=hf.get("max_position_embeddings", 4096),
        rope_theta=float(rope), norm_eps=hf.get("rms_norm_eps", 1e-6), qkv_bias=bias,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def hf_config_from_model(cfg: ModelConfig, *, base: dict | None = None, dtype: str = "float32") -> dict:
    """An HF ``config.json`` dict for cfg; ``base`` (the original config) keeps token ids etc."""
    out = dict(base or {})
    head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    out.update({
        "architectures": [ARCH_TO_HF[cfg.arch]], "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups, "head_dim": head_dim,
        "max_position_embeddings": cfg.max_position_embeddings, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu", "torch_dtype": dtype,
    })
    if cfg.arch == "llama":
        out["attention_bias"] = cfg.qkv_bias
        out["mlp_bias"] = False
    return out


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


def _norm_names(lay: Layout, i: int) -> tuple[str, str]:
    p = f"decoder.layers.{i}"
    if lay.te_norms:
        return (f"{p}.self_attention.linear_qkv.layer_norm_weight",
                f"{p}.mlp.linear_fc1.layer_norm_weight")
    return f"{p}.input_layernorm.weight", f"{p}.pre_mlp_layernorm.weight"


def expected_hf_names(lay: Layout) -> list[str]:
    """Every tensor an HF checkpoint of this layout must hold."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not lay.tied:
        names.append("lm_head.weight")
    for i in range(lay.num_layers):
        p = f"model.layers.{i}"
        names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight",
                  f"{p}.self_attn.o_proj.weight", f"{p}.mlp.gate_proj.weight",
                  f"{p}.mlp.up_proj.weight", f"{p}.mlp.down_proj.weight"]
        for proj in ("q_proj", "k_proj", "v_proj"):
            names.append(f"{p}.self_attn.{proj}.weight")
            if lay.qkv_bias:
                names.append(f"{p}.self_attn.{proj}.bias")
    return names


def expected_mcore_names(lay: Layout) -> list[str]:
    """Every tensor of the full mcore state (no ``_extra_state``) of this layout."""
    names = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight"]
    if not lay.tied:
        names.append("output_layer.weight")
    for i in range(lay.num_layers):
        p = f"decoder.layers.{i}"
        names += [*_norm_names(lay, i), f"{p}.self_attention.linear_qkv.weight",
                  f"{p}.self_attention.linear_proj.weight", f"{p}.mlp.linear_fc1.weight",
                  f"{p}.mlp.linear_fc2.weight"]
        if lay.qkv_bias:
            names.append(f"{p}.self_attention.linear_qkv.bias")
    return names


_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_MC_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
_HF_DIRECT = {"self_attn.o_proj.weight": "self_attention.linear_proj.weight",
              "mlp.down_proj.weight": "mlp.linear_fc2.weight"}


def hf_to_mcore(named: Iterable[tuple[str, Tensor]], lay: Layout) -> Iterator[tuple[str, Tensor]]:
    """Stream HF tensors into full mcore tensors; q/k/v and gate/up are held only until their
    partners arrive (HF checkpoints keep a layer's tensors together)."""
    pending: dict[str, Tensor] = {}
    for name, t in named:
        if name == "lm_head.weight" and lay.tied:
            continue  # some tied checkpoints still store lm_head; mcore shares the embedding
        if name == "model.embed_tokens.weight":
            yield "embedding.word_embeddings.weight", pad_vocab(t, lay)
        elif name == "lm_head.weight":
            yield "output_layer.weight", pad_vocab(t, lay)
        elif name == "model.norm.weight":
            yield "decoder.final_layernorm.weight", t
        elif (m := _HF_LAYER.fullmatch(name)) is None:
            if name.endswith("rotary_emb.inv_freq"):
                continue  # a buffer some exporters save; recomputed from rope_theta
            raise ConversionError(f"unexpected tensor {name!r} in the HF checkpoint")
        else:
            i, rest = int(m.group(1)), m.group(2)
            if i >= lay.num_layers:
                raise ConversionError(f"tensor {name!r}: layer {i} >= num_hidden_layers "
                                      f"{lay.num_layers}")
            yield from _hf_layer_tensor(i, rest, t, lay, pending)
    if pending:
        raise ConversionError(f"incomplete layers, missing partners of: {sorted(pending)}")


def _hf_layer_tensor(i: int, rest: str, t: Tensor, lay: Layout, pending: dict[str, Tensor]):
    p = f"decoder.layers.{i}"
    norm_in, norm_mlp = _norm_names(lay, i)
    if rest == "input_layernorm.weight":
        yield norm_in, t
    elif rest == "post_attention_layernorm.weight":
        yield norm_mlp, t
    elif rest in _HF_DIRECT:
        yield f"{p}.{_HF_DIRECT[rest]}", t
    elif (m := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)):
        kind = m.group(2)
        if kind == "bias" and not lay.qkv_bias:
            raise ConversionError(f"layer {i} has a {rest} but the config has no QKV bias")
        pending[f"{i}.{m.group(1)}.{kind}"] = t
        parts = [pending.get(f"{i}.{x}.{kind}") for x in "qkv"]
        if all(x is not None for x in parts):
            for x in "qkv":
                del pending[f"{i}.{x}.{kind}"]
            yield f"{p}.self_attention.linear_qkv.{kind}", fuse_qkv(*parts, lay)
    elif rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
        pending[f"{i}.{rest}"] = t
        gate, up = pending.get(f"{i}.mlp.gate_proj.weight"), pending.get(f"{i}.mlp.up_proj.weight")
        if gate is not None and up is not None:
            del pending[f"{i}.mlp.gate_proj.weight"], pending[f"{i}.mlp.up_proj.weight"]
            yield f"{p}.mlp.linear_fc1.weight", torch.cat([gate, up])
    else:
        raise ConversionError(f"unexpected tensor 'model.layers.{i}.{rest}' in the HF checkpoint")


def mcore_to_hf(named: Iterable[tuple[str, Tensor]], lay: Layout) -> Iterator[tuple[str, Tensor]]:
    """Stream full mcore tensors into HF tensors (vocab unpadded, fused tensors split)."""
    inverse_norms = {}
    for i in range(lay.num_layers):
        norm_in, norm_mlp = _norm_names(lay, i)
        inverse_norms[norm_in] = f"model.layers.{i}.input_layernorm.weight"
        inverse_norms[norm_mlp] = f"model.layers.{i}.post_attention_layernorm.weight"
    direct = {v: k for k, v in _HF_DIRECT.items()}
    for name, t in named:
        if name.endswith("_extra_state"):
            continue
        if name == "embedding.word_embeddings.weight":
            yield "model.embed_tokens.weight", t[: lay.vocab]
        elif name == "output_layer.weight":
            if not lay.tied:
                yield "lm_head.weight", t[: lay.vocab]
        elif name == "decoder.final_layernorm.weight":
            yield "model.norm.weight", t
        elif name in inverse_norms:
            yield inverse_norms[name], t
        elif (m := _MC_LAYER.fullmatch(name)) is None:
            raise ConversionError(f"unexpected tensor {name!r} in the Megatron state")
        else:
            i, rest = m.group(1), m.group(2)
            p = f"model.layers.{i}"
            if rest in direct:
                yield f"{p}.{direct[rest]}", t
            elif rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), split_qkv(t, lay)):
                    yield f"{p}.self_attn.{proj}.{kind}", part
            elif rest == "mlp.linear_fc1.weight":
                gate, up = torch.chunk(t, 2, dim=0)
                yield f"{p}.mlp.gate_proj.weight", gate.contiguous()
                yield f"{p}.mlp.up_proj.weight", up.contiguous()
            else:
                raise ConversionError(f"unexpected tensor {name!r} in the Megatron state")
