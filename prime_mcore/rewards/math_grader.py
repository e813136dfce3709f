"""Math outcome verifier (spec 7): answer extraction, math-verify, a PRM800K-style fallback.

``grade_math`` runs in the calling process. math-verify's own timeouts use ``signal.alarm``,
which works only in a main thread, and sympy can still run away on hostile answers, so
callers that must never hang use the worker pool in ``batch.py`` (``score_math`` does).
"""

from __future__ import annotations

import re
import threading

from prime_mcore.rewards.normalize import normalize_answer, prm800k_equal
from prime_mcore.rewards.result import BadGroundTruth, Reason, VerifyResult

# Reference marker rules (ORIG match_answer), applied in this order.
_FORWARD_MARKERS = ("answer:", "answer is", "answers are")
_BACKWARD_MARKERS = ("is the answer", "is answer", "are the answers", "are answers")
_TAIL_MARKERS = ("be ", "is ", "are ", "=", ": ", "get ", "be\n", "is\n", "are\n", ":\n", "get\n")
_CONNECTIVE_RE = re.compile(r"^\s*(?:therefore|thus|hence|so|and)\b[,:]?", re.IGNORECASE)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_MAX_ANSWER_CHARS = 1000  # no real answer is longer; caps math-verify / sympy work
_INT_RE = re.compile(r"-?[0-9]{1,100}")  # ASCII only: \d matches other scripts too
# quick_grade_math's bounds: extraction stays linear-time (a box is scanned to its end)
_QUICK_MAX_CHARS = 20_000
_QUICK_MAX_BOXES = 16
_MV_TIMEOUT_S = 5


def _box_content(text: str, start: int, command: str) -> str | None:
    """Content of the box command at ``start``: ``{...}`` with nested braces or ``\\boxed 5``."""
    i = start + len(command)
    if i < len(text) and text[i] == " " and text[i:].strip()[:1] not in ("{", ""):
        token = text[i:].split()[0]  # "\boxed 5" form: the next whitespace-free token
        return token.split("$")[0]
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: a truncated completion


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``."""
    end = len(text)
    while True:
        hits = [(text.rfind(cmd, 0, end), cmd) for cmd in _BOX_COMMANDS]
        pos, cmd = max(hits)
        if pos < 0:
            return None
        content = _box_content(text, pos, cmd)
        if content is not None:
            return content
        end = pos


def _clean(answer: str) -> str:
    answer = answer.strip()
    # Trailing sentence punctuation and enclosing dollars are never part of the answer.
    answer = answer.rstrip(".;,!").strip()
    while len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
        answer = answer[1:-1].strip()
    return answer.strip("$").strip()


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion, or None when it states none (ORIG marker rules).

    Text after the last "answer:"/"answer is"/"answers are" (or before "is the answer"),
    then the last box in it; without a box, the text before the last ". " and after the
    last "be "/"is "/"are "/"="/": "/"get ". Box content is kept whole (``x=5`` stays),
    since math-verify reads equations itself.
    """
    text = completion
    matched = False
    low = text.lower()
    cut = max((low.rfind(m) + len(m) if m in low else -1) for m in _FORWARD_MARKERS)
    if cut >= 0:
        text, matched = text[cut:], True
    back = max(text.lower().rfind(m) for m in _BACKWARD_MARKERS)
    if back >= 0:
        text, matched = text[:back], True
        if ". " in text:
            text = text[text.rfind(". ") + 2 :]  # "..., so. Thus 18 is the answer"
        text = _CONNECTIVE_RE.sub("", text)
    boxed = last_boxed(text)
    if boxed is not None:
        answer = _clean(boxed)
        return answer or None
    if not matched:
        return None
    if ". " in text:
        text = text[: text.rfind(". ")]
    for marker in _TAIL_MARKERS:
        pos = text.lower().rfind(marker)
        if pos >= 0:
            text = text[pos + len(marker) :]
    answer = _clean(text)
    return answer or None


