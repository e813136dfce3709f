"""The agreement rule, the difficulty histogram, shard bounds/resolution and the summary."""

import json

import pytest

from prime_mcore.curation.agreement import (
    GROUND_TRUTH,
    Attempt,
    decide,
    difficulty_histogram,
)
from prime_mcore.curation.report import render_markdown, summarize
from prime_mcore.curation.shards import ShardStore, resolve_shards, shard_bounds

OK, NONE = Attempt("42", True, reason="correct"), Attempt(None, False, reason="no_answer")


def wrong(answer: str) -> Attempt:
    return Attempt(answer, False, reason="wrong")


@pytest.mark.parametrize("attempts,k,agree,decision", [
    ([OK] * 5, 3, True, "kept"),
    ([OK, OK, OK, wrong("7"), NONE], 3, True, "kept"),
    ([NONE] * 5, 1, True, "no_answer"),
    ([wrong("41")] * 4 + [OK], 3, True, "gt_disagreement"),  # consistent on another answer
    ([wrong("41")] * 3 + [OK] * 2, 3, True, "gt_disagreement"),
    ([wrong("1"), wrong("2"), wrong("3"), NONE, NONE], 1, True, "unsolvable"),
    ([wrong("41")] * 2 + [NONE] * 3, 3, True, "unsolvable"),  # 2 < k: not "consistent"
    ([OK, OK, wrong("1"), wrong("2"), NONE], 3, True, "below_threshold"),
    ([OK, OK, wrong("9"), wrong("9"), NONE], 2, True, "answer_disagreement"),  # a tie
    ([OK, OK, wrong("9"), wrong("9"), NONE], 2, False, "kept"),
    ([OK, wrong("9"), wrong("9"), wrong("9")], 1, False, "gt_disagreement"),
])
def test_decisions(attempts, k, agree, decision):
    assert decide(attempts, min_correct=k, require_answer_agreement=agree).decision == decision


def test_stats_group_equivalent_correct_answers_into_one_class():
    # "1/2" and "0.5" were both graded correct: one answer class, not two.
    attempts = [Attempt("1/2", True, reason="correct"), Attempt("0.5", True, reason="correct"),
                Attempt("0.5", True, truncated=True, reason="correct"), wrong("1/3"), NONE]
    st = decide(attempts, min_correct=3)
    assert (st.decision, st.n_correct, st.n_answered, st.n_truncated) == ("kept", 3, 4, 1)
    assert st.solve_rate == pytest.approx(0.6)
    assert st.answer_counts == {GROUND_TRUTH: 3, "1/3": 1}
    assert (st.majority_answer, st.majority_count) == (GROUND_TRUTH, 3)
    assert st.reason_counts == {"correct": 3, "wrong": 1, "no_answer": 1}
    with pytest.raises(ValueError):
        decide([], min_correct=1)


def test_difficulty_histogram_band_is_inclusive():
    rates = [0.0, 0.2, 0.25, 0.5, 0.8, 0.81, 1.0, 0.3]
    h = difficulty_histogram(rates, bins=5, low=0.2, high=0.8)
    assert h.counts == [1, 3, 1, 0, 3]  # [0,.2) [.2,.4) [.4,.6) [.6,.8) [.8,1]
    assert h.in_band == pytest.approx(5 / 8)
    assert difficulty_histogram([0.3, 0.7], bins=10).counts[3] == 1  # 0.3 lands in [0.3, 0.4)
    assert difficulty_histogram([]).in_band == 0.0


@pytest.mark.parametrize("total,count", [(10, 3), (3, 5), (0, 2), (1000, 7)])
def test_shard_bounds_partition_the_rows(total, count):
    spans = [shard_bounds(total, i, count) for i in range(count)]
    assert spans[0][0] == 0 and spans[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    sizes = [b - a for a, b in spans]
    assert max(sizes) - min(sizes) <= 1
    assert shard_bounds(10, 0, 3) == (0, 4) and shard_bounds(10, 2, 3) == (7, 10)


def test_resolve_shards_from_config_or_job_array():
    assert resolve_shards(None, None, {}) == (1, [0])
    assert resolve_shards(4, None, {}) == (4, [0, 1, 2, 3])
    assert resolve_shards(4, 2, {}) == (4, [2])
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert resolve_shards(None, None, env) == (8, [3])
    assert resolve_shards(None, 1, env) == (8, [1])  # explicit settings win
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID"):
        resolve_shards(2, None, env)


def test_manifest_refuses_to_mix_settings(tmp_path):
    store = ShardStore(tmp_path, 2)
    store.check_manifest({"hash": "a"})
    store.check_manifest({"hash": "a"})
    with pytest.raises(ValueError, match="differ: hash"):
        store.check_manifest({"hash": "b"})
    with pytest.raises(RuntimeError, match=r"shard\(s\) \[0, 1\] of 2 are not done"):
        store.merged_tables("stats.parquet")


def test_summary_counts_and_table():
    def row(decision, rate, source="a", reasons=None):
        return {"decision": decision, "solve_rate": rate, "data_source": source,
                "n_truncated": 1, "reason_counts": json.dumps(reasons or {"correct": 1})}

    rows = [row("kept", 1.0), row("kept", 0.6, "b"), row("no_answer", 0.0, reasons={
        "no_answer": 5}), row("gt_disagreement", 0.2, "b")]
    s = summarize(rows, bins=5)
    m = s["metrics"]
    assert (m["curate/problems"], m["curate/kept"], m["curate/kept_fraction"]) == (4, 2, 0.5)
    assert m["curate/reject/no_answer"] == 1 and m["curate/reject/unsolvable"] == 0
    assert (m["curate/in_band_all"], m["curate/in_band_kept"]) == (0.5, 0.5)
    assert s["attempts"] == {"correct": 3, "no_answer": 5} and m["curate/truncated"] == 4
    assert s["by_source"] == {"a": {"problems": 2, "kept": 1}, "b": {"problems": 2, "kept": 1}}
    md = render_markdown(s, "t")
    assert "| kept | 2 | 50.0% |" in md and "| [0.80, 1.00] | 1 | 1 |" in md
    assert "all problems 50.0%, kept 50.0%" in md and "| b | 2 | 1 | 50.0% |" in md
