"""report.md with tables and PNG plots from a run's metrics.jsonl."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prime_mcore.trainers.metrics import read_metrics

# The curves a PRIME run is judged by (PAPER Fig. 3 and 5); missing keys are skipped.
DEFAULT_PLOTS = (
    ("train/accuracy", "training outcome reward"),
    ("filter/pass_rate", "accuracy-filter pass rate"),
    ("prm/ce_loss", "PRM CE loss"),
    ("prm/dpo_acc", "PRM dpo_acc"),
    ("response/length_mean", "response length"),
    ("eval/accuracy", "held-out greedy accuracy"),
    ("time/step", "seconds per step"),
)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-window:]
        out.append(sum(acc) / len(acc))
    return out


def plot_metrics(rows: list[dict], out_dir: Path, keys=DEFAULT_PLOTS) -> list[Path]:
    """One PNG per metric present in rows; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, title in keys:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if not pts:
            continue
        steps, vals = zip(*pts)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(steps, vals, marker="o" if len(pts) < 30 else None, lw=1)
        if len(pts) >= 10:
            ax.plot(steps, moving_average(vals, 10), lw=2, label="10-step mean")
            ax.legend()
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        path = out_dir / (key.replace("/", "_") + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(x):
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(run_dir: str | Path, *, title: str, extra: str = "") -> Path:
    """Write <run_dir>/report.md: last/best values of the main metrics, plots, ``extra``."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    plots = plot_metrics(rows, run_dir)
    summary = []
    for key, label in DEFAULT_PLOTS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            summary.append((label, key, vals[0], vals[-1], min(vals), max(vals)))
    text = [f"# {title}", "", f"{len(rows)} steps logged.", "",
            markdown_table(["metric", "key", "first", "last", "min", "max"], summary), ""]
    if extra:
        text += [extra, ""]
    text += [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path
