"""torch.distributed environment from the scheduler: Slurm job steps, submitit, or none.

Every rank of a Slurm job step (``srun``) learns its place from ``SLURM_*`` variables; this module
maps them to the variables ``torch.distributed`` reads (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). The master is the first
host of the step's node list, where rank 0 runs; the port is derived from the job id, so
concurrent jobs on one host (or one shared port space, as on the local test cluster) never
collide. No torch import here: the launcher runs on login nodes without it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

__all__ = [
    "DistEnv",
    "expand_hostlist",
    "expand_tasks_per_node",
    "master_port",
    "dist_env_from_slurm",
    "detect_dist_env",
    "export_dist_env",
]

PORT_BASE = 20000
"""Derived ports fall in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's ephemeral range."""
PORT_SPAN = 10000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: what torch.distributed needs to rendezvous."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int

    def as_environ(self) -> dict[str, str]:
        """The variables torch.distributed's ``env://`` init method (and torchrun) use."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "NODE_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def _split_top_level(spec: str) -> list[str]:
    """Split on commas that are not inside brackets: "a[1,3],b" -> ["a[1,3]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {spec!r}")
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in host list {spec!r}")
    parts.append(spec[start:])
    return [p for p in parts if p]


def _expand_range(body: str, spec: str) -> list[str]:
    """ "01-03,7" -> ["01", "02", "03", "7"]; a range keeps the zero padding of its start."""
    out = []
    for item in body.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in host list {spec!r}")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in host list {spec!r}")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
    return out


def _expand_one(item: str, spec: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    tails = _expand_one(tail, spec)
    return [head + n + t for n in _expand_range(match.group(1), spec) for t in tails]


def expand_hostlist(spec: str) -> list[str]:
    """Expand a Slurm host list, as ``scontrol show hostnames`` does.

    ``"gpu-a[01-03],gpu-b7"`` -> ``["gpu-a01", "gpu-a02", "gpu-a03", "gpu-b7"]``; several
    bracket groups in one name expand as a product (``"r[1-2]n[1-2]"`` -> r1n1 r1n2 r2n1 r2n2).
    """
    hosts = [h for item in _split_top_level(spec.strip()) for h in _expand_one(item, spec)]
    if not hosts:
        raise ValueError(f"empty host list {spec!r}")
    return hosts


def expand_tasks_per_node(spec: str) -> list[int]:
    """Expand ``SLURM_TASKS_PER_NODE`` syntax: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    out = []
    for item in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match is None:
            raise ValueError(f"bad tasks-per-node spec {spec!r}")
        out.extend([int(match.group(1))] * int(match.group(2) or 1))
    return out


def master_port(job_id: str | int) -> int:
    """A rendezvous port derived from the job id: identical on every rank, distinct per job."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def dist_env_from_slurm(environ: Mapping[str, str]) -> DistEnv:
    """Map the variables ``srun`` sets for each task of a job step to a :class:`DistEnv`."""
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
    node_rank = int(environ["SLURM_NODEID"])
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ["SLURM_TASKS_PER_NODE"]
    world = environ.get("SLURM_STEP_NUM_TASKS") or environ["SLURM_NTASKS"]
    return DistEnv(
        rank=int(environ["SLURM_PROCID"]),
        world_size=int(world),
        local_rank=int(environ["SLURM_LOCALID"]),
        local_world_size=expand_tasks_per_node(per_node)[node_rank],
        node_rank=node_rank,
        master_addr=expand_hostlist(nodelist)[0],
        master_port=master_port(environ["SLURM_JOB_ID"]),
    )


def _dist_env_from_submitit_local(environ: Mapping[str, str]) -> DistEnv:
    """submitit's local executor: all tasks on this host, job id = the controller's pid."""
    world = int(environ["SUBMITIT_LOCAL_NTASKS"])
    rank = int(environ["SUBMITIT_LOCAL_GLOBALID"])
    return DistEnv(rank=rank, world_size=world, local_rank=int(environ["SUBMITIT_LOCAL_LOCALID"]),
                   local_world_size=world, node_rank=0, master_addr="127.0.0.1",
                   master_port=master_port(environ["SUBMITIT_LOCAL_JOB_ID"]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def detect_dist_env(environ: Mapping[str, str]) -> DistEnv | None:
    """The distributed env for this process, or None when torchrun already exported it.

    Order: torchrun (``TORCHELASTIC_RUN_ID``) wins; then a Slurm job step (``SLURM_STEP_ID``:
    set under ``srun``, not in the batch script itself); then submitit's local executor; else a
    single process (also what a bare ``python`` inside a batch script or ``salloc`` shell is).
    """
    if "TORCHELASTIC_RUN_ID" in environ:
        return None
    if "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ:
        return dist_env_from_slurm(environ)
    if "SUBMITIT_LOCAL_GLOBALID" in environ:
        return _dist_env_from_submitit_local(environ)
    return DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0,
                   master_addr="127.0.0.1", master_port=_free_port())


def export_dist_env(environ: MutableMapping[str, str] | None = None) -> DistEnv:
    """Export the torch.distributed variables for this process and return them.

    Values from the scheduler replace inherited ones: ``sbatch`` copies the submitting
    shell's environment into the job, and a stale ``MASTER_ADDR=localhost`` from there would
    make every node rendezvous with itself.
    """
    environ = os.environ if environ is None else environ
    dist = detect_dist_env(environ)
    if dist is None:  # torchrun: read back what it set
        per_node = int(environ["LOCAL_WORLD_SIZE"])
        return DistEnv(rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                       local_rank=int(environ["LOCAL_RANK"]), local_world_size=per_node,
                       node_rank=int(environ.get("GROUP_RANK", int(environ["RANK"]) // per_node)),
                       master_addr=environ["MASTER_ADDR"], master_port=int(environ["MASTER_PORT"]))
    environ.update(dist.as_environ())
    return dist
