"""The agreement rule of offline curation (spec 9, math stage 4), as pure functions.

Each problem gets N graded attempts from a validator model. Attempts are grouped into answer
classes: every correct attempt belongs to the ground truth's class (equivalent spellings
such as "1/2" and "0.5" count as one answer), a wrong attempt to its normalised extracted
answer, and attempts without an extractable answer to none. The decision, first match wins:

1. ``no_answer``: no attempt states an answer.
2. ``gt_disagreement``: at least k (and at least 2) attempts agree on one wrong answer, more
   often than on the ground truth: the validator is consistent, the reference probably wrong.
3. ``unsolvable``: no attempt is correct.
4. ``below_threshold``: fewer than k attempts are correct.
5. ``answer_disagreement`` (with ``require_answer_agreement``): some wrong answer is at least
   as frequent as the ground truth, so the ground truth is no strict plurality.
6. ``kept``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KEPT", "REJECT_REASONS", "DECISIONS", "Attempt", "ProblemStats", "decide",
           "Histogram", "difficulty_histogram"]

KEPT = "kept"
REJECT_REASONS: tuple[str, ...] = ("no_answer", "gt_disagreement", "unsolvable",
                                   "below_threshold", "answer_disagreement")
DECISIONS: tuple[str, ...] = (KEPT, *REJECT_REASONS)
GROUND_TRUTH = "<ground truth>"
"""The answer class of every correct attempt."""


@dataclass(frozen=True)
class Attempt:
    """One graded attempt: the normalised extracted answer (None: none stated), whether the
    verifier scored it correct, whether it hit the length limit, and the verifier's reason."""

    answer: str | None
    correct: bool
    truncated: bool = False
    reason: str = ""


@dataclass(frozen=True)
class ProblemStats:
    """What curation learnt about one problem."""

    n_attempts: int
    n_correct: int
    n_answered: int
    n_truncated: int
    majority_answer: str | None
    """Most frequent answer class (GROUND_TRUTH for the correct ones); None without answers."""
    majority_count: int
    answer_counts: dict[str, int]
    """Answer class -> attempts, most frequent first."""
    reason_counts: dict[str, int]
    """Verifier reason -> attempts (correct, wrong, no_answer, timeout, ...)."""
    decision: str
    """KEPT or one of REJECT_REASONS."""

    @property
    def solve_rate(self) -> float:
        return self.n_correct / self.n_attempts if self.n_attempts else 0.0

    @property
    def kept(self) -> bool:
        return self.decision == KEPT


def _classes(attempts: Sequence[Attempt]) -> Counter[str]:
    return Counter(GROUND_TRUTH if a.correct else a.answer for a in attempts
                   if a.correct or a.answer is not None)


def decide(attempts: Sequence[Attempt], *, min_correct: int,
           require_answer_agreement: bool = True) -> ProblemStats:
    """Per-problem statistics and the keep/reject decision (see the module docstring)."""
    if not attempts:
        raise ValueError("a problem needs at least one attempt")
    if min_correct < 1:
        raise ValueError(f"min_correct={min_correct} must be >= 1")
    counts = _classes(attempts)
    n_correct = counts.get(GROUND_TRUTH, 0)
    # Ties go to the ground truth, then to the answer seen first (Counter keeps insertion order).
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] != GROUND_TRUTH))
    top_wrong = max((c for a, c in counts.items() if a != GROUND_TRUTH), default=0)
    if not counts:
        decision = "no_answer"
    elif top_wrong >= max(min_correct, 2) and top_wrong > n_correct:
        decision = "gt_disagreement"
    elif n_correct == 0:
        decision = "unsolvable"
    elif n_correct < min_correct:
        decision = "below_threshold"
    elif require_answer_agreement and top_wrong >= n_correct:
        decision = "answer_disagreement"
    else:
        decision = KEPT
    return ProblemStats(
        n_attempts=len(attempts), n_correct=n_correct, n_answered=sum(counts.values()),
        n_truncated=sum(a.truncated for a in attempts),
        majority_answer=ranked[0][0] if ranked else None,
        majority_count=ranked[0][1] if ranked else 0, answer_counts=dict(ranked),
        reason_counts=dict(Counter(a.reason for a in attempts)), decision=decision)


@dataclass(frozen=True)
class Histogram:
    """Solve rates binned on [0, 1] (the last bin includes 1.0), and the share in the online
    filter's band [low, high] (bounds inclusive, as algo.accuracy_filter)."""

    edges: list[float]
    counts: list[int]
    in_band: float
    low: float
    high: float


def difficulty_histogram(solve_rates: Sequence[float], *, bins: int = 10, low: float = 0.2,
                         high: float = 0.8) -> Histogram:
    """What the online accuracy filter will see: the solve-rate distribution and the fraction
    of problems inside [low, high]."""
    if bins < 1:
        raise ValueError(f"bins={bins} must be >= 1")
    counts = [0] * bins
    for rate in solve_rates:
        counts[min(int(rate * bins + 1e-9), bins - 1)] += 1  # 0.3 * 10 lands in bin 3
    inside = sum(low <= r <= high for r in solve_rates)
    return Histogram(edges=[i / bins for i in range(bins + 1)], counts=counts,
                     in_band=inside / len(solve_rates) if solve_rates else 0.0,
                     low=low, high=high)
