"""``python -m prime_mcore.curate``: shards of problems -> N graded attempts -> keep/reject.

Per chunk of a shard: sample ``rollout.n_samples`` attempts per problem from the validator,
grade them against the ground truth in the verifier pool, apply the agreement rule
(agreement.py) and save the chunk's per-problem statistics. When every chunk of a shard is
in, the shard writes ``stats.parquet`` (all problems) and ``kept.parquet`` (the kept rows in
the input's RL schema) and its done marker; when every shard is done, the merge writes the
run's ``stats.parquet``, ``kept.parquet``, ``summary.md`` and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from prime_mcore.config import CurateConfig
from prime_mcore.curation.agreement import Attempt, ProblemStats, decide
from prime_mcore.curation.report import summarize, write_summary
from prime_mcore.curation.sampling import Sampler, answer_key, load_problems
from prime_mcore.curation.shards import (
    ShardStore,
    atomic_write_table,
    resolve_shards,
    shard_bounds,
)
from prime_mcore.data.schema import RLExample, write_rl_parquet

log = logging.getLogger("prime_mcore")

__all__ = ["run_curation", "grade_problems", "stats_rows", "stats_schema", "fingerprint",
           "merge"]


def fingerprint(cfg: CurateConfig, num_rows: int) -> dict[str, Any]:
    """Everything a shard's results depend on: inputs (names, sizes, mtimes), the validator,
    the sampling and the rule. A run directory only ever holds shards of one fingerprint."""
    files = [{"path": str(Path(f).resolve()), "bytes": Path(f).stat().st_size,
              "mtime": int(Path(f).stat().st_mtime)} for f in cfg.data.train_files]
    rollout = {k: getattr(cfg.rollout, k) for k in (
        "backend", "n_samples", "temperature", "top_p", "top_k", "max_prompt_length",
        "max_response_length", "stop", "seed")}
    rule = {k: getattr(cfg.curate, k) for k in (
        "min_correct", "require_answer_agreement", "chunk_size", "limit")}
    payload = {"files": files, "rows": num_rows, "model": str(cfg.model.hf_path),
               "system_prompt": cfg.data.system_prompt, "rollout": rollout, "rule": rule}
    payload["hash"] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str)
                                     .encode()).hexdigest()[:16]
    return payload


def grade_problems(problems: list[RLExample], responses: list[list[Any]], pool: Any, *,
                   min_correct: int, require_answer_agreement: bool,
                   code_timeout_s: float = 10.0) -> list[ProblemStats]:
    """Grade every problem's responses (``Response``: text, truncated) and decide."""
    items = [(ex.ability, r.text, ex.ground_truth) for ex, rs in zip(problems, responses)
             for r in rs]
    results = iter(pool.score(items, code_timeout_s=code_timeout_s))
    out = []
    for ex, rs in zip(problems, responses):
        attempts = []
        for r in rs:
            res = next(results)
            attempts.append(Attempt(answer=answer_key(ex.ability, r.text),
                                    correct=res.score >= 1.0, truncated=r.truncated,
                                    reason=str(res.reason)))
        out.append(decide(attempts, min_correct=min_correct,
                          require_answer_agreement=require_answer_agreement))
    return out


def stats_schema() -> Any:
    """Columns of stats.parquet (explicit: a chunk of all-null values must still concat)."""
    import pyarrow as pa

    ints = ("row", "index", "n_attempts", "n_correct", "n_answered", "n_truncated",
            "majority_count")
    strings = ("data_source", "ability", "question", "ground_truth", "decision",
               "majority_answer", "answer_counts", "reason_counts")
    types = {**{k: pa.int64() for k in ints}, **{k: pa.string() for k in strings},
             "solve_rate": pa.float64()}
    return pa.schema([(k, types[k]) for k in STATS_COLUMNS])


STATS_COLUMNS = ("row", "data_source", "ability", "index", "question", "ground_truth",
                 "decision", "n_attempts", "n_correct", "n_answered", "n_truncated",
                 "solve_rate", "majority_answer", "majority_count", "answer_counts",
                 "reason_counts")


def stats_rows(rows: range, problems: list[RLExample], stats: list[ProblemStats]) -> list[dict]:
    """One stats record per problem (the columns of stats.parquet)."""
    out = []
    for row, ex, st in zip(rows, problems, stats):
        question = next((m["content"] for m in ex.prompt if m["role"] == "user"), "")
        out.append({
            "row": row, "data_source": ex.data_source, "ability": ex.ability,
            "index": ex.extra_info.get("index"), "question": question[:300],
            "ground_truth": ex.ground_truth[:300], "decision": st.decision,
            "n_attempts": st.n_attempts, "n_correct": st.n_correct,
            "n_answered": st.n_answered, "n_truncated": st.n_truncated,
            "solve_rate": st.solve_rate, "majority_answer": st.majority_answer,
            "majority_count": st.majority_count,
            "answer_counts": json.dumps(st.answer_counts),
            "reason_counts": json.dumps(st.reason_counts)})
    return out


