"""Prompt format of PRIME (spec section 8): action-centric system prompt, user suffixes,
ChatML chat template, and a validator for the seven-action response format.

The system prompt is the one stored in Eurus-2-RL-Data rows (PRIME-RL/PRIME
``training/scripts/data_prepare.py``: ``short_system_prompt``), byte for byte. PRIME's eval
scripts hard-code the same text with a single trailing newline instead of two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "ACTION_SYSTEM_PROMPT",
    "MATH_SUFFIX",
    "CODE_SUFFIX",
    "CHATML_TEMPLATE",
    "VIOLATION_KINDS",
    "ActionFormatError",
    "build_messages",
    "parse_action_trace",
    "action_format_violation",
]

ACTIONS: tuple[str, ...] = (
    "ASSESS", "ADVANCE", "VERIFY", "SIMPLIFY", "SYNTHESIZE", "PIVOT", "OUTPUT",
)

ACTION_SYSTEM_PROMPT: str = (
    "\nWhen tackling complex reasoning tasks, you have access to the following actions. "
    "Use them as needed to progress through your thought process.\n\n"
    + "".join(f"[{a}]\n\n" for a in ACTIONS)
    + "You should strictly follow the format below:\n\n"
    "[ACTION NAME]\n\n"
    "# Your action step 1\n\n"
    "# Your action step 2\n\n"
    "# Your action step 3\n\n"
    "...\n\n"
    "Next action: [NEXT ACTION NAME]\n\n"
)

MATH_SUFFIX: str = "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"
CODE_SUFFIX: str = (
    "\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour code\n```"
    "\nat the end."
)

# Qwen2.5 ChatML, minus Qwen's tool-calling branches and its injected default system message
# (rows without a system turn stay without one, which keeps built-in task prompts short).
CHATML_TEMPLATE: str = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_SUFFIX = {"math": MATH_SUFFIX, "code": CODE_SUFFIX}


def build_messages(
    question: str, ability: str, system_prompt: str | None = ACTION_SYSTEM_PROMPT
) -> list[dict[str, str]]:
    """Chat messages for one problem: optional system turn, then the question plus the
    ability's suffix (spec 8). ``system_prompt=None`` leaves the system turn out."""
    if ability not in _SUFFIX:
        raise ValueError(f"ability={ability!r} is not one of {sorted(_SUFFIX)}")
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": question + _SUFFIX[ability]})
    return messages


# --- seven-action format validation ---------------------------------------------------

VIOLATION_KINDS: tuple[str, ...] = (
    "empty",                 # no text at all
    "text_before_action",    # something precedes the first [ACTION] header
    "not_start_assess",      # first action is not ASSESS
    "unknown_action",        # a header or "Next action" names no known action
    "missing_next_action",   # a non-final block lacks its "Next action: [X]" line
    "next_action_mismatch",  # "Next action: [X]" but the next block is not X
    "output_not_last",       # OUTPUT appears before the final block
    "no_output",             # the final block is not OUTPUT
    "dangling_next_action",  # the final OUTPUT block still announces a next action
    "missing_boxed",         # the OUTPUT block has no \boxed{...}
    "empty_action",          # (strict) an action block without any step
    "step_without_hash",     # (strict) a step line that does not start with "#"
)

_HEADER = re.compile(r"^\[([A-Z][A-Z ]*)\]\s*$")
_NEXT = re.compile(r"^Next action:\s*\[([^\]]*)\]\s*$")


class ActionFormatError(ValueError):
    """A response that breaks the seven-action format; ``kind`` is one of VIOLATION_KINDS."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class _Block:
    action: str
    lines: list[str]  # body lines, blank ones removed


def _split_blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    for line in text.splitlines():
        header = _HEADER.match(line.strip())
        if header:
            blocks.append(_Block(header.group(1), []))
        elif line.strip():
            if not blocks:
                raise ActionFormatError("text_before_action", repr(line[:60]))
            blocks[-1].lines.append(line.strip())
    return blocks


def _check_block(block: _Block, index: int, nxt: str | None, strict: bool) -> None:
    where = f"block {index} [{block.action}]"
    steps = block.lines
    announce = _NEXT.match(steps[-1]) if steps else None
    if announce:
        steps = steps[:-1]
    if strict and not steps:
        raise ActionFormatError("empty_action", where)
    if strict and block.action != "OUTPUT":
        bad = [s for s in steps if not s.startswith("#")]
        if bad:
            raise ActionFormatError("step_without_hash", f"{where}: {bad[0][:60]!r}")
    if nxt is None:  # final block
        if block.action != "OUTPUT":
            raise ActionFormatError("no_output", f"final {where}")
        if announce:
            raise ActionFormatError("dangling_next_action", where)
        if "\\boxed{" not in "\n".join(steps):
            raise ActionFormatError("missing_boxed", where)
        return
    if block.action == "OUTPUT":
        raise ActionFormatError("output_not_last", where)
    if not announce:
        raise ActionFormatError("missing_next_action", where)
    named = announce.group(1).strip()
    if named not in ACTIONS:
        raise ActionFormatError("unknown_action", f"{where}: Next action [{named}]")
    if named != nxt:
        raise ActionFormatError("next_action_mismatch", f"{where}: announces [{named}], got [{nxt}]")


def parse_action_trace(text: str, *, strict: bool = False) -> list[str]:
    """Validate a response in the seven-action format and return its actions in order.

    The response must start with [ASSESS], end with an [OUTPUT] block holding a
    ``\\boxed{...}``, use only the seven actions, and end every other block with a
    "Next action: [X]" line naming the following block. ``strict`` also requires every
    non-OUTPUT step line to start with "#" and every block to hold a step (the built-in
    task's traces satisfy it; real model outputs often do not). Raises ActionFormatError.
    """
    if not text.strip():
        raise ActionFormatError("empty", "no text")
    blocks = _split_blocks(text)
    if not blocks:
        raise ActionFormatError("text_before_action", "no [ACTION] header")
    if blocks[0].action != "ASSESS":
        kind = "not_start_assess" if blocks[0].action in ACTIONS else "unknown_action"
        raise ActionFormatError(kind, f"first action is [{blocks[0].action}]")
    unknown = [i for i, b in enumerate(blocks) if b.action not in ACTIONS]
    if unknown:
        raise ActionFormatError("unknown_action", f"block {unknown[0]} [{blocks[unknown[0]].action}]")
    for i, block in enumerate(blocks):
        nxt = blocks[i + 1].action if i + 1 < len(blocks) else None
        _check_block(block, i, nxt, strict)
    return [b.action for b in blocks]


def action_format_violation(text: str, *, strict: bool = False) -> str | None:
    """The kind of the first format violation in ``text`` (see VIOLATION_KINDS), or None."""
    try:
        parse_action_trace(text, strict=strict)
    except ActionFormatError as err:
        return err.kind
    return None
