"""Moving tensor bytes between checkpoint files inside the kernel (``copy_file_range``).

Conversion mostly re-files bytes: a fused QKV is [q_g, k_g, v_g] row blocks that are
contiguous byte ranges of the HF q/k/v tensors, gate/up are the two halves of fc1, the vocab
padding is a prefix. On this kind of VM a user-space ``write`` of a buffer costs ~3x an
in-kernel file copy, so both directions copy ranges with ``copy_file_range`` (falling back to
``pread``/``pwrite`` where the kernel or filesystem refuses) and never touch the data:

- writing a dist checkpoint: the tensors DCP serialises are zero-copy views of read-only
  mmaps of the HF shards (``MappedFiles``); ``torch.save`` hands each storage to the stream
  as a memoryview of that mmap, and ``CopyingFileSystem``'s stream turns such a write into a
  kernel copy from the mapped file (torch.save's per-record CRC is switched off meanwhile:
  computing it would read every page; the manifest's CRC32s cover the files instead);
- writing HF shards: ``hf_write`` copies the byte ranges located in the checkpoint's records.

The CRC32s of the files DCP writes are computed by a thread that reads each file right
behind the writer (``_CrcFollower``), overlapping the manifest's checksum pass with the copy.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.distributed.checkpoint.filesystem import FileSystem

_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_BLOCK = 64 << 20


def copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, n: int) -> None:
    """Copy ``n`` bytes between two files at explicit offsets (file positions unchanged)."""
    done = 0
    while done < n:
        try:
            step = os.copy_file_range(src_fd, dst_fd, n - done, src_off + done, dst_off + done)
        except OSError as err:
            if err.errno not in _FALLBACK_ERRNOS:
                raise
            step = 0
        if step == 0:  # refused (or EOF: then pread raises below): copy through user space
            data = os.pread(src_fd, min(_BLOCK, n - done), src_off + done)
            if not data:
                raise OSError(errno.EIO, f"source ended {n - done} bytes early")
            step = os.pwrite(dst_fd, data, dst_off + done)
        done += step


def address(buf: object) -> int:
    """Address of the first byte of a (possibly read-only) buffer."""
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)  # type: ignore[call-overload]


class MappedFiles:
    """Read-only mmaps of source files; tensors viewing them can be written by kernel copy."""

    def __init__(self) -> None:
        self._maps: dict[Path, tuple[int, mmap.mmap, int, int]] = {}  # fd, map, base, size

    def _open(self, path: Path) -> tuple[int, mmap.mmap, int, int]:
        if path not in self._maps:
            fd = os.open(path, os.O_RDONLY)
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            self._maps[path] = (fd, mm, address(mm), size)
        return self._maps[path]

    def view(self, path: Path, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A tensor over ``path``'s bytes at ``offset`` (no read happens here)."""
        _, mm, _, size = self._open(path)
        count = 1
        for s in shape:
            count *= s
        if offset + count * dtype.itemsize > size:
            raise OSError(errno.EIO, f"{path}: {count} x {dtype} at byte {offset} is past the end")
        import warnings

        with warnings.catch_warnings():  # read-only on purpose: nothing may write through it
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(mm, dtype=dtype, count=count, offset=offset)
        return flat.view(shape)

    def locate(self, addr: int, n: int) -> tuple[int, int] | None:
        """(fd, file offset) of ``n`` bytes at ``addr`` when they lie in one mapped file."""
        for fd, _, base, size in self._maps.values():
            if base <= addr and addr + n <= base + size:
                return fd, addr - base
        return None

    def close(self) -> None:
        for fd, mm, _, _ in self._maps.values():
            with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
                mm.close()
            os.close(fd)
        self._maps.clear()


class _CrcFollower(threading.Thread):
    """CRC32 of an append-only file computed while it is being written (read back from the
    page cache just behind the writer), so the manifest needs no second pass over it."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self._fd = os.open(path, os.O_RDONLY)
        self.limit = 0  # bytes the writer has finished; only grows
        self.crc = 0
        self.done = 0
        self.error: BaseException | None = None
        self._closed = threading.Event()

    def run(self) -> None:
        try:
            while True:
                limit = self.limit
                if self.done < limit:
                    data = os.pread(self._fd, min(limit - self.done, 16 << 20), self.done)
                    self.crc = zlib.crc32(data, self.crc)
                    self.done += len(data)
                elif self._closed.is_set():
                    return
                else:
                    self._closed.wait(0.02)
        except BaseException as err:  # reported by finish()
            self.error = err
        finally:
            os.close(self._fd)

    def finish(self) -> tuple[int, int]:
        """Wait for the last bytes; returns (size, crc32)."""
        self._closed.set()
        self.join()
        if self.error is not None:
            raise self.error
        return self.done, self.crc


class _CopyStream(io.RawIOBase):
    """A write-only file stream that kernel-copies buffers lying in ``maps``."""

    def __init__(self, path: Path, maps: MappedFiles, stats: dict[str, int]) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._maps = maps
        self._stats = stats
        self.follower = _CrcFollower(path)
        self.follower.start()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def write(self, b) -> int:  # type: ignore[no-untyped-def,override]
        view = memoryview(b).cast("B")
        n = view.nbytes
        src = self._maps.locate(address(view), n) if n >= 4096 else None
        if src is not None:
            pos = self.tell()
            copy_range(src[0], src[1], self._fd, pos, n)
            os.lseek(self._fd, pos + n, os.SEEK_SET)
            self._stats["copied"] += n
        else:
            done = 0
            while done < n:
                done += os.write(self._fd, view[done:])
            self._stats["written"] += n
        self.follower.limit = self.tell()
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self.follower.finish()
        super().close()


class CopyingFileSystem(FileSystem):
    """DCP's local file system, whose write streams are ``_CopyStream``s over ``maps``."""

    def __init__(self, maps: MappedFiles) -> None:
        super().__init__()
        self.maps = maps
        self.stats: dict[str, int] = {"copied": 0, "written": 0}
        self.crcs: dict[Path, tuple[int, int]] = {}
        """(size, CRC32) of every file written through a stream."""

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.IOBase]:
        if mode != "wb":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        stream = _CopyStream(Path(path), self.maps, self.stats)
        try:
            yield stream
        finally:
            stream.close()
        self.crcs[Path(path)] = stream.follower.finish()


@contextlib.contextmanager
def no_save_crc() -> Iterator[None]:
    """torch.save without its per-record CRC32 (which would read every mapped page)."""
    from torch import serialization

    old = serialization.get_crc32_options()
    serialization.set_crc32_options(False)
    try:
        yield
    finally:
        serialization.set_crc32_options(old)
