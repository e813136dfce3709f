"""The curation summary: decisions, attempt outcomes, the difficulty histogram the online
filter will see, per-source counts; as JSON, as a markdown table and on stdout."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prime_mcore.curation.agreement import DECISIONS, KEPT, Histogram, difficulty_histogram
from prime_mcore.curation.shards import atomic_write_text

__all__ = ["summarize", "render_markdown", "write_summary"]


def _hist(h: Histogram) -> dict[str, Any]:
    return {"edges": h.edges, "counts": h.counts, "in_band": h.in_band, "band": [h.low, h.high]}


def summarize(rows: Sequence[dict[str, Any]], *, bins: int = 10, low: float = 0.2,
              high: float = 0.8) -> dict[str, Any]:
    """Summary of per-problem stats records (rows of stats.parquet)."""
    decisions = Counter(r["decision"] for r in rows)
    attempts: Counter[str] = Counter()
    for r in rows:
        attempts.update(json.loads(r["reason_counts"]))
    rates = [r["solve_rate"] for r in rows]
    kept_rates = [r["solve_rate"] for r in rows if r["decision"] == KEPT]
    h_all = difficulty_histogram(rates, bins=bins, low=low, high=high)
    h_kept = difficulty_histogram(kept_rates, bins=bins, low=low, high=high)
    sources: dict[str, Counter[str]] = {}
    for r in rows:
        sources.setdefault(r["data_source"], Counter())[r["decision"]] += 1
    n = len(rows)
    metrics = {"curate/problems": n, "curate/kept": decisions[KEPT],
               "curate/kept_fraction": decisions[KEPT] / n if n else 0.0,
               "curate/solve_rate_mean": sum(rates) / n if n else 0.0,
               "curate/in_band_all": h_all.in_band, "curate/in_band_kept": h_kept.in_band,
               "curate/attempts": sum(attempts.values()),
               "curate/truncated": sum(r["n_truncated"] for r in rows)}
    metrics.update({f"curate/reject/{d}": decisions[d] for d in DECISIONS if d != KEPT})
    metrics.update({f"curate/attempt/{k}": v for k, v in sorted(attempts.items())})
    return {"metrics": metrics, "decisions": {d: decisions[d] for d in DECISIONS},
            "attempts": dict(sorted(attempts.items())), "histogram_all": _hist(h_all),
            "histogram_kept": _hist(h_kept),
            "by_source": {s: {"problems": sum(c.values()), "kept": c[KEPT]}
                          for s, c in sorted(sources.items())}}


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_markdown(summary: dict[str, Any], title: str) -> str:
    """The summary table (decisions, attempts, difficulty histogram, sources)."""
    n = summary["metrics"]["curate/problems"]
    ha, hk = summary["histogram_all"], summary["histogram_kept"]
    low, high = ha["band"]
    lines = [f"# {title}", "",
             f"Input rows: {summary.get('input_rows', n)}; bad rows skipped: "
             f"{summary.get('bad_rows_skipped', 0)}; shards: {summary.get('num_shards', 1)}.",
             "", "| decision | problems | share |", "|---|---|---|"]
    lines += [f"| {d} | {c} | {_pct(c, n)} |" for d, c in summary["decisions"].items()]
    total = sum(summary["attempts"].values())
    lines += ["", "| attempt outcome | attempts | share |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {_pct(v, total)} |" for k, v in summary["attempts"].items()]
    lines += ["", "Validator solve rate (what the online accuracy filter will see):", "",
              "| solve rate | all problems | kept |", "|---|---|---|"]
    edges = ha["edges"]
    for i, (ca, ck) in enumerate(zip(ha["counts"], hk["counts"])):
        close = "]" if i == len(ha["counts"]) - 1 else ")"
        lines.append(f"| [{edges[i]:.2f}, {edges[i + 1]:.2f}{close} | {ca} | {ck} |")
    lines += ["", f"Share with solve rate in [{low:g}, {high:g}]: all problems "
              f"{100 * ha['in_band']:.1f}%, kept {100 * hk['in_band']:.1f}%.", "",
              "| data_source | problems | kept | share kept |", "|---|---|---|---|"]
    lines += [f"| {s} | {c['problems']} | {c['kept']} | {_pct(c['kept'], c['problems'])} |"
              for s, c in summary["by_source"].items()]
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, summary: dict[str, Any], title: str) -> None:
    """summary.json and summary.md in ``run_dir`` (atomically); the table goes to stdout."""
    text = render_markdown(summary, title)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(run_dir / "summary.md", text)
    print(text, flush=True)
