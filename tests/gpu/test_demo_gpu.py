"""`make demo`'s pipeline on a GPU node (skipped without CUDA): SFT -> continued SFT, RLOO,
PRIME -> greedy eval, each stage a child process that finds the GPU (--quick settings: the
plumbing is checked, the numbers are meaningless)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prime_mcore import demo

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_quick_demo_runs_every_arm_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    results = demo.run_demo(demo.DemoSettings(out=out, seeds=(1,), quick=True, jobs=1))
    assert set(results) == set(demo.ARMS)
    for arm in demo.ARMS:
        (rec,) = results[arm]
        assert 0.0 <= rec["accuracy"] <= 1.0 and rec["wall_s"] > 0
    for algo in ("rloo", "prime"):
        rows = [json.loads(r) for r in (out / f"{algo}_s1" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        assert rows[0]["rollout/logprob_gap_mean"] < 1e-3  # GPU rollouts vs GPU engine, fp32
    assert demo.LABELS["prime"] in (out / "results.md").read_text()
