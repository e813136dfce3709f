"""Writing HF checkpoint directories: planned safetensors shards, index, config, tokenizer.

With a plan (names, shapes and one dtype known up front) each shard's header is written
first and every tensor, or any byte range of one, goes straight to its offset as it
arrives, in any order: from a tensor (``pwrite``) or from another file (``copy_file_range``,
see ``zerocopy``), so nothing is buffered. Without a plan tensors are buffered up to
``max_shard_bytes`` per shard. ``write_hf_dir`` assembles everything in a temporary sibling
directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from prime_mcore.convert.hf_io import (
    INDEX,
    SINGLE,
    ST_DTYPES,
    atomic_output,
    copy_tokenizer,
    progress_bar,
)
from prime_mcore.convert.mapping import ConversionError
from prime_mcore.convert.zerocopy import copy_range

_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
FileRange = tuple[Path, int, int]
"""(file, byte offset, n): bytes to copy from another file."""
Part = tuple[str, int, Tensor | FileRange]
"""(HF name, byte offset inside that tensor, data)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def plan_shards(plan: dict[str, tuple[tuple[int, ...], torch.dtype]],
                max_shard_bytes: int) -> list[list[str]]:
    """Names grouped into shards in plan order, each up to ``max_shard_bytes`` (a bigger
    tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, (shape, dtype) in plan.items():
        n = _nbytes(shape, dtype)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards if shards[0] else []


class _ShardFile:
    """A safetensors file whose header is written first; data land at their offsets."""

    def __init__(self, path: Path, names: list[str],
                 plan: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self.spans: dict[str, tuple[int, int]] = {}
        for name in names:
            shape, dtype = plan[name]
            n = _nbytes(shape, dtype)
            header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + n]}
            self.spans[name] = (offset, n)
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
        self.base = 8 + len(blob)
        self.size = offset
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # No ftruncate to the final size: filling a sparse file's holes is ~2.5x slower on
        # ext4 than appending, and data normally arrive in plan order (appends).
        os.pwrite(self.fd, struct.pack("<Q", len(blob)) + blob, 0)

    def put(self, name: str, offset: int, data: Tensor | FileRange,
            sources: dict[Path, int]) -> int:
        """Write ``data`` at byte ``offset`` of tensor ``name``; returns the bytes written."""
        start, size = self.spans[name]
        if isinstance(data, Tensor):
            view = memoryview(data.contiguous().view(-1).view(torch.uint8).numpy())
            n = view.nbytes
        else:
            n = data[2]
        if offset < 0 or offset + n > size:
            raise ConversionError(f"tensor {name!r}: bytes {offset}..{offset + n} are outside "
                                  f"its {size} bytes")
        pos = self.base + start + offset
        if isinstance(data, Tensor):
            written = 0
            while written < n:  # pwrite may write less than asked for on big buffers
                written += os.pwrite(self.fd, view[written:], pos + written)
        else:
            if data[0] not in sources:
                sources[data[0]] = os.open(data[0], os.O_RDONLY)
            copy_range(sources[data[0]], data[1], self.fd, pos, n)
        return n

    def close(self) -> None:
        os.close(self.fd)


def _write_planned(parts: Iterable[Part], out: Path,
                   plan: dict[str, tuple[tuple[int, ...], torch.dtype]],
                   max_shard_bytes: int, bar) -> dict[str, str]:
    groups = plan_shards(plan, max_shard_bytes)
    files = [SINGLE] if len(groups) == 1 else [
        f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    shards = [_ShardFile(out / f, g, plan) for f, g in zip(files, groups)]
    where = {n: (s, f) for s, f, g in zip(shards, files, groups) for n in g}
    done = dict.fromkeys(plan, 0)
    sources: dict[Path, int] = {}
    try:
        for name, offset, data in parts:
            if name not in where:
                raise ConversionError(f"tensor {name!r} is not in the planned checkpoint")
            if isinstance(data, Tensor):
                shape, dtype = plan[name]
                if offset == 0 and tuple(data.shape) != tuple(shape):
                    raise ConversionError(f"tensor {name!r}: shape {tuple(data.shape)}, planned "
                                          f"{tuple(shape)}")
                data = data.detach().to("cpu", dtype)
            before = done[name]
            done[name] += where[name][0].put(name, offset, data, sources)
            if bar is not None and done[name] == where[name][0].spans[name][1] > before:
                bar.update(1)
    finally:
        for s in shards:
            s.close()
        for fd in sources.values():
            os.close(fd)
    wrong = [n for n, got in done.items() if got != where[n][0].spans[n][1]]
    if wrong:
        raise ConversionError(f"{len(wrong)} planned tensors were not written exactly once, "
                              f"e.g. {wrong[:5]}")
    return {n: f for n, (_, f) in where.items()}


def _write_buffered(named: Iterable[tuple[str, Tensor]], out: Path, dtype: torch.dtype | None,
                    max_shard_bytes: int, bar) -> dict[str, str]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in named:
        t = t.detach().to("cpu", dtype) if dtype is not None else t.detach().to("cpu")
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += n
        bar.update(1)
    if not shards[0]:
        raise ConversionError("no tensors to write")
    parts = ((n, 0, t) for shard in shards for n, t in shard.items())
    plan = {n: (tuple(t.shape), t.dtype) for shard in shards for n, t in shard.items()}
    # The same grouping again (same sizes, same limit), now written without further copies.
    return _write_planned(parts, out, plan, max_shard_bytes, None)


def write_hf_dir(named: Iterable[tuple[str, Tensor]], out_dir: str | Path, *, config: dict,
                 tokenizer_dir: str | Path | None = None, dtype: torch.dtype | None = None,
                 max_shard_bytes: int = 2 << 30, force: bool = False, progress: bool = False,
                 plan: dict[str, tuple[int, ...]] | None = None) -> Path:
    """Write an HF checkpoint directory atomically; returns its path.

    Args:
        named: (HF name, tensor) pairs, consumed once.
        config: the config.json dict (``torch_dtype``/``dtype`` are set from ``dtype``).
        tokenizer_dir: tokenizer files (and generation_config.json) are copied from here.
        dtype: cast every tensor to this dtype; None keeps each tensor's own.
        force: replace an existing ``out_dir``; otherwise an existing one is an error.
        plan: HF name -> shape of every tensor, in the order to store them. With a plan
            (and a ``dtype``) tensors are written to disk as they arrive, in any order.
    """
    with atomic_output(out_dir, force=force) as tmp:
        if plan is not None and dtype is not None:
            parts = ((n, 0, t) for n, t in named)
            fill_hf_dir(parts, tmp, config=config, tokenizer_dir=tokenizer_dir, dtype=dtype,
                        max_shard_bytes=max_shard_bytes, progress=progress, plan=plan)
        else:
            bar = progress_bar(progress, "write HF")
            try:
                weight_map = _write_buffered(named, tmp, dtype, max_shard_bytes, bar)
            finally:
                bar.close()
            _finish(tmp, weight_map, config, tokenizer_dir, dtype)
    return Path(out_dir)


def fill_hf_dir(parts: Iterable[Part], out: Path, *, config: dict, dtype: torch.dtype,
                plan: dict[str, tuple[int, ...]], tokenizer_dir: str | Path | None = None,
                max_shard_bytes: int = 2 << 30, progress: bool = False) -> None:
    """Write a planned HF directory into the existing empty ``out`` (no atomic rename)."""
    bar = progress_bar(progress, "write HF", total=len(plan))
    try:
        full = {n: (tuple(s), dtype) for n, s in plan.items()}
        weight_map = _write_planned(parts, out, full, max_shard_bytes, bar)
    finally:
        bar.close()
    _finish(out, weight_map, config, tokenizer_dir, dtype)


def _finish(out: Path, weight_map: dict[str, str], config: dict,
            tokenizer_dir: str | Path | None, dtype: torch.dtype | None) -> None:
    files = sorted(set(weight_map.values()))
    if files != [SINGLE]:
        total = sum((out / f).stat().st_size for f in files)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX).write_text(json.dumps(index, indent=2))
    cfg = dict(config)
    if dtype is not None:
        cfg["torch_dtype"] = cfg["dtype"] = _dtype_name(dtype)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    copy_tokenizer(tokenizer_dir, out, cfg)
