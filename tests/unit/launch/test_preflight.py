"""Preflight and the CLI's dry run, on the real configs/ but with no Slurm on PATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prime_mcore.launch import __main__ as cli
from prime_mcore.launch.preflight import PreflightError, override_key, preflight, set_override
from prime_mcore.launch.registry import entry_point
from prime_mcore.launch.submit import plan_chain, plan_sweep

RL = entry_point("rl")
TINY = ["experiment=tiny_cpu", "model=tiny_llama", "cluster=slurm_cpu"]


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """A login node without Slurm: preflight must not need (or call) sbatch."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))


def test_dry_run_writes_the_resolved_config_and_the_sbatch(tmp_path: Path) -> None:
    plan = preflight(RL, [*TINY, "parallel.tp=2", f"run.output_dir={tmp_path}", "run.name=a"],
                     require_slurm=True)
    assert plan.run_dir == tmp_path / "a" and plan.job_name == "rl-a"
    config = yaml.safe_load(plan.config_path.read_text())
    assert config["parallel"]["tp"] == 2 and config["cluster"]["nodes"] == 2
    assert config["run"]["output_dir"] == str(tmp_path)
    script = plan.sbatch_path.read_text()
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n" in script
    assert f"#SBATCH --output={tmp_path}/a/logs/%x-%j.out" in script
    assert f"set -- experiment=tiny_cpu model=tiny_llama cluster=slurm_cpu parallel.tp=2 " \
           f"run.name=a run.output_dir={tmp_path} \"$@\"" in script
    assert (tmp_path / "a" / "logs").is_dir()


def test_relative_output_dir_is_made_absolute(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plan = preflight(RL, [*TINY, "run.output_dir=runs", "run.name=b"])
    assert plan.run_dir == tmp_path / "runs" / "b"
    assert f"run.output_dir={tmp_path}/runs" in plan.overrides


@pytest.mark.parametrize(("overrides", "message"), [
    (["parallel.tp=3"], "parallel.tp * parallel.pp = 3 * 1 = 3 does not divide the world size "
                        "cluster.nodes * cluster.tasks_per_node = 2 * 1 = 2"),
    (["cluster.tasks_per_node=2", "parallel.tp=2", "parallel.pp=2", "cluster.nodes=3"],
     "parallel.tp * parallel.pp = 2 * 2 = 4 does not divide the world size"),
    (["cluster=slurm_gpu", "cluster.tasks_per_node=4"],
     "cluster.tasks_per_node=4 must equal cluster.gpus_per_node=8"),
    (["data=eurus2_rl", "data.train_files=[/no/such/train.parquet]"],
     "data.train_files[0] = /no/such/train.parquet: no such file"),
    (["data=eurus2_rl"], "data.source=parquet but data.train_files is empty"),
    (["cluster.site=mars"], "cluster.site=mars: "),
    (["run.nmae=x"], "Could not override 'run.nmae'"),
    (["cluster=local"], "cluster.backend=local runs on this machine, not on Slurm"),
])
def test_bad_configs_fail_with_a_clear_message(tmp_path: Path, overrides: list[str],
                                               message: str) -> None:
    with pytest.raises(PreflightError, match="^rl \\(configs/rl.yaml\\): ") as err:
        preflight(RL, [*TINY, f"run.output_dir={tmp_path}", *overrides], require_slurm=True)
    assert message in str(err.value)
    assert not list(tmp_path.rglob("submit.sbatch"))  # nothing rendered, nothing queued


def test_missing_entry_point_module_fails(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="entry-point module no.such.trainer not found"):
        preflight(entry_point("rl", module="no.such.trainer"),
                  [*TINY, f"run.output_dir={tmp_path}"])


def test_existing_data_files_pass(tmp_path: Path) -> None:
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")
    plan = preflight(RL, [*TINY, "data=eurus2_rl", f"data.train_files=[{data}]",
                          f"run.output_dir={tmp_path}"])
    assert plan.cfg.data.train_files == [str(data)]


def test_override_helpers() -> None:
    assert override_key("+a.b=1") == "a.b" and override_key("~a.b") == "a.b"
    assert set_override(["x=1", "run.output_dir=a", "y=2"], "run.output_dir", "/p/q") == [
        "x=1", "y=2", "run.output_dir=/p/q"]
    assert set_override([], "k", "it's /a b") == ["k='it\\'s /a b'"]


def test_chain_stages_may_not_share_a_run_dir(tmp_path: Path) -> None:
    stages = [(entry_point(k, config="rl"), [*TINY, f"run.output_dir={tmp_path}"])
              for k in ("sft", "rl")]
    with pytest.raises(PreflightError, match="share the run directory"):
        plan_chain(stages)


def test_sweep_points_get_their_own_run_dirs(tmp_path: Path) -> None:
    checked = plan_sweep(RL, [*TINY, f"run.output_dir={tmp_path}", "run.name=s",
                              "run.seed=1,2", "parallel.tp=1,2"])
    assert checked.swept == ("run.seed", "parallel.tp")
    assert [p.run_dir.name for p in checked.plans] == [
        "run.seed=1,parallel.tp=1", "run.seed=1,parallel.tp=2",
        "run.seed=2,parallel.tp=1", "run.seed=2,parallel.tp=2"]
    assert checked.sweep_dir == tmp_path / "s"
    assert [p.cfg.run.seed for p in checked.plans] == [1, 1, 2, 2]


def test_sweep_over_cluster_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="cluster"):
        plan_sweep(RL, [*TINY, f"run.output_dir={tmp_path}", "cluster.nodes=1,2"])


