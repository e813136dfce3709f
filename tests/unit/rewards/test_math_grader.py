"""Math verifier: answer extraction, tricky equivalences, the fallback normaliser, bad input."""

import pytest

from prime_mcore.rewards.math_grader import extract_answer, grade_math, last_boxed
from prime_mcore.rewards.normalize import normalize_answer, prm800k_equal
from prime_mcore.rewards.result import Reason


def boxed(answer: str) -> str:
    return f"Let me think step by step. ... So the final result is \\boxed{{{answer}}}."


# (completion, ground truth, expected score)
EQUIVALENCES = [
    # fractions vs decimals
    (boxed("0.5"), "\\frac12", 1.0),
    (boxed("-\\frac{1}{2}"), "-0.5", 1.0),
    (boxed("\\dfrac{3}{4}"), "0.75", 1.0),
    (boxed("0.33"), "\\frac13", 0.0),
    # radicals and pi
    (boxed("\\frac{1}{\\sqrt2}"), "\\frac{\\sqrt{2}}{2}", 1.0),
    (boxed("\\sqrt{12}"), "2\\sqrt3", 1.0),
    (boxed("\\sqrt{11}"), "2\\sqrt3", 0.0),
    (boxed("\\pi/2"), "\\frac{\\pi}{2}", 1.0),
    (boxed("3.14"), "\\pi", 0.0),
    # intervals: the bracket kind matters; unions in any order
    (boxed("(1,2]"), "(1,2]", 1.0),
    (boxed("[1,2]"), "(1,2]", 0.0),
    (boxed("(1,2)"), "(1,2]", 0.0),
    (boxed("(2,\\infty)\\cup(-\\infty,1)"), "(-\\infty,1)\\cup(2,\\infty)", 1.0),
    (boxed("(-\\infty,1]\\cup(2,\\infty)"), "(-\\infty,1)\\cup(2,\\infty)", 0.0),
    # ordered tuples vs unordered answer lists
    (boxed("(2,1)"), "(1,2)", 0.0),
    (boxed("(1,2)"), "(1,2)", 1.0),
    (boxed("3, 2, 1"), "1,2,3", 1.0),
    (boxed("1, 2"), "1,2,3", 0.0),
    (boxed("\\{3,1,2\\}"), "\\{1,2,3\\}", 1.0),
    # degrees, percent, units, thousands separators, money
    (boxed("30"), "30^\\circ", 1.0),
    (boxed("30^{\\circ}"), "30", 1.0),
    (boxed("50"), "50\\%", 1.0),
    (boxed("50\\%"), "50", 1.0),
    (boxed("5 \\text{ cm}"), "5", 1.0),
    (boxed("12 inches"), "12", 1.0),
    (boxed("13 inches"), "12", 0.0),
    (boxed("1,000,000"), "1000000", 1.0),
    (boxed("1{,}000"), "1000", 1.0),
    (boxed("\\$18.90"), "18.9", 1.0),
    # text and multiple choice
    (boxed("\\text{Evelyn}"), "Evelyn", 1.0),
    (boxed("John"), "Evelyn", 0.0),
    (boxed("\\text{east}"), "East", 1.0),
    (boxed("(B)"), "B", 1.0),
    (boxed("\\text{(B)}"), "B", 1.0),
    (boxed("\\textbf{(C)}"), "B", 0.0),
    # AIME answers with leading zeros
    (boxed("025"), "25", 1.0),
    (boxed("007"), "7", 1.0),
    (boxed("070"), "7", 0.0),
    # equations and algebra
    (boxed("x = 5"), "5", 1.0),
    (boxed("(x+1)^2"), "x^2+2x+1", 1.0),
    (boxed("(x+1)^3"), "x^2+2x+1", 0.0),
    # several boxes: the last one wins
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4", 1.0),
    ("First \\boxed{3}, then corrected: \\boxed{4}", "3", 0.0),
    # "the answer is" forms and the reference marker rules
    ("So the answer is 72.", "72", 1.0),
    ("Final Answer: The final answer is $72$. I hope it is correct.", "72", 1.0),
    ("Therefore, 18 is the answer.", "18", 1.0),
    ("The answer is: 7 3/4", "\\frac{31}{4}", 1.0),
    ("The answer is \\fbox{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}2", 1.0),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), EQUIVALENCES)
def test_equivalence_table(completion, gold, expected):
    result = grade_math(completion, gold)
    assert result.score == expected, result
    assert result.reason is (Reason.CORRECT if expected == 1.0 else Reason.WRONG)


@pytest.mark.parametrize(
    "completion",
    ["I am not sure how to solve this.", "", "We compute 3 + 4 = 7 and stop here", "\\boxed{"],
)
def test_missing_answer_is_no_answer(completion):
    result = grade_math(completion, "7")
    assert (result.score, result.reason) == (0.0, Reason.NO_ANSWER)


@pytest.mark.parametrize("gold", ["", "   ", None, "$$", "\\boxed{}", ["7"], True, {"a": 1}])
def test_bad_ground_truth(gold):
    result = grade_math("\\boxed{7}", gold)
    assert (result.score, result.reason) == (0.0, Reason.BAD_GROUND_TRUTH)


def test_numeric_ground_truth_is_accepted():
    assert grade_math("\\boxed{7}", 7).score == 1.0
    assert grade_math("\\boxed{0.25}", 0.25).score == 1.0


def test_extraction_rules():
    assert last_boxed("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\boxed{1} and \\fbox{2}") == "2"
    assert last_boxed("\\boxed 5$ done") == "5"
    assert last_boxed("\\boxed{3} then a truncated \\boxed{4") == "3"
    assert last_boxed("no box") is None
    assert extract_answer("The answer is $\\boxed{x=5}$.") == "x=5"
    assert extract_answer("we get x = 12. So the answer is 12. Done.") == "12"
    assert extract_answer("Thus 9 is the answer.") == "9"
    assert extract_answer("nothing final here") is None


def test_normalizer_forms():
    assert normalize_answer("\\text{ 1,000 cm}") == "1000"
    assert normalize_answer("\\frac{a+b}{c}") == "(a+b)/(c)"
    assert normalize_answer("0025") == "25"
    assert normalize_answer("10.0") == "10"
    assert normalize_answer("2 million") == "2*10^6"
    assert normalize_answer("\\left( 1, 2 \\right]") == "(1,2]"


def test_fallback_rules_without_math_verify():
    # Unreduced fractions need an exact match; integers too; sympy decides the rest.
    assert prm800k_equal("\\frac{2}{4}", "\\frac{2}{4}")
    assert not prm800k_equal("\\frac{1}{2}", "\\frac{2}{4}")
    assert not prm800k_equal("5", "\\sqrt{25}")  # an integer answer must be written as one
    assert prm800k_equal("\\sqrt{8}", "2\\sqrt{2}")
    assert prm800k_equal("x^2 + 2x + 1", "(x+1)^2")
    assert prm800k_equal("(1, 2]", "(1, 2]") and not prm800k_equal("(1, 2]", "[1, 2]")
    assert prm800k_equal("2, 1", "1, 2")
    assert prm800k_equal("12 \\text{ inches}", "12")


def test_hostile_answers_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    assert grade_math(f"\\boxed{{{payload}}}", "0").score == 0.0
    assert not prm800k_equal(payload, "0")
    assert not marker.exists()
