"""The job side (run_cli, run_entry) and the submitit/hydra-launcher parameters, no cluster."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path
from typing import Any

import pytest
import submitit
from hydra import compose, initialize_config_dir

from prime_mcore.config import ClusterConfig, register_configs
from prime_mcore.launch import entry
from prime_mcore.launch.env import PORT_BASE
from prime_mcore.launch.job import TrainJob, sweep_run_name
from prime_mcore.launch.registry import entry_point, repo_root
from prime_mcore.launch.submit import _launcher_overrides, make_executor

TINY = ["experiment=tiny_cpu", "cluster=slurm_cpu"]
SLURM_STEP = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_NTASKS": "2",
              "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}


@pytest.fixture
def slurm_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process poses as task 1 of a 2-node step, with stale values from the submit shell."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_", "TORCHELASTIC"))]:
        monkeypatch.delenv(key)
    for key, value in {**SLURM_STEP, "MASTER_ADDR": "localhost", "RANK": "0"}.items():
        monkeypatch.setenv(key, value)


def test_run_cli_exports_the_env_and_calls_main(slurm_task: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # keep pytest's own handlers
    seen: dict[str, Any] = {}

    def main(cfg: Any) -> None:
        seen.update(cfg=cfg, env={k: os.environ[k] for k in ("RANK", "MASTER_ADDR",
                                                               "MASTER_PORT", "WORLD_SIZE")})

    entry.run_cli(main, "rl", [*TINY, "run.max_steps=3"])
    assert seen["cfg"].run.max_steps == 3 and seen["cfg"].cluster.nodes == 2
    assert seen["env"] == {"RANK": "1", "MASTER_ADDR": "node1",
                           "MASTER_PORT": str(PORT_BASE + 77), "WORLD_SIZE": "2"}


@pytest.mark.parametrize(("overrides", "message"), [
    (["parallel.tp=3"], "does not divide the world size"),
    (["cluster.nodes=4"], "the job started 2 rank(s) but the config was validated for "
                          "cluster.nodes * cluster.tasks_per_node = 4 * 1 = 4"),
])
def test_run_cli_rejects_bad_configs_with_exit_2(
        slurm_task: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        overrides: list[str], message: str) -> None:
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    with pytest.raises(SystemExit) as exit_info:
        entry.run_cli(lambda cfg: pytest.fail("main must not run"), "rl", [*TINY, *overrides])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_usr2_is_only_noted(slurm_task: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry, "_REQUEUE_REQUESTED", False)
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        def main(cfg: Any) -> None:
            assert not entry.requeue_requested()
            os.kill(os.getpid(), signal.SIGUSR2)  # what the sbatch trap forwards
            assert entry.requeue_requested()

        entry.run_cli(main, "rl", TINY)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert entry.requeue_requested()


def test_train_job_pickles_and_resubmits_itself_unchanged() -> None:
    job = TrainJob(entry_point("rl", module="tests.slurm.toy_train"), ["a=1"])
    delayed = pickle.loads(pickle.dumps(job)).checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function.entry == job.entry and delayed.function.overrides == ("a=1",)


def test_sweep_run_name() -> None:
    combo = ["experiment=tiny_cpu", "run.seed=1", "data.train_files=[/a/b.parquet]"]
    assert sweep_run_name("s", combo, ("run.seed",)) == "s/run.seed=1"
    assert sweep_run_name("s", combo, ("data.train_files",)) == "s/data.train_files=[_a_b.parquet]"
    assert sweep_run_name("s", combo, ()) == "s"
    assert sweep_run_name("s", ["run.name=t"], ("run.name",)) == "s"


GPU = ClusterConfig(backend="slurm", partition="gpu", account="acct", nodes=2, gpus_per_node=8,
                    tasks_per_node=8, cpus_per_task=12, time_min=90, signal_delay_s=200,
                    max_requeues=4, exclusive=True)


def test_executor_from_cluster_config(tmp_path: Path) -> None:
    executor = make_executor(GPU, tmp_path, "rl-x")
    text = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12",
                 "--time=90", "--signal=USR2@200", "--partition=gpu", "--account=acct",
                 "--exclusive", "--mem=0", "--job-name=rl-x"):
        assert f"#SBATCH {line}\n" in text, line
    assert ". ./slurm/env/default.sh\n" in text and f"cd {repo_root()}\n" in text
    assert executor._executor.max_num_timeout == 4


def test_local_backend_gets_the_local_executor(tmp_path: Path) -> None:
    executor = make_executor(ClusterConfig(backend="local", gpus_per_node=0, tasks_per_node=2),
                             tmp_path, "rl-local")
    assert executor.cluster == "local"


def test_launcher_overrides_compose_into_the_same_resources(tmp_path: Path) -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(repo_root() / "configs"), version_base="1.3"):
        cfg = compose("rl", [*TINY, *_launcher_overrides(GPU, tmp_path, "rl-sweep")],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node,
            launcher.cpus_per_task, launcher.timeout_min) == (2, 8, 8, 12, 90)
    assert (launcher.partition, launcher.account, launcher.max_num_timeout,
            launcher.signal_delay_s) == ("gpu", "acct", 4, 200)
    assert dict(launcher.additional_parameters) == {"mem": 0, "exclusive": ""}
    assert list(launcher.setup)[-1] == ". ./slurm/env/default.sh"
    assert cfg.hydra.sweep.dir == str(tmp_path)
