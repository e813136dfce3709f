"""The eval suite without a model: benchmark resolution, the grading path the trainer uses
(code in the sandbox), majority-vote keys, PRM step ends, metrics and the results table."""

import csv
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from prime_mcore.algo.best_of_n import majority_vote
from prime_mcore.config import EvalConfig
from prime_mcore.data.benchmarks import CATALOG, PAPER_SUITE, EvalItem, load_benchmark
from prime_mcore.launch.registry import compose
from prime_mcore.rewards import VerifierPool
from prime_mcore.trainers.eval import (
    EvalTrainer,
    answer_key,
    build_prompt,
    grade_responses,
    resolve_benchmarks,
    step_end_positions,
)
from tests.unit.eval.benchmark_fixtures import (
    LCB_REFERENCES,
    LEETCODE_REFERENCE,
    write_fixture_root,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "benchmarks"


def eval_config(*overrides: str) -> EvalConfig:
    return OmegaConf.to_object(compose("eval", list(overrides)))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_fixture_root(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2) as p:
        yield p


def test_paper_suite_resolves_with_the_spec_sampling(root):
    benches = resolve_benchmarks(eval_config("suite=paper", f"data_root={root}"), None)
    assert [b.name for b in benches] == [CATALOG[k].name for k in PAPER_SUITE]
    by = {b.name: b for b in benches}
    assert (by["AIME 2024"].max_tokens, by["AMC"].max_tokens, by["MATH-500"].max_tokens,
            by["LeetCode"].max_tokens) == (4096, 4096, 8192, 8192)
    assert all(b.temperature == 0 and b.n == 1 for b in benches if b.name != "LiveCodeBench")
    lcb = by["LiveCodeBench"]
    assert (lcb.n, lcb.temperature, lcb.top_p, len(lcb.items)) == (10, 0.2, 0.95, 2)
    assert len(by["AIME 2024"].items) == 3
    extra = resolve_benchmarks(eval_config(f"files=[mine:{root / CATALOG['gsm8k'].path}]",
                                           "limit=1"), None)
    assert [(b.name, len(b.items), b.max_tokens) for b in extra] == [("mine", 1, None)]


def test_missing_files_are_named_or_skipped(tmp_path, root, caplog):
    part = write_fixture_root(tmp_path)
    (part / CATALOG["livecodebench"].path).unlink()
    (part / CATALOG["amc"].path).unlink()
    cfg = eval_config("suite=paper", f"data_root={part}")
    with pytest.raises(FileNotFoundError, match="livecodebench") as err:
        resolve_benchmarks(cfg, None)
    assert "amc" in str(err.value) and "skip_missing=true" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="prime_mcore"):
        got = resolve_benchmarks(eval_config("suite=paper", f"data_root={part}",
                                             "skip_missing=true"), None)
    assert len(got) == 5 and "livecodebench" in caplog.text
    with pytest.raises(ValueError, match="data_root"):
        resolve_benchmarks(eval_config("suite=math"), None)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        resolve_benchmarks(eval_config(), None)


def test_config_validation():
    with pytest.raises(ValueError, match="prm_path"):
        eval_config("best_of_n=4")
    with pytest.raises(ValueError, match="mode"):
        eval_config("mode=avg")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        eval_config("rollout.max_response_length=8192")
    cfg = eval_config("experiment=eval_tiny_cpu")
    assert cfg.data.source == "builtin" and cfg.suite.benchmarks == ["builtin"]
    assert cfg.rollout.backend == "hf" and cfg.system_prompt is None


