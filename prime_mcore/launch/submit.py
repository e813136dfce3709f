"""Queue jobs: submitit (results come back to Python), plain sbatch, chains and hydra sweeps.

Every path runs :func:`~prime_mcore.launch.preflight.preflight` first, so a bad config never
reaches the queue, and every run directory holds ``config.yaml`` and a re-submittable
``submit.sbatch``. Resources come from the job's ``ClusterConfig`` alone.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from prime_mcore.config import ClusterConfig
from prime_mcore.launch.job import TrainJob, sweep_run_name, sweep_task
from prime_mcore.launch.preflight import (
    Plan,
    PreflightError,
    hydra_value,
    override_key,
    plan_job,
    preflight,
    set_override,
)
from prime_mcore.launch.registry import EntryPoint, repo_root
from prime_mcore.launch.sbatch import submit_sbatch

__all__ = ["Stage", "make_executor", "submit", "submit_array", "submit_chain", "sbatch",
           "sbatch_chain",
           "plan_chain", "SweepPlan", "plan_sweep", "sweep"]

Stage = tuple[EntryPoint, Sequence[str]]
"""One step of a chain: what to run and its overrides."""


def _setup_lines(cluster: ClusterConfig) -> list[str]:
    """Shell lines every submitit job runs before srun: the same site file as the sbatch files."""
    root = shlex.quote(str(repo_root()))  # POSIX sh: the local executor runs them with /bin/sh
    site = shlex.quote(f"slurm/env/{cluster.site}.sh")
    return [f"export PRIME_MCORE_ROOT={root}", f"cd {root}", f". ./{site}"]


def make_executor(cluster: ClusterConfig, folder: Path, job_name: str) -> submitit.AutoExecutor:
    """A submitit executor for ``cluster``: Slurm, or this machine when backend is "local"."""
    executor = submitit.AutoExecutor(
        folder=folder / "%j", cluster="slurm" if cluster.backend == "slurm" else "local",
        slurm_max_num_timeout=cluster.max_requeues, local_max_num_timeout=cluster.max_requeues)
    params: dict[str, Any] = dict(
        name=job_name, nodes=cluster.nodes, tasks_per_node=cluster.tasks_per_node,
        cpus_per_task=cluster.cpus_per_task, timeout_min=cluster.time_min,
        slurm_signal_delay_s=cluster.signal_delay_s, slurm_setup=_setup_lines(cluster),
        local_setup=_setup_lines(cluster))
    if cluster.gpus_per_node:
        params["gpus_per_node"] = cluster.gpus_per_node
    if cluster.mem_gb:
        params["mem_gb"] = cluster.mem_gb
    else:
        params["slurm_mem"] = "0"  # all of the node's memory
    for key in ("partition", "account", "qos"):
        if getattr(cluster, key):
            params[f"slurm_{key}"] = getattr(cluster, key)
    if cluster.exclusive:
        params["slurm_exclusive"] = True
    executor.update_parameters(**params)
    return executor


def _after(executor: submitit.AutoExecutor, job_ids: Sequence[str]) -> None:
    if job_ids:  # afterok; a failed predecessor cancels the dependants instead of leaving them
        executor.update_parameters(slurm_dependency=f"afterok:{':'.join(job_ids)}",
                                   slurm_additional_parameters={"kill_on_invalid_dep": "yes"})


def submit(entry: EntryPoint, overrides: Sequence[str], *,
           after: Sequence[submitit.Job] = ()) -> submitit.Job:
    """Check and queue one checkpointable job; ``job.results()[0]`` is rank 0's return value
    of ``main`` (``job.result()`` for single-task jobs).

    ``cluster.backend=local`` runs it on this machine through submitit's local executor.
    """
    plan = preflight(entry, overrides)
    executor = make_executor(plan.cluster, plan.run_dir / "submitit", plan.job_name)
    _after(executor, [job.job_id for job in after])
    return executor.submit(TrainJob(plan.entry, plan.overrides))


def submit_array(entry: EntryPoint, overrides: Sequence[str], num_shards: int) -> list[submitit.Job]:
    """Check and queue a sharded job (``entry.shards``, e.g. curate) as ``num_shards`` tasks,
    task i running shard i: one Slurm job array, or local processes with
    ``cluster.backend=local``. Each task resumes its own shard; the last one to finish
    merges. Returns the tasks' jobs (``job.result()``: that task's metrics)."""
    if entry.shards is None:
        raise PreflightError(f"{entry.kind} is not a sharded job kind")
    if num_shards < 1:
        raise PreflightError(f"num_shards={num_shards} must be >= 1")
    section = entry.shards
    plan = preflight(entry, set_override(overrides, f"{section}.num_shards", str(num_shards)))
    executor = make_executor(plan.cluster, plan.run_dir / "submitit", plan.job_name)
    executor.update_parameters(slurm_array_parallelism=num_shards)
    with executor.batch():  # one sbatch --array on Slurm
        jobs = [executor.submit(TrainJob(plan.entry, set_override(
            plan.overrides, f"{section}.shard_index", str(i)))) for i in range(num_shards)]
    return jobs


def plan_chain(stages: Sequence[Stage], *, require_slurm: bool = False) -> list[Plan]:
    """Preflight every stage before any is queued; stages must not share a run directory."""
    plans = [preflight(entry, overrides, require_slurm=require_slurm)
             for entry, overrides in stages]
    seen: dict[Path, str] = {}
    for plan in plans:
        if plan.run_dir in seen:
            raise PreflightError(
                f"chain stages {seen[plan.run_dir]} and {plan.entry.kind} share the run "
                f"directory {plan.run_dir}: the later one would resume the earlier one's "
                f"checkpoints; give each stage its own run.name")
        seen[plan.run_dir] = plan.entry.kind
    return plans


def submit_chain(stages: Sequence[Stage]) -> list[submitit.Job]:
    """Queue stages that each start after the previous one succeeded (e.g. SFT -> RL -> eval).

    Between Slurm stages, ``afterok`` dependencies; after a local stage (cluster.backend=local)
    this call waits for it, so it blocks until the local stages are done.
    """
    plans = plan_chain(stages)
    jobs: list[submitit.Job] = []
    for plan in plans:
        executor = make_executor(plan.cluster, plan.run_dir / "submitit", plan.job_name)
        if jobs and plan.cluster.backend == "slurm" and isinstance(jobs[-1], submitit.SlurmJob):
            _after(executor, [jobs[-1].job_id])
        elif jobs:
            jobs[-1].results()  # raises if the previous stage failed
        jobs.append(executor.submit(TrainJob(plan.entry, plan.overrides)))
    return jobs


def sbatch(plan: Plan, after: Sequence[str] = ()) -> str:
    """Queue a preflighted plan's ``submit.sbatch`` with plain sbatch; returns the job id."""
    return submit_sbatch(plan.sbatch_path, after)


