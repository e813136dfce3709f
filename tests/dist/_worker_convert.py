"""torchrun worker of test_convert_dist.py: converted checkpoints loaded at TP=2 and PP=2.

For each layout in ``--layouts`` and each case prepared by the test (``--work``), every
rank builds the engine at that layout and loads the converted checkpoint two ways:

- ``Engine.load(weights_only=True)`` (how RL/SFT start): log-probs of fixed tokens against
  HF's, the exported weights against the HF tensors (bitwise), then ``Engine.save`` at this
  layout (the test converts that multi-file checkpoint back to HF);
- ``build_model`` + ``load_checkpoint``: full logits, TP shards all-gathered and the PP
  stages chained by hand, against HF's logits.

The rank holding the results writes ``results_<layout>_<case>.json`` (max abs differences,
and whether the weights matched).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

LAYOUTS = {"tp2": {"tp": 2}, "pp2": {"pp": 2}}


def _full_logits(chunks, tokens: torch.Tensor, vocab: int) -> torch.Tensor | None:  # type: ignore[no-untyped-def]
    """[b, s, vocab] logits on the last stage (None elsewhere), any TP x PP."""
    from megatron.core import parallel_state as mpu

    model = chunks.gpt[0].eval()
    pp_rank, pp = mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size()
    group = mpu.get_pipeline_model_parallel_group()
    ranks = dist.get_process_group_ranks(group)
    with torch.no_grad():
        if pp_rank > 0:
            hidden = torch.empty(tokens.shape[1], tokens.shape[0], chunks.config.hidden_size)
            dist.recv(hidden, src=ranks[pp_rank - 1])
            model.set_input_tensor([hidden])
        out = model(tokens, None, None)
        if pp_rank < pp - 1:
            dist.send(out.contiguous(), dst=ranks[pp_rank + 1])
            return None
    tp_group = mpu.get_tensor_model_parallel_group()
    parts = [torch.empty_like(out) for _ in range(dist.get_world_size(tp_group))]
    dist.all_gather(parts, out.contiguous(), group=tp_group)
    return torch.cat(parts, dim=-1)[..., :vocab]


def run_case(layout: str, case_dir: Path, out: Path) -> None:
    from prime_mcore.config import ParallelConfig
    from prime_mcore.convert.dist_io import read_model_config
    from prime_mcore.convert.engine_io import engine_hf_tensors
    from prime_mcore.engine import build_engine
    from prime_mcore.engine.checkpoint import load_checkpoint
    from prime_mcore.engine.model import build_model

    parallel = ParallelConfig(**LAYOUTS[layout])
    ckpt = case_dir / ("ckpt_tp2" if parallel.tp == 2 else "ckpt_tp1")
    cfg = read_model_config(ckpt / "model_config.json")
    ref = torch.load(case_dir / "reference.pt")
    tokens = ref["tokens"]

    engine = build_engine(cfg, parallel, None, role="reference", seed=3)
    engine.load(ckpt, weights_only=True)
    rows, width = tokens.shape
    batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens),
             "response_mask": torch.ones(rows, width - 1, dtype=torch.long)}
    logp = engine.logprobs(batch, micro_batch_size=rows)
    weights = dict(engine_hf_tensors(engine, cfg))
    same = sorted(weights) == sorted(ref["weights"]) and all(
        torch.equal(weights[k], ref["weights"][k]) for k in weights)
    engine.save(out / f"saved_{layout}_{case_dir.name}", step=1)

    chunks = build_model(cfg, parallel, device=torch.device("cpu"))
    info = engine.info
    load_checkpoint(ckpt, info=info, chunks=chunks.gpt, optimizer=None, scheduler=None,
                    weights_only=True,
                    model_info={"arch": cfg.arch, "vocab_size": cfg.vocab_size,
                                "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
                                "padded_vocab": chunks.padded_vocab})
    logits = _full_logits(chunks, tokens, cfg.vocab_size)
    if logits is not None and dist.get_rank() == dist.get_world_size() - 1:
        result = {"logits": float((logits - ref["logits"]).abs().max()),
                  "logprobs": float((logp - ref["logprobs"]).abs().max()),
                  "weights_equal": same}
        (out / f"results_{layout}_{case_dir.name}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--layouts", required=True)
    args = parser.parse_args()
    work = Path(args.work)
    from prime_mcore.engine import destroy_distributed

    try:
        for layout in args.layouts.split(","):
            for case_dir in sorted(p for p in work.iterdir() if (p / "reference.pt").is_file()):
                run_case(layout, case_dir, work)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