def clean_ground_truth(ground_truth: object) -> str:
    """The reference answer as a string (boxes and dollars removed); raises BadGroundTruth."""
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, str | int | float):
        raise BadGroundTruth(f"math ground truth must be a string, got {type(ground_truth)}")
    gold = str(ground_truth).strip()
    boxed = last_boxed(gold)
    gold = _clean(boxed if boxed is not None else gold)
    if not gold or not normalize_answer(gold):
        raise BadGroundTruth(f"empty math ground truth {ground_truth!r}")
    if len(gold) > _MAX_ANSWER_CHARS:
        raise BadGroundTruth("math ground truth longer than 1000 characters")
    return gold


def _mv_timeout() -> int | None:
    # math-verify's timeouts call signal.alarm, which raises outside the main thread.
    return _MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _mv_parse(expr: str) -> list:
    from math_verify import parse  # imported lazily: ~0.7 s, only graders need it

    for wrapped in (f"${expr}$", f"\\boxed{{{expr}}}"):
        try:
            parsed = parse(wrapped, parsing_timeout=_mv_timeout())
        except Exception:  # math-verify raises on odd LaTeX; the fallback still runs
            continue
        if parsed:
            return parsed
    return []


def math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify's equivalence (gold first: verification is asymmetric)."""
    from math_verify import verify

    gold_parsed, pred_parsed = _mv_parse(gold), _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_mv_timeout()))
    except Exception:
        return False


def answers_equivalent(gold: str, pred: str) -> bool:
    """True when ``pred`` states the same answer as ``gold``.

    A normalised string match first (cheap), then math-verify, then the PRM800K-style
    element-wise comparison with guarded sympy (the fallback for units, text and lists).
    """
    if len(pred) > _MAX_ANSWER_CHARS:
        return False
    norm_gold, norm_pred = normalize_answer(gold), normalize_answer(pred)
    if norm_gold and norm_gold == norm_pred:
        return True
    return math_verify_equal(gold, pred) or prm800k_equal(gold, pred)


def quick_grade_math(completion: object, ground_truth: object) -> VerifyResult | None:
    """``grade_math``'s result where plain comparison decides it, else None.

    Decides an integer ground truth against an integer answer (or no answer) with string
    and int operations only: no sympy or math-verify, bounded work, safe to run in the
    parent without the worker pool's timeouts. Everything else returns None.
    """
    if not isinstance(completion, str) or len(completion) > _QUICK_MAX_CHARS:
        return None
    if sum(completion.count(cmd) for cmd in _BOX_COMMANDS) > _QUICK_MAX_BOXES:
        return None
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, str | int):
        return None
    gold = str(ground_truth).strip()
    if not _INT_RE.fullmatch(gold):
        return None
    pred = extract_answer(completion)
    if pred is None:
        return VerifyResult(0.0, Reason.NO_ANSWER)
    if not _INT_RE.fullmatch(pred):
        return None
    return _graded(gold, pred, int(pred) == int(gold))


def _graded(gold: str, pred: str, equal: bool) -> VerifyResult:
    detail = f"pred={pred[:80]!r} gold={gold[:80]!r}"
    return (VerifyResult(1.0, Reason.CORRECT, detail) if equal
            else VerifyResult(0.0, Reason.WRONG, detail))


def grade_math(completion: str, ground_truth: object) -> VerifyResult:
    """Grade one math completion in this process: score 1 or 0 and the reason."""
    try:
        gold = clean_ground_truth(ground_truth)
    except BadGroundTruth as exc:
        return VerifyResult(0.0, Reason.BAD_GROUND_TRUTH, str(exc))
    if not isinstance(completion, str):
        return VerifyResult(0.0, Reason.NO_ANSWER, "completion is not a string")
    pred = extract_answer(completion)
    if pred is None:
        return VerifyResult(0.0, Reason.NO_ANSWER)
    return _graded(gold, pred, answers_equivalent(gold, pred))

