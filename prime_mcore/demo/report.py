"""The demo's results table (results.md) and plots, from the arms' records."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from prime_mcore.demo.arms import ARMS, LABELS

log = logging.getLogger("prime_mcore")


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _task_spec(data_dir: Path) -> dict | None:
    """The built-in task's generation record (builtin.json), None when missing."""
    stamp = data_dir / "builtin.json"
    return json.loads(stamp.read_text()) if stamp.exists() else None


def _flags_of(spec: dict) -> list[tuple[str, bool]] | None:
    from prime_mcore.data.builtin_task import has_carry, make_splits

    (_, _, n_test), (lo, hi) = spec["n"], spec["operands"]
    test = make_splits(spec["seed"], *spec["n"], num_ops=spec["ops"], lo=lo, hi=hi).test
    return [(str(p.answer), has_carry(p)) for p in test] if len(test) == n_test else None


def carry_flags(data_dir: Path) -> list[tuple[str, bool]] | None:
    """Per test problem (rl_test.parquet order): (answer, does it carry or borrow?), rebuilt
    from the task's generation record (builtin.json); None when that record is missing."""
    spec = _task_spec(data_dir)
    return None if spec is None else _flags_of(spec)


def _fmean_or_na(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f}" if values else "n/a"


def carry_breakdown(results: dict[str, list[dict]], run_dirs: dict[tuple[str, int], Path],
                    data_dir: Path) -> str:
    """Accuracy on problems with and without a carry/borrow, per arm (mean over seeds):
    with slip_mode "carry" the SFT traces drop the carry, so this is where a reward can help
    and imitation cannot. Empty when the flags or an arm's eval_samples.jsonl do not line up
    with the test split (same length and, line by line, the same ground truth)."""
    from prime_mcore.trainers.report import markdown_table

    spec = _task_spec(data_dir)
    flags = None if spec is None else _flags_of(spec)
    if flags is None:
        return ""
    rows = []
    for arm in ARMS:
        per_kind: dict[bool, list[float]] = {True: [], False: []}
        for rec in results[arm]:
            path = run_dirs[(arm, rec.get("seed", 0))] / "eval_samples.jsonl"
            samples = ([json.loads(line) for line in path.read_text().splitlines()]
                       if path.exists() else [])
            if [sm.get("truth") for sm in samples] != [truth for truth, _ in flags]:
                log.warning("carry breakdown skipped: %s does not line up with the %d test "
                            "problems", path, len(flags))
                return ""
            for kind in (True, False):
                picked = [sm["score"] for sm, (_, f) in zip(samples, flags, strict=True)
                          if f == kind]
                if picked:
                    per_kind[kind].append(100 * statistics.fmean(picked))
        rows.append((LABELS[arm], *(_fmean_or_na(per_kind[k]) for k in (True, False))))
    n_carry = sum(f for _, f in flags)
    slip_rate, slip_mode = spec["slip"]
    why = ("the SFT traces drop the carry or borrow, so imitation learns the bug and only a "
           "reward can remove it" if slip_mode == "carry" and slip_rate > 0 else
           f"the SFT teacher's slips are {slip_mode!r} at rate {slip_rate}")
    return "\n".join([
        f"Accuracy by problem type (greedy %, mean over seeds): {why}.", "",
        markdown_table(["arm", f"with a carry or borrow ({n_carry})",
                        f"without ({len(flags) - n_carry})"], rows), ""])


