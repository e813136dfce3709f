"""SLURM_* (and submitit, torchrun) -> torch.distributed environment, without a cluster."""

from __future__ import annotations

import pytest

from prime_mcore.launch.env import (
    PORT_BASE,
    PORT_SPAN,
    DistEnv,
    detect_dist_env,
    dist_env_from_slurm,
    expand_hostlist,
    expand_tasks_per_node,
    export_dist_env,
    master_port,
)


@pytest.mark.parametrize(("spec", "hosts"), [
    ("node1", ["node1"]),
    ("node[1-2]", ["node1", "node2"]),
    ("gpu-a[01-03],gpu-b7", ["gpu-a01", "gpu-a02", "gpu-a03", "gpu-b7"]),
    ("n[1,3-4,10]", ["n1", "n3", "n4", "n10"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),  # padding follows the range start
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("a[1-2],b,c[5]", ["a1", "a2", "b", "c5"]),
])
def test_expand_hostlist(spec: str, hosts: list[str]) -> None:
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("spec", ["node[1-2", "node1-2]", "n[a-b]", "n[3-1]", ""])
def test_expand_hostlist_rejects_malformed_lists(spec: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(spec)


def test_expand_tasks_per_node() -> None:
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("8") == [8]
    with pytest.raises(ValueError):
        expand_tasks_per_node("2(3)")


def test_master_port_is_derived_from_the_job_id() -> None:
    assert master_port("4242") == master_port(4242) == PORT_BASE + 4242
    assert master_port(123) != master_port(124)
    assert all(PORT_BASE <= master_port(j) < PORT_BASE + PORT_SPAN for j in (0, 9999, 10**7 + 3))


def _step_env(procid: int, nodeid: int, localid: int) -> dict[str, str]:
    """What srun sets for one task of `srun -N3 -n5` (2 + 2 + 1 tasks) in job 731."""
    return {"SLURM_JOB_ID": "731", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(localid), "SLURM_NODEID": str(nodeid),
            "SLURM_NTASKS": "5", "SLURM_STEP_NUM_TASKS": "5",
            "SLURM_JOB_NODELIST": "gpu-a[01-03],gpu-b7", "SLURM_STEP_NODELIST": "gpu-a[01-03]",
            "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1"}


def test_dist_env_from_slurm_step() -> None:
    env = dist_env_from_slurm(_step_env(procid=4, nodeid=2, localid=0))
    assert env == DistEnv(rank=4, world_size=5, local_rank=0, local_world_size=1, node_rank=2,
                          master_addr="gpu-a01", master_port=PORT_BASE + 731)
    assert env.as_environ() == {"RANK": "4", "WORLD_SIZE": "5", "LOCAL_RANK": "0",
                                "LOCAL_WORLD_SIZE": "1", "NODE_RANK": "2",
                                "MASTER_ADDR": "gpu-a01", "MASTER_PORT": str(PORT_BASE + 731)}


def test_every_rank_agrees_on_the_master() -> None:
    envs = [dist_env_from_slurm(_step_env(p, n, lo))
            for p, n, lo in ((0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1), (4, 2, 0))]
    assert {(e.master_addr, e.master_port) for e in envs} == {("gpu-a01", PORT_BASE + 731)}
    assert [e.local_world_size for e in envs] == [2, 2, 2, 2, 1]


def test_the_step_node_list_wins_over_the_job_node_list() -> None:
    env = _step_env(0, 0, 0) | {"SLURM_STEP_NODELIST": "gpu-b7"}
    assert dist_env_from_slurm(env).master_addr == "gpu-b7"


def test_detect_torchrun_leaves_the_env_alone() -> None:
    assert detect_dist_env(_step_env(0, 0, 0) | {"TORCHELASTIC_RUN_ID": "x"}) is None


def test_batch_script_without_srun_is_a_single_process() -> None:
    batch = {k: v for k, v in _step_env(0, 0, 0).items() if not k.startswith("SLURM_STEP")}
    env = detect_dist_env(batch)
    assert env is not None and (env.rank, env.world_size) == (0, 1)


def test_submitit_local_tasks() -> None:
    env = detect_dist_env({"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                           "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "555"})
    assert env == DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2, node_rank=0,
                          master_addr="127.0.0.1", master_port=PORT_BASE + 555)


def test_export_replaces_stale_inherited_values() -> None:
    # sbatch copies the submitting shell's environment into the job
    environ = _step_env(2, 1, 0) | {"MASTER_ADDR": "localhost", "RANK": "0"}
    dist = export_dist_env(environ)
    assert environ["MASTER_ADDR"] == "gpu-a01" and environ["RANK"] == "2"
    assert dist.rank == 2


def test_export_reads_back_torchrun() -> None:
    environ = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
               "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1", "MASTER_ADDR": "h0",
               "MASTER_PORT": "29500"}
    before = dict(environ)
    assert export_dist_env(environ) == DistEnv(3, 4, 1, 2, 1, "h0", 29500)
    assert environ == before
