"""The two conversions of ``tools/convert``: HF directory <-> engine (dist) checkpoint.

Both are lists of row-range copies (``mapping.pieces``): HF -> mcore writes one checkpoint
chunk per piece, a zero-copy view of the HF file that the writer copies in the kernel (a
cast to another dtype is the only case that reads tensors into memory); mcore -> HF locates
each piece's bytes in the stored records and copies them into preplanned safetensors
shards (reading through DCP only where stored chunks split columns). Peak memory is small
and independent of the model size. Everything is validated before the first byte is
written, and the output appears only complete (``atomic_output``), after the optional
``before_publish`` hook (the CLIs' ``--check``) has passed on the finished temporary copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from prime_mcore.config import ModelConfig
from prime_mcore.convert.dist_io import (
    HF_CONFIG,
    find_model_config,
    read_manifest,
    read_model_config,
    verify_crcs,
    write_manifest,
    write_model_config,
)
from prime_mcore.convert.dist_rw import Chunk, DistReader, write_dist_checkpoint
from prime_mcore.convert.hf_io import (
    SafetensorsReader,
    atomic_output,
    copy_tokenizer,
    progress_bar,
    read_hf_config,
)
from prime_mcore.convert.hf_write import Part, fill_hf_dir
from prime_mcore.convert.mapping import (
    ConversionError,
    Layout,
    Piece,
    check_parallel,
    hf_config_from_model,
    hf_shapes,
    mcore_shapes,
    model_config_from_hf,
    pieces,
)
from prime_mcore.convert.zerocopy import MappedFiles

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Hook = Callable[[Path], None]


def _check_hf_tensors(reader: SafetensorsReader, lay: Layout, hf_dir: Path) -> None:
    """Every expected tensor present with its shape, nothing unexpected (config/weights match)."""
    expected = hf_shapes(lay)
    have = {n: i for n, i in reader.tensors.items()
            if not n.endswith("rotary_emb.inv_freq") and not (lay.tied and n == "lm_head.weight")}
    missing = [n for n in expected if n not in have]
    if missing:
        raise ConversionError(f"{hf_dir}: {len(missing)} tensors the config.json implies are "
                              f"missing, e.g. {missing[:4]}")
    extra = sorted(set(have) - set(expected))
    if extra:
        raise ConversionError(f"{hf_dir}: tensors not in a {lay.num_layers}-layer model of this "
                              f"config.json: {extra[:4]}")
    for name, shape in expected.items():
        if tuple(have[name].shape) != shape:
            raise ConversionError(f"{hf_dir}: tensor {name!r} has shape {have[name].shape}, "
                                  f"config.json implies {shape}")
        if not have[name].dtype.is_floating_point:
            raise ConversionError(f"{hf_dir}: tensor {name!r} has dtype {have[name].dtype}")


def _auto_dtype(reader: SafetensorsReader) -> str:
    """The checkpoint's own dtype when it is fp32 or bf16 throughout; fp32 otherwise (fp16 and
    mixed checkpoints convert losslessly to fp32)."""
    dtypes = {i.dtype for i in reader.tensors.values()}
    return "bf16" if dtypes == {torch.bfloat16} else "fp32"


def hf_to_dist(hf_dir: str | Path, out: str | Path, *, tp: int = 1, pp: int = 1,
               dtype: str | None = None, force: bool = False, progress: bool = False,
               before_publish: Hook | None = None, stats: dict[str, int] | None = None) -> Path:
    """Write an engine checkpoint of an HF Qwen2/Llama directory.

    The tensors are global (layout-free) and load at any TP x PP x VPP; ``tp`` sets the
    vocabulary padding (Megatron pads to ``make_vocab_size_divisible_by * tp``; the engine
    checks it, see ``padded_vocab`` in the manifest) and ``tp``/``pp`` are checked to divide
    the heads, FFN and layers. ``dtype`` "bf16"/"fp32" (None: the checkpoint's own).
    """
    hf_dir = Path(hf_dir)
    hf_config = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf_config)
    check_parallel(cfg, tp=tp, pp=pp)
    reader = SafetensorsReader(hf_dir, MappedFiles())
    lay = Layout.from_config(cfg, tp=tp)
    _check_hf_tensors(reader, lay, hf_dir)
    dtype = dtype or _auto_dtype(reader)
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r} is not one of {sorted(DTYPES)}")
    cfg = replace(cfg, params_dtype=dtype)
    shapes = mcore_shapes(lay)
    target = DTYPES[dtype]

    def producer(piece: Piece) -> Callable[[], torch.Tensor]:
        shape = shapes[piece.mcore]
        if piece.hf is None:  # vocabulary padding
            return lambda: torch.zeros((piece.rows, *shape[1:]), dtype=target)
        # Same dtype: a view of the mapped file, copied in the kernel; else read and cast.
        copy = reader.info(piece.hf).dtype != target
        return lambda: reader.rows(piece.hf, piece.hf_row, piece.rows, copy=copy).to(target)

    chunks = [Chunk(p.mcore, shapes[p.mcore], p.mcore_row, p.rows, producer(p))
              for p in pieces(lay)]
    with atomic_output(out, force=force) as tmp:
        bar = progress_bar(progress, "HF -> mcore", total=len(chunks))
        try:
            counts, crcs = write_dist_checkpoint(tmp, chunks=chunks, num_layers=lay.num_layers, dtype=target,
                                  maps=reader.maps,
                                  user_data={"converted_from": str(hf_dir.resolve())},
                                  on_chunk=lambda: bar.update(1))
        finally:
            bar.close()
            reader.maps.close()
        if stats is not None:
            stats.update(counts)
        write_model_config(tmp, cfg)
        (tmp / HF_CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        copy_tokenizer(hf_dir, tmp)
        # The engine restores RNG state only when the manifest's layout equals its own; this
        # one never does (there is no RNG state to restore).
        write_manifest(tmp, {"step": 0, "layout": {"converted_by": "hf_to_mcore", "tp": tp,
                                                   "pp": pp},
                             "has_optimizer": False, "distributed_optimizer": False,
                             "arch": cfg.arch, "vocab_size": cfg.vocab_size,
                             "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
                             "padded_vocab": lay.padded_vocab}, known=crcs)
        if before_publish is not None:
            before_publish(tmp)
    return Path(out)


def load_checkpoint_config(ckpt: Path, manifest: dict) -> ModelConfig:
    """The checkpoint's ModelConfig (``model_config.json``), checked against its manifest."""
    path = find_model_config(ckpt)
    if path is None:
        raise ConversionError(f"no model_config.json in {ckpt} or its parents: write the "
                              "model's ModelConfig fields there as JSON "
                              "(prime_mcore.convert.dist_io.write_model_config)")
    cfg = read_model_config(path)
    for key, value in (("arch", cfg.arch), ("vocab_size", cfg.vocab_size),
                       ("num_layers", cfg.num_layers), ("hidden_size", cfg.hidden_size)):
        if key in manifest and manifest[key] != value:
            raise ConversionError(f"{path}: {key}={value!r}, but the checkpoint's manifest says "
                                  f"{manifest[key]!r}")
    return cfg


def dist_to_hf(ckpt: str | Path, out: str | Path, *, force: bool = False,
               progress: bool = False, max_shard_bytes: int = 2 << 30,
               before_publish: Hook | None = None, stats: dict[str, int] | None = None) -> Path:
    """Write an HF directory (config, generation config, tokenizer files, safetensors
    shards + index) from an engine checkpoint of any layout; tensors keep their stored dtype.
    The files' CRC32s are verified in a background thread while converting. ``stats`` gets
    the bytes "copied" in the kernel and "written" from memory."""
    ckpt = Path(ckpt)
    manifest = read_manifest(ckpt)
    cfg = load_checkpoint_config(ckpt, manifest)
    lay = Layout.from_config(cfg, pad_vocab=False)
    reader = DistReader(ckpt)
    dtype = reader.dtype("embedding.word_embeddings.weight")
    shapes = mcore_shapes(lay)
    for name, shape in shapes.items():
        reader.full_shape(name, shape)  # every tensor present with the config's shape
    base = json.loads((ckpt / HF_CONFIG).read_text()) if (ckpt / HF_CONFIG).is_file() else None
    config = hf_config_from_model(cfg, base=base, dtype=str(dtype).removeprefix("torch."))
    tokenizer_dir = ckpt if any(ckpt.glob("tokenizer*")) else cfg.tokenizer_path or cfg.hf_path
    hf = hf_shapes(lay)

    counts = {"copied": 0, "written": 0}

    def parts() -> Iterator[Part]:
        cached: tuple[str, torch.Tensor] | None = None
        for p in pieces(lay):
            assert p.hf is not None  # the unpadded layout has no padding pieces
            trailing = 1
            for s in hf[p.hf][1:]:
                trailing *= s
            start = p.hf_row * trailing * dtype.itemsize
            ranges = reader.byte_ranges(p.mcore, p.mcore_row, p.rows)
            if ranges is not None:
                for offset, path, src, n in ranges:
                    counts["copied"] += n
                    yield p.hf, start + offset, (path, src, n)
                continue
            if cached is None or cached[0] != p.mcore:  # columns split: read the whole tensor
                cached = (p.mcore, reader.read(p.mcore, 0, shapes[p.mcore][0]))
            counts["written"] += p.rows * trailing * dtype.itemsize
            yield p.hf, start, cached[1][p.mcore_row: p.mcore_row + p.rows]

    with ThreadPoolExecutor(1) as pool, atomic_output(out, force=force) as tmp:
        crcs = pool.submit(verify_crcs, ckpt, manifest)
        fill_hf_dir(parts(), tmp, config=config, tokenizer_dir=tokenizer_dir, dtype=dtype,
                    max_shard_bytes=max_shard_bytes, progress=progress, plan=hf)
        crcs.result()
        if before_publish is not None:
            before_publish(tmp)
    if stats is not None:
        stats.update(counts)
    return Path(out)
