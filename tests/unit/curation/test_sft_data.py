"""``python -m prime_mcore.sft_data`` with the tiny trained teacher: well-formed right traces
are written as SFT rows, every rejected trace is counted under its kind."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from prime_mcore.data.prompts import ACTION_SYSTEM_PROMPT
from prime_mcore.data.schema import RLExample, read_sft_parquet, write_rl_parquet
from prime_mcore.launch.registry import compose
from tests.unit.curation.tiny_validator import MALFORMED, MAX_NEW_TOKENS, SOLVED, example


def test_traces_are_filtered_and_rejections_counted_by_kind(validator, tmp_path):
    from prime_mcore.sft_data import main

    problems = [example(q, answer, i) for i, (q, (_, answer)) in enumerate(SOLVED.items())]
    problems += [example(q, truth, 10 + i) for i, (q, (_, _, truth)) in
                 enumerate(MALFORMED.items())]
    code = RLExample("apps", [{"role": "user", "content": "print 1"}], "code",
                     json.dumps({"inputs": [""], "outputs": ["1"]}))
    write_rl_parquet([*problems, code], tmp_path / "p.parquet")
    cfg = OmegaConf.to_object(compose("sft_data", [
        f"model.hf_path={validator}", f"data.train_files=[{tmp_path / 'p.parquet'}]",
        "rollout.backend=hf", "rollout.n_samples=2", "rollout.temperature=0.6",
        f"rollout.max_response_length={MAX_NEW_TOKENS}", "rollout.max_prompt_length=128",
        "traces.system_prompt=null", "traces.chunk_size=4", "traces.verifier_workers=1",
        f"run.output_dir={tmp_path}", "run.name=sft"]))
    metrics = main(cfg)
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    want = {"accepted": 6, **{kind: 2 for _, kind, _ in MALFORMED.values()}}
    assert {k: v for k, v in summary["kinds"].items() if v} == want
    assert (summary["problems"], summary["skipped_non_math"]) == (9, 1)
    assert (summary["rows_written"], summary["problems_covered"]) == (3, 3)  # 1 per problem
    assert metrics["sft_data/not_start_assess"] == 2.0 and metrics["sft_data/rows"] == 3.0
    rows = read_sft_parquet(tmp_path / "sft" / "p.parquet".replace("p.", "sft."))
    assert [r.prompt for r in rows] == [ex.prompt for ex in problems[:3]]
    assert [r.response for r in rows] == [r for r, _ in SOLVED.values()]
    rejected = [json.loads(x) for x in (tmp_path / "sft" / "rejected.jsonl").open()]
    assert sorted(r["kind"] for r in rejected) == sorted(
        k for k, v in want.items() if k != "accepted" for _ in range(v))
    md = (tmp_path / "sft" / "summary.md").read_text()
    assert "| accepted | 6 | 33.3% |" in md and "| truncated | 2 | 11.1% |" in md


def test_the_action_system_prompt_replaces_the_rows_system_turn(tmp_path):
    from prime_mcore.curation.sampling import load_problems
    from prime_mcore.sft_data import _system_prompt

    row = RLExample("s", [{"role": "system", "content": "old"}, {"role": "user", "content": "q"}],
                    "math", "1")
    write_rl_parquet([row, row], tmp_path / "a.parquet")
    got, bad = load_problems([str(tmp_path / "a.parquet")], skip_bad_rows=False, limit=1,
                             system_prompt=_system_prompt("action"))
    assert bad == 0 and len(got) == 1
    assert got[0].prompt[0] == {"role": "system", "content": ACTION_SYSTEM_PROMPT}
    assert _system_prompt(None) is None and _system_prompt("be brief") == "be brief"
    with pytest.raises(ValueError, match="model.hf_path"):
        OmegaConf.to_object(compose("sft_data", []))
