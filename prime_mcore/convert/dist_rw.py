"""Streaming writes and reads of the engine's dist checkpoint (format: ``dist_io``).

The writer gives DCP its whole save plan up front, one chunk per ``mapping.Piece`` (a row
range of one full tensor, stacked along the layer axis), and produces each chunk's tensor
only when DCP writes it: one chunk in memory at a time, usually none (zero-copy views).
The reader serves row ranges of full tensors, as byte ranges of the stored records when the
stored chunks hold whole rows (kernel copies, see ``zerocopy``) or as tensors read through
DCP otherwise.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from prime_mcore.convert.dist_io import (
    _DIST_METADATA,
    _EXTRA_STATE_MODULES,
    _OPTIM_META,
    DIST,
    checkpoint_key,
)
from prime_mcore.convert.mapping import ConversionError
from prime_mcore.convert.zerocopy import CopyingFileSystem, MappedFiles, no_save_crc


@dataclass(frozen=True)
class Chunk:
    """Rows ``[row, row + rows)`` of the full tensor ``name`` of ``shape``; ``produce``
    returns them as a [rows, *shape[1:]] tensor."""

    name: str
    shape: tuple[int, ...]
    row: int
    rows: int
    produce: Callable[[], Tensor]


class _LazyPlanner(DefaultSavePlanner):
    """A save plan given up front; each item's data is produced only when DCP writes it."""

    def __init__(self, items: list[WriteItem], produce: Callable[[WriteItem], Any]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._items = items
        self._produce = produce

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False) -> None:
        self.state_dict = {}
        self.is_coordinator = is_coordinator

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> Tensor | io.BytesIO:
        return self._produce(write_item)


def _write_item(chunk: Chunk, num_layers: int, dtype: torch.dtype) -> WriteItem:
    key, layer = checkpoint_key(chunk.name)
    tail = tuple(chunk.shape[1:])
    offsets, sizes, size = (chunk.row, *[0] * len(tail)), (chunk.rows, *tail), chunk.shape
    if layer is not None:
        offsets, sizes, size = (layer, *offsets), (1, *sizes), (num_layers, *size)
    return WriteItem(
        index=MetadataIndex(key, torch.Size(offsets)), type=WriteItemType.SHARD,
        tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)),
            properties=TensorProperties(dtype=dtype), size=torch.Size(size)))


