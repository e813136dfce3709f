"""Outcome verifiers (spec 7): a math grader and a sandboxed code executor.

Public API:

* ``score_math(completion, ground_truth) -> float``: 1.0 or 0.0 (graded in a worker with
  a hard timeout, so it never hangs).
* ``score_code(completion, tests, *, timeout_s=10.0) -> float`` in [0, 1] (sandboxed).
* ``score_batch(items) -> list[VerifyResult]`` for ``(ability, completion, ground_truth)``
  items in a process pool with hard per-item timeouts; ``summarize`` turns the results
  into step metrics (one count per ``Reason``).

Only the stdlib, sympy, math_verify, pylatexenc and psutil are imported here.
"""

from prime_mcore.rewards.batch import (
    VerifierPool,
    grade_item,
    score_batch,
    score_math,
    shared_pool,
    summarize,
)
from prime_mcore.rewards.code_grader import extract_code, grade_code, parse_tests
from prime_mcore.rewards.math_grader import answers_equivalent, extract_answer, grade_math
from prime_mcore.rewards.result import BadGroundTruth, Reason, VerifyResult
from prime_mcore.rewards.sandbox import (
    Mechanisms,
    SandboxLimits,
    SandboxUnavailable,
    detect_mechanisms,
)


def score_code(completion: str, tests: str | dict, *, timeout_s: float = 10.0) -> float:
    """Fraction of tests the completion's program passes, in [0, 1] (spec 7 partial credit).

    Runs in this process: every program runs in the sandbox with its own timeout, so the
    call always returns. Raises ``SandboxUnavailable`` when this machine offers no
    containment (set ``PRIME_MCORE_SANDBOX_ALLOW_UNSAFE=1`` to opt out).
    """
    return grade_code(completion, tests, timeout_s=timeout_s).score


__all__ = [
    "BadGroundTruth",
    "Mechanisms",
    "Reason",
    "SandboxLimits",
    "SandboxUnavailable",
    "VerifierPool",
    "VerifyResult",
    "answers_equivalent",
    "detect_mechanisms",
    "extract_answer",
    "extract_code",
    "grade_code",
    "grade_item",
    "grade_math",
    "parse_tests",
    "score_batch",
    "score_code",
    "score_math",
    "shared_pool",
    "summarize",
]
