"""``python -m prime_mcore.eval suite=paper`` end to end on the shared benchmark copy: one
item of each benchmark file format (AIME/AMC jsonl, MATH-500 column JSON, the Qwen-Math
jsonl of Minerva and OlympiadBench, LeetCode JSON with the sandbox), a tiny random model,
and the results table. LiveCodeBench is not redistributed: skip_missing leaves it out."""

import csv
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prime_mcore.data.benchmarks import CATALOG, PAPER_SUITE
from prime_mcore.launch.registry import compose

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "benchmarks"

pytestmark = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared benchmark copy absent ({SHARED.resolve()}): "
    "point data_root at PRIME's eval/data to run the paper suite end to end")


def test_paper_suite_runs_end_to_end_and_writes_the_table(tmp_path):
    from prime_mcore.eval import main

    cfg = OmegaConf.to_object(compose("eval", [
        "experiment=eval_tiny_cpu", "suite=paper", f"data_root={SHARED}", "skip_missing=true",
        "limit=1", "max_tokens=8", "verifier_workers=1", "data.builtin_num_train=200",
        "data.builtin_num_val=8", "data.builtin_num_test=8", f"run.output_dir={tmp_path}",
        "run.name=paper"]))
    metrics = main(cfg)
    present = [CATALOG[k].name for k in PAPER_SUITE if (SHARED / CATALOG[k].path).exists()]
    assert "LiveCodeBench" not in present and len(present) == 6
    rows = list(csv.reader((tmp_path / "paper" / "results.csv").open()))
    assert rows[0] == ["model", "metric", *present, "builtin", "Avg"]
    assert [r[1] for r in rows[1:]] == ["pass@1"]
    assert all(0.0 <= float(v) <= 1.0 for v in rows[1][2:])
    assert len([k for k in metrics if k.endswith(tuple(present))]) == 6
    md = (tmp_path / "paper" / "results.md").read_text()
    assert "| Model | Metric | AIME 2024 | AMC | MATH-500 |" in md
    assert "- LeetCode: 1 items, n=1, T=0, top_p=1, max_tokens=8" in md
    items = (tmp_path / "paper" / "items.jsonl").read_text().splitlines()
    assert len(items) == 7  # one per benchmark, plus the built-in test split