def write_dist_checkpoint(root: Path, *, chunks: list[Chunk], num_layers: int,
                          dtype: torch.dtype, maps: MappedFiles | None = None,
                          user_data: dict[str, Any] | None = None,
                          on_chunk: Callable[[], None] | None = None,
                          ) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Write ``root/dist`` (DCP files, metadata.json, common.pt) from ``chunks``, in order.

    Tensors viewing ``maps`` are copied in the kernel. Returns the byte counts ("copied",
    "written") and the (size, CRC32) of the data files by path relative to ``root``, for
    ``dist_io.write_manifest`` (not written here: it comes last)."""
    dist_dir = root / DIST
    dist_dir.mkdir(parents=True)
    items, by_index = [], {}
    for chunk in chunks:
        item = _write_item(chunk, num_layers, dtype)
        if item.index in by_index:
            raise ConversionError(f"{chunk.name}: rows from {chunk.row} are planned twice")
        items.append(item)
        by_index[item.index] = (chunk, tuple(item.tensor_data.chunk.sizes))
    empty_state = io.BytesIO()
    torch.save([None], empty_state)  # a ShardedObject holding the local spec's None extra state
    for module in _EXTRA_STATE_MODULES:
        for i in range(num_layers):
            key = f"decoder.layers.{module}._extra_state/shard_{i}_{num_layers}"
            items.append(WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO))

    def resolve(item: WriteItem) -> Tensor | io.BytesIO:
        if item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(empty_state.getvalue())
        chunk, sizes = by_index[item.index]
        t = chunk.produce()
        if tuple(t.shape) != (chunk.rows, *chunk.shape[1:]):
            raise ConversionError(f"{chunk.name} rows {chunk.row}+{chunk.rows}: produced shape "
                                  f"{tuple(t.shape)}")
        if on_chunk is not None:
            on_chunk()
        return t.to(dtype).contiguous().view(sizes)

    # One writer thread, one file: DCP resolves and writes the items one by one in plan
    # order (its serial loader), so at most one produced tensor is alive at a time.
    writer = FileSystemWriter(str(dist_dir), single_file_per_rank=True, sync_files=False,
                              thread_count=1)
    fs = CopyingFileSystem(maps or MappedFiles())
    writer.fs = fs  # DCP opens its streams through .fs
    with no_save_crc(), warnings.catch_warnings():
        # no_dist=True is the point (one process writes everything): not worth a warning
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_save({}, storage_writer=writer, planner=_LazyPlanner(items, resolve), no_dist=True)
    (dist_dir / "metadata.json").write_text(json.dumps(_DIST_METADATA))
    torch.save({"step": 0, "user_data": dict(user_data or {}), "content_metadata": _OPTIM_META},
               dist_dir / "common.pt")
    crcs = {str(p.relative_to(root)): v for p, v in fs.crcs.items() if p.suffix == ".distcp"}
    return dict(fs.stats), crcs


class _RegionPlanner(LoadPlanner):
    """Copies the read items of one requested box into ``dest``."""

    def __init__(self, dest: Tensor) -> None:
        self.dest = dest

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        pass

    def create_local_plan(self) -> LoadPlan:
        raise NotImplementedError  # plans are built by DistReader

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise ConversionError(f"unexpected bytes item {read_item.dest_index.fqn}")

    def resolve_tensor(self, read_item: ReadItem) -> Tensor:
        out = self.dest
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            out = out.narrow(dim, start, length)
        return out

    def commit_tensor(self, read_item: ReadItem, tensor: Tensor) -> None:
        pass


class _Slice(io.RawIOBase):
    """A read-only window [start, start + length) of a file, for torch.load."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 (closed in close())
        self._start, self._len, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: 0, 1: self._pos, 2: self._len}[whence] + offset
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def,override]
        n = max(0, min(len(b), self._len - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


class DistReader:
    """Serves row ranges of full tensors from an engine checkpoint of any layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fs = FileSystemReader(str(root / DIST))
        try:
            self.metadata = self._fs.read_metadata()
        except (OSError, EOFError, ValueError, AttributeError) as err:
            raise ConversionError(f"cannot read {root / DIST / '.metadata'}: {err}") from err
        self._fs.set_up_storage_reader(self.metadata, True)
        self._records: dict[tuple[str, int], tuple[Path, int] | None] = {}

    def tensor_meta(self, key: str) -> TensorStorageMetadata:
        md = self.metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise ConversionError(f"{self.root / DIST} has no tensor {key!r}")
        return md

    def full_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The stored shape of ``name`` (vocab rows as stored), checked against ``shape``."""
        key, layer = checkpoint_key(name)
        md = self.tensor_meta(key)
        stored = tuple(md.size) if layer is None else tuple(md.size[1:])
        vocab = name in ("embedding.word_embeddings.weight", "output_layer.weight")
        if stored[1:] != tuple(shape[1:]) or (stored[0] < shape[0] if vocab
                                               else stored[0] != shape[0]) or \
                (layer is not None and layer >= md.size[0]):
            raise ConversionError(f"{self.root / DIST}: {key!r} has shape {tuple(md.size)}, the "
                                  f"model config implies {shape} per layer")
        return stored

    def dtype(self, name: str) -> torch.dtype:
        return self.tensor_meta(checkpoint_key(name)[0]).properties.dtype

    def _record(self, key: str, index: int, chunk: ChunkStorageMetadata) -> tuple[Path, int] | None:
        """(file, byte offset) of a stored chunk's contiguous data; None if not plain."""
        if (key, index) not in self._records:
            info = self.metadata.storage_data[MetadataIndex(key, chunk.offsets)]
            found = None
            if not getattr(info, "transform_descriptors", None):
                path = self.root / DIST / info.relative_path
                with _Slice(path, info.offset, info.length) as view:
                    t = torch.load(view, map_location="meta", weights_only=True)
                base = getattr(t.untyped_storage(), "_checkpoint_offset", None)
                if base is not None and t.is_contiguous() and tuple(t.shape) == tuple(chunk.sizes):
                    found = (path, info.offset + base + t.storage_offset() * t.element_size())
            self._records[(key, index)] = found
        return self._records[(key, index)]

    def byte_ranges(self, name: str, row: int, rows: int) -> list[tuple[int, Path, int, int]] | None:
        """Rows [row, row + rows) of full tensor ``name`` as (offset in the rows' bytes, file,
        file offset, n) ranges; None when the stored chunks do not hold whole rows."""
        key, layer = checkpoint_key(name)
        md = self.tensor_meta(key)
        axis = 0 if layer is None else 1
        trailing = 1
        for s in md.size[axis + 1:]:
            trailing *= s
        row_bytes = trailing * md.properties.dtype.itemsize
        out, covered = [], 0
        for index, c in enumerate(md.chunks):
            if layer is not None and not c.offsets[0] <= layer < c.offsets[0] + c.sizes[0]:
                continue
            r0, nr = c.offsets[axis], c.sizes[axis]
            lo, hi = max(row, r0), min(row + rows, r0 + nr)
            if lo >= hi:
                continue
            if any(c.offsets[axis + 1:]) or tuple(c.sizes[axis + 1:]) != tuple(md.size[axis + 1:]):
                return None  # split columns: rows are not contiguous in the record
            record = self._record(key, index, c)
            if record is None:
                return None
            first = (lo - r0) if layer is None else (layer - c.offsets[0]) * nr + (lo - r0)
            out.append(((lo - row) * row_bytes, record[0], record[1] + first * row_bytes,
                        (hi - lo) * row_bytes))
            covered += hi - lo
        return out if covered == rows else None

    def read(self, name: str, row: int, rows: int) -> Tensor:
        """Rows [row, row + rows) of full tensor ``name``, read through DCP (any chunking)."""
        key, layer = checkpoint_key(name)
        md = self.tensor_meta(key)
        sizes = [rows, *md.size[1 if layer is None else 2:]]
        offsets = [row] + [0] * (len(sizes) - 1)
        if layer is not None:
            sizes, offsets = [1, *sizes], [layer, *offsets]
        dest = torch.empty(sizes, dtype=md.properties.dtype)
        box = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        items = create_read_items_for_chunk_list(key, md, [box])
        if sum(torch.Size(ri.lengths).numel() for ri in items) != dest.numel():
            raise ConversionError(f"{self.root / DIST}: {key!r} lacks data for {name} rows "
                                  f"{row}..{row + rows}")
        try:
            self._fs.read_data(LoadPlan(items), _RegionPlanner(dest)).wait()
        except (OSError, RuntimeError, EOFError) as err:
            raise ConversionError(f"cannot read {key!r} from {self.root / DIST}: {err}") from err
        return dest[0] if layer is not None else dest
