"""Preemption mid-run: the job is requeued, resumes from its last checkpoint, and ends exactly
where an uninterrupted run ends. Both requeue paths run side by side on the 2 nodes:

* submitit: ``TrainJob`` (Checkpointable) and ``job._interrupt()`` (SIGTERM, then USR2 as a
  preemption notice) -> submitit's handler resubmits the unchanged call and requeues;
* sbatch: USR2 to the batch shell (``scancel --batch --signal=USR2``, what ``--signal=B:USR2``
  delivers before the time limit) -> the script's trap forwards it and ``scontrol requeue``s.

The uninterrupted reference runs on this machine through submitit's local executor
(cluster.backend=local), with the same world size and TP.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from prime_mcore import launch
from tests.slurm.slurm_utils import (
    TINY,
    TOY,
    metrics,
    read_logs,
    sbatch_toy,
    wait_jobs,
    wait_steps,
)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

STEPS = 8


def test_preempted_jobs_resume_and_match_an_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancel_on_exit: list[str]) -> None:
    toy = launch.entry_point("rl", module=TOY)
    base = [*TINY, "parallel.tp=2", f"run.output_dir={tmp_path}", f"run.max_steps={STEPS}"]
    reference = launch.submit(toy, [*base, "run.name=reference", "cluster.backend=local",
                                    "cluster.nodes=1", "cluster.tasks_per_node=2"])

    monkeypatch.setenv("TOY_STEP_SLEEP_S", "1.5")  # sbatch exports it into both jobs
    preempted = launch.submit(toy, [*base, "run.name=submitit"])
    cancel_on_exit.append(preempted.job_id)
    sbatch_job = sbatch_toy("prime_rl.sbatch", tmp_path, [*base, "run.name=sbatch"])
    cancel_on_exit.append(sbatch_job)

    wait_steps(tmp_path / "submitit", 3, timeout_s=90)
    preempted._interrupt()
    wait_steps(tmp_path / "sbatch", 3, timeout_s=90)
    subprocess.run(["scancel", "--batch", "--signal=USR2", sbatch_job], check=True)

    expected = reference.results()[0]
    assert expected["step"] == STEPS
    assert preempted.results()[0] == expected  # bitwise: deterministic batches, restored momentum
    assert wait_jobs([sbatch_job], timeout_s=120, logs=[tmp_path])[sbatch_job] == "COMPLETED"

    reference_steps = metrics(tmp_path / "reference")
    for name in ("submitit", "sbatch"):
        steps = metrics(tmp_path / name)
        assert [m["step"] for m in steps] == list(range(1, STEPS + 1)), read_logs([tmp_path])
        restarts = [m["restart"] for m in steps]
        assert restarts[0] == 0 and restarts[-1] == 1, f"{name} was not requeued: {restarts}"
        assert [m["loss"] for m in steps] == [m["loss"] for m in reference_steps]
        assert steps[-1]["weight_norm"] == expected["weight_norm"]
    log = read_logs([tmp_path / "submitit" / "submitit"])
    assert "Requeued job" in log and "resumed from" in log
    assert "USR2: job" in read_logs([tmp_path])  # the sbatch trap ran
