"""Distributed checkpoints of one engine: model, optimizer, LR schedule, RNG, step, user data.

Layout of ``<dir>/``::

    dist/              Megatron dist_checkpointing (torch_dist): model + optimizer shards,
                       common.pt (step, user_data, LR-schedule position), metadata
    rng/rank_XXXXX.pt  python / numpy / torch (CPU, CUDA) / Megatron tracker RNG per rank
    prime_mcore.json   manifest: layout, vocab, files with sizes and CRC32 (written last)

Model and optimizer shards are stored by global tensor names, so a checkpoint written at one
TP x PP x DP layout loads at any other one (the distributed optimizer uses the
``fully_reshardable`` format). RNG states are restored only when the layout is unchanged
(they are per rank). Saves are atomic: everything is written to ``.<name>.tmp`` next to the
target, which is renamed into place by rank 0 after a barrier.

Saves are synchronous. Megatron's writer would otherwise report results through a
spawn-context multiprocessing Manager (a new interpreter that re-imports ``__main__``: seconds
per process, and an ``if __name__ == "__main__":`` guard in every script); ``_sync_results``
gives it a plain in-process queue instead.
"""

from __future__ import annotations

import queue
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core import parallel_state as mpu
from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelSaveStrategyWrapper,
)
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from prime_mcore.engine.manifest import CheckpointError, read_manifest, verify_files, write_manifest
from prime_mcore.engine.optimizer import (
    after_optimizer_load,
    inner_optimizers,
    prepare_optimizer_state,
)
from prime_mcore.engine.parallel import ParallelInfo

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_dir", "CheckpointError"]

# Optimizer shards keyed by model tensor (TP/PP/DP-reshardable), not by DP buffer layout.
_OPTIM_META = {"distrib_optim_sharding_type": "fully_reshardable"}


def _model_sharded(chunks: list[GPTModel]) -> dict[str, Any]:
    return {f"chunk{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def _layout(info: ParallelInfo) -> dict[str, Any]:
    return {"tp": info.tp, "pp": info.pp, "vpp": info.vpp, "dp": info.dp,
            "world_size": info.world_size}


def _is_distributed(optimizer: MegatronOptimizer | None) -> bool:
    return optimizer is not None and any(
        isinstance(opt, DistributedOptimizer) for opt in inner_optimizers(optimizer))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _sync_results() -> None:
    # The writer caches its results queue in this module global and only creates the Manager
    # when it is None. In a synchronous save the queue is filled and drained by this process
    # (the forked file writers report through their own queue), so a plain Queue is exact.
    if getattr(filesystem_async, "_results_queue", "absent") is None:
        filesystem_async._results_queue = queue.Queue()


def atomic_dir(target: Path) -> Path:
    """Collective: a fresh empty temp directory next to ``target`` (see ``publish``)."""
    tmp = target.parent / f".{target.name}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    return tmp


def publish(tmp: Path, target: Path) -> None:
    """Collective: rank 0 renames the finished ``tmp`` to ``target`` (replacing it)."""
    dist.barrier()
    if dist.get_rank() == 0:
        old = target.parent / f".{target.name}.old"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def save_checkpoint(path: Path, *, info: ParallelInfo, chunks: list[GPTModel],
                    optimizer: MegatronOptimizer | None,
                    scheduler: OptimizerParamScheduler | None, step: int,
                    user_data: dict[str, Any], model_info: dict[str, Any]) -> None:
    """Collective save (see the module docstring)."""
    tmp = atomic_dir(path)
    model_sd = _model_sharded(chunks)
    state: dict[str, Any] = {"model": model_sd, "step": step, "user_data": user_data}
    if optimizer is not None:
        prepare_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, metadata=_OPTIM_META)
        # Only the position in the schedule: its shape comes from the (current) OptimConfig.
        state["scheduler_steps"] = scheduler.num_steps if scheduler is not None else 0
    (tmp / "dist").mkdir(exist_ok=True)
    _sync_results()
    # DP replicas hold the same shards: each writes a part (Megatron-LM's fully parallel save).
    strategy = FullyParallelSaveStrategyWrapper(
        get_default_save_sharded_strategy(),
        mpu.get_data_parallel_group(with_context_parallel=True), do_cache_distribution=False)
    dist_checkpointing.save(state, str(tmp / "dist"), sharded_strategy=strategy,
                            content_metadata=_OPTIM_META)
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{info.rank:05d}.pt")
    dist.barrier()
    write_manifest(tmp, {"step": step, "layout": _layout(info),
                         "has_optimizer": optimizer is not None,
                         "distributed_optimizer": _is_distributed(optimizer), **model_info})
    publish(tmp, path)


def _check_compatible(path: Path, manifest: dict[str, Any], model_info: dict[str, Any]) -> None:
    for key, value in model_info.items():
        if manifest.get(key) != value:
            raise CheckpointError(
                f"{path / 'prime_mcore.json'}: {key}={manifest.get(key)!r} in the checkpoint, but "
                f"this model has {key}={value!r}"
                + (" (the padded vocab depends on tp; choose model.make_vocab_size_divisible_by "
                   "so both layouts pad alike)" if key == "padded_vocab" else ""))


def load_checkpoint(path: Path, *, info: ParallelInfo, chunks: list[GPTModel],
                    optimizer: MegatronOptimizer | None,
                    scheduler: OptimizerParamScheduler | None, weights_only: bool,
                    model_info: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Collective load; returns (step, user_data). ``weights_only`` (or a checkpoint without
    optimizer state) keeps this engine's optimizer/schedule and refreshes its main params."""
    manifest = read_manifest(path)
    verify_files(path, manifest)
    _check_compatible(path, manifest, model_info)
    with_optim = optimizer is not None and manifest["has_optimizer"] and not weights_only
    if with_optim and manifest["distributed_optimizer"] != _is_distributed(optimizer):
        raise CheckpointError(
            f"{path / 'prime_mcore.json'}: saved with distributed_optimizer="
            f"{manifest['distributed_optimizer']}, this engine uses "
            f"{_is_distributed(optimizer)}; their states do not convert (load weights_only=True "
            "or match parallel.use_distributed_optimizer)")
    model_sd = _model_sharded(chunks)
    request: dict[str, Any] = {"model": model_sd}
    if with_optim:
        assert optimizer is not None
        prepare_optimizer_state(optimizer)
        request["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True,
                                                            metadata=_OPTIM_META)
    try:
        loaded = dist_checkpointing.load(request, str(path / "dist"))
    except Exception as err:  # mcore raises several types; the file-level checks passed
        raise CheckpointError(f"cannot load {path / 'dist'}: {type(err).__name__}: {err}") from err
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded["model"][f"chunk{i}"], strict=True)
    if with_optim:
        assert optimizer is not None
        with torch.no_grad():  # fp32 main params may be views of the model params
            optimizer.load_state_dict(loaded["optimizer"])
        after_optimizer_load(optimizer)
        if scheduler is not None:
            # Not scheduler.load_state_dict: it adds the saved count to the current one.
            scheduler.num_steps = int(loaded["scheduler_steps"])
            scheduler.step(0)
    elif optimizer is not None:
        optimizer.reload_model_params()  # main (fp32) params follow the new model params
    if not weights_only and manifest["layout"] == _layout(info):
        rng = path / "rng" / f"rank_{info.rank:05d}.pt"
        _set_rng_state(torch.load(rng, weights_only=False))
    return int(loaded["step"]), dict(loaded["user_data"])
