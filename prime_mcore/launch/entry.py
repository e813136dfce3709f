"""The job side of the launcher: what runs on every rank before a trainer's ``main(cfg)``.

Both launch paths end here. ``srun python -m prime_mcore.rl <overrides>`` (the sbatch files)
reaches :func:`run_cli` from the module's ``__main__`` block; a submitit job reaches
:func:`run_entry` from :class:`prime_mcore.launch.job.TrainJob`. Each exports the
torch.distributed variables from ``SLURM_*``, composes the hydra config, checks that the
allocation matches ``cfg.cluster`` and calls ``main(cfg)``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from prime_mcore.launch.env import DistEnv, export_dist_env
from prime_mcore.launch.registry import EntryPoint, compose, to_typed

__all__ = ["run_cli", "run_entry", "run_main", "check_world", "requeue_requested"]

_REQUEUE_REQUESTED = False


def requeue_requested() -> bool:
    """True once the sbatch script forwarded USR2: the job is being requeued (time limit or
    preemption). A loop may check it at a step boundary, e.g. to skip a long eval; saving stays
    periodic, because Slurm kills the step shortly after."""
    return _REQUEUE_REQUESTED


def _note_requeue(signum: int, frame: FrameType | None) -> None:
    # Only record: a handler interrupts arbitrary code (maybe a collective), so no I/O beyond
    # one line to stderr, and never a checkpoint save here.
    global _REQUEUE_REQUESTED
    _REQUEUE_REQUESTED = True
    os.write(2, f"[prime_mcore] rank {os.environ.get('RANK', '?')}: USR2, the job is being "
                "requeued; it resumes from the last checkpoint\n".encode())


def check_world(cfg: Any, dist: DistEnv) -> None:
    """The allocation (ranks actually started) must be what ``cfg.cluster`` was validated for."""
    cluster = getattr(cfg, "cluster", None)
    if cluster is not None and cluster.world_size != dist.world_size:
        raise ValueError(
            f"the job started {dist.world_size} rank(s) but the config was validated for "
            f"cluster.nodes * cluster.tasks_per_node = {cluster.nodes} * "
            f"{cluster.tasks_per_node} = {cluster.world_size}; make the sbatch options "
            f"(--nodes, --ntasks-per-node) and the cluster.* overrides agree")


def run_main(main: Callable[[Any], Any], cfg: Any) -> Any:
    """Export the distributed env, check it against ``cfg`` and call ``main(cfg)``."""
    dist = export_dist_env()
    check_world(cfg, dist)
    return main(cfg)


def run_entry(entry: EntryPoint, overrides: Sequence[str]) -> Any:
    """Compose ``entry``'s config with ``overrides`` and run ``<entry.module>.main(cfg)``."""
    cfg = to_typed(compose(entry.config, overrides))
    main = importlib.import_module(entry.module).main
    return run_main(main, cfg)


def run_cli(main: Callable[[Any], Any], config: str, argv: Sequence[str] | None = None) -> None:
    """``__main__`` of an entry-point module: ``python -m <module> [hydra overrides...]``.

    Config errors exit with status 2 and a one-line message (the same checks as the
    launcher's preflight, repeated because a job may be started by hand).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        spec = getattr(sys.modules["__main__"], "__spec__", None)  # set by `python -m`
        print(f"usage: python -m {spec.name if spec else main.__module__} [hydra overrides...]\n"
              f"  composes configs/{config}.yaml; e.g. experiment=tiny_cpu run.max_steps=3")
        return
    signal.signal(signal.SIGUSR2, _note_requeue)
    try:
        cfg = to_typed(compose(config, args))
        check_world(cfg, export_dist_env())
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        print(f"prime_mcore: invalid config: {err}", file=sys.stderr)
        sys.exit(2)
    main(cfg)
