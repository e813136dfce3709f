"""PRIME vs outcome-only RLOO on the built-in task: sample efficiency and cost per step.

Seeds 1..N of PRIME and of RLOO with identical settings (configs/experiment/demo_rl.yaml)
from one SFT checkpoint (configs/experiment/sft_demo.yaml). The runs are the demo's own
(``prime_mcore.demo``): with the same ``--out`` finished runs are reused, not repeated.

Measured, from each run's metrics.jsonl:
- training-reward curves (``train/accuracy``: the mean verifier score of every response
  generated in the step, before the accuracy filter), 10-step moving average, as a PNG;
- steps PRIME needs to reach RLOO's final reward: the first step where PRIME's
  seed-averaged moving average reaches RLOO's at its last step, as a fraction of the steps
  (the paper: 40%); also per seed;
- per-step time ratio PRIME/RLOO: mean seconds per step without eval and checkpoint time;
  the PRIME and RLOO runs of a seed run at the same time (one process each), so both see
  the same machine load (the paper: 1.28).

    .venv/bin/python benchmarks/prime_vs_rloo.py [--out runs/demo] [--seeds 3] [--jobs 0] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from prime_mcore.demo import DemoSettings
from prime_mcore.demo.runner import progress, run_sft, run_stages
from prime_mcore.trainers.metrics import read_metrics, step_seconds
from prime_mcore.trainers.report import markdown_table, moving_average

WINDOW = 10
ALGOS = ("rloo", "prime")


PHASES = ("rollout", "old_logprobs", "prm", "advantages", "policy_update", "weight_sync")


def phase_table(rows: dict[str, dict[int, list[dict]]]) -> str:
    """Mean seconds per step of every phase, over all seeds, RLOO next to PRIME."""
    def mean(algo: str, key: str) -> float:
        return statistics.fmean(r.get(key) or 0.0 for runs in rows[algo].values() for r in runs)

    table = []
    for phase in (*PHASES, "step"):
        key = f"time/{phase}"
        r, p = mean("rloo", key), mean("prime", key)
        table.append((phase if phase != "step" else "**step (all phases)**", f"{r:.3f}",
                      f"{p:.3f}", f"{p / r:.2f}" if r > 1e-3 else "-"))
    return markdown_table(["phase (s per step)", "RLOO", "PRIME", "PRIME/RLOO"], table)


def first_reach(curve: list[float], target: float, *, start: int = 1) -> int | None:
    """1-based step >= ``start`` at which ``curve`` first reaches ``target`` (None: never).
    Pass start=WINDOW for a moving average: its first points average fewer steps."""
    return next((k + 1 for k, v in enumerate(curve) if k + 1 >= start and v >= target), None)


def mean_curve(curves: list[list[float]]) -> list[float]:
    return [statistics.fmean(vals) for vals in zip(*curves, strict=True)]


def analyse(out: Path, seeds: tuple[int, ...]) -> tuple[str, dict]:
    """The markdown report and the figures, from the runs' metrics."""
    rows = {a: {s: read_metrics(out / f"{a}_s{s}" / "metrics.jsonl") for s in seeds}
            for a in ALGOS}
    reward = {a: {s: [r["train/accuracy"] for r in rows[a][s]] for s in seeds} for a in ALGOS}
    smooth = {a: {s: moving_average(reward[a][s], WINDOW) for s in seeds} for a in ALGOS}
    mean = {a: moving_average(mean_curve(list(reward[a].values())), WINDOW) for a in ALGOS}
    steps = len(mean["prime"])
    per_seed, table = {}, []
    for s in seeds:
        reach = first_reach(smooth["prime"][s], smooth["rloo"][s][-1], start=min(WINDOW, steps))
        t = {a: statistics.fmean(step_seconds(r) for r in rows[a][s]) for a in ALGOS}
        per_seed[s] = {"reach": reach, "ratio": t["prime"] / t["rloo"]}
        table.append((f"seed {s}", f"{smooth['rloo'][s][-1]:.3f}", f"{smooth['prime'][s][-1]:.3f}",
                      f"{reach}/{steps}" if reach else f"not within {steps}",
                      f"{t['rloo']:.2f}", f"{t['prime']:.2f}", f"{t['prime'] / t['rloo']:.2f}"))
    reach = first_reach(mean["prime"], mean["rloo"][-1], start=min(WINDOW, steps))
    ratios = [v["ratio"] for v in per_seed.values()]
    ratio = statistics.fmean(ratios)
    table.append(("mean curve", f"{mean['rloo'][-1]:.3f}", f"{mean['prime'][-1]:.3f}",
                  f"{reach}/{steps}" if reach else f"not within {steps}", "", "",
                  f"{ratio:.2f}"))
    frac = reach / steps if reach else None
    text = "\n".join([
        "# PRIME vs outcome-only RLOO (built-in task)", "",
        f"{len(seeds)} seeds each, identical settings, {steps} RL steps; training reward = "
        f"mean verifier score of all generated responses per step, {WINDOW}-step moving average.",
        "",
        markdown_table(["run", "RLOO final reward", "PRIME final reward",
                        "PRIME steps to RLOO final", "RLOO s/step", "PRIME s/step",
                        "time ratio PRIME/RLOO"], table), "",
        "- Steps PRIME needs to reach RLOO's final reward: "
        + (f"**{100 * frac:.0f}%** of the steps" if frac else "**not reached**")
        + " (paper: 40%).",
        f"- Per-step time ratio PRIME/RLOO: **{ratio:.2f}** (per seed "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; paper: 1.28).", "",
        "Per phase (PRIME's `prm` phase holds the reference and PRM forwards and the PRM "
        "update; the RLOO and PRIME runs of a seed ran at the same time):", "",
        phase_table(rows), "",
        "![reward curves](prime_vs_rloo.png)", ""])
    plot(out, seeds, reward, smooth, mean)
    return text, {"fraction": frac, "ratio": ratio, "per_seed": per_seed}


def plot(out: Path, seeds, reward, smooth, mean) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for algo, color in (("rloo", "tab:blue"), ("prime", "tab:red")):
        for s in seeds:
            ax.plot(range(1, len(smooth[algo][s]) + 1), smooth[algo][s], color=color,
                    alpha=0.35, lw=1)
        ax.plot(range(1, len(mean[algo]) + 1), mean[algo], color=color, lw=2.5,
                label=f"{algo.upper()} (mean of {len(seeds)} seeds)")
    ax.axhline(mean["rloo"][-1], color="tab:blue", ls=":", lw=1)
    ax.set(xlabel="RL step", ylabel=f"training reward ({WINDOW}-step moving average)",
           title="PRIME vs outcome-only RLOO")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "prime_vs_rloo.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DemoSettings.out)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=DemoSettings.jobs,
                        help="runs at once, one per process (0: one per CPU core)")
    parser.add_argument("--analyse-only", action="store_true",
                        help="only read the finished runs under --out (no training)")
    args = parser.parse_args()
    s = DemoSettings(out=args.out, seeds=tuple(range(1, args.seeds + 1)), quick=args.quick,
                     jobs=args.jobs)
    if args.analyse_only:
        text, _ = analyse(s.out, s.seeds)
        (s.out / "prime_vs_rloo.md").write_text(text)
        print(text)
        return
    note = progress()
    run_sft(s, note)
    # PRIME and RLOO of a seed run side by side, so both see the same machine load
    run_stages(s, [(algo, seed) for seed in s.seeds for algo in ALGOS], note)
    text, _ = analyse(s.out, s.seeds)
    (s.out / "prime_vs_rloo.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
