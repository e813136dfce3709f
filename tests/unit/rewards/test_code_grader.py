"""Code verifier: extraction, test parsing, output comparison and sandboxed scoring."""

import json

import pytest

from prime_mcore.rewards import score_code
from prime_mcore.rewards.code_grader import (
    CheckTests,
    IOTests,
    call_output_matches,
    extract_code,
    grade_code,
    parse_tests,
    stdout_matches,
)
from prime_mcore.rewards.result import Reason
from tests.unit.rewards.helpers import ADD_STDIN, fenced


def test_extract_code_takes_the_last_python_block():
    text = "```python\nprint(1)\n```\nbetter:\n```Python\nprint(2)\n```\n```\nnot python\n```"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("print(3)") == "print(3)"  # no fence: the whole text
    assert extract_code("```python\nprint(4)") == "print(4)"  # unterminated fence


def test_parse_tests_forms():
    assert parse_tests(ADD_STDIN) == IOTests(ADD_STDIN["inputs"], ADD_STDIN["outputs"], None)
    call = parse_tests(json.dumps({"inputs": [[1, 2], 3], "outputs": [3, 3], "fn_name": "f"}))
    assert call == IOTests([[1, 2], [3]], [3, 3], "f")
    lines = parse_tests({"inputs": [["1 2", "3"]], "outputs": [["3", "x"]]})
    assert lines == IOTests(["1 2\n3"], ["3\nx"], None)
    check = parse_tests({"test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"})
    assert check == CheckTests("def check(c):\n    assert c(1) == 2\n", "f")
    assert parse_tests("assert f(1) == 2") == CheckTests("assert f(1) == 2", None)


@pytest.mark.parametrize(
    "tests",
    [
        "",
        "{not json",
        "[1, 2]",
        None,
        42,
        {"inputs": ["1"], "outputs": []},
        {"inputs": [], "outputs": []},
        {"inputs": "1", "outputs": "1"},
        {"inputs": [1], "outputs": ["1"]},  # stdin input must be text
        {"inputs": [[1]], "outputs": [1], "fn_name": "not an identifier"},
        {"test": "def check(c:\n"},
        {"test": "assert True", "entry_point": "1f"},
        {"something": "else"},
    ],
)
def test_bad_tests_score_zero_with_reason(tests):
    result = grade_code(fenced("print(1)"), tests)
    assert (result.score, result.reason) == (0.0, Reason.BAD_GROUND_TRUTH)


def test_output_comparison():
    assert stdout_matches("3 \n7\n\n", "3\n7")
    assert stdout_matches("0.3333333", "0.33333333")
    assert not stdout_matches("0.33", "0.3333")
    assert not stdout_matches("3\n7", "3\n8")
    assert not stdout_matches("", "3")
    assert call_output_matches([1, 2], [[1, 2]])  # APPS wraps outputs in a list
    assert call_output_matches(0.30000000000000004, 0.3)
    assert not call_output_matches([2, 1], [1, 2])


def test_no_code_is_no_answer():
    result = grade_code("   ", ADD_STDIN)
    assert (result.score, result.reason) == (0.0, Reason.NO_ANSWER)


@pytest.mark.usefixtures("mechanisms")
class TestSandboxedScoring:
    def test_stdin_correct(self):
        code = "a, b = map(int, input().split())\nprint(a + b)"
        result = grade_code(fenced(code), ADD_STDIN)
        assert (result.score, result.reason) == (1.0, Reason.CORRECT)

    def test_stdin_read_via_open0_and_sys_stdin(self):
        code = "import sys\nprint(sum(int(t) for t in open(0).read().split()))"
        assert score_code(fenced(code), ADD_STDIN) == 1.0
        code = "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))"
        assert score_code(fenced(code), json.dumps(ADD_STDIN)) == 1.0

    def test_stdin_partial_credit_is_exact(self):
        code = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)"
        result = grade_code(fenced(code), ADD_STDIN)
        assert result.score == 0.75 and result.reason is Reason.WRONG  # 3 of 4

    def test_stdin_wrong(self):
        result = grade_code(fenced("print('hello')"), ADD_STDIN)
        assert (result.score, result.reason) == (0.0, Reason.WRONG)

    def test_only_the_first_ten_tests_count(self):
        tests = {"inputs": [f"{i}\n" for i in range(12)], "outputs": [f"{i}\n" for i in range(12)]}
        code = "x = int(input())\nprint(x if x not in (3, 11) else -1)"
        # Tests 3 and 11 fail; only the first 10 count: 9 / 10.
        assert score_code(fenced(code), tests) == 0.9

    def test_call_based_function_and_solution_class(self):
        tests = {"inputs": [[1, 2], [3, 4], [0, 0]], "outputs": [[3], [7], [0]], "fn_name": "add"}
        code = "def add(a, b):\n    print('debug output is ignored')\n    return a + b"
        assert score_code(fenced(code), tests) == 1.0
        code = "class Solution:\n    def add(self, a, b):\n        return a + b if a != 3 else -1"
        result = grade_code(fenced(code), tests)
        assert result.score == pytest.approx(2 / 3) and result.reason is Reason.WRONG

    def test_humaneval_check_and_assert_source(self):
        check = "def check(candidate):\n    assert candidate(2) == 4\n"
        tests = {"test": check, "entry_point": "f"}
        assert score_code(fenced("def f(x):\n    return 2 * x"), tests) == 1.0
        assert score_code(fenced("def f(x):\n    return 3 * x"), tests) == 0.0
        asserts = "assert f(2) == 4\nassert f(5) == 10\n"
        assert score_code(fenced("def f(x):\n    return 2 * x"), asserts) == 1.0
        assert score_code(fenced("def f(x):\n    return x + 2"), asserts) == 0.0

    def test_syntax_error_scores_zero(self):
        result = grade_code(fenced("def broken(:\n    pass"), ADD_STDIN)
        assert (result.score, result.reason) == (0.0, Reason.WRONG)