def sbatch_chain(plans: Sequence[Plan]) -> list[str]:
    """Queue preflighted plans as an ``afterok`` chain with plain sbatch; returns the job ids."""
    ids: list[str] = []
    for plan in plans:
        ids.append(sbatch(plan, ids[-1:]))
    return ids


def _launcher_overrides(cluster: ClusterConfig, sweep_dir: Path, job_name: str) -> list[str]:
    """ClusterConfig -> hydra-submitit-launcher options (same resources as ``make_executor``)."""
    launcher = "submitit_slurm" if cluster.backend == "slurm" else "submitit_local"
    opts = [f"hydra/launcher={launcher}", f"hydra.sweep.dir={hydra_value(str(sweep_dir))}",
            "hydra.sweep.subdir=.hydra/${hydra.job.num}",
            f"hydra.launcher.submitit_folder={hydra_value(str(sweep_dir / '.submitit' / '%j'))}",
            f"hydra.launcher.name={hydra_value(job_name)}",
            f"hydra.launcher.nodes={cluster.nodes}",
            f"hydra.launcher.tasks_per_node={cluster.tasks_per_node}",
            f"hydra.launcher.cpus_per_task={cluster.cpus_per_task}",
            f"hydra.launcher.timeout_min={cluster.time_min}"]
    if cluster.gpus_per_node:
        opts.append(f"hydra.launcher.gpus_per_node={cluster.gpus_per_node}")
    if cluster.mem_gb:
        opts.append(f"hydra.launcher.mem_gb={cluster.mem_gb}")
    if cluster.backend != "slurm":
        return opts
    extra = {"mem": "0"} if not cluster.mem_gb else {}
    if cluster.exclusive:
        extra["exclusive"] = ""
    setup = ",".join(hydra_value(line) for line in _setup_lines(cluster))
    opts += [f"hydra.launcher.signal_delay_s={cluster.signal_delay_s}",
             f"hydra.launcher.max_num_timeout={cluster.max_requeues}",
             f"hydra.launcher.setup=[{setup}]"]
    opts += [f"+hydra.launcher.additional_parameters.{k}={hydra_value(v)}"
             for k, v in extra.items()]
    opts += [f"hydra.launcher.{key}={hydra_value(getattr(cluster, key))}"
             for key in ("partition", "account", "qos") if getattr(cluster, key)]
    return opts


