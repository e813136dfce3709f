"""Streaming reads and atomic writes of HF checkpoint directories (safetensors).

Reading yields one tensor at a time from the shards (never the whole model); writing fills
shards up to ``max_shard_bytes`` and writes the index, config.json, generation_config.json
and the tokenizer files into a temporary sibling directory that is renamed into place only
when everything is written, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from prime_mcore.convert.mapping import ConversionError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
                   "added_tokens.json", "generation_config.json")


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"corrupt {path}: {err}") from err


def shard_files(hf_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked against its index when there is one."""
    d = Path(hf_dir)
    if (d / INDEX).is_file():
        index = json.loads((d / INDEX).read_text())
        names = sorted(set(index["weight_map"].values()))
        missing = [n for n in names if not (d / n).is_file()]
        if missing:
            raise ConversionError(f"missing shard(s) {missing} listed in {d / INDEX}")
        return [d / n for n in names]
    if (d / SINGLE).is_file():
        return [d / SINGLE]
    raise ConversionError(f"no {SINGLE} or {INDEX} in {d}")


def iter_hf_tensors(hf_dir: str | Path) -> Iterator[tuple[str, Tensor]]:
    """Yield (name, tensor) from every shard, one tensor in memory at a time."""
    from safetensors import safe_open

    for path in shard_files(hf_dir):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    yield name, f.get_tensor(name)
        except (OSError, RuntimeError, ValueError) as err:
            if isinstance(err, ConversionError):
                raise
            raise ConversionError(f"corrupt shard {path}: {err}") from err


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def write_hf_dir(named: Iterable[tuple[str, Tensor]], out_dir: str | Path, *, config: dict,
                 tokenizer_dir: str | Path | None = None, dtype: torch.dtype | None = None,
                 max_shard_bytes: int = 2 << 30, force: bool = False,
                 progress: bool = False) -> Path:
    """Write an HF checkpoint directory atomically; returns its path.

    Args:
        named: (HF name, tensor) pairs, consumed once (streamed into shards).
        config: the config.json dict (``torch_dtype`` is set from ``dtype``).
        tokenizer_dir: tokenizer files (and generation_config.json) are copied from here.
        dtype: cast every tensor to this dtype; None keeps each tensor's own.
        force: replace an existing ``out_dir``; otherwise an existing one is an error.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        weight_map, shard, shard_bytes, files = {}, {}, 0, []
        total = 0

        def flush() -> None:
            nonlocal shard, shard_bytes
            if shard:
                name = f"model-{len(files) + 1:05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                files.append(name)
                weight_map.update({k: name for k in shard})
                shard, shard_bytes = {}, 0

        bar = _bar(progress, "write HF")
        for name, t in named:
            t = t.detach().to("cpu")
            t = (t.to(dtype) if dtype is not None else t).contiguous()
            size = t.numel() * t.element_size()
            if shard and shard_bytes + size > max_shard_bytes:
                flush()
            shard[name], shard_bytes, total = t, shard_bytes + size, total + size
            bar.update(1)
        flush()
        bar.close()
        if not files:
            raise ConversionError("no tensors to write")
        if len(files) == 1:
            os.replace(tmp / files[0], tmp / SINGLE)
        else:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        cfg = dict(config)
        if dtype is not None:
            cfg["torch_dtype"] = _dtype_name(dtype)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        _copy_tokenizer(tokenizer_dir, tmp, cfg)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _copy_tokenizer(src: str | Path | None, dst: Path, cfg: dict) -> None:
    if src is not None:
        for name in TOKENIZER_FILES:
            if (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, dst / name)
    if not (dst / "generation_config.json").exists():
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
        (dst / "generation_config.json").write_text(json.dumps(gen, indent=2))


def _bar(enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(desc=desc, unit="tensor", disable=not enabled, leave=False)