class _Shards:
    """Runs the shards of one process, loading the validator only when work remains."""

    def __init__(self, cfg: CurateConfig, store: ShardStore, problems: list[RLExample]) -> None:
        self.cfg, self.store, self.problems = cfg, store, problems
        self.sampler: Sampler | None = None
        self.pool: Any = None
        self.attempts = 0

    def _start(self) -> None:
        if self.sampler is None:
            from prime_mcore.rewards import VerifierPool

            self.sampler = Sampler(self.cfg.model, self.cfg.rollout)
            self.pool = VerifierPool(self.cfg.curate.verifier_workers)

    def run(self, index: int) -> None:
        cfg, store = self.cfg.curate, self.store
        if store.is_done(index):
            # printed, not logged: a rerun after a crash should say plainly what it skips
            print(f"shard {index} of {store.count} is done already: skipped", flush=True)
            return
        start, stop = shard_bounds(len(self.problems), index, store.count)
        todo = list(store.chunks(index, start, stop, cfg.chunk_size))
        with tqdm(total=stop - start, initial=stop - start - sum(b - a for a, b in todo),
                  desc=f"curate shard {index}/{store.count}", unit="problem") as bar:
            for lo, hi in todo:
                self._chunk(index, lo, hi)
                bar.update(hi - lo)
        self._finish(index, start, stop)

    def _chunk(self, index: int, lo: int, hi: int) -> None:
        import pyarrow as pa

        self._start()
        assert self.sampler is not None
        problems = self.problems[lo:hi]
        # The seed depends on the rows only: a resumed shard redraws what it lost identically.
        responses = self.sampler.sample(problems, seed=self.cfg.rollout.seed + lo)
        stats = grade_problems(problems, responses, self.pool,
                               min_correct=self.cfg.curate.min_correct,
                               require_answer_agreement=self.cfg.curate.require_answer_agreement,
                               code_timeout_s=self.cfg.curate.code_timeout_s)
        self.attempts += sum(len(r) for r in responses)
        table = pa.Table.from_pylist(stats_rows(range(lo, hi), problems, stats),
                                     schema=stats_schema())
        atomic_write_table(self.store.chunk_path(index, lo), table)

    def _finish(self, index: int, start: int, stop: int) -> None:
        table = self.store.read_chunks(index)
        rows = table.column("row").to_pylist() if table is not None else []
        if rows != list(range(start, stop)):
            raise RuntimeError(f"shard {index}: saved chunks cover {len(rows)} rows, expected "
                               f"[{start}, {stop}); delete {self.store.shard_dir(index)}")
        kept_rows = [r for r, d in zip(rows, table.column("decision").to_pylist()) if d == "kept"]
        shard_dir = self.store.shard_dir(index)
        atomic_write_table(shard_dir / "stats.parquet", table)
        write_rl_parquet([self.problems[r] for r in kept_rows], shard_dir / "kept.parquet")
        self.store.mark_done(index, {"rows": [start, stop], "kept": len(kept_rows)})

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        if self.pool is not None:
            self.pool.close()


def merge(cfg: CurateConfig, store: ShardStore, extra: dict[str, Any]) -> dict[str, float]:
    """Merge every shard's outputs into the run directory; returns the summary metrics."""
    stats = store.merged_tables("stats.parquet")
    kept = store.merged_tables("kept.parquet")
    atomic_write_table(store.root / "stats.parquet", stats)
    atomic_write_table(store.root / "kept.parquet", kept)
    summary = summarize(stats.to_pylist(), bins=cfg.curate.hist_bins,
                        low=cfg.curate.filter_low, high=cfg.curate.filter_high)
    summary.update(extra)
    write_summary(store.root, summary, title=f"Curation `{cfg.run.name}`")
    return {k: float(v) for k, v in summary["metrics"].items()}


def run_curation(cfg: CurateConfig) -> dict[str, float]:
    """Run this process's shard(s), then merge when every shard is done. Returns the merged
    summary metrics, or this process's throughput when other shards are still pending."""
    root = Path(cfg.run.output_dir) / cfg.run.name
    count, mine = resolve_shards(cfg.curate.num_shards, cfg.curate.shard_index)
    store = ShardStore(root, count)
    problems, skipped = load_problems(cfg.data.train_files, skip_bad_rows=cfg.data.skip_bad_rows,
                                      limit=cfg.curate.limit,
                                      system_prompt=cfg.data.system_prompt)
    if not problems:
        raise ValueError(f"no problems to curate in {cfg.data.train_files}")
    extra = {"input_rows": len(problems), "bad_rows_skipped": skipped, "num_shards": count}
    if cfg.curate.stage == "merge":
        return merge(cfg, store, extra)
    store.check_manifest(fingerprint(cfg, len(problems)))
    shards = _Shards(cfg, store, problems)
    begin = time.perf_counter()
    try:
        for index in mine:
            shards.run(index)
    finally:
        shards.close()
    seconds = time.perf_counter() - begin
    rate = {"curate/attempts": float(shards.attempts), "curate/seconds": seconds,
            "curate/attempts_per_s": shards.attempts / seconds if seconds else 0.0}
    if store.pending():
        log.info("shard(s) %s done; waiting for %s before the merge", mine, store.pending())
        return rate
    # The last shard to finish merges; concurrent merges write identical files atomically.
    return merge(cfg, store, extra)