def results_markdown(results: dict[str, list[dict]], total: dict[str, float],
                     breakdown: str = "") -> str:
    """The results table and the two comparisons the issue asks for, all measured;
    ``breakdown``: an optional section (``carry_breakdown``) after the comparisons."""
    from prime_mcore.trainers.report import markdown_table

    rows = []
    for arm in ARMS:
        recs = results[arm]
        m, sd = _ms([100 * r["accuracy"] for r in recs])
        rows.append((LABELS[arm], f"{m:.1f} ± {sd:.1f}", len(recs),
                     " / ".join(f"{100 * r['accuracy']:.1f}" for r in recs),
                     f"{recs[0]['steps']} x {recs[0]['batch']}",
                     f"{statistics.fmean(r['wall_s'] for r in recs):.0f}",
                     f"{statistics.fmean(r['cpu_s'] for r in recs):.0f}"))
    acc = {arm: [100 * r["accuracy"] for r in results[arm]] for arm in ARMS}
    best = max(("sft", "sft_more"), key=lambda a: statistics.fmean(acc[a]))
    gain = statistics.fmean(acc["prime"]) - statistics.fmean(acc[best])
    diffs = [p - r for p, r in zip(acc["prime"], acc["rloo"], strict=True)]
    dm, dsd = _ms(diffs)
    n = len(acc["prime"])
    text = [
        "# make demo: PRIME vs controls on the built-in task", "",
        f"Greedy accuracy (%) on the fixed held-out split ({results['sft'][0]['n']} problems); "
        f"mean ± std over seeds (the SFT run is shared, so its row has one value).", "",
        markdown_table(["arm", "accuracy", "runs", "per seed", "optimizer steps x seqs",
                        "train wall s", "train CPU s"], rows), "",
        f"- PRIME - best SFT control ({LABELS[best]}): **{gain:+.1f} points** "
        f"(target >= +10: {'met' if gain >= 10 else 'not met'}).",
        f"- PRIME - RLOO at equal steps: **{dm:+.1f} ± {dsd:.1f} points** "
        f"(per seed: {', '.join(f'{d:+.1f}' for d in diffs)}; PRIME >= RLOO in "
        f"{sum(d >= 0 for d in diffs)}/{n} seeds).",
        f"- Training of all runs: {sum(r['wall_s'] for a in ARMS for r in results[a]):.0f} s "
        f"wall summed over runs ({sum(r['cpu_s'] for a in ARMS for r in results[a]):.0f} s "
        f"CPU), evals excluded; this invocation: {total['wall_s']:.0f} s wall, "
        f"{total['cpu_s']:.0f} s CPU (finished stages are skipped and cost nothing).", "",
        *([breakdown] if breakdown else []),
        "![training reward](reward_curves.png) ![accuracy](eval_accuracy.png)", ""]
    return "\n".join(text)


def plot(results: dict[str, list[dict]], out: Path) -> None:
    """reward_curves.png (PRIME vs RLOO per seed) and eval_accuracy.png (every arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prime_mcore.trainers.metrics import read_metrics
    from prime_mcore.trainers.report import moving_average

    seeds = [r["seed"] for r in results["prime"]]
    fig, axes = plt.subplots(1, len(seeds), figsize=(4 * len(seeds), 3.2), squeeze=False)
    for ax, seed in zip(axes[0], seeds, strict=True):
        for algo, color in (("rloo", "tab:blue"), ("prime", "tab:red")):
            rows = read_metrics(out / f"{algo}_s{seed}" / "metrics.jsonl")
            steps = [r["step"] for r in rows]
            vals = [r["train/accuracy"] for r in rows]
            ax.plot(steps, vals, color=color, alpha=0.3, lw=1)
            ax.plot(steps, moving_average(vals, 10), color=color, lw=2, label=algo.upper())
        ax.set(title=f"seed {seed}", xlabel="RL step", ylabel="training reward")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_curves.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for k, arm in enumerate(ARMS):
        vals = [100 * r["accuracy"] for r in results[arm]]
        ax.bar(k, statistics.fmean(vals), color="0.8")
        ax.scatter([k] * len(vals), vals, color="k", zorder=3, s=12)
    ax.set_xticks(range(len(ARMS)), ["SFT", "SFT+more", "RLOO", "PRIME"])
    ax.set(ylabel="greedy test accuracy (%)", title="held-out accuracy per arm")
    fig.tight_layout()
    fig.savefig(out / "eval_accuracy.png", dpi=100)
    plt.close(fig)


