"""Render a job's sbatch script from its ClusterConfig, and hand scripts to ``sbatch``.

The rendered script is the kind's ``slurm/<file>.sbatch`` with its header replaced: #SBATCH
lines from ``ClusterConfig`` (the only description of resources), the paths of this checkout,
and the run's hydra overrides baked in with ``set --``. The body is reused as it is, so the
checked-in scripts and the rendered ones cannot drift. What ``submit`` queues is exactly
``<run_dir>/submit.sbatch``; ``sbatch <run_dir>/submit.sbatch`` re-submits it by hand.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from prime_mcore.config import ClusterConfig
from prime_mcore.launch.registry import EntryPoint

__all__ = ["BODY_MARKER", "slurm_time", "sbatch_directives", "render_sbatch", "submit_sbatch",
           "check_sbatch"]

BODY_MARKER = "# ---- body:"
"""First line of the part shared by every slurm/*.sbatch (and copied into rendered scripts)."""


def slurm_time(minutes: int) -> str:
    """Minutes -> Slurm's ``[D-]HH:MM:SS``: 240 -> "04:00:00", 1500 -> "1-01:00:00"."""
    days, rest = divmod(minutes, 24 * 60)
    clock = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


def sbatch_directives(cluster: ClusterConfig, job_name: str, log_dir: Path,
                      array_size: int | None = None) -> list[str]:
    """The #SBATCH lines for ``cluster``: one task per GPU (or per CPU rank), requeueable;
    with ``array_size``, a job array of that many tasks (one log file per task)."""
    opts = [f"--job-name={job_name}", f"--nodes={cluster.nodes}",
            f"--ntasks-per-node={cluster.tasks_per_node}"]
    if array_size:
        opts.append(f"--array=0-{array_size - 1}")
    if cluster.gpus_per_node:
        opts.append(f"--gpus-per-node={cluster.gpus_per_node}")
    opts += [f"--cpus-per-task={cluster.cpus_per_task}",
             f"--mem={cluster.mem_gb}G" if cluster.mem_gb else "--mem=0",
             f"--time={slurm_time(cluster.time_min)}",
             f"--signal=B:USR2@{cluster.signal_delay_s}",
             "--requeue", "--open-mode=append",
             f"--output={log_dir}/%x-{'%A_%a' if array_size else '%j'}.out"]
    for flag, value in (("partition", cluster.partition), ("account", cluster.account),
                        ("qos", cluster.qos)):
        if value:
            opts.append(f"--{flag}={value}")
    if cluster.exclusive:
        opts.append("--exclusive")
    return [f"#SBATCH {opt}" for opt in opts]


def _body(template: Path) -> str:
    text = template.read_text()
    start = text.find(BODY_MARKER)
    if start < 0:
        raise ValueError(f"{template} has no line starting with {BODY_MARKER!r}")
    return text[start:]


def render_sbatch(entry: EntryPoint, cluster: ClusterConfig, overrides: Sequence[str], *,
                  job_name: str, log_dir: Path, root: Path, python: str,
                  array_size: int | None = None) -> str:
    """The complete sbatch script of one job (see the module docstring); ``array_size``
    makes it a job array (the tasks read SLURM_ARRAY_TASK_ID/COUNT)."""
    env = {"PRIME_MCORE_ROOT": str(root), "PRIME_SITE": cluster.site, "PRIME_PYTHON": python,
           "PRIME_MODULE": entry.module, "PRIME_MAX_REQUEUES": str(cluster.max_requeues)}
    args = " ".join(shlex.quote(o) for o in overrides)
    lines = [
        "#!/bin/bash",
        f"# Rendered by prime_mcore.launch from the run's ClusterConfig and slurm/{entry.sbatch}.",
        "# This is the script that was queued; re-submit it by hand with `sbatch <this file>`",
        "# (extra arguments are appended to the hydra overrides below).",
        *sbatch_directives(cluster, job_name, log_dir, array_size),
        *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
        f'set -- {args} "$@"' if args else "",
        "",
    ]
    return "\n".join(lines) + _body(root / "slurm" / entry.sbatch)


def _dependency_args(after: Sequence[str]) -> list[str]:
    if not after:
        return []
    # Without --kill-on-invalid-dep a job whose predecessor failed pends forever.
    return [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]


def check_sbatch(script: Path) -> str | None:
    """``sbatch --test-only``: Slurm checks the request (partition, nodes, GPUs, time) against
    the cluster without queueing anything. Returns Slurm's error, or None when it fits."""
    proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode == 0:
        return None
    return (proc.stderr or proc.stdout).strip() or f"sbatch --test-only exited {proc.returncode}"


def submit_sbatch(script: Path, after: Sequence[str] = ()) -> str:
    """Queue ``script`` (after the jobs ``after`` succeeded); returns the Slurm job id."""
    cmd = ["sbatch", "--parsable", *_dependency_args(after), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]
