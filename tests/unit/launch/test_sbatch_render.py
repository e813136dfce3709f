"""Rendering sbatch scripts from ClusterConfig, and the checked-in slurm/*.sbatch files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from prime_mcore.config import ClusterConfig
from prime_mcore.launch.registry import ENTRY_POINTS, entry_point
from prime_mcore.launch.sbatch import BODY_MARKER, render_sbatch, sbatch_directives, slurm_time

ROOT = Path(__file__).resolve().parents[3]
SBATCH_FILES = sorted((ROOT / "slurm").glob("*.sbatch"))


@pytest.mark.parametrize(("minutes", "text"), [(30, "00:30:00"), (240, "04:00:00"),
                                               (1440, "1-00:00:00"), (1501, "1-01:01:00")])
def test_slurm_time(minutes: int, text: str) -> None:
    assert slurm_time(minutes) == text


def test_directives_for_a_gpu_cluster() -> None:
    cluster = ClusterConfig(backend="slurm", partition="gpu", account="proj", qos="high",
                            nodes=4, gpus_per_node=8, tasks_per_node=8, cpus_per_task=12,
                            mem_gb=480, time_min=1500, signal_delay_s=300, exclusive=True)
    assert sbatch_directives(cluster, "rl-big", Path("/runs/big/logs")) == [
        "#SBATCH --job-name=rl-big",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --mem=480G",
        "#SBATCH --time=1-01:00:00",
        "#SBATCH --signal=B:USR2@300",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=/runs/big/logs/%x-%j.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --exclusive",
    ]


def test_directives_for_a_cpu_cluster_leave_out_gpus_and_defaults() -> None:
    cluster = ClusterConfig(backend="slurm", nodes=2, gpus_per_node=0, tasks_per_node=1,
                            cpus_per_task=1, time_min=30, signal_delay_s=30)
    lines = sbatch_directives(cluster, "rl-tiny", Path("/r/logs"))
    assert "#SBATCH --mem=0" in lines
    assert not [line for line in lines
                if line.split("=")[0].endswith(("gpus-per-node", "partition", "account", "qos"))]
    assert "#SBATCH --exclusive" not in lines


def _render(tmp_path: Path, overrides: list[str]) -> str:
    cluster = ClusterConfig(backend="slurm", nodes=2, gpus_per_node=0, tasks_per_node=1,
                            cpus_per_task=1, max_requeues=7, site="default")
    return render_sbatch(entry_point("rl", module="my.trainer"), cluster, overrides,
                         job_name="rl-x", log_dir=tmp_path / "logs", root=ROOT,
                         python="/opt/venv/bin/python")


def test_rendered_script_bakes_in_module_paths_and_overrides(tmp_path: Path) -> None:
    text = _render(tmp_path, ["experiment=tiny_cpu", "run.output_dir='/data/my runs'"])
    head, body = text.split(BODY_MARKER)
    assert head.startswith("#!/bin/bash\n")
    for line in (f"export PRIME_MCORE_ROOT={ROOT}", "export PRIME_SITE=default",
                 "export PRIME_PYTHON=/opt/venv/bin/python", "export PRIME_MODULE=my.trainer",
                 "export PRIME_MAX_REQUEUES=7",
                 """set -- experiment=tiny_cpu 'run.output_dir='"'"'/data/my runs'"'"'' "$@\""""):
        assert line + "\n" in head
    rl_file = (ROOT / "slurm" / "prime_rl.sbatch").read_text()
    assert BODY_MARKER + body == rl_file[rl_file.index(BODY_MARKER):]


def test_rendered_script_passes_the_overrides_to_srun_intact(tmp_path: Path) -> None:
    """Run the rendered header with bash and print "$@" as the body's srun would see it."""
    text = _render(tmp_path, ["a=1", "run.name='x y'", "b=[1,2]"])
    head = text.split(BODY_MARKER)[0]
    out = subprocess.run(["bash", "-c", head + 'printf "<%s>" "$@"', "bash", "extra=2"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "<a=1><run.name='x y'><b=[1,2]><extra=2>"


@pytest.mark.parametrize("path", SBATCH_FILES, ids=lambda p: p.name)
def test_checked_in_sbatch_files_are_valid_bash_with_the_required_directives(path: Path) -> None:
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    log = "%x-%A_%a.out" if "#SBATCH --array=" in text else "%x-%j.out"  # one log per array task
    for line in ("#SBATCH --signal=B:USR2@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 f"#SBATCH --output=logs/{log}", 'trap requeue USR2',
                 'scontrol requeue "$SLURM_JOB_ID"', 'kill -USR2 "$srun_pid"',
                 'source "slurm/env/${PRIME_SITE:-default}.sh"'):
        assert line in text, (path.name, line)
    assert 'srun --kill-on-bad-exit=1 "${PRIME_PYTHON:-python}" -m "$PRIME_MODULE" "$@" &' in text


def test_every_kind_has_its_sbatch_file_and_they_share_one_body() -> None:
    assert {ep.sbatch for ep in ENTRY_POINTS.values()} == {p.name for p in SBATCH_FILES}
    bodies = {p.read_text().split(BODY_MARKER)[1] for p in SBATCH_FILES}
    assert len(bodies) == 1, "the body of slurm/*.sbatch drifted apart; keep them identical"
    for kind, ep in ENTRY_POINTS.items():
        text = (ROOT / "slurm" / ep.sbatch).read_text()
        assert f': "${{PRIME_MODULE:=prime_mcore.{kind}}}"' in text


def test_site_files_exist_and_are_posix_sh() -> None:
    for site in ("default", "example_gpu"):
        path = ROOT / "slurm" / "env" / f"{site}.sh"
        subprocess.run(["sh", "-n", str(path)], check=True)
    default = (ROOT / "slurm" / "env" / "default.sh").read_text()
    assert "OMP_NUM_THREADS" in default
    assert "NCCL_" in (ROOT / "slurm" / "env" / "example_gpu.sh").read_text()
