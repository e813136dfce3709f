"""The real trainers on the real cluster: ``sbatch slurm/prime_rl.sbatch`` runs PRIME with
TP=2 across two nodes, and the SFT -> RL -> eval chain hands each stage's output to the next.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.slurm.slurm_utils import (
    CPU_RESOURCES,
    ROOT,
    SMALL_RL,
    TINY,
    launch_cli,
    read_logs,
    wait_jobs,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(600)]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_prime_rl_sbatch_tp2_across_two_nodes(tmp_path: Path, cancel_on_exit: list[str]) -> None:
    proc = subprocess.run(
        ["sbatch", "--parsable", *CPU_RESOURCES, f"--output={tmp_path}/%x-%j.out",
         "slurm/prime_rl.sbatch", *TINY, *SMALL_RL, "parallel.tp=2", "run.max_steps=3",
         f"run.output_dir={tmp_path}", "run.name=prime_tp2"],
        cwd=ROOT, capture_output=True, text=True, check=True, env=dict(os.environ))
    job = proc.stdout.strip().split(";")[0]
    cancel_on_exit.append(job)
    states = wait_jobs([job], timeout_s=540, logs=[tmp_path])
    assert states[job] == "COMPLETED", read_logs([tmp_path])
    run = tmp_path / "prime_tp2"
    metrics = rows(run)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["prm/ce_loss"] == pytest.approx(0.693147, abs=1e-4)  # PRM == ref at start
    assert metrics[-1]["rollout/logprob_gap_mean"] < 1e-4  # TP=2 engine == HF rollout model
    for role in ("policy", "prm"):
        assert (run / "checkpoints" / "step_3" / role).is_dir()
    log = (tmp_path / f"prime-rl-{job}.out").read_text()
    assert "node[1-2]" in log


def test_sft_rl_eval_chain_with_the_real_trainers(tmp_path: Path,
                                                  cancel_on_exit: list[str]) -> None:
    out = tmp_path / "runs"
    one_node = ["cluster=slurm_cpu", "cluster.nodes=1", "cluster.time_min=10"]
    builtin = ["data.builtin_num_train=200", "data.builtin_num_val=8", "data.builtin_num_test=8"]
    proc = launch_cli(
        "submit", "chain", *one_node, f"run.output_dir={out}",
        "sft:experiment=sft_tiny_cpu", "sft:run.name=sft", "sft:run.max_steps=4",
        "sft:run.eval_every=2", *[f"sft:{o}" for o in builtin],
        "rl:experiment=tiny_cpu", "rl:run.name=rl", "rl:run.max_steps=2",
        f"rl:model.load_path={out}/sft/best", f"rl:model.tokenizer_path={out}/sft/data/tokenizer",
        *[f"rl:{o}" for o in SMALL_RL],
        "eval:experiment=eval_tiny_cpu", "eval:run.name=eval", "eval:data.builtin_num_test=8",
        f"eval:checkpoints=[sft:{out}/sft/best,rl:{out}/rl/checkpoints/step_2/policy]",
        f"eval:model.tokenizer_path={out}/sft/data/tokenizer")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = [line.split(" as job ")[1].split(";")[0]
            for line in proc.stdout.splitlines() if line.startswith("queued ")]
    cancel_on_exit.extend(jobs)
    assert len(jobs) == 3
    states = wait_jobs(jobs, timeout_s=540, logs=[out])
    assert set(states.values()) == {"COMPLETED"}, read_logs([out])
    assert [m["step"] for m in rows(out / "rl")] == [1, 2]
    results = (out / "eval" / "results.md").read_text()
    assert "sft" in results and "rl" in results
