"""Acceptance of SFT teacher traces: one counted kind per rejected trace."""

import pytest

from prime_mcore.curation.traces import ACCEPTED, REJECT_KINDS, count_kinds, judge_trace
from tests.unit.curation.tiny_validator import MALFORMED, SOLVED


@pytest.mark.parametrize("question", list(MALFORMED))
def test_the_validator_fixture_traces_have_their_intended_kind(question):
    response, kind, _ = MALFORMED[question]
    truncated = kind == "truncated"
    # "wrong_answer": the trace is well formed, the verifier says "wrong"
    reason = "wrong" if kind == "wrong_answer" else "correct"
    assert judge_trace(response, truncated=truncated, verifier_reason=reason).kind == kind


def test_good_traces_are_accepted_only_with_a_correct_answer():
    response = next(iter(SOLVED.values()))[0]
    verdict = judge_trace(response, truncated=False, verifier_reason="correct")
    assert verdict.accepted and verdict.kind == ACCEPTED
    assert judge_trace(response, truncated=False, verifier_reason="wrong").kind == "wrong_answer"
    assert judge_trace(response, truncated=False, verifier_reason="timeout").kind == "ungraded"
    # a truncated trace is rejected as such even when its text happens to parse
    assert judge_trace(response, truncated=True, verifier_reason="correct").kind == "truncated"


def test_strict_format_and_counts():
    loose = "[ASSESS]\n\nlook at it\n\nNext action: [OUTPUT]\n\n[OUTPUT]\n\n\\boxed{3}"
    assert judge_trace(loose, truncated=False, verifier_reason="correct").accepted
    strict = judge_trace(loose, truncated=False, verifier_reason="correct", strict=True)
    assert strict.kind == "step_without_hash"
    verdicts = [judge_trace(t, truncated=False, verifier_reason="correct")
                for t in ("", "hello", "[OUTPUT]\n\n\\boxed{1}", loose)]
    counts = count_kinds(verdicts)
    assert list(counts) == [ACCEPTED, *REJECT_KINDS]
    assert (counts["empty"], counts["text_before_action"], counts["not_start_assess"],
            counts[ACCEPTED], sum(counts.values())) == (1, 1, 1, 1, 4)
