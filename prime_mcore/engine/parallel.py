"""Process setup: torch.distributed from torchrun/Slurm/nothing, then Megatron's TP x PP x DP.

Rank and world size come from, in order: torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``), Slurm (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``,
``MASTER_ADDR`` = first host of ``SLURM_JOB_NODELIST`` unless set, ``MASTER_PORT`` derived
from the job id unless set), or a world of 1 in this process on a free local port.
"""

from __future__ import annotations

import os
import random
import re
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu
from megatron.core import tensor_parallel

from prime_mcore.config import ParallelConfig

__all__ = ["ParallelInfo", "init_distributed", "destroy_distributed", "parallel_info",
           "first_slurm_host"]


@dataclass(frozen=True, kw_only=True)
class ParallelInfo:
    """Where this process sits in the world and in the TP x PP x DP grid."""

    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    vpp: int | None
    tp_rank: int
    pp_rank: int
    dp_rank: int
    backend: str
    device: torch.device

    @property
    def is_last_stage(self) -> bool:
        """This rank holds the output layer (last pipeline stage)."""
        return self.pp_rank == self.pp - 1


_state: dict[str, object] = {}


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm nodelist: ``"gpu-[003-005,9],cpu1"`` -> ``"gpu-003"``."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, bracket = head.group(1), head.group(3)
    if bracket is None:
        return prefix
    return prefix + bracket.split(",")[0].split("-")[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_rendezvous() -> tuple[int, int, int, str]:
    """(rank, world_size, local_rank, init_method) from torchrun, Slurm or a local world of 1."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "env://"
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        addr = env.get("MASTER_ADDR") or first_slurm_host(env["SLURM_JOB_NODELIST"])
        # Every task must agree on the port without talking first: derive it from the job id.
        port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return (int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                int(env.get("SLURM_LOCALID", 0)), f"tcp://{addr}:{port}")
    return 0, 1, 0, f"tcp://127.0.0.1:{_free_port()}"


def _backend(requested: str) -> str:
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if requested == "nccl" and not torch.cuda.is_available():
        raise ValueError("parallel.backend='nccl' needs CUDA; use 'gloo' or 'auto' on CPU")
    return requested


def _layout(parallel: ParallelConfig) -> tuple[int, int, int | None]:
    return parallel.tp, parallel.pp, parallel.vpp


def init_distributed(parallel: ParallelConfig, *, seed: int) -> ParallelInfo:
    """Join (or create) the process group and build Megatron's TP x PP x DP groups.

    Idempotent: a second call with the same layout only reseeds; a different layout tears the
    model-parallel groups down and rebuilds them in the same processes.

    Args:
        parallel: TP/PP/VPP sizes and the backend; DP is ``world_size // (tp * pp)``.
        seed: seeds python, numpy, torch and Megatron's model-parallel RNG tracker (TP ranks get
            distinct streams for dropout, as in Megatron-LM).
    """
    if not dist.is_initialized():
        rank, world, local_rank, init_method = _env_rendezvous()
        backend = _backend(parallel.backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
        _state.update(local_rank=local_rank, backend=backend)
    # The default group may have been created by someone else (e.g. a launcher or vLLM).
    _state.setdefault("local_rank", int(os.environ.get("LOCAL_RANK", 0)))
    _state.setdefault("backend", dist.get_backend())
    world = dist.get_world_size()
    if world % (parallel.tp * parallel.pp):
        raise ValueError(f"parallel.tp * parallel.pp = {parallel.tp} * {parallel.pp} does not "
                         f"divide the world size {world}")
    # Megatron's groups hang off the default group: if that was replaced since they were built
    # (another library, e.g. an in-process vLLM, destroyed and re-created it), rebuild them.
    default_group = dist.distributed_c10d._get_default_group()
    if _state.get("default_group") is not default_group:
        _state.pop("layout", None)
        _state["default_group"] = default_group
    if _state.get("layout") != _layout(parallel):
        if mpu.model_parallel_is_initialized():
            mpu.destroy_model_parallel()
        mpu.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp,
            pipeline_model_parallel_size=parallel.pp,
            virtual_pipeline_model_parallel_size=parallel.vpp,
        )
        _state["layout"] = _layout(parallel)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return parallel_info()


def parallel_info() -> ParallelInfo:
    """The current layout; ``init_distributed`` must have run."""
    if "layout" not in _state:
        raise RuntimeError("call prime_mcore.engine.init_distributed(...) first")
    local_rank = int(_state["local_rank"])  # type: ignore[arg-type]
    return ParallelInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        tp=mpu.get_tensor_model_parallel_world_size(),
        pp=mpu.get_pipeline_model_parallel_world_size(),
        dp=mpu.get_data_parallel_world_size(),
        vpp=mpu.get_virtual_pipeline_model_parallel_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
        backend=str(_state["backend"]),
        device=torch.device("cuda", local_rank) if torch.cuda.is_available()
        else torch.device("cpu"),
    )


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group (safe to call twice)."""
    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    _state.clear()
