"""The checkpoint manifest format, shared by the engine (collective save/load) and the
converters (single process): ``prime_mcore.json`` lists every file of a checkpoint with its
size and CRC32 and is written last, so a directory without it is an interrupted save.

Pure Python: ``engine/manifest.py`` adds the collective (rank-parallel) checks on top, and
``convert/dist_io.py`` uses it without importing torch.distributed or Megatron.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "FORMAT", "crc32", "list_files", "entry", "write_body", "parse",
           "check_file"]

MANIFEST = "prime_mcore.json"
FORMAT = 1
_CHUNK = 1 << 24


def crc32(path: Path) -> int:
    """CRC32 of a file, read in 16 MiB blocks."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def list_files(root: Path) -> list[str]:
    """Every file under ``root`` (relative paths, sorted), the manifest excluded."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def entry(path: Path, known_crc: int | None = None) -> dict[str, int]:
    """A manifest entry {"size", "crc32"}; ``known_crc`` skips reading the file again."""
    return {"size": os.path.getsize(path), "crc32": crc32(path) if known_crc is None else known_crc}


def write_body(root: Path, info: dict[str, Any], entries: dict[str, dict[str, int]]) -> None:
    """Write the manifest: ``info`` plus ``entries`` (name -> {"size", "crc32"})."""
    body = {"format": FORMAT, **info, "files": entries}
    (root / MANIFEST).write_text(json.dumps(body, indent=1, sort_keys=True))


def parse(root: Path, error: type[Exception]) -> dict[str, Any]:
    """The manifest of the checkpoint at ``root``; ``error`` (naming the file) when the
    directory or the manifest is missing, unreadable or of another format."""
    path = root / MANIFEST
    if not root.is_dir():
        raise error(f"checkpoint directory {root} does not exist")
    if not path.is_file():
        raise error(f"{path} is missing: {root} is not a prime_mcore checkpoint or its "
                    "save was interrupted")
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise error(f"{path} is corrupt: {err}") from err
    if body.get("format") != FORMAT:
        raise error(f"{path}: unsupported format {body.get('format')!r} (want {FORMAT})")
    return body


def check_file(root: Path, name: str, expected: dict[str, int], *, crc: bool = True) -> str | None:
    """What is wrong with one listed file (missing, wrong size, CRC mismatch), or None."""
    path = root / name
    if not path.is_file():
        return f"{path} is missing"
    size = os.path.getsize(path)
    if size != expected["size"]:
        return f"{path} is truncated or corrupt: {size} bytes, expected {expected['size']}"
    if crc and crc32(path) != expected["crc32"]:
        return f"{path} is corrupt: CRC32 mismatch"
    return None
