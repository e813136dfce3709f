"""Helpers for the tests that run against the real local Slurm cluster (tools/slurm/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.slurm.toy_train"
STATE_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/prime-mcore-slurm"))
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE")

# The tiny CPU experiment with a Llama-shaped model: 2 KV heads, so TP=2 passes the layout check.
TINY = ["experiment=tiny_cpu", "model=tiny_llama", "cluster=slurm_cpu", "cluster.time_min=10"]
# The real PRIME trainer at its smallest: 4 prompts a step, 24-token responses.
SMALL_RL = ["data.builtin_num_train=200", "data.builtin_num_val=8", "data.builtin_num_test=8",
            "rollout.max_response_length=24", "data.train_batch_size=4",
            "algo.mini_batch_size=16", "prm.mini_batch_size=8"]


def slurm_problem() -> str | None:
    """Why the cluster cannot be used, or None when ``scontrol ping`` answers."""
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "Slurm is not installed (no scontrol)"
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if "UP" not in out.stdout:
        return f"slurmctld does not answer: {(out.stdout + out.stderr).strip()}"
    return None


def sacct_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Job id -> state, from accounting (absent while the job is not recorded yet)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j",
                          ",".join(job_ids)], capture_output=True, text=True, check=True)
    states = dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    return {job: state.split()[0] for job, state in states.items()}


def wait_jobs(job_ids: Sequence[str], timeout_s: float, logs: Sequence[Path] = ()) -> dict:
    """Poll accounting until every job has ended; fail with the queue and the job logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = sacct_states(job_ids)
        if len(states) == len(job_ids) and all(s in TERMINAL for s in states.values()):
            return states
        time.sleep(0.5)
    queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    raise AssertionError(f"jobs {list(job_ids)} not done after {timeout_s}s: "
                         f"{sacct_states(job_ids)}\n{queue}\n{read_logs(logs)}")


def read_logs(paths: Sequence[Path]) -> str:
    """Contents of the given log files (directories: every file below), for failure messages."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    return "\n".join(f"----- {f}\n{f.read_text(errors='replace')[-4000:]}"
                     for f in files if f.is_file() and f.suffix in (".out", ".err"))


def metrics(run_dir: Path) -> list[dict]:
    """The toy's metrics.jsonl, one dict a step."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_steps(run_dir: Path, steps: int, timeout_s: float) -> None:
    """Until the toy logged ``steps`` steps (a run that is really mid-way)."""
    deadline = time.monotonic() + timeout_s
    while len(metrics(run_dir)) < steps:
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_dir} logged {len(metrics(run_dir))} < {steps} steps "
                                 f"in {timeout_s}s\n{read_logs([run_dir])}")
        time.sleep(0.2)


CPU_RESOURCES = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0",
                 "--time=10"]


def sbatch_toy(script: str, out: Path, overrides: Sequence[str]) -> str:
    """``sbatch <2 CPU nodes> slurm/<script> <overrides>`` from the repository root, running
    the toy trainer (PRIME_MODULE); the job's output goes to ``out/%x-%j.out``."""
    proc = subprocess.run(
        ["sbatch", "--parsable", *CPU_RESOURCES, f"--output={out}/%x-%j.out",
         f"slurm/{script}", *overrides],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "PRIME_MODULE": TOY})
    return proc.stdout.strip().split(";")[0]


def launch_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m prime_mcore.launch <args>`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "prime_mcore.launch", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
