"""SFT trace generation: ``python -m prime_mcore.sft_data data.train_files=[...] model.hf_path=T``.

A teacher model answers RL problems (math rows of Eurus-2-RL-Data-style parquet) with the
spec's action system prompt, ``rollout.n_samples`` attempts each. A trace is kept when it
follows the seven-action format ([ASSESS] ... [OUTPUT] with a \\boxed answer) and the
verifier finds the right answer (prime_mcore/curation/traces.py); at most
``traces.max_per_problem`` per problem. Writes into ``<run.output_dir>/<run.name>/``:
``sft.parquet`` (prompt messages + response, what ``python -m prime_mcore.sft`` reads),
``rejected.jsonl`` (each rejected trace with its kind) and ``summary.json`` / ``summary.md``
(traces by kind: accepted, truncated, each format violation, wrong or missing answers).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prime_mcore.config import SFTDataConfig

log = logging.getLogger("prime_mcore")


def _system_prompt(value: str | None) -> str | None:
    from prime_mcore.data.prompts import ACTION_SYSTEM_PROMPT

    return ACTION_SYSTEM_PROMPT if value == "action" else value


def _render(summary: dict, title: str) -> str:
    kinds, total = summary["kinds"], sum(summary["kinds"].values())
    lines = [f"# {title}", "",
             f"Problems: {summary['problems']} (math; {summary['skipped_non_math']} non-math "
             f"rows and {summary['bad_rows_skipped']} bad rows skipped); traces sampled: "
             f"{total}; SFT rows written: {summary['rows_written']} covering "
             f"{summary['problems_covered']} problems.", "",
             "| trace kind | traces | share |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {100 * v / total:.1f}% |" for k, v in kinds.items() if v or
              k == "accepted"] if total else []
    return "\n".join(lines) + "\n"


def main(cfg: SFTDataConfig) -> dict[str, float]:
    """Generate, check and write the SFT traces of ``cfg``; returns counts per kind."""
    from tqdm import tqdm

    from prime_mcore.curation.sampling import Sampler, load_problems
    from prime_mcore.curation.shards import atomic_write_text
    from prime_mcore.curation.traces import count_kinds, judge_trace
    from prime_mcore.data.schema import SFTRow, write_sft_parquet
    from prime_mcore.rewards import VerifierPool

    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    problems, bad = load_problems(cfg.data.train_files, skip_bad_rows=cfg.data.skip_bad_rows,
                                  limit=cfg.traces.limit,
                                  system_prompt=_system_prompt(cfg.traces.system_prompt))
    math = [ex for ex in problems if ex.ability == "math"]
    if not math:
        raise ValueError(f"no math problems in {cfg.data.train_files}: SFT traces need a "
                         f"\\boxed ground truth to check")
    sampler, pool = Sampler(cfg.model, cfg.rollout), VerifierPool(cfg.traces.verifier_workers)
    rows, verdicts, covered = [], [], 0
    size = cfg.traces.chunk_size
    try:
        with (run_dir / "rejected.jsonl").open("w") as rejected, \
                tqdm(total=len(math), desc="sft traces", unit="problem") as bar:
            for lo in range(0, len(math), size):
                chunk = math[lo:lo + size]
                responses = sampler.sample(chunk, seed=cfg.rollout.seed + lo)
                graded = iter(pool.score([(ex.ability, r.text, ex.ground_truth)
                                          for ex, rs in zip(chunk, responses) for r in rs]))
                for i, (ex, rs) in enumerate(zip(chunk, responses)):
                    kept = 0
                    for r in rs:
                        verdict = judge_trace(r.text, truncated=r.truncated,
                                              verifier_reason=str(next(graded).reason),
                                              strict=cfg.traces.strict_format)
                        verdicts.append(verdict)
                        if verdict.accepted and kept < cfg.traces.max_per_problem:
                            rows.append(SFTRow(prompt=ex.prompt, response=r.text.strip()))
                            kept += 1
                        elif not verdict.accepted:
                            rejected.write(json.dumps({"problem": lo + i, "kind": verdict.kind,
                                                       "response": r.text[:4000]}) + "\n")
                    covered += kept > 0
                bar.update(len(chunk))
    finally:
        sampler.close()
        pool.close()
    write_sft_parquet(rows, run_dir / "sft.parquet")
    summary = {"problems": len(math), "skipped_non_math": len(problems) - len(math),
               "bad_rows_skipped": bad, "rows_written": len(rows), "problems_covered": covered,
               "kinds": count_kinds(verdicts)}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    text = _render(summary, f"SFT traces `{cfg.run.name}`")
    atomic_write_text(run_dir / "summary.md", text)
    print(text, flush=True)
    return {"sft_data/rows": float(len(rows)), "sft_data/problems_covered": float(covered),
            **{f"sft_data/{k}": float(v) for k, v in summary["kinds"].items()}}


if __name__ == "__main__":
    from prime_mcore.launch import run_cli

    run_cli(main, "sft_data")