def test_reference_solutions_score_one_through_the_sandbox(root, pool):
    benches = resolve_benchmarks(eval_config("suite=code", f"data_root={root}"), None)
    items, refs = [], []
    for bench in benches:
        for it in bench.items:
            items.append(it)
            refs.append(it.meta.get("reference") or LCB_REFERENCES.get(it.id) or LEETCODE_REFERENCE)
    assert {it.benchmark for it in items} == {"HumanEval", "MBPP", "LeetCode", "LiveCodeBench"}
    wrong = "```python\ndef nothing():\n    return None\n```"
    graded = grade_responses(pool, items, [[r, wrong] for r in refs])
    assert [g[0].score for g in graded] == [1.0] * len(items), [g[0] for g in graded]
    assert [g[1].score for g in graded] == [0.0] * len(items)
    math = load_benchmark(root / CATALOG["amc"].path)
    res = grade_responses(pool, math, [["so \\boxed{142}", "\\boxed{141}"], ["\\boxed{5/2}"]])
    assert [[r.score for r in row] for row in res] == [[1.0, 0.0], [1.0]]


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared benchmark copy absent ({SHARED})")
def test_shared_canonical_code_solutions_pass(pool):
    items = [it for key in ("humaneval", "mbpp")
             for it in load_benchmark(SHARED / CATALOG[key].path, limit=3)]
    assert [g[0].score for g in grade_responses(
        pool, items, [[it.meta["reference"]] for it in items])] == [1.0] * 6


def test_prompts_follow_the_spec_format():
    item = EvalItem("b", "1", "What is 2+2?", "math", "4")
    msgs = build_prompt(item, "action")
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("\nWhen tackling")
    assert msgs[1]["content"].endswith("\\boxed{Your answer}")
    assert [m["role"] for m in build_prompt(item, None)] == ["user"]
    own = EvalItem("b", "1", "Q", "math", "4", {"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]})
    assert build_prompt(own, "action")[0]["content"] == "S"
    assert build_prompt(own, "custom")[0]["content"] == "custom"


def test_majority_vote_on_extracted_answers():
    item = EvalItem("b", "1", "q", "math", "4")
    responses = ["so \\boxed{3}", "\\boxed{4}", "The answer is \\boxed{ 4 }.", "nothing", "\\boxed{3}",
                 "\\boxed{4}"]
    keys = [answer_key(item, r) for r in responses]
    assert keys[3] is None and majority_vote(keys) == answer_key(item, "\\boxed{4}")
    code = EvalItem("b", "2", "q", "code", "assert True")
    assert answer_key(code, "x\n```python\ndef f():\n    pass\n```") == "def f():\n    pass"


def test_step_ends_split_on_blank_lines():
    pieces = ["Step", " one", ".\n\n", "Two", "\n", "\n", "three", "\n\n\n\n", "end", "<eos>"]
    assert step_end_positions(pieces) == [2, 5, 7, 9]
    assert step_end_positions(["no", " steps"]) == [1]
    assert step_end_positions(["a", "\n\n"]) == [1]


def test_avg_at_k_and_pass_at_k_metrics():
    cfg = SimpleNamespace(mode="avg@k", pass_k=[1, 2, 8])
    recs = [{"score": 0.5, "scores": [1.0, 0.0, 1.0, 0.0]}, {"score": 0.0, "scores": [0.0] * 4}]
    table: dict = {}
    EvalTrainer._record(SimpleNamespace(cfg=cfg), table, "m", "B", recs, 4)
    assert table[("m", "avg@4")]["B"] == 0.25 and table[("m", "pass@1")]["B"] == 0.25
    assert table[("m", "pass@2")]["B"] == pytest.approx((1 - 1 / 6) / 2)  # 1 - C(2,2)/C(4,2)
    assert ("m", "pass@8") not in table  # more than the 4 samples


def test_results_table_layout(tmp_path):
    from prime_mcore.eval import write_results

    table = {("sft", "pass@1"): {"AMC": 0.25, "MATH-500": 0.5},
             ("prime", "pass@1"): {"AMC": 0.75}}
    write_results(tmp_path, table, ["AMC", "MATH-500"], eval_config("run.name=t"))
    rows = list(csv.reader((tmp_path / "results.csv").open()))
    assert rows[0] == ["model", "metric", "AMC", "MATH-500", "Avg"]
    assert rows[1] == ["sft", "pass@1", "0.25", "0.5", "0.375"]
    assert rows[2] == ["prime", "pass@1", "0.75", "", "0.75"]
    md = (tmp_path / "results.md").read_text()
    assert "| sft | pass@1 | 25.0 | 50.0 | 37.5 |" in md and "| prime | pass@1 | 75.0 | – |" in md
