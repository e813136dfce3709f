"""Eval entry point: ``python -m prime_mcore.eval [suite=paper data_root=DIR] [key=value ...]``.

Evaluates each of ``checkpoints`` (or the weights ``model`` points at) on the suite's
benchmarks and writes into ``<run.output_dir>/<run.name>/``: ``results.md`` and
``results.csv`` (the paper's Table 1 layout: rows = models and metrics, columns = benchmarks
+ Avg) and ``items.jsonl`` (per item: prompt, responses, extracted answers, scores, reasons).

Examples::

    python -m prime_mcore.eval suite=paper data_root=/data/benchmarks \\
        model.hf_path=/ckpt/Eurus-2-7B-PRIME            # greedy pass@1, the paper's Table 1
    python -m prime_mcore.eval suite=math data_root=/data/benchmarks mode=avg@k k=16 \\
        checkpoints=[sft:/runs/sft/hf,prime:/runs/prime/checkpoints/step_592/policy]
    python -m prime_mcore.eval files=[/data/math500.json] best_of_n=64 \\
        prm_path=/ckpt/EurusPRM ref_path=/ckpt/Qwen2.5-Math-7B-Instruct prm_beta=0.001
    python -m prime_mcore.eval experiment=eval_tiny_cpu   # CPU smoke test, built-in task
"""

from __future__ import annotations

import csv
from pathlib import Path

from prime_mcore.config import EvalConfig

Table = dict[tuple[str, str], dict[str, float]]


def table_rows(table: Table, benchmarks: list[str]) -> list[list[object]]:
    """[model, metric, value per benchmark (None when absent), Avg over present values]."""
    rows: list[list[object]] = []
    for (model, metric), values in table.items():
        cells = [values.get(b) for b in benchmarks]
        present = [v for v in cells if v is not None]
        rows.append([model, metric, *cells, sum(present) / len(present) if present else None])
    return rows


def write_results(run_dir: Path, table: Table, benchmarks: list[str], cfg: EvalConfig,
                  notes: dict[str, str] | None = None) -> None:
    """``results.csv`` (fractions in [0, 1]) and ``results.md`` (percent, one decimal);
    ``notes``: the sampling each benchmark was run with, listed under the table."""
    rows = table_rows(table, benchmarks)
    header = ["model", "metric", *benchmarks, "Avg"]
    with (run_dir / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[("" if v is None else v) for v in row] for row in rows])
    cell = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    sampling = ("greedy, each benchmark's own settings (spec 10)" if cfg.mode == "greedy" else
                f"avg@{cfg.k} at T={cfg.temperature:g}, top_p={cfg.top_p:g}")
    lines = [f"# Evaluation `{cfg.run.name}` (suite: {cfg.suite.name})", "",
             f"Sampling: {sampling}; items per benchmark: {cfg.limit or 'all'}"
             + (f"; best-of-{cfg.best_of_n} with the implicit PRM (beta={cfg.prm_beta:g}, "
                f"{cfg.prm_aggregate} over steps) at T={cfg.bon_temperature:g}"
                if cfg.best_of_n else "") + ".", "",
             "| " + " | ".join(["Model", "Metric", *benchmarks, "Avg"]) + " |",
             "|" + "---|" * (len(benchmarks) + 3)]
    lines += ["| " + " | ".join([str(r[0]), str(r[1]), *map(cell, r[2:])]) + " |" for r in rows]
    lines += ["", *[f"- {name}: {note}" for name, note in (notes or {}).items()], "",
              "Per-item prompts, responses, answers, scores and reasons: `items.jsonl`.", ""]
    (run_dir / "results.md").write_text("\n".join(lines))


def main(cfg: EvalConfig) -> dict[str, float]:
    """Run the evaluation of ``cfg``; returns ``eval/<model>/<metric>/<benchmark>`` values."""
    from prime_mcore.trainers.common import is_rank0
    from prime_mcore.trainers.eval import EvalTrainer

    trainer = EvalTrainer(cfg)
    table = trainer.run()
    if is_rank0():
        write_results(trainer.run_dir, table, [b.name for b in trainer.benchmarks], cfg,
                      trainer.notes)
    return {f"eval/{m}/{metric}/{b}": v for (m, metric), row in table.items()
            for b, v in row.items()}


if __name__ == "__main__":
    from prime_mcore.launch import run_cli

    run_cli(main, "eval")
