"""The issue's sweep and preemption checks with the real PRIME trainer (``prime_mcore.rl``),
next to the toy versions in test_sweep_and_chain.py / test_preemption.py (which are faster):

* a submitit sweep of 2 configs (hydra multirun, 2 seeds) runs both points and returns each
  one's final metrics to Python;
* preemption: ``job._interrupt()`` (SIGTERM, then USR2) after the first checkpoint and before
  the end; submitit requeues the job, the trainer resumes from its last checkpoint, and every
  logged step and the final metrics equal those of an uninterrupted run (bitwise on CPU).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from prime_mcore import launch
from tests.slurm.slurm_utils import SMALL_RL, TINY, read_logs

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(420)]

ONE_RANK = [*TINY, *SMALL_RL, "cluster.nodes=1"]
STEPS = 6


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def as_logged(metrics: dict) -> dict:
    """Metrics as metrics.jsonl holds them: NaN/inf become None."""
    return {k: v if v is None or math.isfinite(v) else None for k, v in metrics.items()}


def deterministic(metrics: dict) -> dict:
    """Metrics without the wall-clock times."""
    return {k: v for k, v in as_logged(metrics).items()
            if not k.startswith("time/") and k != "rollout/sync_seconds"}


def test_real_sweep_returns_the_final_metrics_of_both_points(tmp_path: Path) -> None:
    results = launch.sweep(launch.entry_point("rl"), [
        *ONE_RANK, "run.max_steps=2", "run.eval_every=2", "run.save_every=2",
        f"run.output_dir={tmp_path}", "run.name=sweep", "run.seed=1,2"])

    assert len(results) == 2
    for seed, result in zip((1, 2), results, strict=True):
        run_dir = tmp_path / "sweep" / f"run.seed={seed}"
        logged = rows(run_dir)
        assert [m["step"] for m in logged] == [1, 2], read_logs([run_dir])
        # The returned dict is the last logged row itself (times included), minus "step".
        assert as_logged(result) == {k: v for k, v in logged[-1].items() if k != "step"}
        assert "eval/accuracy" in result and "prm/ce_loss" in result
        assert f"seed: {seed}" in (run_dir / "config.yaml").read_text()
    assert results[0]["policy/loss"] != results[1]["policy/loss"]  # different seeds


def wait_for_logged_step(run_dir: Path, timeout_s: float) -> list[dict]:
    """Until the run logged a step (its checkpoint is published before its row); returns
    the rows logged by then."""
    deadline = time.monotonic() + timeout_s
    while not (logged := rows(run_dir)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_dir} logged no step in {timeout_s}s\n"
                                 f"{read_logs([run_dir])}")
        time.sleep(0.2)
    return logged


def test_real_prime_preempted_resumes_and_matches_an_uninterrupted_run(
        tmp_path: Path, cancel_on_exit: list[str]) -> None:
    rl = launch.entry_point("rl")
    base = [*ONE_RANK, f"run.max_steps={STEPS}", "run.save_every=1", f"run.eval_every={STEPS}",
            f"run.output_dir={tmp_path}"]
    reference = launch.submit(rl, [*base, "run.name=reference"])
    preempted = launch.submit(rl, [*base, "run.name=preempted"])
    cancel_on_exit.extend([reference.job_id, preempted.job_id])

    before = wait_for_logged_step(tmp_path / "preempted", timeout_s=240)
    preempted._interrupt()
    assert len(before) < STEPS  # interrupted mid-run

    expected = reference.results()[0]
    got = preempted.results()[0]
    assert "Requeued job" in read_logs([tmp_path / "preempted" / "submitit"])
    ref_rows, got_rows = rows(tmp_path / "reference"), rows(tmp_path / "preempted")
    assert [m["step"] for m in got_rows] == list(range(1, STEPS + 1))
    # Resumed, not restarted: the steps up to the checkpoint were not run again, so their
    # rows (wall-clock times included) are the ones logged before the interrupt.
    assert got_rows[:len(before)] == before
    assert [deterministic(m) for m in got_rows] == [deterministic(m) for m in ref_rows]
    assert deterministic(got) == deterministic(expected)
