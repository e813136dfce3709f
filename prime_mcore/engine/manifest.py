"""Checkpoint manifest: every file with its size and CRC32, checked before a load.

``prime_mcore.json`` sits at the top of each engine checkpoint. It is written last (after all
ranks finished writing) and before the atomic rename, so a checkpoint directory without it
is an interrupted save. CRCs are computed and verified in parallel: file i is read by rank
i % world_size, so the cost per rank is the checkpoint size / world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from prime_mcore import manifest as fmt
from prime_mcore.manifest import FORMAT, MANIFEST

__all__ = ["CheckpointError", "MANIFEST", "FORMAT", "write_manifest", "read_manifest",
           "verify_files"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or incompatible; the message names the file."""


def _gather_dicts(local: dict[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def write_manifest(root: Path, info: dict[str, Any]) -> None:
    """Collective: checksum every file under ``root`` and write the manifest (rank 0)."""
    files = fmt.list_files(root)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {name: fmt.entry(root / name) for i, name in enumerate(files) if i % world == rank}
    entries = _gather_dicts(mine)
    if rank == 0:
        fmt.write_body(root, info, {k: entries[k] for k in files})


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a checkpoint; CheckpointError when absent or unreadable."""
    return fmt.parse(root, CheckpointError)


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Collective: every file of the manifest exists with its size and CRC; raises the same
    CheckpointError (naming the first bad file) on every rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    names = sorted(manifest["files"])
    mine = {}
    for i, name in enumerate(names):
        if i % world == rank:
            problem = fmt.check_file(root, name, manifest["files"][name])
            if problem is not None:
                mine[name] = problem
    problems = _gather_dicts(mine)
    if problems:
        first = problems[min(problems)]
        more = f" (and {len(problems) - 1} more bad files)" if len(problems) > 1 else ""
        raise CheckpointError(first + more)
