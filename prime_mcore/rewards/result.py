"""Result types shared by the math grader, the code grader and the batch API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why an item got its score (one per item; counted in the step metrics)."""

    CORRECT = "correct"  # score 1
    WRONG = "wrong"  # an answer / a program that ran, score < 1
    NO_ANSWER = "no_answer"  # nothing extractable: no answer marker or box, no code
    TIMEOUT = "timeout"  # the grader or every counted test run hit its hard timeout
    ERROR = "error"  # internal grader failure (never the policy's fault)
    BAD_GROUND_TRUTH = "bad_ground_truth"  # missing or malformed reference / tests


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of grading one item: ``score`` in [0, 1] plus the ``reason`` for it."""

    score: float
    reason: Reason
    detail: str = ""

    @staticmethod
    def of(score: float, *, detail: str = "", answered: bool = True) -> VerifyResult:
        """Build a result from a score: 1 -> correct, below 1 -> wrong or no_answer."""
        if score >= 1.0:
            return VerifyResult(1.0, Reason.CORRECT, detail)
        return VerifyResult(score, Reason.WRONG if answered else Reason.NO_ANSWER, detail)


class BadGroundTruth(ValueError):
    """The reference answer or the tests are missing or malformed."""
