"""Acceptance of teacher traces for SFT (spec 8): seven-action format and the right answer.

A trace is accepted when it ended on its own (not cut at the length limit), follows the
action format of ``prompts.parse_action_trace`` (starts with [ASSESS], known actions only,
"Next action" lines that match, ends with an [OUTPUT] block holding a \\boxed answer) and
the verifier scores its answer correct. Otherwise it is rejected with exactly one kind,
checked in that order: ``truncated``, a format kind of ``prompts.VIOLATION_KINDS``, then
``no_answer`` / ``wrong_answer`` / ``ungraded`` (verifier timeout or error).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from prime_mcore.data.prompts import VIOLATION_KINDS, action_format_violation

__all__ = ["ACCEPTED", "REJECT_KINDS", "TraceVerdict", "check_format", "judge_trace",
           "count_kinds"]

ACCEPTED = "accepted"
ANSWER_KINDS: tuple[str, ...] = ("no_answer", "wrong_answer", "ungraded")
REJECT_KINDS: tuple[str, ...] = ("truncated", *VIOLATION_KINDS, *ANSWER_KINDS)


@dataclass(frozen=True)
class TraceVerdict:
    """``kind`` is ACCEPTED or one of REJECT_KINDS."""

    kind: str

    @property
    def accepted(self) -> bool:
        return self.kind == ACCEPTED


def check_format(text: str, *, truncated: bool, strict: bool = False) -> str | None:
    """The first format problem of a trace (``truncated`` or a VIOLATION_KINDS kind), or None."""
    if truncated:
        return "truncated"
    return action_format_violation(text, strict=strict)


def judge_trace(text: str, *, truncated: bool, verifier_reason: str,
                strict: bool = False) -> TraceVerdict:
    """Verdict on one trace given the verifier's reason for its answer ("correct", "wrong",
    "no_answer", "timeout", "error", ...)."""
    problem = check_format(text, truncated=truncated, strict=strict)
    if problem is not None:
        return TraceVerdict(problem)
    if verifier_reason == "correct":
        return TraceVerdict(ACCEPTED)
    if verifier_reason in ("wrong", "no_answer"):
        return TraceVerdict("wrong_answer" if verifier_reason == "wrong" else "no_answer")
    return TraceVerdict("ungraded")


def count_kinds(verdicts: Iterable[TraceVerdict]) -> dict[str, int]:
    """Counts of every kind, ACCEPTED first, zeros included (stable report columns)."""
    counts = Counter(v.kind for v in verdicts)
    return {k: counts[k] for k in (ACCEPTED, *REJECT_KINDS)}
