"""Step checkpoints of a run: ``<root>/step_<N>/{<engine name>/, trainer_state.pt}``.

A step directory appears only complete: engines and the trainer state are written into
``.step_<N>.tmp`` and rank 0 renames it after a barrier. After each save only the newest
``keep_last`` step directories are kept.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from prime_mcore.engine.checkpoint import atomic_dir, publish
from prime_mcore.engine.engine import Engine
from prime_mcore.engine.manifest import CheckpointError

__all__ = ["CheckpointManager"]

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TRAINER_STATE = "trainer_state.pt"


class CheckpointManager:
    """Atomic, pruned step checkpoints of several engines plus the trainer's state."""

    def __init__(self, root: str | Path, *, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.root = Path(root)
        self.keep_last = keep_last

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        if not self.root.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> Path | None:
        """The newest complete step directory, or None."""
        steps = self.steps()
        return self.root / f"step_{steps[-1]}" if steps else None

    def save(self, step: int, engines: Mapping[str, Engine],
             user_data: dict[str, Any] | None = None) -> Path:
        """Collective: save every engine (by name) and ``user_data`` as ``step_<step>``.

        ``user_data`` holds tensors, numbers, strings, lists and dicts (loaded with
        ``torch.load(weights_only=True)``).
        """
        target = self.root / f"step_{step}"
        tmp = atomic_dir(target)
        for name, engine in engines.items():
            engine.save(tmp / name, step=step)
        if dist.get_rank() == 0:
            torch.save({"step": step, "user_data": dict(user_data or {})}, tmp / _TRAINER_STATE)
        publish(tmp, target)
        self._prune()
        return target

    def load(self, path: str | Path, engines: Mapping[str, Engine]) -> tuple[int, dict[str, Any]]:
        """Collective: load every engine from ``path``; returns (step, user_data)."""
        path = Path(path)
        state_file = path / _TRAINER_STATE
        if not state_file.is_file():
            raise CheckpointError(f"{state_file} is missing: not a complete step checkpoint")
        for name, engine in engines.items():
            engine.load(path / name)
        try:
            state = torch.load(state_file, weights_only=True)
        except Exception as err:  # pickle/zip errors of many kinds
            raise CheckpointError(f"{state_file} is corrupt: {err}") from err
        return int(state["step"]), dict(state["user_data"])

    def _prune(self) -> None:
        if dist.get_rank() == 0:
            for step in self.steps()[:-self.keep_last]:
                shutil.rmtree(self.root / f"step_{step}", ignore_errors=True)
        dist.barrier()
