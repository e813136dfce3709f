"""Launching prime_mcore jobs on Slurm (or this machine): sbatch, submitit, chains, sweeps.

Python API (every call preflights first; nothing bad is queued)::

    from prime_mcore import launch
    rl = launch.entry_point("rl")                       # or "sft", "eval"
    plan = launch.preflight(rl, ["experiment=tiny_cpu", "cluster=slurm_cpu"])   # dry run
    job_id = launch.sbatch(plan)                        # queue <run_dir>/submit.sbatch
    job = launch.submit(rl, overrides)                  # submitit; job.result() = final metrics
    jobs = launch.submit_chain([(sft, o1), (rl, o2), (ev, o3)])   # afterok dependencies
    jobs = launch.submit_array(launch.entry_point("curate"), overrides, 16)  # a job array
    metrics = launch.sweep(rl, ["run.seed=1,2", ...])   # hydra multirun, submitit launcher

CLI: ``python -m prime_mcore.launch --help``. Job side (trainer entry points):
:func:`run_cli`. Importing this package never imports torch.
"""

from prime_mcore.launch.entry import check_world, requeue_requested, run_cli, run_entry, run_main
from prime_mcore.launch.env import (
    DistEnv,
    detect_dist_env,
    dist_env_from_slurm,
    expand_hostlist,
    export_dist_env,
    master_port,
)
from prime_mcore.launch.job import TrainJob
from prime_mcore.launch.preflight import Plan, PreflightError, plan_job, preflight
from prime_mcore.launch.registry import ENTRY_POINTS, EntryPoint, compose, entry_point
from prime_mcore.launch.sbatch import render_sbatch
from prime_mcore.launch.submit import (
    make_executor,
    plan_chain,
    plan_sweep,
    sbatch,
    sbatch_chain,
    submit,
    submit_array,
    submit_chain,
    sweep,
)

__all__ = [
    "ENTRY_POINTS", "EntryPoint", "entry_point", "compose",
    "DistEnv", "detect_dist_env", "dist_env_from_slurm", "expand_hostlist", "export_dist_env",
    "master_port",
    "run_cli", "run_entry", "run_main", "check_world", "requeue_requested",
    "Plan", "PreflightError", "plan_job", "preflight", "render_sbatch",
    "TrainJob", "make_executor", "submit", "submit_array", "submit_chain", "plan_chain", "sbatch",
    "sbatch_chain", "plan_sweep", "sweep",
]
