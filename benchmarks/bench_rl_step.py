"""RL step time of the real loop (``python -m prime_mcore.rl``), per phase: PRIME vs outcome-only
RLOO, the vLLM vs the HF rollout backend, and (``--before REV``) this tree vs an older commit.

Every run is a fresh ``prime_mcore.rl`` process on the built-in task with identical settings
(``RUN`` below: a random-init demo-sized Qwen2, 16 prompts x K=4, 96 new tokens, no accuracy
filter so every run does the same work, 4 policy and 4 PRM mini-batches per step, as in the
paper's 256-prompt / 256-mini-batch setup). Mean seconds per phase over the steps after the
warm-up ones, from each run's metrics.jsonl (eval and checkpoint are not part of a step).
Runs go one at a time with all cores; the runs compared in one ratio run back to back, and
with ``--repeat N`` every run is repeated N times, interleaved, and each phase reports the
median over the repeats (other jobs on a shared machine move single runs by 30% or more).

Tables printed:
1. per phase, RLOO vs PRIME for each backend, and PRIME/RLOO (the paper: 1.28; #9 target
   <= 1.25). Sub-phases: rollout = generate + verify (+ filtering, tokenizing); PRIME's
   ``prm`` = reference forward + PRM update (forward+backward+step; with prm.update=after
   its forward gives the scores) + a separate PRM forward only for "before"/"none".
2. the rollout phase and the whole step with vLLM vs HF (same loop, same settings).
3. with ``--before REV``: the same PRIME/RLOO runs from a git worktree of REV (the same
   .venv), before/after per phase.

    .venv/bin/python benchmarks/bench_rl_step.py [--steps 6] [--warmup 2]
        [--backends hf,vllm] [--before 6852fe9] [--repeat 1] [--quick] [--out runs/bench_rl_step]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prime_mcore.trainers.metrics import read_metrics, step_seconds  # noqa: E402
from prime_mcore.trainers.report import markdown_table  # noqa: E402

RUN = ["experiment=tiny_cpu", "model=demo_qwen2", "data.builtin_num_train=2000",
       "data.builtin_num_val=4", "data.builtin_num_test=4", "data.train_batch_size=16",
       "rollout.n_samples=4", "rollout.max_prompt_length=96", "rollout.max_response_length=96",
       # no filtering and no refill: every run generates and trains on the same amount
       "algo.filter_low=0.0", "algo.filter_high=1.0", "algo.oversample_factor=1",
       "algo.max_refill_rounds=1",
       "algo.mini_batch_size=16", "algo.micro_batch_size=16",
       "prm.mini_batch_size=16", "prm.micro_batch_size=16",
       "run.save_every=1000", "run.eval_every=1000", "run.resume=false",
       # vLLM on CPU: eager, and a KV cache sized to the batch (its default takes GiBs)
       "rollout.enforce_eager=true", f"rollout.kv_cache_memory_bytes={256 << 20}"]
QUICK = ["rollout.max_response_length=48", "data.train_batch_size=8",
         "algo.mini_batch_size=8", "algo.micro_batch_size=8",
         "prm.mini_batch_size=8", "prm.micro_batch_size=8"]
PHASES = ("rollout", "rollout/generate", "rollout/verify", "old_logprobs", "prm",
          "prm/ref_forward", "prm/forward", "prm/update", "advantages", "policy_update",
          "weight_sync")


def run_loop(tree: Path, out: Path, name: str, overrides: list[str], threads: int) -> list[dict]:
    """One ``prime_mcore.rl`` process in ``tree`` (its own prime_mcore and configs)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(tree),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"}
    cmd = [sys.executable, "-m", "prime_mcore.rl", *overrides, f"run.output_dir={out}",
           f"run.name={name}"]
    log = out / f"{name}.log"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{name} failed ({proc.returncode}); log {log}:\n{tail}")
    print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return read_metrics(out / name / "metrics.jsonl")


def phase_means(rows: list[dict], warmup: int) -> dict[str, float]:
    """Mean seconds per phase over the steps after ``warmup``; ``step`` without eval/ckpt."""
    kept = rows[warmup:]
    if not kept:
        raise SystemExit(f"no steps left after {warmup} warm-up steps")
    out = {p: statistics.fmean(r.get(f"time/{p}") or 0.0 for r in kept) for p in PHASES}
    out["step"] = statistics.fmean(step_seconds(r) for r in kept)
    return out


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 1e-3 else "-"


def _label(phase: str) -> str:
    return f"  {phase.split('/')[1]}" if "/" in phase else phase


def algo_table(t: dict[str, dict[str, float]], left: str, right: str, names: tuple[str, str]) -> str:
    rows = [(_label(p), f"{t[left][p]:.3f}", f"{t[right][p]:.3f}", _ratio(t[right][p], t[left][p]))
            for p in (*PHASES, "step")]
    return markdown_table(["phase (s/step)", names[0], names[1], f"{names[1]}/{names[0]}"], rows)


def worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="bench_before_")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out")
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--before", metavar="REV", help="also run a git worktree of REV")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each setting, interleaved; per-phase medians")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="short responses, 8 prompts")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_rl_step")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    base = [*RUN, *(QUICK if args.quick else []), f"run.max_steps={args.steps}"]
    trees = {"now": ROOT}
    if args.before:
        trees["before"] = worktree(args.before)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for backend in args.backends.split(","):
            for rep in range(args.repeat):
                for algo in ("rloo", "prime"):
                    for tag, tree in trees.items():
                        name = f"{algo}_{backend}_{tag}"
                        rows = run_loop(tree, out, f"{name}_r{rep}",
                                        [*base, f"algo={algo}", f"rollout.backend={backend}"],
                                        args.threads)
                        runs.setdefault(name, []).append(phase_means(rows, args.warmup))
    finally:
        if "before" in trees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(trees["before"])], check=False, capture_output=True)
    times = {name: {p: statistics.median(r[p] for r in reps) for p in reps[0]}
             for name, reps in runs.items()}
    backends = args.backends.split(",")
    text = [f"# RL step time per phase ({args.steps} steps, first {args.warmup} left out, "
            f"{args.threads} threads, median of {args.repeat} run(s) each"
            f"{', quick' if args.quick else ''})", ""]
    for b in backends:
        text += [f"## PRIME vs RLOO, {b} rollouts", "",
                 algo_table(times, f"rloo_{b}_now", f"prime_{b}_now", ("RLOO", "PRIME")), ""]
    if {"hf", "vllm"} <= set(backends):
        rows = [(f"{a} {p}", f"{times[f'{a}_hf_now'][p]:.3f}", f"{times[f'{a}_vllm_now'][p]:.3f}",
                 _ratio(times[f"{a}_hf_now"][p], times[f"{a}_vllm_now"][p]))
                for a in ("rloo", "prime") for p in ("rollout/generate", "rollout", "step")]
        text += ["## Rollout backend in the loop: HF vs vLLM", "",
                 markdown_table(["run / phase (s/step)", "HF", "vLLM", "speed-up HF/vLLM"], rows),
                 ""]
    if args.before:
        for b in backends:
            for a in ("rloo", "prime"):
                text += [f"## {a.upper()}, {b}: {args.before} vs this tree", "",
                         algo_table(times, f"{a}_{b}_before", f"{a}_{b}_now",
                                    ("before", "after")), ""]
    report = "\n".join(text)
    (out / "bench_rl_step.md").write_text(report)
    print("\n" + report)


if __name__ == "__main__":
    main()
