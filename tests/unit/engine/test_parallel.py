"""Rendezvous from torchrun / Slurm / nothing, and the idempotent world-1 setup."""

from __future__ import annotations

import pytest

from prime_mcore.config import ParallelConfig
from prime_mcore.engine import init_distributed
from prime_mcore.engine.parallel import _env_rendezvous, first_slurm_host

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")


@pytest.fixture
def clean_env(monkeypatch):
    for name in _LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("nodelist", "host"), [
    ("node7", "node7"),
    ("gpu-[003-005,9],cpu1", "gpu-003"),
    ("a1,a2", "a1"),
    ("rack[2,4]", "rack2"),
])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_torchrun_env_wins(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setenv("SLURM_PROCID", "0")
    assert _env_rendezvous() == (3, 4, 1, "env://")


def test_slurm_env(clean_env):
    for name, value in {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                        "SLURM_JOB_NODELIST": "gpu-[12-13]", "SLURM_JOB_ID": "123456"}.items():
        clean_env.setenv(name, value)
    assert _env_rendezvous() == (5, 8, 1, "tcp://gpu-12:23456")
    clean_env.setenv("MASTER_ADDR", "head")
    clean_env.setenv("MASTER_PORT", "29500")
    assert _env_rendezvous() == (5, 8, 1, "tcp://head:29500")


def test_no_launcher_means_a_local_world_of_one(clean_env):
    rank, world, local_rank, method = _env_rendezvous()
    assert (rank, world, local_rank) == (0, 1, 0) and method.startswith("tcp://127.0.0.1:")


def test_init_is_idempotent_and_checks_the_layout():
    info = init_distributed(ParallelConfig(), seed=0)
    assert init_distributed(ParallelConfig(), seed=1) == info
    assert (info.world_size, info.tp, info.pp, info.dp, info.is_last_stage) == (1, 1, 1, 1, True)
    with pytest.raises(ValueError, match="does not divide the world size 1"):
        init_distributed(ParallelConfig(tp=2), seed=0)


def test_groups_are_rebuilt_when_another_library_replaced_the_default_group():
    # vLLM's in-process engine destroys the default process group when it shuts down; the
    # next init must not hand out Megatron groups of the dead one.
    import torch.distributed as dist

    init_distributed(ParallelConfig(), seed=0)
    dist.destroy_process_group()
    assert not dist.is_initialized()
    info = init_distributed(ParallelConfig(), seed=0)
    assert (info.world_size, info.tp, info.pp, info.dp, info.pp_rank) == (1, 1, 1, 1, 0)
