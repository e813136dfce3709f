"""Curation as a Slurm job array: the rendered script, the CLI's --shards, and the submitit
array path on the local executor (real processes, a fake validator-free merge)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from prime_mcore.launch import __main__ as cli
from prime_mcore.launch.preflight import PreflightError, preflight
from prime_mcore.launch.registry import ENTRY_POINTS, entry_point
from prime_mcore.launch.sbatch import BODY_MARKER

ROOT = Path(__file__).resolve().parents[3]
CURATE = entry_point("curate")


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    from prime_mcore.data.schema import RLExample, write_rl_parquet

    path = tmp_path / "p.parquet"
    write_rl_parquet([RLExample("s", [{"role": "user", "content": "q"}], "math", "1")], path)
    return path


def overrides(tmp_path: Path, data: Path) -> list[str]:
    return ["cluster=slurm_cpu", "cluster.nodes=1", f"model.hf_path={tmp_path}",
            f"data.train_files=[{data}]", f"run.output_dir={tmp_path}", "run.name=c"]


def test_rendered_curate_script_is_a_job_array(tmp_path: Path, data: Path) -> None:
    assert ENTRY_POINTS["curate"].shards == "curate"
    plan = preflight(CURATE, [*overrides(tmp_path, data), "curate.num_shards=4"])
    script = plan.sbatch_path.read_text()
    assert plan.array_size == 4 and "#SBATCH --array=0-3\n" in script
    assert f"#SBATCH --output={tmp_path}/c/logs/%x-%A_%a.out" in script
    checked_in = (ROOT / "slurm" / "curate.sbatch").read_text()
    assert BODY_MARKER + script.split(BODY_MARKER)[1] == checked_in[checked_in.index(BODY_MARKER):]
    single = preflight(CURATE, overrides(tmp_path, data))
    assert single.array_size is None and "--array" not in single.sbatch_path.read_text()


def test_cli_shards_option(tmp_path: Path, data: Path, capsys) -> None:
    assert cli.main(["submit", "curate", "--dry-run", "--shards", "3",
                     *overrides(tmp_path, data)]) == 0
    out = capsys.readouterr().out
    assert "curate: 1 node(s) x 1 task(s), job array of 3 task(s)" in out
    assert "#SBATCH --array=0-2" in (tmp_path / "c" / "submit.sbatch").read_text()
    assert cli.main(["submit", "rl", "--dry-run", "--shards", "3"]) == 2
    assert "--shards applies to sharded kinds" in capsys.readouterr().err
    with pytest.raises(PreflightError, match="one process per job"):
        preflight(CURATE, [*overrides(tmp_path, data), "cluster.nodes=2"])


@pytest.mark.timeout(300)
def test_submit_array_runs_one_task_per_shard_locally(tmp_path: Path, data: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from prime_mcore.launch.submit import submit_array

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    entry = entry_point("curate", module="tests.unit.launch.shard_echo")
    local = [o for o in overrides(tmp_path, data) if not o.startswith("cluster")]
    jobs = submit_array(entry, [*local, "cluster=local", "cluster.cpus_per_task=1"], 2)
    assert [job.result() for job in jobs] == [{"shard": 0, "shards": 2},
                                              {"shard": 1, "shards": 2}]
    with pytest.raises(PreflightError, match="not a sharded job kind"):
        submit_array(entry_point("rl"), [], 2)
