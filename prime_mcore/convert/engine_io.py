"""Glue between an engine (duck-typed: ``export_weights`` / ``load_state``) and HF weights.

The engine's canonical tensors are full, unpadded and named like the local spec, so the
mapping runs with ``Layout.from_config(cfg, pad_vocab=False)``. Both directions are
collective over the world: every rank streams every tensor (only ``writer`` ranks write).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from prime_mcore.config import ModelConfig
from prime_mcore.convert.hf_io import iter_hf_tensors
from prime_mcore.convert.hf_write import write_hf_dir
from prime_mcore.convert.mapping import (
    Layout,
    hf_config_from_model,
    hf_shapes,
    hf_to_mcore,
    mcore_to_hf,
)


def engine_hf_tensors(engine, cfg: ModelConfig) -> Iterator[tuple[str, Tensor]]:
    """The engine's weights as HF (name, tensor) pairs, streamed (e.g. for vLLM sync)."""
    return mcore_to_hf(engine.export_weights(), Layout.from_config(cfg, pad_vocab=False))


def load_hf_into_engine(engine, cfg: ModelConfig, hf_dir: str | Path) -> None:
    """Stream an HF checkpoint's tensors into the engine's shards."""
    engine.load_state(hf_to_mcore(iter_hf_tensors(hf_dir), Layout.from_config(cfg, pad_vocab=False)))


def export_engine_to_hf(engine, cfg: ModelConfig, out_dir: str | Path, *, writer: bool,
                        tokenizer_dir: str | Path | None = None, base_config: dict | None = None,
                        dtype: torch.dtype | None = None, force: bool = False,
                        progress: bool = False) -> Path:
    """Write the engine's weights as an HF directory (collective; ``writer`` ranks write)."""
    named = engine_hf_tensors(engine, cfg)
    if not writer:
        for _ in named:  # keep the collective gathers in step with the writing rank
            pass
        return Path(out_dir)
    # The engine's tensors are in its params dtype: with a dtype and the shapes known up
    # front, each tensor goes to disk as it arrives (no shard is buffered).
    dtype = dtype or {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.params_dtype]
    config = hf_config_from_model(cfg, base=base_config,
                                  dtype="float32" if dtype == torch.float32 else "bfloat16")
    return write_hf_dir(named, out_dir, config=config, tokenizer_dir=tokenizer_dir, dtype=dtype,
                        force=force, progress=progress,
                        plan=hf_shapes(Layout.from_config(cfg, pad_vocab=False)))
