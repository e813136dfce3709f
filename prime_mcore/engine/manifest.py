"""Checkpoint manifest: every file with its size and CRC32, checked before a load.

``prime_mcore.json`` sits at the top of each engine checkpoint. It is written last (after all
ranks finished writing) and before the atomic rename, so a checkpoint directory without it
is an interrupted save. CRCs are computed and verified in parallel: file i is read by rank
i % world_size, so the cost per rank is the checkpoint size / world size.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch.distributed as dist

__all__ = ["CheckpointError", "MANIFEST", "write_manifest", "read_manifest", "verify_files"]

MANIFEST = "prime_mcore.json"
FORMAT = 1
_CHUNK = 1 << 24


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or incompatible; the message names the file."""


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def _gather_dicts(local: dict[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def write_manifest(root: Path, info: dict[str, Any]) -> None:
    """Collective: checksum every file under ``root`` and write the manifest (rank 0)."""
    files = _all_files(root)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {name: {"size": os.path.getsize(root / name), "crc32": _crc32(root / name)}
            for i, name in enumerate(files) if i % world == rank}
    entries = _gather_dicts(mine)
    if rank == 0:
        body = {"format": FORMAT, **info, "files": {k: entries[k] for k in files}}
        (root / MANIFEST).write_text(json.dumps(body, indent=1, sort_keys=True))


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a checkpoint; CheckpointError when absent or unreadable."""
    path = root / MANIFEST
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {root} is not a prime_mcore checkpoint or its "
                              "save was interrupted")
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from err
    if body.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported format {body.get('format')!r} (want {FORMAT})")
    return body


def _check_one(root: Path, name: str, expected: dict[str, int]) -> str | None:
    path = root / name
    if not path.is_file():
        return f"{path} is missing"
    size = os.path.getsize(path)
    if size != expected["size"]:
        return f"{path} is truncated or corrupt: {size} bytes, expected {expected['size']}"
    if _crc32(path) != expected["crc32"]:
        return f"{path} is corrupt: CRC32 mismatch"
    return None


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Collective: every file of the manifest exists with its size and CRC; raises the same
    CheckpointError (naming the first bad file) on every rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    names = sorted(manifest["files"])
    mine = {}
    for i, name in enumerate(names):
        if i % world == rank:
            problem = _check_one(root, name, manifest["files"][name])
            if problem is not None:
                mine[name] = problem
    problems = _gather_dicts(mine)
    if problems:
        first = problems[min(problems)]
        more = f" (and {len(problems) - 1} more bad files)" if len(problems) > 1 else ""
        raise CheckpointError(first + more)
