"""Built-in arithmetic task: determinism, disjoint splits, noisy teacher, exports."""

from __future__ import annotations

import re

import pytest

from prime_mcore.data.builtin_task import (
    DATA_SOURCE,
    generate_problems,
    has_carry,
    make_sft_rows,
    make_splits,
    split_of,
    to_rl_examples,
    write_builtin_task,
)
from prime_mcore.data.prompts import MATH_SUFFIX, parse_action_trace
from prime_mcore.data.schema import read_rl_parquet, read_sft_parquet

STEP = re.compile(r"^# (\d+)([+-])(\d+)=(-?\d+)$", re.M)
BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def _check_trace(problem, response):
    """(boxed answer, indices of wrong steps); asserts the trace restates the problem and
    that every step starts from the previous step's written result (slips propagate)."""
    steps = STEP.findall(response)
    assert f"# {problem.expression}\n" in response
    assert len(steps) == len(problem.ops)
    wrong, prev = [], problem.start
    for k, ((a, op, b, c), (true_op, x)) in enumerate(zip(steps, problem.ops, strict=True)):
        assert (int(a), op, int(b)) == (prev, true_op, x)
        if int(c) != (int(a) + int(b) if op == "+" else int(a) - int(b)):
            wrong.append(k)
        prev = int(c)
    (boxed,) = BOXED.findall(response)
    assert int(boxed) == prev
    return int(boxed), wrong


def test_generation_is_deterministic_from_seed():
    a, b, c = make_splits(7, 50, 10, 10), make_splits(7, 50, 10, 10), make_splits(8, 50, 10, 10)
    assert a == b
    assert [p.question for p in a.train] == [p.question for p in b.train]
    assert [p.expression for p in a.train] != [p.expression for p in c.train]
    assert generate_problems(3, 20) == generate_problems(3, 20) != generate_problems(4, 20)


def test_problems_and_answers():
    for p in generate_problems(0, 300, num_ops=(2, 3)):
        assert len(p.ops) in (2, 3) and 10 <= p.start <= 99
        assert p.answer == eval(p.expression)  # noqa: S307 (digits and +/- only)
        assert all(v >= 0 for v in p.values())
        assert str(p.start) in p.question and p.question.endswith("have now?")
    assert {len(p.ops) for p in generate_problems(0, 50, num_ops=(3,))} == {3}


def test_splits_are_disjoint_sized_and_stable_across_seeds():
    s = make_splits(1, 400, 60, 60)
    assert (len(s.train), len(s.val), len(s.test)) == (400, 60, 60)
    keys = [{p.expression for p in part} for part in (s.train, s.val, s.test)]
    assert sum(map(len, keys)) == 520  # no duplicates inside a split
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert {split_of(p) for p in s.test} == {"test"}
    other = make_splits(2, 400, 60, 60)  # another seed never leaks test into train
    assert not keys[2] & {p.expression for p in other.train}


def test_clean_teacher_is_always_right_and_well_formed():
    problems = generate_problems(5, 500)
    for p, row in zip(problems, make_sft_rows(problems, slip_rate=0.0), strict=True):
        boxed, wrong = _check_trace(p, row.response)
        assert boxed == p.answer and wrong == []
        assert parse_action_trace(row.response, strict=True) == ["ASSESS", "ADVANCE", "OUTPUT"]
        assert row.prompt == [{"role": "user", "content": p.question + MATH_SUFFIX}]


@pytest.mark.parametrize("mode", ["carry", "uniform"])
def test_noisy_teacher_slips_at_the_asked_rate(mode):
    problems = generate_problems(11, 2000)
    rows = make_sft_rows(problems, slip_rate=0.3, slip_mode=mode, seed=3)
    n_wrong = 0
    for p, row in zip(problems, rows, strict=True):
        boxed, wrong = _check_trace(p, row.response)
        parse_action_trace(row.response, strict=True)
        assert len(wrong) <= 1 and (boxed != p.answer) == bool(wrong)
        n_wrong += boxed != p.answer
        if wrong and mode == "carry":  # a dropped carry (+) or borrow (-): off by ten
            a, op, b, _ = STEP.findall(row.response)[wrong[0]]
            carry = int(a) % 10 + int(b) % 10 >= 10 if op == "+" else int(a) % 10 < int(b) % 10
            assert carry and boxed - p.answer == (-10 if op == "+" else 10)
    assert abs(n_wrong / len(rows) - 0.3) < 0.04
    assert make_sft_rows(problems[:50], slip_rate=0.3, slip_mode=mode, seed=3) == rows[:50]


