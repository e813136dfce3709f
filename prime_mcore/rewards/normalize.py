"""PRM800K-style answer normaliser and element-wise comparison (the math fallback, spec 7.2).

Written from the grading rules, not copied: strip LaTeX decoration, units, dollars and
percent signs; read LaTeX into plain text; compare tuples and intervals element-wise with
the bracket kind kept; unreduced fractions and integers must match exactly; otherwise
sympy decides. Answers are model output, so sympy only ever sees strings made of a small
whitelist (``parse_expr`` evaluates Python).
"""

from __future__ import annotations

import re
from functools import lru_cache

_UNITS = (
    "degree", "radian", "cm", "centimeter", "centimetre", "mm", "millimeter", "km", "kilometer",
    "meter", "metre", "mile", "foot", "feet", "inch", "yard", "second", "minute", "hour",
    "day", "week", "month", "year", "gram", "kg", "kilogram", "pound", "ounce", "liter",
    "litre", "ml", "dollar", "cent", "unit", "mph", "square", "cubic", "percent", "people",
    "student", "point",
)
_UNIT_RE = re.compile(
    r"(?<=[\d}\s])\s*(?:" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")(?:es|s)?"
    r"(?:\s*\^\s*\{?\d\}?)?(?![a-z])",
    re.IGNORECASE,
)
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}"
)
_SCALE = {"thousand": "*10^3", "million": "*10^6", "billion": "*10^9", "trillion": "*10^12"}
_UNICODE = {"√": "sqrt", "π": "pi", "∞": "inf", "∪": "U", "·": "*", "×": "*", "−": "-"}
_SYMPY_NAMES = ("sqrt", "pi")
_SAFE_EXPR_RE = re.compile(r"[0-9a-z+\-*/^().\s]*")


def _group(text: str, i: int) -> tuple[str, int]:
    """The TeX argument starting at ``i`` ({...} with nesting, or one character), and its end."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return "", i
    if text[i] != "{":
        return text[i], i + 1
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j], j + 1
    return text[i + 1 :], len(text)


def _expand_fracs_and_roots(text: str) -> str:
    """\\frac{a}{b} -> (a)/(b) and \\sqrt[n]{a} -> (a)^(1/(n)); pylatexenc drops the parens."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("\\frac", i):
            num, i = _group(text, i + 5)
            den, i = _group(text, i)
            out.append(f"({_expand_fracs_and_roots(num)})/({_expand_fracs_and_roots(den)})")
        elif text.startswith("\\sqrt", i):
            i += 5
            index = None
            if i < len(text) and text[i] == "[":
                close = text.find("]", i)
                index, i = text[i + 1 : close], close + 1
            arg, i = _group(text, i)
            arg = _expand_fracs_and_roots(arg)
            out.append(f"sqrt({arg})" if index is None else f"({arg})^(1/({index}))")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _latex_to_text(expr: str) -> str:
    from pylatexenc.latex2text import LatexNodes2Text

    expr = _expand_fracs_and_roots(expr)
    try:
        text = LatexNodes2Text().latex_to_text(expr)
    except Exception:  # malformed LaTeX: keep what we have
        return expr
    for char, name in _UNICODE.items():
        text = text.replace(char, name)
    return text


def _strip_outer_braces(expr: str) -> str:
    while expr.startswith("{") and expr.endswith("}") and _group(expr, 0)[1] == len(expr):
        expr = expr[1:-1].strip()
    return expr


