"""Reading HF checkpoint directories (safetensors), and the atomic output directory.

Reads use plain ``readinto`` at the offsets of the safetensors header, or zero-copy views of
a read-only mmap that are never touched in user space (``zerocopy``): reading a memory map
would keep every touched page of a multi-GB shard resident in this process (RSS). Writing
lives in ``hf_write``. ``atomic_output`` gives both converters their all-or-nothing output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from prime_mcore.convert.mapping import ConversionError
from prime_mcore.convert.zerocopy import MappedFiles

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
                   "added_tokens.json", "generation_config.json")
ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
             "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
             "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"corrupt {path}: {err}") from err


@contextlib.contextmanager
def atomic_output(out: str | Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``out``; on success it replaces ``out``
    (only with ``force`` when ``out`` exists), on any error it is deleted."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force (force=True) to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the published directory private
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset of the data in the file."""
    nbytes: int


def _read_header(path: Path) -> dict[str, TensorInfo]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ConversionError(f"corrupt shard {path}: {size} bytes, no safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, 100 << 20):
            raise ConversionError(f"corrupt shard {path}: header length {length} > file size")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConversionError(f"corrupt shard {path}: bad header ({err})") from err
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = ST_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype "
                                  f"{entry.get('dtype')!r}")
        begin, end = entry["data_offsets"]
        if 8 + length + end > size:
            raise ConversionError(f"truncated shard {path}: tensor {name!r} ends at byte "
                                  f"{8 + length + end}, the file has {size}")
        out[name] = TensorInfo(path, dtype, tuple(entry["shape"]), 8 + length + begin,
                               end - begin)
    return out


def shard_files(hf_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked against its index when there is one."""
    d = Path(hf_dir)
    if (d / INDEX).is_file():
        try:
            index = json.loads((d / INDEX).read_text())
            names = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ConversionError(f"corrupt {d / INDEX}: {err!r}") from err
        missing = [n for n in names if not (d / n).is_file()]
        if missing:
            raise ConversionError(f"missing shard(s) {missing} listed in {d / INDEX}")
        return [d / n for n in names]
    if (d / SINGLE).is_file():
        return [d / SINGLE]
    raise ConversionError(f"no {SINGLE} or {INDEX} in {d}")


class SafetensorsReader:
    """Random access to every tensor of an HF checkpoint, one tensor in memory at a time."""

    def __init__(self, hf_dir: str | Path, maps: MappedFiles | None = None) -> None:
        self.maps = maps
        self.tensors: dict[str, TensorInfo] = {}
        for path in shard_files(hf_dir):
            for name, info in _read_header(path).items():
                if name in self.tensors:
                    raise ConversionError(f"tensor {name!r} is in both {self.tensors[name].path}"
                                          f" and {path}")
                self.tensors[name] = info
        index = Path(hf_dir) / INDEX
        if index.is_file():  # the index must not promise tensors the shards lack
            listed = json.loads(index.read_text())["weight_map"]
            absent = sorted(set(listed) - set(self.tensors))
            if absent:
                raise ConversionError(f"{index} lists {absent[:5]} but no shard holds them")

    def info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise ConversionError(f"tensor {name!r} is missing from the HF checkpoint")
        return info

    def read(self, name: str) -> Tensor:
        """The whole tensor, read into memory."""
        return self.rows(name, 0, self.info(name).shape[0], copy=True)

    def rows(self, name: str, row: int, rows: int, *, copy: bool = False) -> Tensor:
        """Rows [row, row + rows) (elements of a 1-D tensor): a zero-copy view of the file
        when the reader has ``maps`` and ``copy`` is False, else read into memory."""
        info = self.info(name)
        shape = (rows, *info.shape[1:])
        row_bytes = info.nbytes // max(info.shape[0], 1) if info.shape else info.nbytes
        start = info.start + row * row_bytes
        if self.maps is not None and not copy:
            return self.maps.view(info.path, start, shape, info.dtype)
        buf = torch.empty(rows * row_bytes, dtype=torch.uint8)
        with open(info.path, "rb") as f:
            f.seek(start)
            if f.readinto(memoryview(buf.numpy())) != buf.numel():
                raise ConversionError(f"truncated shard {info.path} reading {name!r}")
        return buf.view(info.dtype).reshape(shape)


def iter_hf_tensors(hf_dir: str | Path) -> Iterator[tuple[str, Tensor]]:
    """Yield (name, tensor) in file order, one tensor in memory at a time."""
    reader = SafetensorsReader(hf_dir)
    order = sorted(reader.tensors.items(), key=lambda kv: (str(kv[1].path), kv[1].start))
    for name, _ in order:
        yield name, reader.read(name)


# ---------------------------------------------------------------- writing


def copy_tokenizer(src: str | Path | None, dst: Path, cfg: dict | None = None) -> list[str]:
    """Copy the tokenizer files (and generation_config.json) of ``src``; with ``cfg`` write a
    generation_config.json from its token ids when ``src`` had none. Returns the copied names."""
    copied = []
    if src is not None:
        for name in TOKENIZER_FILES:
            if (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, dst / name)
                copied.append(name)
    if cfg is not None and not (dst / "generation_config.json").exists():
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if cfg.get(k) is not None}
        (dst / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return copied


def progress_bar(enabled: bool, desc: str, total: int | None = None):
    """A tqdm bar on stderr; silent when disabled or when stderr is not a terminal."""
    import sys

    from tqdm import tqdm

    return tqdm(desc=desc, total=total, unit="tensor", leave=False,
                disable=not enabled or not sys.stderr.isatty())
