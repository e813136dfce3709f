"""Eurus-2-RL-Data parquet: exact schema, row validation, bad rows by index, SFT parquet."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prime_mcore.data.schema import (
    BadRowsError,
    RLExample,
    SFTRow,
    read_rl_parquet,
    read_sft_parquet,
    validate_row,
    write_rl_parquet,
    write_sft_parquet,
)

MATH = RLExample(
    data_source="numina_olympiads",
    prompt=[{"role": "system", "content": "sys"}, {"role": "user", "content": "1+1?"}],
    ability="math", ground_truth="2", extra_info={"split": "train", "index": 0})
CODE = RLExample(
    data_source="apps", prompt=[{"role": "user", "content": "echo"}], ability="code",
    ground_truth=json.dumps({"inputs": ["1\n", "2\n"], "outputs": ["1\n", "2\n"]}),
    extra_info={"split": "train", "index": 1})


def _row(**overrides):
    row = {"data_source": "numina_olympiads",
           "prompt": [{"role": "user", "content": "What is 2+3?"}],
           "ability": "math", "reward_model": {"style": "rule", "ground_truth": "5"},
           "extra_info": {"split": "train", "index": 0}}
    row.update(overrides)
    return row


def test_round_trip_exact_nested_schema(tmp_path):
    path = write_rl_parquet([MATH, CODE], tmp_path / "rl.parquet")
    schema = pq.read_schema(path)
    assert schema.names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert schema.field("prompt").type == pa.list_(
        pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert [f.name for f in schema.field("reward_model").type] == ["style", "ground_truth"]
    assert [f.name for f in schema.field("extra_info").type] == ["split", "index"]
    assert schema.field("extra_info").type.field("index").type == pa.int64()
    raw = pq.read_table(path).to_pylist()
    assert raw[0]["reward_model"] == {"style": "rule", "ground_truth": "2"}
    examples, skipped = read_rl_parquet(path)
    assert (examples, skipped) == ([MATH, CODE], 0)
    assert [p.name for p in tmp_path.iterdir()] == ["rl.parquet"]  # no temp file left


def test_bad_rows_are_reported_by_index(tmp_path):
    rows = [_row(), _row(ability="physics"), _row(),
            _row(reward_model={"style": "rule", "ground_truth": ""}), _row()]
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(BadRowsError) as err:
        read_rl_parquet(path)
    msg = str(err.value)
    assert "mixed.parquet" in msg and "2 bad row(s) of 5" in msg
    assert "row 1: ability='physics'" in msg
    assert "row 3: reward_model.ground_truth is missing or empty" in msg
    assert [i for i, _ in err.value.bad] == [1, 3]
    assert isinstance(err.value, ValueError)


def test_skip_bad_rows_returns_good_rows_and_count(tmp_path, caplog):
    rows = [_row(), _row(ability="physics"), _row(data_source="b"),
            _row(prompt=[]), _row(data_source="c")]
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with caplog.at_level(logging.WARNING):
        examples, skipped = read_rl_parquet(path, skip_bad_rows=True)
    assert skipped == 2
    assert [e.data_source for e in examples] == ["numina_olympiads", "b", "c"]
    assert "skipped 2 bad row(s) of 5" in caplog.text


def test_message_lists_only_the_first_twenty(tmp_path):
    rows = [_row(ability="bio")] * 25
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(BadRowsError, match=r"row 19: .*\.\.\. and 5 more") as err:
        read_rl_parquet(path)
    assert "row 20:" not in str(err.value) and len(err.value.bad) == 25


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"prompt": None}, "prompt is missing or empty"),
    ({"prompt": [{"role": "tool", "content": "x"}]}, "role='tool'"),
    ({"prompt": [{"role": "system", "content": "x"}]}, "no non-empty user message"),
    ({"data_source": ""}, "data_source is missing"),
    ({"reward_model": None}, "ground_truth is missing"),
    ({"ability": "code", "reward_model": {"ground_truth": "print(1)"}}, "not JSON"),
    ({"ability": "code", "reward_model": {"ground_truth": '{"inputs": [1, 2], "outputs": [1]}'}},
     "2 inputs and 1 outputs"),
    ({"ability": "code", "reward_model": {"ground_truth": '{"inputs": [1]}'}}, "lacks"),
])
def test_validate_row_reasons(overrides, reason):
    assert reason in validate_row(_row(**overrides))


def test_validate_row_accepts_good_rows():
    good_code = {"ability": "code", "reward_model": {
        "ground_truth": '{"inputs": ["1"], "outputs": ["2"], "fn_name": "f"}'}}
    assert validate_row(_row()) is None and validate_row(_row(**good_code)) is None
    assert validate_row(_row(extra_info=None)) is None


def test_missing_column_is_a_file_level_error(tmp_path):
    path = tmp_path / "nocol.parquet"
    pq.write_table(pa.Table.from_pylist([{"data_source": "a", "ability": "math"}]), path)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt', 'reward_model'\]"):
        read_rl_parquet(path, skip_bad_rows=True)


def test_reads_directory_and_list_in_order(tmp_path):
    write_rl_parquet([CODE], tmp_path / "b.parquet")
    write_rl_parquet([MATH], tmp_path / "a.parquet")
    assert read_rl_parquet(tmp_path).examples == [MATH, CODE]
    files = [tmp_path / "b.parquet", tmp_path / "a.parquet"]
    assert read_rl_parquet(files).examples == [CODE, MATH]
    with pytest.raises(FileNotFoundError):
        read_rl_parquet(tmp_path / "nope.parquet")


def test_write_rejects_bad_examples_without_writing(tmp_path):
    bad = RLExample("x", [{"role": "user", "content": "q"}], "math", " ")
    with pytest.raises(BadRowsError, match="row 1"):
        write_rl_parquet([MATH, bad], tmp_path / "out.parquet")
    with pytest.raises(ValueError, match="extra_info keys"):
        write_rl_parquet([RLExample("x", MATH.prompt, "math", "1", {"level": 3})],
                         tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == []


def test_with_system_prompt_replaces_or_inserts():
    assert MATH.with_system_prompt("S").prompt == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "1+1?"}]
    assert CODE.with_system_prompt("S").prompt[0] == {"role": "system", "content": "S"}
    assert len(CODE.with_system_prompt("S").prompt) == 2


def test_sft_parquet_round_trip_and_validation(tmp_path):
    rows = [SFTRow([{"role": "user", "content": "q"}], "[ASSESS]\n# x")]
    path = write_sft_parquet(rows, tmp_path / "sft.parquet")
    assert pq.read_schema(path).names == ["prompt", "response"]
    assert read_sft_parquet(path) == rows
    write_sft_parquet(rows + [SFTRow([{"role": "user", "content": "q"}], "")], path)
    with pytest.raises(BadRowsError, match="row 1: response is missing"):
        read_sft_parquet(path)
