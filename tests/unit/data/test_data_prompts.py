"""Spec 8 prompt format: system prompt and suffixes verbatim, seven-action validation."""

from __future__ import annotations

import pytest

from prime_mcore.data.prompts import (
    ACTION_SYSTEM_PROMPT,
    CODE_SUFFIX,
    MATH_SUFFIX,
    VIOLATION_KINDS,
    ActionFormatError,
    action_format_violation,
    build_messages,
    parse_action_trace,
)

# Typed out from a Eurus-2-RL-Data row (PRIME training/scripts/data_prepare.py).
EURUS_SYSTEM = (
    "\nWhen tackling complex reasoning tasks, you have access to the following actions. Use "
    "them as needed to progress through your thought process.\n\n[ASSESS]\n\n[ADVANCE]\n\n"
    "[VERIFY]\n\n[SIMPLIFY]\n\n[SYNTHESIZE]\n\n[PIVOT]\n\n[OUTPUT]\n\nYou should strictly "
    "follow the format below:\n\n[ACTION NAME]\n\n# Your action step 1\n\n# Your action step "
    "2\n\n# Your action step 3\n\n...\n\nNext action: [NEXT ACTION NAME]\n\n")

GOOD = ("[ASSESS]\n# 37+48-19\nNext action: [ADVANCE]\n\n[ADVANCE]\n# 37+48=85\n# 85-19=66\n"
        "Next action: [OUTPUT]\n\n[OUTPUT]\n# The answer is \\boxed{66}")


def test_system_prompt_and_suffixes_are_verbatim():
    assert ACTION_SYSTEM_PROMPT == EURUS_SYSTEM
    assert MATH_SUFFIX == "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"
    assert CODE_SUFFIX == ("\n\nWrite Python code to solve the problem. Present the code in "
                           "\n```python\nYour code\n```\nat the end.")


def test_build_messages():
    assert build_messages("Q", "math") == [
        {"role": "system", "content": EURUS_SYSTEM},
        {"role": "user", "content": "Q" + MATH_SUFFIX}]
    assert build_messages("Q", "code", system_prompt=None) == [
        {"role": "user", "content": "Q" + CODE_SUFFIX}]
    with pytest.raises(ValueError, match="ability"):
        build_messages("Q", "bio")


def test_parse_valid_traces():
    assert parse_action_trace(GOOD, strict=True) == ["ASSESS", "ADVANCE", "OUTPUT"]
    # Eurus-style free text in blocks is fine outside strict mode
    loose = ("[ASSESS]\n\n# Goal: x.\n\nWe know y.\n\nNext action: [VERIFY]\n\n[VERIFY]\n\n"
             "# ok\n\nNext action: [OUTPUT]\n\n[OUTPUT]\n\nThe answer is \\boxed{3}.\n")
    assert parse_action_trace(loose) == ["ASSESS", "VERIFY", "OUTPUT"]
    assert action_format_violation(loose, strict=True) == "step_without_hash"


@pytest.mark.parametrize(("text", "kind"), [
    ("  \n", "empty"),
    ("Sure!\n" + GOOD, "text_before_action"),
    (GOOD.replace("[ASSESS]", "[VERIFY]", 1).replace("[ADVANCE]", "[VERIFY]", 1),
     "not_start_assess"),
    (GOOD.replace("[ADVANCE]\n#", "[THINK]\n#"), "unknown_action"),
    (GOOD.replace("Next action: [ADVANCE]", "Next action: [PLAN]"), "unknown_action"),
    (GOOD.replace("Next action: [ADVANCE]\n", ""), "missing_next_action"),
    (GOOD.replace("Next action: [ADVANCE]", "Next action: [VERIFY]"), "next_action_mismatch"),
    (GOOD.split("\n\n[OUTPUT]")[0], "no_output"),
    ("[ASSESS]\n# a\nNext action: [OUTPUT]\n\n[OUTPUT]\n# \\boxed{1}\n\n[VERIFY]\n# b",
     "output_not_last"),
    (GOOD + "\nNext action: [VERIFY]", "dangling_next_action"),
    (GOOD.replace("\\boxed{66}", "66"), "missing_boxed"),
    (GOOD.replace("# 37+48-19\n", ""), "empty_action"),
    (GOOD.replace("# 85-19=66", "85-19=66"), "step_without_hash"),
])
def test_violation_kinds(text, kind):
    assert kind in VIOLATION_KINDS
    with pytest.raises(ActionFormatError) as err:
        parse_action_trace(text, strict=True)
    assert err.value.kind == kind
    assert action_format_violation(text, strict=True) == kind


def test_every_kind_is_exercised():
    # keep VIOLATION_KINDS and the parametrized cases above in step
    kinds = {k for _, k in test_violation_kinds.pytestmark[0].args[1]}
    assert kinds == set(VIOLATION_KINDS)
