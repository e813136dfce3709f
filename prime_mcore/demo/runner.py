"""``make demo``: SFT -> PRIME RL -> eval on the built-in task, as an honest experiment.

The shared SFT run goes first with every CPU thread; then the per-seed arms (continued SFT,
RLOO, PRIME) run ``jobs`` at a time, each in its own process (``python -m prime_mcore.demo
--stage ARM --seed N``) with its log in ``<out>/logs/``. Every finished arm leaves
``train.json`` and ``eval.json`` in its run directory, so an interrupted demo resumes where it
stopped and a finished one only rewrites the report.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from prime_mcore.demo.arms import (
    ARMS,
    LABELS,
    DemoSettings,
    _write,
    arm_dir,
    check_settings,
    finished,
    run_stage,
    stopwatch,
)
from prime_mcore.demo.report import carry_breakdown, plot, results_markdown

TAIL_LINES = 40


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stage_command(s: DemoSettings, arm: str, seed: int, threads: int) -> list[str]:
    """The child process that trains and scores one arm."""
    cmd = [sys.executable, "-m", "prime_mcore.demo", "--stage", arm, "--seed", str(seed),
           "--out", str(s.out), "--threads", str(threads)]
    cmd += ["--quick"] if s.quick else []
    cmd += [f"--sft-override={o}" for o in s.sft_overrides]
    cmd += [f"--rl-override={o}" for o in s.rl_overrides]
    return cmd


class StageFailed(RuntimeError):
    """A child stage exited non-zero; the message names it and quotes its log."""


def run_child(s: DemoSettings, arm: str, seed: int, threads: int) -> dict:
    """Run one arm in a child process (skipped when already finished); returns its record."""
    check_settings(s, arm, seed)
    done = finished(s, arm, seed)
    if done is not None:
        print(f"[demo]   {arm_dir(s, arm, seed).name}: already trained, skipped", flush=True)
        return done
    log = s.out / "logs" / f"{arm_dir(s, arm, seed).name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # OpenMP reads its thread count once, at import: set it before the child starts.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    with log.open("w") as f:
        code = subprocess.run(stage_command(s, arm, seed, threads), stdout=f,
                              stderr=subprocess.STDOUT, env=env).returncode
    rec = finished(s, arm, seed)
    if code != 0 or rec is None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        raise StageFailed(f"demo stage {arm} (seed {seed}) failed with exit code {code}; "
                          f"log {log}, last lines:\n{tail}")
    return rec


def _layout(s: DemoSettings) -> tuple[int, int, int]:
    """(cpus, jobs, threads per job)."""
    cpus = _cpus()
    jobs = max(1, min(s.jobs or cpus, cpus))
    return cpus, jobs, max(1, cpus // jobs)


def run_stages(s: DemoSettings, stages: list[tuple[str, int]],
               note: Callable[[str], None]) -> list[dict]:
    """Run ``stages`` ((arm, seed), ...) ``s.jobs`` at a time; records in the same order."""
    _, jobs, threads = _layout(s)
    note(f"{len(stages)} arm runs, {jobs} at a time with {threads} thread(s) each "
         f"(logs in {s.out / 'logs'})")

    def one(stage: tuple[str, int]) -> dict:
        arm, seed = stage
        rec = run_child(s, arm, seed, threads)
        note(f"{LABELS[arm]}, seed {seed}: greedy test accuracy {rec['accuracy']:.3f} "
             f"(training {rec['wall_s']:.0f} s wall, {rec['cpu_s']:.0f} s CPU)")
        return rec

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, stages))


def progress() -> Callable[[str], None]:
    """A printer of timestamped progress lines."""
    start = time.perf_counter()

    def note(msg: str) -> None:
        print(f"[demo] {time.perf_counter() - start:5.0f} s  {msg}", flush=True)

    return note


def run_sft(s: DemoSettings, note: Callable[[str], None]) -> dict:
    """The shared SFT run, with every CPU thread."""
    cpus = _layout(s)[0]
    note(f"{LABELS['sft']} ({cpus} threads)")
    rec = run_child(s, "sft", 0, cpus)
    note(f"SFT greedy test accuracy {rec['accuracy']:.3f}")
    return rec


def run_all(s: DemoSettings) -> dict[str, list[dict]]:
    """SFT first (all threads), then the per-seed arms ``jobs`` at a time."""
    note = progress()
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    results["sft"].append(run_sft(s, note))
    stages = [(arm, seed) for seed in s.seeds for arm in ("rloo", "prime", "sft_more")]
    for (arm, _), rec in zip(stages, run_stages(s, stages, note), strict=True):
        results[arm].append(rec)
    return results


def run_demo(s: DemoSettings) -> dict[str, list[dict]]:
    """Run (or resume) every stage, then write <out>/results.md, results.json and the plots."""
    s.out.mkdir(parents=True, exist_ok=True)
    with stopwatch() as total:
        results = run_all(s)
    plot(results, s.out)
    run_dirs = {(arm, rec.get("seed", 0)): arm_dir(s, arm, rec.get("seed", 0))
                for arm in ARMS for rec in results[arm]}
    text = results_markdown(results, total,
                            carry_breakdown(results, run_dirs, s.out / "sft" / "data"))
    (s.out / "results.md").write_text(text)
    _write(s.out / "results.json", {"arms": results, "invocation": total})
    print("\n" + text, flush=True)
    return results


def _child(s: DemoSettings, arm: str, seed: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # megatron is chatty
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    run_stage(s, arm, seed)


def main(argv: list[str] | None = None) -> dict[str, list[dict]] | None:
    """CLI: ``python -m prime_mcore.demo [--out runs/demo] [--seeds 3] [--jobs 0] [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m prime_mcore.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DemoSettings.out, help="output directory")
    parser.add_argument("--seeds", type=int, default=len(DemoSettings.seeds),
                        help="seeds per arm (1..N)")
    parser.add_argument("--jobs", type=int, default=DemoSettings.jobs,
                        help="arms trained at once (0: one per CPU core)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test settings (numbers are meaningless)")
    parser.add_argument("--sft-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra hydra override of the SFT arms (repeatable)")
    parser.add_argument("--rl-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra hydra override of the RL arms (repeatable)")
    parser.add_argument("--stage", choices=ARMS, help=argparse.SUPPRESS)  # child processes
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    s = DemoSettings(out=args.out, seeds=tuple(range(1, args.seeds + 1)), quick=args.quick,
                     jobs=args.jobs, sft_overrides=args.sft_override,
                     rl_overrides=args.rl_override)
    if args.stage:
        _child(s, args.stage, args.seed, args.threads)
        return None
    return run_demo(replace(s))


if __name__ == "__main__":
    main()
