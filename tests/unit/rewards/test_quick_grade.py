"""The pool's in-process fast path: integer answers are graded without a worker round trip,
with exactly ``grade_math``'s result, and anything else still goes to the workers."""

from hypothesis import given, settings
from hypothesis import strategies as st

from prime_mcore.rewards import VerifierPool
from prime_mcore.rewards.math_grader import grade_math, quick_grade_math

TEMPLATES = ["[OUTPUT] \\boxed{{{a}}}", "so the answer is {a}.", "The answer is $\\boxed{{{a}}}$",
             "\\boxed{{{b}}} then \\boxed{{{a}}}", "no final answer here", "\\boxed{{{a}",
             "answer: \\boxed{{{a}.}}", "\\boxed{{x = {a}}}", "\\boxed{{{a}/2}}",
             "\\boxed{{{a}}} is the answer"]
ints = (st.integers(-10**6, 10**6).map(str)
        | st.sampled_from(["0", "-0", "007", "10000000000", "0123456789012345", "5" * 40])
        | st.from_regex(r"-?0{0,3}[0-9]{14,30}", fullmatch=True))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TEMPLATES), ints, ints, ints | st.sampled_from(["1/2", "x", "\\pi"]))
def test_quick_grade_agrees_with_grade_math(template, a, b, gold):
    completion = template.format(a=a, b=b)
    quick = quick_grade_math(completion, gold)
    if quick is not None:
        assert quick == grade_math(completion, gold), (completion, gold)


def test_quick_grade_decides_integers_and_defers_the_rest():
    assert quick_grade_math("\\boxed{12}", "12").score == 1.0
    assert quick_grade_math("\\boxed{12}", 12).score == 1.0
    assert quick_grade_math("\\boxed{012}", "12").score == 1.0
    assert quick_grade_math("\\boxed{13}", "12").score == 0.0
    assert quick_grade_math("nothing", "12").reason.value == "no_answer"
    # needs math-verify or sympy: deferred
    assert quick_grade_math("\\boxed{\\frac{24}{2}}", "12") is None
    assert quick_grade_math("\\boxed{12}", "\\frac{24}{2}") is None
    assert quick_grade_math("\\boxed{12}", True) is None
    # only ASCII digits: other scripts' digits go to the workers
    assert quick_grade_math("\\boxed{" + "\u0661" * 16 + "}", "1" * 16) is None
    # bounded work: long or box-heavy completions go to the pool (which has timeouts)
    assert quick_grade_math("x" * 20_001 + "\\boxed{12}", "12") is None
    assert quick_grade_math("\\boxed{" * 17 + "\\boxed{12}", "12") is None


def test_long_integers_with_leading_zeros_are_not_zero():
    """grade_math canonicalised integers through float below 16 characters only; longer ones
    kept their leading zeros and sympy then read "0123456789012345" as 0."""
    assert grade_math("\\boxed{0123456789012345}", "0").score == 0.0
    assert grade_math("\\boxed{0123456789012345}", "123456789012345").score == 1.0
    assert grade_math("\\boxed{9007199254740993}", "9007199254740992").score == 0.0


def test_pool_grades_integer_items_without_workers():
    items = [("math", f"\\boxed{{{i}}}", str(i % 3)) for i in range(50)]
    pool = VerifierPool(num_workers=2)
    try:
        results = pool.score(items)
        assert not pool._workers  # none started: every item was decided in this process
        assert results == [grade_math(c, g) for _, c, g in items]
        mixed = items + [("math", "\\boxed{\\frac{1}{2}}", "0.5")]
        assert pool.score(mixed)[-1].score == 1.0 and len(pool._workers) == 2
    finally:
        pool.close()
