"""Sweeps and chains on the real cluster.

* ``launch.sweep``: a hydra multirun on hydra-submitit-launcher, 2 points, final metrics back
  in Python, each point in its own run directory;
* the SFT -> RL -> eval chain, twice at once: through the CLI (the rendered submit.sbatch files,
  ``sbatch --dependency=afterok``) and through ``launch.submit_chain`` (submitit jobs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prime_mcore import launch
from tests.slurm.slurm_utils import TINY, TOY, launch_cli, metrics, read_logs, wait_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

ONE_RANK = [*TINY, "cluster.nodes=1", "run.max_steps=2"]


def test_sweep_returns_the_final_metrics_of_every_point(tmp_path: Path) -> None:
    toy = launch.entry_point("rl", module=TOY)
    results = launch.sweep(toy, [*ONE_RANK, f"run.output_dir={tmp_path}", "run.name=sweep",
                                 "run.seed=1,2"])

    assert len(results) == 2
    assert results[0] != results[1]  # different seeds, different runs
    for seed, result in zip((1, 2), results, strict=True):
        run_dir = tmp_path / "sweep" / f"run.seed={seed}"
        last = metrics(run_dir)[-1]
        assert result == {"step": 2.0, "loss": last["loss"], "weight_norm": last["weight_norm"]}
        assert f"seed: {seed}" in (run_dir / "config.yaml").read_text()
        assert (run_dir / "submit.sbatch").is_file()


def _stage_times(run_dir: Path) -> tuple[float, float]:
    steps = metrics(run_dir)
    assert [m["step"] for m in steps] == [1, 2], read_logs([run_dir])
    return steps[0]["time"], steps[-1]["time"]


def test_sft_rl_eval_chains_run_in_order(tmp_path: Path, cancel_on_exit: list[str]) -> None:
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    proc = launch_cli("submit", "chain", "--module", TOY, "--config", "rl", *ONE_RANK,
                      f"run.output_dir={cli_dir}", "sft:run.name=sft", "rl:run.name=rl",
                      "eval:run.name=eval")
    assert proc.returncode == 0, proc.stderr
    cli_jobs = [line.split(" as job ")[1].split(";")[0]
                for line in proc.stdout.splitlines() if line.startswith("queued ")]
    cancel_on_exit.extend(cli_jobs)
    assert len(cli_jobs) == 3

    stages = [(launch.entry_point(kind, module=TOY, config="rl"),
               [*ONE_RANK, f"run.output_dir={api_dir}", f"run.name={kind}"])
              for kind in ("sft", "rl", "eval")]
    api_jobs = launch.submit_chain(stages)
    cancel_on_exit.extend(job.job_id for job in api_jobs)

    assert [job.result()["step"] for job in api_jobs] == [2.0, 2.0, 2.0]
    states = wait_jobs(cli_jobs, timeout_s=180, logs=[cli_dir])
    assert set(states.values()) == {"COMPLETED"}
    for run_root in (cli_dir, api_dir):
        times = [_stage_times(run_root / kind) for kind in ("sft", "rl", "eval")]
        for (_, end), (start, _) in zip(times, times[1:], strict=False):
            assert start > end, f"a stage of {run_root} started before its predecessor ended"
    rl_script = (cli_dir / "rl" / "submit.sbatch").read_text()
    assert "export PRIME_MODULE=tests.slurm.toy_train" in rl_script
    api_rl = api_jobs[1].paths.submission_file.read_text()
    assert f"--dependency=afterok:{api_jobs[0].job_id}" in api_rl
    assert "--kill-on-invalid-dep=yes" in api_rl
