"""The checked-in sbatch file on 2 emulated nodes: srun, SLURM_* -> gloo rendezvous, TP=2.

The toy trainer stands in for prime_mcore.rl (PRIME_MODULE); everything else is the real
slurm/prime_rl.sbatch as a user submits it, with the resources overridden on the command line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurm_utils import ROOT, TINY, TOY, metrics, read_logs, sbatch_toy, wait_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


def test_prime_rl_sbatch_runs_tp2_across_two_nodes(tmp_path: Path,
                                                   cancel_on_exit: list[str]) -> None:
    overrides = [*TINY, "parallel.tp=2", f"run.output_dir={tmp_path}", "run.name=tp2",
                 "run.max_steps=3"]
    job = sbatch_toy("prime_rl.sbatch", tmp_path, overrides)
    cancel_on_exit.append(job)
    # Reference while the job runs: the same model unsharded, in one local process.
    reference = subprocess.run(
        [sys.executable, "-m", TOY, "experiment=tiny_cpu", f"run.output_dir={tmp_path}",
         "run.name=tp1", "run.max_steps=3"], cwd=ROOT, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    states = wait_jobs([job], timeout_s=150, logs=[tmp_path])
    assert states[job] == "COMPLETED", read_logs([tmp_path])
    steps = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,NodeList,State", "-j", job],
                           capture_output=True, text=True, check=True).stdout
    assert f"{job}.0|node[1-2]|COMPLETED" in steps  # the srun step spanned both nodes

    tp2, tp1 = metrics(tmp_path / "tp2"), metrics(tmp_path / "tp1")
    assert [m["step"] for m in tp2] == [1, 2, 3]
    assert {m["world"] for m in tp2} == {2}
    for sharded, whole in zip(tp2, tp1, strict=True):  # row-parallel sum == unsharded matmul
        assert sharded["loss"] == pytest.approx(whole["loss"], rel=1e-12)
        assert sharded["weight_norm"] == pytest.approx(whole["weight_norm"], rel=1e-12)
    assert (tmp_path / "tp2" / "checkpoints" / "step_000003" / "rank_00001.pt").is_file()
    log = (tmp_path / f"prime-rl-{job}.out").read_text()
    assert "on node[1-2]: tests.slurm.toy_train experiment=tiny_cpu" in log
