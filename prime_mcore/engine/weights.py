"""Full (unsharded) weights in and out of a TP x PP sharded model, by canonical mcore names.

Canonical names are those of the local (pure torch) spec with global layer numbers and the
unpadded vocabulary, identical for every layout and for the Transformer Engine spec:

- ``embedding.word_embeddings.weight`` [V, H]; ``output_layer.weight`` [V, H] (untied only)
- ``decoder.layers.{i}.input_layernorm.weight`` [H], ``...pre_mlp_layernorm.weight`` [H]
- ``decoder.layers.{i}.self_attention.linear_qkv.weight`` [(n_q + 2 n_kv) d, H] (and ``.bias``):
  rows grouped per KV group g as [q heads of g, k_g, v_g] (Megatron's layout)
- ``decoder.layers.{i}.self_attention.linear_proj.weight`` [H, n_q d]
- ``decoder.layers.{i}.mlp.linear_fc1.weight`` [2F, H] = [gate; up]; ``...linear_fc2.weight``
- ``decoder.final_layernorm.weight`` [H]

Both directions are collective over the whole world: every rank must consume/feed the full
stream in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu
from megatron.core.models.gpt import GPTModel

__all__ = ["iter_full_weights", "load_full_weights"]

# Transformer Engine fuses the pre-norms into the following linear layer.
_TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
_LOCAL_TO_TE = {v: k for k, v in _TE_TO_LOCAL.items()}
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_VOCAB = ("embedding.word_embeddings.weight", "output_layer.weight")


def _local_params(chunks: list[GPTModel], tied: bool) -> dict[str, torch.nn.Parameter]:
    """Canonical global name -> this rank's parameter (shard)."""
    out: dict[str, torch.nn.Parameter] = {}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            if tied and name == "output_layer.weight":
                continue  # a copy of the embedding on the last stage (PP > 1)
            match = _LAYER.match(name)
            if match:
                layer = chunk.decoder.layers[int(match.group(1))]
                suffix = _TE_TO_LOCAL.get(match.group(2), match.group(2))
                name = f"decoder.layers.{layer.layer_number - 1}.{suffix}"
            out[name] = param
    return out


def _is_glu(name: str) -> bool:
    return name.endswith("mlp.linear_fc1.weight")


def _is_tp_sharded(param: torch.nn.Parameter) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def _full_shape(name: str, param: torch.nn.Parameter, vocab_size: int) -> tuple[int, ...]:
    shape = list(param.shape)
    if _is_tp_sharded(param):
        shape[param.partition_dim] *= mpu.get_tensor_model_parallel_world_size()
    if name in _VOCAB:
        shape[0] = vocab_size
    return tuple(shape)


def _gather_tp(name: str, param: torch.nn.Parameter, vocab_size: int) -> torch.Tensor:
    """The full tensor of one parameter (a fresh tensor, never a view of the parameter)."""
    shard = param.detach()
    tp_group = mpu.get_tensor_model_parallel_group()
    if not _is_tp_sharded(param) or dist.get_world_size(tp_group) == 1:
        full = shard.clone()
    else:
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(tp_group))]
        dist.all_gather(parts, shard.contiguous(), group=tp_group)
        dim = param.partition_dim
        if _is_glu(name):  # each shard is [gate_r; up_r]: regroup as [gate; up]
            halves = [part.chunk(2, dim=dim) for part in parts]
            parts = [h[0] for h in halves] + [h[1] for h in halves]
        full = torch.cat(parts, dim=dim)
    return full[:vocab_size].contiguous() if name in _VOCAB else full


def iter_full_weights(chunks: list[GPTModel], *, tied: bool,
                      vocab_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(canonical name, full tensor)`` for the whole model on every rank.

    Pipeline stages take turns: stage s gathers its TP shards and broadcasts each full tensor
    to the other stages of its pipeline group, so memory holds one full tensor at a time.
    """
    local = _local_params(chunks, tied)
    device = next(iter(local.values())).device
    pp_group = mpu.get_pipeline_model_parallel_group()
    if dist.get_world_size(pp_group) == 1:
        for name, param in local.items():
            yield name, _gather_tp(name, param, vocab_size)
        return
    my_stage = mpu.get_pipeline_model_parallel_rank()
    for stage, src in enumerate(dist.get_process_group_ranks(pp_group)):
        mine = [(n, _full_shape(n, p, vocab_size), p.dtype) for n, p in local.items()]
        meta = [mine if stage == my_stage else None]
        dist.broadcast_object_list(meta, src=src, group=pp_group)
        for name, shape, dtype in meta[0]:
            if stage == my_stage:
                full = _gather_tp(name, local[name], vocab_size)
            else:
                full = torch.empty(shape, dtype=dtype, device=device)
            dist.broadcast(full, src=src, group=pp_group)
            yield name, full


def _shard(name: str, full: torch.Tensor, param: torch.nn.Parameter,
           padded_vocab: int) -> torch.Tensor:
    """This rank's TP shard of a full tensor (inverse of ``_gather_tp``)."""
    if name in _VOCAB and full.shape[0] < padded_vocab:
        pad = full.new_zeros((padded_vocab - full.shape[0], *full.shape[1:]))
        full = torch.cat([full, pad])
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp, rank, dim = (mpu.get_tensor_model_parallel_world_size(),
                     mpu.get_tensor_model_parallel_rank(), param.partition_dim)
    if _is_glu(name):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp, dim=dim)[rank], up.chunk(tp, dim=dim)[rank]], dim=dim)
    return full.chunk(tp, dim=dim)[rank]


def load_full_weights(chunks: list[GPTModel], named: Iterable[tuple[str, torch.Tensor]], *,
                      tied: bool, padded_vocab: int) -> None:
    """Copy full tensors (canonical names, any layout) into this rank's shards.

    Every rank must receive the same full stream. Raises ValueError for unknown names, shape
    mismatches and parameters of the model that the stream did not set.
    """
    local = _local_params(chunks, tied)
    # With tied weights and PP > 1 the last stage holds a copy of the embedding.
    tied_copy = [p for c in chunks for n, p in c.named_parameters()
                 if tied and n == "output_layer.weight"]
    names_everywhere: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(names_everywhere, list(local))
    known = {n for names in names_everywhere for n in names}
    seen: set[str] = set()
    with torch.no_grad():
        for name, full in named:
            if name not in known:
                raise ValueError(f"load_state: unknown parameter {name!r}")
            seen.add(name)
            targets = [local[name]] if name in local else []
            if name == "embedding.word_embeddings.weight":
                targets += tied_copy
            for param in targets:
                shard = _shard(name, full, param, padded_vocab)
                if shard.shape != param.shape:
                    raise ValueError(f"load_state: {name} has shape {tuple(full.shape)}, which "
                                     f"shards to {tuple(shard.shape)} != {tuple(param.shape)}")
                param.copy_(shard)
    missing = sorted(known - seen)
    if missing:
        raise ValueError(f"load_state: {len(missing)} parameters were not given: {missing[:8]}")
