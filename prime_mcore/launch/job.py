"""The callables submitit runs on every rank: a checkpointable job and the sweep task.

Resuming is the trainer's job (``main(cfg)`` restarts from the latest checkpoint under
``<run.output_dir>/<run.name>/checkpoints/``), so calling the same job again is idempotent and
requeueing needs no state: :meth:`TrainJob.checkpoint` resubmits the call unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import submitit

from prime_mcore.launch.entry import run_entry, run_main
from prime_mcore.launch.registry import EntryPoint, to_typed

__all__ = ["TrainJob", "sweep_run_name", "sweep_task"]


class TrainJob(submitit.helpers.Checkpointable):
    """``<entry.module>.main(cfg)`` with ``cfg`` composed from ``overrides``; requeues itself.

    On timeout (USR2 ``signal_delay_s`` before the limit) or preemption, submitit calls
    :meth:`checkpoint` on global rank 0 and requeues the job; the new run resumes from the
    trainer's last periodic checkpoint.
    """

    def __init__(self, entry: EntryPoint, overrides: Sequence[str]) -> None:
        self.entry = entry
        self.overrides = tuple(overrides)

    def __call__(self) -> Any:
        return run_entry(self.entry, self.overrides)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Runs inside submitit's signal handler on rank 0 only: a collective save cannot
        # happen here (the other ranks are elsewhere), and a save interrupted by the kill would
        # be torn. The trainer's periodic atomic checkpoints are the resume point.
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def sweep_run_name(base: str, combo: Sequence[str], swept_keys: Sequence[str]) -> str:
    """The run name of one sweep point: ``<base>/<swept key=value,...>``, e.g.
    ``"toy/run.seed=1"``, so points never share a run directory. Unchanged when nothing is
    swept or when run.name itself is ("/" in values becomes "_": one directory level)."""
    from prime_mcore.launch.preflight import override_key

    if not swept_keys or "run.name" in swept_keys:
        return base
    items = [o.lstrip("+") for o in combo if override_key(o) in swept_keys]
    return f"{base}/" + ",".join(items).replace("/", "_")


def sweep_task(entry: EntryPoint, swept_keys: tuple[str, ...], cfg: Any) -> Any:
    """hydra's task function for one sweep point (runs in the job, on every rank): names the
    run as the launcher's preflight did, then runs the entry point's ``main``."""
    import importlib

    from hydra.core.hydra_config import HydraConfig

    combo = list(HydraConfig.get().overrides.task)
    cfg.run.name = sweep_run_name(cfg.run.name, combo, swept_keys)
    return run_main(importlib.import_module(entry.module).main, to_typed(cfg))