def _expand_sweep(overrides: Sequence[str]) -> tuple[list[list[str]], tuple[str, ...]]:
    """Every sweep point, in the order hydra's basic sweeper launches them, and the swept keys."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    swept = tuple(override_key(o.get_key_element()) for o in parsed if o.is_sweep_override())
    (combos,) = BasicSweeper.split_arguments(parsed, None)
    return combos, swept


@dataclass(frozen=True)
class SweepPlan:
    """Every point of a sweep, checked."""

    plans: list[Plan]
    swept: tuple[str, ...]
    """The swept keys, e.g. ("run.seed",)."""
    sweep_dir: Path
    """hydra's sweep dir (multirun.yaml, .submitit/): the points' common parent."""


def plan_sweep(entry: EntryPoint, overrides: Sequence[str]) -> SweepPlan:
    """Preflight every sweep point; each gets its own run dir (see ``sweep_run_name``)."""
    combos, swept = _expand_sweep(overrides)
    if any(key == "cluster" or key.startswith(("cluster.", "run.output_dir")) for key in swept):
        raise PreflightError("a sweep shares one launcher: cluster.* and run.output_dir cannot "
                             f"be swept (swept: {', '.join(swept)})")
    first = plan_job(entry, combos[0])
    base = first.cfg.run.name
    plans = []
    for combo in combos:
        name = sweep_run_name(base, combo, swept)
        plans.append(preflight(entry, combo if name == base else
                               [*combo, f"run.name={hydra_value(name)}"]))
    renamed = plans[0].cfg.run.name != base
    sweep_dir = first.run_dir if renamed else first.run_dir.parent / f"{entry.kind}-sweep"
    return SweepPlan(plans=plans, swept=swept, sweep_dir=sweep_dir)


def sweep(entry: EntryPoint, overrides: Sequence[str]) -> list[Any]:
    """A hydra multirun (``key=a,b`` sweeps) on hydra-submitit-launcher; blocks until every
    point finished and returns their ``main`` results in sweep order (raises if one failed)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from prime_mcore.config import register_configs

    checked = plan_sweep(entry, overrides)
    first = checked.plans[0]
    job_overrides = set_override(overrides, "run.output_dir", first.cfg.run.output_dir)
    launcher = _launcher_overrides(first.cluster, checked.sweep_dir,
                                   f"{entry.kind}-{checked.sweep_dir.name}")
    register_configs()
    task = _SweepTask(entry, checked.swept)
    with initialize_config_dir(config_dir=str(repo_root() / "configs"), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        batches = hydra.multirun(config_name=entry.config, task_function=task,
                                 overrides=[*job_overrides, *launcher],
                                 with_log_configuration=False)
    return [ret.return_value for ret in itertools.chain.from_iterable(batches)]


class _SweepTask:
    """Picklable task function binding the entry point (hydra calls ``task(cfg)``)."""

    def __init__(self, entry: EntryPoint, swept: tuple[str, ...]) -> None:
        self.entry, self.swept = entry, swept

    def __call__(self, cfg: Any) -> Any:
        return sweep_task(self.entry, self.swept, cfg)
