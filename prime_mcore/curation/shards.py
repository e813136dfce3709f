"""Shards of a curation run: which rows a shard owns, its on-disk state, and the merge.

Layout under the run directory::

    shards/manifest.json                 what the shards were computed with (fingerprint)
    shards/shard-00003-of-00016/
        chunk-000000192.parquet          per-problem stats of rows [192, 192 + chunk_size)
        stats.parquet, kept.parquet      the shard's outputs, written when every chunk is in
        done.json                        written last: the shard is complete
    stats.parquet, kept.parquet, summary.md, summary.json     the merge of all shards

Every file is written to a temporary name and renamed into place, so a killed process
leaves either a complete file or none (plus maybe a stray ``.tmp``, ignored and overwritten).
A shard with ``done.json`` is skipped; a killed shard resumes after its last whole chunk.
Chunk boundaries and sampling seeds depend only on row indices, so a resumed shard writes
what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["shard_bounds", "resolve_shards", "ShardStore", "atomic_write_text",
           "atomic_write_table", "ManifestMismatch"]


def shard_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``index`` of ``count``: contiguous, sizes differ by at
    most one, earlier shards get the extra rows."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    base, extra = divmod(total, count)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def resolve_shards(num_shards: int | None, shard_index: int | None,
                   environ: Mapping[str, str] = os.environ) -> tuple[int, list[int]]:
    """(shard count, shards this process runs). Unset values come from a Slurm job array
    (SLURM_ARRAY_TASK_COUNT / SLURM_ARRAY_TASK_ID); outside one, every shard runs here."""
    array_id, array_count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get(
        "SLURM_ARRAY_TASK_COUNT")
    count = num_shards or (int(array_count) if array_count else 1)
    index = shard_index if shard_index is not None else (
        int(array_id) if array_id is not None else None)
    if index is None:
        return count, list(range(count))
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count}) (curate.shard_index or "
                         f"SLURM_ARRAY_TASK_ID vs curate.num_shards or SLURM_ARRAY_TASK_COUNT)")
    return count, [index]


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_table(path: Path, table: Any) -> Path:
    """Write a pyarrow table as parquet through a temporary file and a rename."""
    import pyarrow.parquet as pq

    return _atomic(path, lambda tmp: pq.write_table(table, tmp))


class ManifestMismatch(ValueError):
    """The run directory holds shards computed with other inputs or settings."""


@dataclass(frozen=True)
class ShardStore:
    """The shard files of one run directory, for ``count`` shards."""

    root: Path
    count: int

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    def shard_dir(self, index: int) -> Path:
        return self.shards_dir / f"shard-{index:05d}-of-{self.count:05d}"

    def chunk_path(self, index: int, start: int) -> Path:
        return self.shard_dir(index) / f"chunk-{start:09d}.parquet"

    def done_path(self, index: int) -> Path:
        return self.shard_dir(index) / "done.json"

    def is_done(self, index: int) -> bool:
        return self.done_path(index).exists()

    def pending(self) -> list[int]:
        """Shards without a done marker."""
        return [i for i in range(self.count) if not self.is_done(i)]

    def check_manifest(self, fingerprint: dict[str, Any]) -> None:
        """Record ``fingerprint`` on first use; refuse to mix shards of another one."""
        path = self.shards_dir / "manifest.json"
        want = {"num_shards": self.count, **fingerprint}
        if path.exists():
            have = json.loads(path.read_text())
            if have != want:
                diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
                raise ManifestMismatch(
                    f"{self.shards_dir} holds shards computed with other settings (differ: "
                    f"{', '.join(diff)}); choose another run.name or delete that directory")
            return
        atomic_write_text(path, json.dumps(want, indent=1, sort_keys=True))

    def chunks(self, index: int, start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
        """``(chunk_start, chunk_stop)`` of the shard's rows that have no saved chunk yet."""
        for lo in range(start, stop, size):
            if not self.chunk_path(index, lo).exists():
                yield lo, min(lo + size, stop)

    def read_chunks(self, index: int) -> Any:
        """The shard's saved chunks as one pyarrow table, in row order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        paths = sorted(self.shard_dir(index).glob("chunk-*.parquet"))
        return pa.concat_tables([pq.read_table(p) for p in paths]) if paths else None

    def mark_done(self, index: int, info: dict[str, Any]) -> None:
        atomic_write_text(self.done_path(index), json.dumps(info, indent=1, sort_keys=True))

    def merged_tables(self, name: str) -> Any:
        """``<shard>/<name>`` of every shard, concatenated in shard order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        missing = self.pending()
        if missing:
            raise RuntimeError(f"cannot merge: shard(s) {missing} of {self.count} are not done "
                               f"(rerun them: curate.shard_index=<i> curate.num_shards="
                               f"{self.count})")
        return pa.concat_tables([pq.read_table(self.shard_dir(i) / name)
                                 for i in range(self.count)])
