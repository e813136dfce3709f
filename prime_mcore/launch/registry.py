"""What can be launched: job kinds mapped to entry-point modules, their config and sbatch file.

A job is named by its kind ("sft" | "rl" | "eval" | "curate") plus hydra overrides. The kind selects the
module that ``srun`` starts (``python -m <module> <overrides>``), the hydra config the module
composes (``configs/<config>.yaml``), and the sbatch file whose body the launcher renders into
the run directory. Any importable module that follows the same contract can stand in for a
kind's module (``--module``); tests use this to run a toy trainer before the real ones exist.

The contract an entry-point module fulfils::

    def main(cfg) -> dict[str, float] | None:
        # cfg: the typed config (e.g. RLConfig) with .run (RunConfig) and .cluster
        # (ClusterConfig); resume from <run.output_dir>/<run.name>/checkpoints/ when present;
        # return the final metrics (every rank may return them).

    if __name__ == "__main__":
        from prime_mcore.launch import run_cli
        run_cli(main, "<config>")
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["EntryPoint", "ENTRY_POINTS", "entry_point", "repo_root", "compose", "to_typed"]


@dataclass(frozen=True)
class EntryPoint:
    """One launchable job kind."""

    kind: str
    """"sft", "rl", "eval" or "curate": names the job and selects the sbatch file."""
    module: str
    """Module run as ``python -m <module> <overrides>`` on every rank; defines ``main(cfg)``."""
    config: str
    """Hydra config name under ``configs/`` that the module composes (``configs/<config>.yaml``)."""
    sbatch: str
    """The sbatch file under ``slurm/`` whose body is rendered into the run directory."""
    shards: str | None = None
    """Config section with ``num_shards`` / ``shard_index`` for kinds that run as a Slurm job
    array (one task per shard, e.g. "curate"); None for single jobs."""


ENTRY_POINTS: dict[str, EntryPoint] = {
    "sft": EntryPoint(kind="sft", module="prime_mcore.sft", config="sft", sbatch="sft.sbatch"),
    "rl": EntryPoint(kind="rl", module="prime_mcore.rl", config="rl", sbatch="prime_rl.sbatch"),
    "eval": EntryPoint(kind="eval", module="prime_mcore.eval", config="eval", sbatch="eval.sbatch"),
    "curate": EntryPoint(kind="curate", module="prime_mcore.curate", config="curate",
                         sbatch="curate.sbatch", shards="curate"),
}


def entry_point(kind: str | EntryPoint, module: str | None = None,
                config: str | None = None) -> EntryPoint:
    """The registered entry point of ``kind``, optionally with another module or config."""
    if isinstance(kind, EntryPoint):
        entry = kind
    elif kind in ENTRY_POINTS:
        entry = ENTRY_POINTS[kind]
    else:
        raise ValueError(f"unknown job kind {kind!r}; expected one of {sorted(ENTRY_POINTS)}")
    if module is not None:
        entry = replace(entry, module=module)
    if config is not None:
        entry = replace(entry, config=config)
    return entry


def repo_root() -> Path:
    """The checkout holding ``configs/`` and ``slurm/`` (``$PRIME_MCORE_ROOT`` overrides)."""
    root = Path(os.environ.get("PRIME_MCORE_ROOT") or Path(__file__).resolve().parents[2])
    for sub in ("configs", "slurm"):
        if not (root / sub).is_dir():
            raise RuntimeError(f"{root} has no {sub}/: run from a prime_mcore checkout or set "
                               f"PRIME_MCORE_ROOT to one")
    return root


_COMPOSE_LOCK = threading.Lock()


def compose(config: str, overrides: Sequence[str]) -> Any:
    """Compose ``configs/<config>.yaml`` with hydra overrides; returns the DictConfig.

    Raises hydra/omegaconf errors for unknown configs, groups or keys. Thread-safe: hydra
    keeps one global state per process, and two threads composing at once make the second
    fail with "GlobalHydra is already initialized" (the demo checks arms from a pool).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from prime_mcore.config import register_configs

    register_configs()
    with _COMPOSE_LOCK, initialize_config_dir(config_dir=str(repo_root() / "configs"),
                                              version_base="1.3"):
        return hydra_compose(config_name=config, overrides=list(overrides))


def to_typed(cfg: Any) -> Any:
    """DictConfig -> the typed dataclass tree; runs every ``__post_init__`` check."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)
