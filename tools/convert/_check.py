"""``--check`` of both converters: full logits of the HF model and of the engine, in fp32.

The two models are loaded one after the other (peak memory: one fp32 model). The engine side
is built exactly as ``Engine.load`` loads a checkpoint (``build_model`` +
``checkpoint.load_checkpoint``) but without the engine's response-only output projection, so
the whole [seq, vocab] logits come out. It runs in this process as a world of 1, whatever
layout the checkpoint is meant for: the vocabulary padding is taken from the manifest.
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from prime_mcore.convert.cli import CHECK_TEXTS, CheckFailed, CheckReport, compare_logits
from prime_mcore.convert.dist_io import MANIFEST, find_model_config, read_model_config

CHECK_TOKENS = 32
"""Tokens per prompt (fewer when max_position_embeddings is smaller)."""


def check_prompts(tokenizer_dir: Path, vocab_size: int, max_len: int) -> list[Tensor]:
    """Token ids of the fixed texts through the checkpoint's own tokenizer; seeded random
    ids when it has none."""
    length = min(CHECK_TOKENS, max_len)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        rows = [torch.tensor(tok(t)["input_ids"][:length]) for t in CHECK_TEXTS]
        if all(len(r) and int(r.max()) < vocab_size for r in rows):
            return rows
    except (OSError, ValueError, TypeError, KeyError):
        pass  # no (usable) tokenizer files: fall back to fixed random ids
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab_size, (length,), generator=gen) for _ in CHECK_TEXTS]


def hf_logits(hf_dir: Path, prompts: list[Tensor],
              round_to: torch.dtype = torch.float32) -> list[Tensor]:
    """Logits of the HF model in fp32, its weights first rounded to ``round_to`` (the
    checkpoint's dtype, when --dtype bf16 converts an fp32 model)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(round_to))
        out = [model(p[None]).logits[0].float() for p in prompts]
    del model
    gc.collect()
    return out


def mcore_logits(ckpt: Path, prompts: list[Tensor]) -> list[Tensor]:
    import prime_mcore.engine  # noqa: F401  (installs the CPU shim before megatron loads)
    from prime_mcore.config import ParallelConfig
    from prime_mcore.engine import destroy_distributed, init_distributed
    from prime_mcore.engine.checkpoint import load_checkpoint
    from prime_mcore.engine.model import build_model

    manifest = json.loads((ckpt / MANIFEST).read_text())
    path = find_model_config(ckpt)
    assert path is not None  # the conversion itself needed it
    # fp32 on the local spec: the check measures the conversion, not bf16 or TE kernels. A
    # world of 1 pads the vocabulary to a multiple of make_vocab_size_divisible_by: use the
    # checkpoint's padded size itself, so a --tp N checkpoint loads here too.
    cfg = replace(read_model_config(path), params_dtype="fp32", transformer_impl="local",
                  fp8=None, recompute=None,
                  make_vocab_size_divisible_by=int(manifest["padded_vocab"]))
    parallel = ParallelConfig(tp=1, pp=1)
    try:
        info = init_distributed(parallel, seed=0)
        chunks = build_model(cfg, parallel, device=info.device)
        model_info = {"arch": cfg.arch, "vocab_size": cfg.vocab_size,
                      "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
                      "padded_vocab": chunks.padded_vocab}
        load_checkpoint(ckpt, info=info, chunks=chunks.gpt, optimizer=None, scheduler=None,
                        weights_only=True, model_info=model_info)
        model = chunks.gpt[0].eval()
        with torch.no_grad():
            out = [model(p[None].to(info.device), None, None)[0, :, : cfg.vocab_size].float().cpu()
                   for p in prompts]
    finally:
        destroy_distributed()
    return out


def run_check(hf_dir: Path, ckpt: Path) -> CheckReport:
    """Compare the two sides; prints the report and raises CheckFailed above tolerance."""
    cfg_path = find_model_config(ckpt)
    assert cfg_path is not None
    cfg = read_model_config(cfg_path)
    prompts = check_prompts(hf_dir, cfg.vocab_size, cfg.max_position_embeddings)
    stored = torch.bfloat16 if cfg.params_dtype == "bf16" else torch.float32
    report = compare_logits(hf_logits(hf_dir, prompts, stored), mcore_logits(ckpt, prompts))
    print(report.line(), flush=True)
    if not report.ok:
        raise CheckFailed(report.line())
    return report
