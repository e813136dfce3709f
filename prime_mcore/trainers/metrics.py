"""Per-step metrics: phase timers, metrics.jsonl and TensorBoard (rank 0 writes).

Every line of metrics.jsonl is one JSON object with "step" plus flat float metrics; lines
are flushed as they are written so a crashed run keeps every finished step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class PhaseTimer:
    """Wall time per named phase of a step: ``with timer("rollout"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self, *, total: bool = True) -> dict[str, float]:
        """The step's timings as ``time/<phase>`` metrics, plus ``time/step`` (their sum) when
        ``total``; resets. Sub-phases (``"prm/update"``) are timed by their own timer and
        popped with ``total=False``, so the step's sum counts each second once."""
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        if total:
            out["time/step"] = sum(self.seconds.values())
        self.seconds = {}
        return out


def _clean(metrics: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        v = float(v)
        out[k] = v if math.isfinite(v) else None  # JSON has no NaN; keep the key visible
    return out


class MetricsWriter:
    """Append-only metrics.jsonl plus TensorBoard events under the run directory."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps > step (a resumed run rewrites them, so nothing is doubled)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(self.path)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **_clean(metrics)}
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a metrics.jsonl file, in order."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def step_seconds(row: Mapping[str, float]) -> float:
    """A metrics row's step time without its periodic eval and checkpoint (benchmarks)."""
    return row["time/step"] - (row.get("time/eval") or 0.0) - (row.get("time/checkpoint") or 0.0)