def test_carry_mode_slips_are_systematic():
    problems = generate_problems(12, 2000)
    rows = make_sft_rows(problems, slip_rate=0.4, slip_mode="carry", seed=0)
    no_carry = [p for p in problems if all(
        (op == "+" and v % 10 + x % 10 < 10) or (op == "-" and v % 10 >= x % 10)
        for v, (op, x) in zip([p.start, *p.values()], p.ops))]
    assert no_carry  # such problems exist and their traces are always right
    assert {p.expression for p in problems if not has_carry(p)} == {p.expression for p in no_carry}
    by_expr = {p.expression: r for p, r in zip(problems, rows, strict=True)}
    assert all(_check_trace(p, by_expr[p.expression].response)[1] == [] for p in no_carry)


def test_bad_slip_arguments():
    with pytest.raises(ValueError, match="slip_mode"):
        make_sft_rows([], slip_mode="typo")
    with pytest.raises(ValueError, match="slip_rate"):
        make_sft_rows([], slip_rate=1.5)


def test_rl_examples_and_written_task(tmp_path):
    s = make_splits(0, 30, 5, 5)
    ex = to_rl_examples(s.val, "val")
    assert [e.ground_truth for e in ex] == [str(p.answer) for p in s.val]
    assert ex[2].extra_info == {"split": "val", "index": 2}
    assert ex[0].data_source == DATA_SOURCE and ex[0].ability == "math"
    paths = write_builtin_task(tmp_path, seed=0, n_train=30, n_val=5, n_test=5, slip_rate=0.5)
    assert read_rl_parquet(paths["rl_val"]).examples == ex
    assert len(read_rl_parquet(paths["rl_train"]).examples) == 30
    sft = read_sft_parquet(paths["sft_train"])
    wrong = sum(_check_trace(p, r.response)[0] != p.answer for p, r in zip(s.train, sft))
    assert 0 < wrong < 30
    clean = read_sft_parquet(paths["sft_val"])
    assert all(_check_trace(p, r.response)[0] == p.answer for p, r in zip(s.val, clean))


def test_exhausted_problem_space_is_an_error(monkeypatch):
    monkeypatch.setattr("prime_mcore.data.builtin_task._MAX_MISSES", 2000)
    with pytest.raises(ValueError, match="too few distinct problems"):
        generate_problems(0, 100, num_ops=(2,), lo=10, hi=11)
    with pytest.raises(ValueError, match="too few distinct problems"):
        make_splits(0, 5, 5, 100, num_ops=(2,), lo=10, hi=11)


def test_operand_range_reaches_the_written_task(tmp_path):
    paths = write_builtin_task(tmp_path, seed=3, n_train=40, n_val=5, n_test=5, lo=1, hi=9,
                               num_ops=(2,))
    for split in ("rl_train", "rl_val", "rl_test"):
        for ex in read_rl_parquet(paths[split]).examples:
            numbers = [int(n) for n in re.findall(r"\d+", ex.prompt[-1]["content"].split("\n")[0])]
            assert len(numbers) == 3 and all(1 <= n <= 9 for n in numbers), ex.prompt
    steps = [STEP.findall(r.response) for r in read_sft_parquet(paths["sft_train"])]
    assert all(1 <= int(b) <= 9 for s in steps for (_, _, b, _) in s)


def test_operand_range_is_validated():
    from prime_mcore.config import DataConfig

    assert DataConfig(builtin_operands=[1, 20]).builtin_operands == [1, 20]
    for bad in ([20, 1], [5], [-1, 9]):
        with pytest.raises(ValueError, match="data.builtin_operands"):
            DataConfig(builtin_operands=bad)