def normalize_answer(expr: str) -> str:
    """Canonical plain-text form of an answer; equal strings mean equal answers."""
    expr = expr.strip()
    for _ in range(3):  # \text{} may nest: \text{\textbf{B}}
        expr = _TEXT_CMD_RE.sub(r"\1", expr)
    for token in ("\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "\\displaystyle"):
        expr = expr.replace(token, "")
    expr = expr.replace("\\ ", " ").replace("~", " ")
    expr = re.sub(r"\\[dt]frac", r"\\frac", expr)
    expr = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", expr)
    for token in ("\\%", "%", "\\$", "$"):
        expr = expr.replace(token, "")
    expr = re.sub(r"\s+(?:or|and)\s+", ",", expr)
    for word, power in _SCALE.items():
        expr = re.sub(rf"\s*\b{word}\b", power, expr)
    expr = _UNIT_RE.sub("", expr)
    expr = expr.replace("{,}", "").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", expr):
        expr = expr.replace(",", "")  # a thousands separator, not a list
    expr = _strip_outer_braces(expr)
    if "\\" in expr:
        expr = _latex_to_text(expr)
    expr = re.sub(r"(\d)\s+(\d+/\d+)", r"\1+\2", expr)  # mixed number 7 3/4
    expr = re.sub(r"\s+", "", expr).replace("{", "").replace("}", "").lower()
    expr = expr.rstrip(".")
    integer = re.fullmatch(r"([+-]?\d+)(?:\.0*)?", expr)
    if integer and len(expr) <= 1000:  # int() is exact at any length (float was not)
        expr = str(int(integer.group(1)))
    return expr


def _split_top_level(expr: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(expr):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    parts.append(expr[start:])
    return parts


def _tuple_elements(expr: str) -> tuple[str, list[str]] | None:
    """(bracket pair, elements) for a bracketed tuple or interval, else None."""
    if len(expr) >= 3 and expr[0] in "([" and expr[-1] in ")]":
        inner = _split_top_level(expr[1:-1])
        if len(inner) > 1:
            return expr[0] + expr[-1], inner
    return None


def _is_fraction(expr: str) -> bool:
    return re.fullmatch(r"-?\(?\d+\)?/\(?\d+\)?", expr) is not None


def _is_int(expr: str) -> bool:
    return re.fullmatch(r"-?\d+", expr) is not None


@lru_cache(maxsize=4096)
def _to_sympy(expr: str):
    """A sympy expression for a whitelisted plain-text answer, else None."""
    expr = expr.replace("inf", "oo") if "inf" in expr else expr
    letters = re.sub("|".join(_SYMPY_NAMES) + "|oo", "", expr)
    if (
        len(expr) > 80
        or not _SAFE_EXPR_RE.fullmatch(expr.replace("oo", ""))
        or len(set(re.findall(r"[a-z]", letters))) > 2
        or re.search(r"[a-z]{2,}", letters)  # unknown names could be Python builtins
        or re.search(r"\^\s*\(?[-+]?\d{3,}", expr)  # 10^999999 would hang the worker
        or expr.count("^") > 3
        or re.search(r"\.[a-z_]", expr)  # attribute access
    ):
        return None
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    names = {c: sympy.Symbol(c) for c in set(re.findall(r"[a-z]", letters))}
    names.update(sqrt=sympy.sqrt, pi=sympy.pi, oo=sympy.oo)
    try:
        return parse_expr(expr, local_dict=names, transformations=transformations)
    except Exception:  # sympy raises many types on odd input
        return None


def sympy_equal(a: str, b: str) -> bool:
    """sympy.simplify(a - b) == 0 on two normalised answers (False when unparsable)."""
    ea, eb = _to_sympy(a), _to_sympy(b)
    if ea is None or eb is None:
        return False
    import sympy

    try:
        return bool(sympy.simplify(ea - eb) == 0)
    except Exception:
        return False


def _elements_equal(gold: str, pred: str) -> bool:
    if gold == pred:
        return True
    if _is_fraction(gold) and _is_fraction(pred):
        return False  # unreduced fractions must match exactly (PRM800K rule)
    if _is_int(gold) != _is_int(pred):
        return False  # integers need an exact match (PRM800K rule)
    return sympy_equal(gold, pred)


def prm800k_equal(gold: str, pred: str) -> bool:
    """PRM800K-style equivalence of two raw answers (bracket kind matters for tuples)."""
    g, p = normalize_answer(gold), normalize_answer(pred)
    if not g or not p:
        return False
    if g == p:
        return True
    gt, pt = _tuple_elements(g), _tuple_elements(p)
    if gt is not None or pt is not None:
        if gt is None or pt is None or gt[0] != pt[0] or len(gt[1]) != len(pt[1]):
            return False
        return all(_elements_equal(x, y) for x, y in zip(gt[1], pt[1]))
    g_list, p_list = _split_top_level(g), _split_top_level(p)
    if len(g_list) > 1 or len(p_list) > 1:  # an unbracketed answer list: order-free
        if len(g_list) != len(p_list):
            return False
        remaining = list(p_list)
        for x in g_list:
            match = next((y for y in remaining if _elements_equal(x, y)), None)
            if match is None:
                return False
            remaining.remove(match)
        return True
    return _elements_equal(g, p)
