"""``python -m prime_mcore.curate`` end to end with a tiny trained validator (HF backend, real
verifiers): the right problems are kept and rejected, and a killed shard resumes alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from prime_mcore.data.schema import read_rl_parquet, rl_arrow_schema, write_rl_parquet
from prime_mcore.launch.registry import compose
from tests.unit.curation.tiny_validator import CODE_PROMPT, MAX_NEW_TOKENS, SOLVED, example

ROOT = Path(__file__).resolve().parents[3]
QUESTIONS = list(SOLVED)
ZOE = "Zoe has 11 stickers and uses 2. How many stickers does she have?"  # memorised: 8
# (question, ground truth, expected decision)
PROBLEMS = [
    (QUESTIONS[0], "42", "kept"),
    (QUESTIONS[1], "17", "kept"),
    (QUESTIONS[0], "41", "gt_disagreement"),  # the validator says 42, consistently
    (CODE_PROMPT.format("Q"), "7", "no_answer"),  # unseen: "I do not know."
    (QUESTIONS[2], "29", "kept"),
    (ZOE, "9", "gt_disagreement"),
    (CODE_PROMPT.format("R"), "3", "no_answer"),
    (QUESTIONS[1], "18", "gt_disagreement"),
]


def overrides(validator: Path, data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"model.hf_path={validator}", f"data.train_files=[{data}]", "data.skip_bad_rows=true",
            "rollout.backend=hf", "rollout.n_samples=4", "rollout.temperature=0.6",
            f"rollout.max_response_length={MAX_NEW_TOKENS}", "rollout.max_prompt_length=128",
            "curate.min_correct=3", "curate.chunk_size=1", "curate.verifier_workers=1",
            "curate.num_shards=2", f"run.output_dir={out}", f"run.name={name}", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The problems, plus one malformed row (empty ground truth) that is skipped and counted."""
    path = tmp_path_factory.mktemp("curate_data") / "problems.parquet"
    write_rl_parquet([example(q, gt, i) for i, (q, gt, _) in enumerate(PROBLEMS)], path)
    rows = pq.read_table(path).to_pylist()
    bad = dict(rows[0], reward_model={"style": "rule", "ground_truth": ""})
    pq.write_table(pa.Table.from_pylist([*rows[:3], bad, *rows[3:]], schema=rl_arrow_schema()),
                   path)
    return path


@pytest.fixture(scope="module")
def reference(validator, data, tmp_path_factory) -> Path:
    """An uninterrupted run (both shards in this process), through the entry point's main."""
    from prime_mcore.curate import main

    out = tmp_path_factory.mktemp("curate_out")
    cfg = OmegaConf.to_object(compose("curate", overrides(validator, data, out, "ref")))
    metrics = main(cfg)
    assert metrics["curate/problems"] == len(PROBLEMS)
    return out / "ref"


def test_keeps_and_rejects_the_right_problems(reference):
    stats = pq.read_table(reference / "stats.parquet").to_pylist()
    assert [s["row"] for s in stats] == list(range(len(PROBLEMS)))
    assert [s["decision"] for s in stats] == [d for _, _, d in PROBLEMS]
    for s, (_, truth, decision) in zip(stats, PROBLEMS):
        assert s["n_attempts"] == 4 and s["ground_truth"] == truth
        counts = json.loads(s["answer_counts"])
        if decision == "kept":
            assert (s["n_correct"], s["solve_rate"], counts) == (4, 1.0, {"<ground truth>": 4})
        elif decision == "gt_disagreement":
            assert s["n_correct"] == 0 and s["majority_count"] >= 3
            assert s["majority_answer"] == {"41": "42", "9": "8", "18": "17"}[truth]
        else:
            assert (s["n_answered"], json.loads(s["reason_counts"])) == (0, {"no_answer": 4})
    kept = read_rl_parquet(reference / "kept.parquet").examples
    assert [(ex.ground_truth, ex.extra_info["index"]) for ex in kept] == [
        ("42", 0), ("17", 1), ("29", 4)]  # the input rows themselves, schema intact
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["bad_rows_skipped"] == 1 and summary["num_shards"] == 2
    assert summary["decisions"] == {"kept": 3, "no_answer": 2, "gt_disagreement": 3,
                                    "unsolvable": 0, "below_threshold": 0,
                                    "answer_disagreement": 0}
    # solve rates: 1.0 (x3) and 0.0 (x5): nothing in the online filter's [0.2, 0.8]
    assert summary["histogram_all"]["counts"] == [5, 0, 0, 0, 0, 0, 0, 0, 0, 3]
    assert summary["metrics"]["curate/in_band_all"] == 0.0
    md = (reference / "summary.md").read_text()
    assert "| kept | 3 | 37.5% |" in md and "| gt_disagreement | 3 | 37.5% |" in md
    assert "| numina_synthetic_math | 8 | 3 | 37.5% |" in md
    assert all((reference / "shards" / f"shard-0000{i}-of-00002" / "done.json").exists()
               for i in (0, 1))


def _curate(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "prime_mcore.curate", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


@pytest.mark.timeout(400)
def test_a_killed_shard_resumes_alone_and_the_merge_equals_an_uninterrupted_run(
        reference, validator, data):
    out = reference.parent
    args = overrides(validator, data, out, "killed")
    run_dir = out / "killed"
    shard1 = run_dir / "shards" / "shard-00001-of-00002"
    first = _curate([*args, "curate.shard_index=0"])
    assert first.wait(timeout=200) == 0, first.stdout.read()
    assert not (run_dir / "stats.parquet").exists()  # shard 1 is pending: no merge yet
    done0 = (run_dir / "shards" / "shard-00000-of-00002" / "done.json").stat().st_mtime_ns

    victim = _curate([*args, "curate.shard_index=1"])
    deadline = time.monotonic() + 200
    while not list(shard1.glob("chunk-*.parquet")):  # killed right after its first chunk
        assert victim.poll() is None and time.monotonic() < deadline, victim.stdout.read()
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (shard1 / "done.json").exists()
    saved = {p.name: p.stat().st_mtime_ns for p in shard1.glob("chunk-*.parquet")}
    assert 1 <= len(saved) < 4

    rerun = _curate(args)  # every shard: the done one is skipped, the killed one resumes
    log = rerun.communicate(timeout=200)[0]
    assert rerun.returncode == 0, log
    assert "shard 0 of 2 is done already: skipped" in log
    assert (run_dir / "shards" / "shard-00000-of-00002" / "done.json").stat().st_mtime_ns == done0
    assert {p: (shard1 / p).stat().st_mtime_ns for p in saved} == saved  # not recomputed
    assert len(list(shard1.glob("chunk-*.parquet"))) == 4
    for name in ("stats.parquet", "kept.parquet"):
        assert pq.read_table(run_dir / name).equals(pq.read_table(reference / name)), name
    assert "| kept | 3 | 37.5% |" in log  # the summary table, printed by the merge