def test_cli_help_documents_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["submit", "--help"])
    text = capsys.readouterr().out
    assert "{sft,rl,eval,curate,chain}" in text and "--dry-run" in text and "overrides" in text


def test_cli_dry_run_chain_prints_every_stage(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["submit", "chain", "--dry-run", "--module", "tests.slurm.toy_train",
                     "--config", "rl", *TINY,
                     f"run.output_dir={tmp_path}", "sft:run.name=s1", "rl:run.name=r1",
                     "rl:parallel.tp=2", "eval:run.name=e1"])
    out = capsys.readouterr().out
    assert code == 0 and out.endswith("dry run: nothing queued\n")
    for kind, name in (("sft", "s1"), ("rl", "r1"), ("eval", "e1")):
        assert f"  sbatch: {tmp_path}/{name}/submit.sbatch" in out
        assert (tmp_path / name / "config.yaml").is_file()
        assert f"#SBATCH --job-name={kind}-{name}" in (tmp_path / name / "submit.sbatch").read_text()
    assert "rl: 2 node(s) x 1 task(s), tp=2 pp=1 dp=1" in out


def test_cli_failure_exits_2_and_queues_nothing(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["submit", "rl", *TINY, "parallel.tp=3", f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("preflight failed: rl (configs/rl.yaml): parallel.tp * parallel.pp")
    assert err.endswith("nothing was queued\n")


def test_cli_dry_run_does_not_import_torch(tmp_path: Path) -> None:
    code = ("import sys; from prime_mcore.launch.__main__ import main; "
            f"rc = main(['submit', 'rl', '--dry-run', 'experiment=tiny_cpu', "
            f"'cluster=slurm_cpu', 'run.output_dir={tmp_path}']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "0 False"


def test_cli_sweep_dry_run_checks_every_point(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["sweep", "rl", "--dry-run", "--module", "tests.slurm.toy_train", *TINY,
                     f"run.output_dir={tmp_path}", "run.name=sw", "run.seed=1,2"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("preflight ok: rl:") == 2
    for seed in (1, 2):
        assert f"  config: {tmp_path}/sw/run.seed={seed}/config.yaml" in out
