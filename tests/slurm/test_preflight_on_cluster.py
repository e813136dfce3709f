"""A wrong config fails in preflight with a clear message, and nothing reaches the queue.

Run through the CLI against the live cluster, so "nothing queued" is checked where it matters:
no job id printed, and neither squeue nor sacct knows a job of that name.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.slurm.slurm_utils import TINY, TOY, launch_cli

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def _jobs_named(name: str) -> str:
    queued = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True,
                            check=True).stdout
    recorded = subprocess.run(["sacct", "-X", "-n", "-P", "--name", name, "-S", "now-1days"],
                              capture_output=True, text=True, check=True).stdout
    return queued + recorded


@pytest.mark.parametrize(("case", "overrides", "message"), [
    ("tp3", ["parallel.tp=3"],
     "parallel.tp * parallel.pp = 3 * 1 = 3 does not divide the world size"),
    ("pp2tp2", ["parallel.tp=2", "parallel.pp=2"],
     "parallel.tp * parallel.pp = 2 * 2 = 4 does not divide the world size"),
    ("nodata", ["data=eurus2_rl", "data.train_files=[/nonexistent/train.parquet]"],
     "data.train_files[0] = /nonexistent/train.parquet: no such file"),
    ("nodes4", ["cluster.nodes=4"], "Slurm rejects the request"),
])
def test_bad_config_fails_preflight_and_queues_nothing(
        tmp_path: Path, case: str, overrides: list[str], message: str) -> None:
    run_name = f"preflight_{case}_{tmp_path.name}"
    proc = launch_cli("submit", "rl", "--module", TOY, *TINY, *overrides,
                      f"run.output_dir={tmp_path}", f"run.name={run_name}")

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "preflight failed: rl (configs/rl.yaml)" in proc.stderr
    assert message in proc.stderr
    assert "nothing was queued" in proc.stderr
    assert "queued" not in proc.stdout
    assert _jobs_named(f"rl-{run_name}") == ""
