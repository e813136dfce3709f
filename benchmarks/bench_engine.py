"""Engine training throughput: prime_mcore's Megatron-Core engine vs plain HF transformers.

CPU (default): forward + backward + AdamW step of a ~10M-parameter Qwen2-shaped model
(8 layers, hidden 256, 8 heads, 4 KV heads, SwiGLU ffn 688, vocab 8192, untied, fp32) on
micro-batches of 8 x 256 tokens, through ``Engine.train_step`` (world 1, token-mean CE over
every position) and through ``Qwen2ForCausalLM`` + ``torch.optim.AdamW`` with the same
config, batch and clipping, in the same run. Steps alternate between the two so that load
from other processes hits both alike; the median of ``--steps`` steps after warm-up is
reported. Target: engine / HF >= 0.9.

GPU (``--gpu``): the same step for a Qwen2.5-0.5B-shaped model in bf16 on one GPU, with the
local spec (no Transformer Engine) and, when installed, the TE spec; prints tokens/s and
MFU = (6 N + 12 L h s) tokens/s / peak bf16 FLOP/s. Target: MFU >= 35% without TE.

    .venv/bin/python benchmarks/bench_engine.py [--steps 5] [--gpu [--peak-tflops 989]]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from prime_mcore.config import ModelConfig, OptimConfig, ParallelConfig

CPU_MODEL = ModelConfig(arch="qwen2", vocab_size=8192, hidden_size=256, ffn_hidden_size=688,
                        num_layers=8, num_attention_heads=8, num_query_groups=4,
                        max_position_embeddings=512, rope_theta=1e6, qkv_bias=True,
                        tie_word_embeddings=False, params_dtype="fp32")
GPU_MODEL = ModelConfig(arch="qwen2", vocab_size=151936, hidden_size=896, ffn_hidden_size=4864,
                        num_layers=24, num_attention_heads=14, num_query_groups=2,
                        max_position_embeddings=4096, rope_theta=1e6, qkv_bias=True,
                        tie_word_embeddings=True, params_dtype="bf16")
OPTIM = OptimConfig(lr=1e-4, weight_decay=0.01, clip_grad=1.0)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _batch(cfg: ModelConfig, rows: int, seq: int) -> dict[str, torch.Tensor]:
    """Every position is trained: a 1-token "prompt" followed by a (seq - 1)-token response."""
    ids = torch.randint(0, cfg.vocab_size, (rows, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "response_mask": torch.ones(rows, seq - 1, dtype=torch.long)}


def _ce_sum(logp: torch.Tensor, mb: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    return -(logp * mb["response_mask"]).sum(), {}


def engine_step(cfg: ModelConfig, batch: dict[str, torch.Tensor]) -> tuple[Callable[[], None], int]:
    """A closure running one engine train step, and the model's parameter count."""
    from prime_mcore.engine import build_engine

    engine = build_engine(cfg, ParallelConfig(), OPTIM, role="policy", seed=0)
    params = sum(t.numel() for _, t in engine.export_weights())
    rows = batch["input_ids"].shape[0]

    def step() -> None:
        engine.train_step(_ce_sum, batch, micro_batch_size=rows, normalizer="token")

    return step, params


def hf_step(cfg: ModelConfig, batch: dict[str, torch.Tensor],
            device: torch.device) -> Callable[[], None]:
    """A closure running one HF Qwen2ForCausalLM + torch AdamW step on the same batch."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = torch.bfloat16 if cfg.params_dtype == "bf16" else torch.float32
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_query_groups,
        max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings, attention_dropout=0.0)).to(device, dtype)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=OPTIM.lr, weight_decay=OPTIM.weight_decay)
    ids = batch["input_ids"].to(device)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _timed(step: Callable[[], None]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(steps: dict[str, Callable[[], None]], *, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each closure, interleaving them step by step."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            elapsed = _timed(step)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def run_cpu(args: argparse.Namespace) -> None:
    rows, seq = 8, 256
    batch = _batch(CPU_MODEL, rows, seq)
    engine, params = engine_step(CPU_MODEL, batch)
    steps = {"prime_mcore engine (mcore local spec)": engine,
             "HF Qwen2ForCausalLM + AdamW": hf_step(CPU_MODEL, batch, torch.device("cpu"))}
    medians = measure(steps, warmup=2, repeats=args.steps)
    tokens = rows * seq
    print(f"\nCPU, {torch.get_num_threads()} threads, {params / 1e6:.1f}M params, fp32, "
          f"{rows} x {seq} tokens per step, median of {args.steps} steps\n")
    print(f"{'':40s} {'s/step':>8s} {'tokens/s':>10s}")
    for name, seconds in medians.items():
        print(f"{name:40s} {seconds:8.3f} {tokens / seconds:10.0f}")
    engine_s, hf_s = medians.values()
    print(f"\nratio engine / HF tokens/s: {hf_s / engine_s:.2f} (target >= 0.9)")


def run_gpu(args: argparse.Namespace) -> None:
    from prime_mcore.engine.model import te_available

    rows, seq = args.micro_batch, args.seq
    batch = _batch(GPU_MODEL, rows, seq)
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak is None:
        raise SystemExit(f"unknown peak bf16 TFLOP/s for {name!r}: pass --peak-tflops")
    steps: dict[str, Callable[[], None]] = {}
    for impl in ["local"] + (["transformer_engine"] if te_available() else []):
        steps[f"engine ({impl} spec)"], params = engine_step(
            dataclasses.replace(GPU_MODEL, transformer_impl=impl), batch)
    steps["HF Qwen2ForCausalLM + AdamW (bf16)"] = hf_step(GPU_MODEL, batch, torch.device("cuda"))
    medians = measure(steps, warmup=3, repeats=args.steps)
    flops_per_token = 6 * params + 12 * GPU_MODEL.num_layers * GPU_MODEL.hidden_size * seq
    print(f"\n{name}, bf16, {params / 1e6:.0f}M params, {rows} x {seq} tokens per step, "
          f"median of {args.steps} steps\n")
    print(f"{'':40s} {'s/step':>8s} {'tokens/s':>10s} {'MFU':>6s}")
    for label, seconds in medians.items():
        mfu = flops_per_token * rows * seq / seconds / (peak * 1e12)
        print(f"{label:40s} {seconds:8.3f} {rows * seq / seconds:10.0f} {100 * mfu:5.1f}%")
    hf_s = medians["HF Qwen2ForCausalLM + AdamW (bf16)"]
    print(f"\nratio engine (local) / HF tokens/s: {hf_s / medians['engine (local spec)']:.2f}; "
          "target MFU >= 35% for the local spec")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps (after warm-up)")
    parser.add_argument("--gpu", action="store_true", help="the 0.5B MFU benchmark on CUDA")
    parser.add_argument("--micro-batch", type=int, default=8, help="GPU rows per step")
    parser.add_argument("--seq", type=int, default=2048, help="GPU sequence length")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak dense bf16 TFLOP/s of the GPU (default: by device name)")
    args = parser.parse_args()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA")
        run_gpu(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
