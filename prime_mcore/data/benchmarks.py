"""Evaluation benchmark files (spec 10) as ``EvalItem``s, and the paper's suite.

``load_benchmark`` auto-detects every format of PRIME's ``eval/data`` (and the Qwen2.5-Math
and GSM8K copies): AIME/AMC jsonl (float answers -> "142"), column-oriented MATH-500 JSON,
Minerva (answer = last ``\\boxed`` of the solution), OlympiadBench (``final_answer`` list),
HumanEval ``.jsonl.gz``, MBPP JSON, LeetCode jsonl-in-``.json``, GSM8K (``#### answer``),
LiveCodeBench ``code_generation_lite`` rows, Eurus-2 parquet and any jsonl with
question/answer. Code ground truth is what ``rewards.code_grader.parse_tests`` accepts; a
code item's ``meta`` may carry ``code_prefix`` (prepended to the extracted program before
grading, as PRIME's harness does), ``wrap_solution_class`` and ``reference`` (a solution).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import pickle
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prime_mcore.data.schema import BadRowsError, read_rl_parquet

__all__ = ["EvalItem", "BenchmarkSpec", "CATALOG", "PAPER_SUITE", "FORMATS", "IMPORT_PRELUDE",
           "detect_format", "load_benchmark"]

log = logging.getLogger(__name__)

# PRIME's LeetCode harness prepends these (human_eval IMPORT_HELPER); numpy is optional
# because the sandbox's interpreter may lack it.
IMPORT_PRELUDE = (
    "import math\nimport re\nimport sys\nimport copy\nimport datetime\nimport itertools\n"
    "import collections\nimport heapq\nimport functools\nimport hashlib\nimport string\n"
    "from typing import *\nfrom collections import *\nfrom functools import *\n"
    "try:\n    import numpy\n    import numpy as np\nexcept ImportError:\n    pass\n")


@dataclass(frozen=True)
class EvalItem:
    """One benchmark problem: ``question`` without the ability suffix (the trainer builds the
    chat prompt), ``ground_truth`` an answer string (math) or tests (code)."""

    benchmark: str
    id: str
    question: str
    ability: str
    ground_truth: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkSpec:
    """A catalogued benchmark: its file under a data root and its sampling (spec 10)."""

    name: str
    """Column title in the results table."""
    path: str
    """Relative to the user's data root."""
    max_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    url_contains: str | None = None
    date_range: tuple[str, str] | None = None


_AIMO = "prime_eval/AI-MO/aimo-validation-"
CATALOG: dict[str, BenchmarkSpec] = {
    "aime2024": BenchmarkSpec("AIME 2024", f"{_AIMO}aime/aimo-validation-aime.jsonl", 4096,
                              url_contains="2024_AIME"),
    "amc": BenchmarkSpec("AMC", f"{_AIMO}amc/aimo-validation-amc.jsonl", 4096),
    "math500": BenchmarkSpec("MATH-500", "prime_eval/math500/math_test_cleaned.json", 8192),
    "minerva_math": BenchmarkSpec("Minerva Math", "prime_eval/minerva_math/test.jsonl", 4096),
    "olympiadbench": BenchmarkSpec("OlympiadBench", "prime_eval/olympiadbench/test.jsonl", 4096),
    "leetcode": BenchmarkSpec("LeetCode", "prime_eval/leetcode/leetcode-test.json", 8192),
    # Official runner defaults (n=10, T=0.2, top_p=0.95), the paper's v2 contest window.
    "livecodebench": BenchmarkSpec("LiveCodeBench", "livecodebench/test.jsonl", 4096, n=10,
                                   temperature=0.2, top_p=0.95,
                                   date_range=("2023-05-01", "2024-05-31")),
    "humaneval": BenchmarkSpec("HumanEval", "prime_eval/humaneval/HumanEval.jsonl.gz", 4096),
    "mbpp": BenchmarkSpec("MBPP", "prime_eval/mbpp/new_mbpp.json", 4096),
    "gsm8k": BenchmarkSpec("GSM8K", "gsm8k/test.jsonl", 4096),
}
"""Known benchmarks by suite name; "builtin" (the built-in test split) is added by the trainer."""

PAPER_SUITE: tuple[str, ...] = ("aime2024", "amc", "math500", "minerva_math", "olympiadbench",
                                "leetcode", "livecodebench")
"""The seven benchmarks of the paper's Table 1, in its column order."""


def _number(value: Any) -> str:
    """AMC stores answers as floats: 142.0 -> "142"; other values as their text."""
    if isinstance(value, bool):
        raise ValueError("answer is a boolean")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"answer {value!r} is empty or not a string/number")
    return value.strip()


def _qa(row: dict) -> tuple[str, str, str, dict]:
    question = row.get("question") or row.get("problem")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("no question/problem text")
    meta = {"url": row["url"]} if row.get("url") else {}
    return "math", question, _number(row["answer"]), meta


def _math(row: dict) -> tuple[str, str, str, dict]:
    from prime_mcore.rewards.math_grader import last_boxed

    answer = row.get("expected_answer", row.get("answer"))
    if answer is None:  # Minerva: the reference solution's last box
        answer = last_boxed(str(row.get("solution") or ""))
        if answer is None:
            raise ValueError("solution has no \\boxed{} answer")
    meta = {k: row[k] for k in ("level", "type") if row.get(k)}
    return "math", str(row["problem"]), _number(answer), meta


def _gsm8k(row: dict) -> tuple[str, str, str, dict]:
    if "####" not in row["answer"]:
        raise ValueError("answer has no '#### <number>' line")
    answer = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    return "math", row["question"], _number(answer), {}


def _olympiad(row: dict) -> tuple[str, str, str, dict]:
    answers = [str(a).strip().strip("$").strip() for a in row["final_answer"]]
    if not answers or not all(answers):
        raise ValueError("final_answer is empty")
    question = f"{row['context']}\n{row['question']}" if row.get("context") else row["question"]
    return "math", question, ", ".join(answers), {"unit": row.get("unit")}


def _humaneval(row: dict) -> tuple[str, str, str, dict]:
    prompt, entry = row["prompt"], row["entry_point"]
    sig = re.search(rf"def\s+({re.escape(entry)}.*?):\s*\n", prompt)
    if sig is None:
        raise ValueError(f"prompt does not define {entry}")
    # PRIME's chat prompt (eval/scripts/eval/human_eval); the grader runs prompt + code.
    question = (f"Write Python code to solve the task.\nWrite a Python function `{sig.group(1)}` "
                f"to solve the following problem: Present code in ```python```\n```python\n"
                f"{prompt}\n```\n")
    truth = json.dumps({"test": row["test"], "entry_point": entry})
    reference = f"```python\n{prompt}{row.get('canonical_solution', '')}\n```"
    return "code", question, truth, {"code_prefix": prompt, "reference": reference}


def _mbpp(row: dict) -> tuple[str, str, str, dict]:
    code = row["code"]
    line = next(x for x in code.split("\n") if x.strip().startswith("def "))
    sig = line.strip().removeprefix("def ").replace(" ", "").rstrip(":").replace(",", ", ")
    description = row["prompt"].split(" https://www.")[0]
    question = (f"Write Python code to solve the task.\nWrite a Python function `{sig}` to solve "
                f"the following problem: Present code in ```python and ```\n{description}\n"
                f"The code should pass the following test cases:>>> {row['test_list'][0]}\n\n"
                " Let's coding step by step.\n")
    tests = "\n".join([*row.get("test_imports", []), *row["test_list"]])
    return "code", question, tests, {"reference": f"```python\n{code}\n```"}


def _leetcode(row: dict) -> tuple[str, str, str, dict]:
    if "my_solution" not in row["test"]:
        raise ValueError("test does not exercise Solution()")
    meta = {"code_prefix": IMPORT_PRELUDE, "wrap_solution_class": True}
    if row.get("start_time"):
        meta["date"] = datetime.fromtimestamp(int(row["start_time"]), UTC).strftime("%Y-%m-%d")
    return "code", row["prompt_sft"], row["test"], meta


class _StrOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # no code runs from data files
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _lcb_cases(value: Any) -> list[dict]:
    if isinstance(value, list):
        return value
    try:
        return json.loads(value)
    except ValueError:  # private tests: base64(zlib(pickle(json string)))
        raw = zlib.decompress(base64.b64decode(value))
        return json.loads(_StrOnly(io.BytesIO(raw)).load())


def _lcb(row: dict) -> tuple[str, str, str, dict]:
    cases = _lcb_cases(row["public_test_cases"]) + _lcb_cases(row.get("private_test_cases") or [])
    if not cases:
        raise ValueError("no test cases")
    meta_raw = row.get("metadata") or {}
    fn = (json.loads(meta_raw) if isinstance(meta_raw, str) else meta_raw).get("func_name")
    if cases[0].get("testtype") == "functional":
        if not fn:
            raise ValueError("functional tests but metadata has no func_name")
        inputs = [[json.loads(x) for x in c["input"].split("\n")] for c in cases]
        truth = {"inputs": inputs, "outputs": [json.loads(c["output"]) for c in cases],
                 "fn_name": fn}
    else:
        truth = {"inputs": [c["input"] for c in cases], "outputs": [c["output"] for c in cases]}
    starter = row.get("starter_code") or ""
    fmt = (f"You will use the following starter code to write the solution to the problem and "
           f"enclose your code within delimiters.\n```python\n{starter}\n```" if starter else
           "Read the inputs from stdin solve the problem and write the answer to stdout (do not "
           "directly test on the sample inputs).")
    question = f"### Question:\n{row['question_content']}\n\n### Format: {fmt}"
    return "code", question, json.dumps(truth), {"date": str(row.get("contest_date", ""))[:10]}


_PARSERS: dict[str, Callable[[dict], tuple[str, str, str, dict]]] = {
    "qa": _qa, "math": _math, "math500": _math, "minerva": _math, "gsm8k": _gsm8k,
    "olympiadbench": _olympiad, "humaneval": _humaneval, "mbpp": _mbpp, "leetcode": _leetcode,
    "lcb": _lcb,
}
FORMATS: tuple[str, ...] = (*_PARSERS, "eurus")
_ID_KEYS = ("task_id", "question_id", "id", "unique_id", "idx")


def _read_records(path: Path) -> tuple[list[Any], bool]:
    """Rows of a JSON/JSONL(.gz) file and whether it was column-oriented (MATH-500)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        index = sorted({k for col in data.values() for k in col}, key=lambda k: int(k))
        return [{c: data[c].get(i) for c in data} for i in index], True
    if isinstance(data, list):
        return data, False
    rows: list[Any] = []
    for number, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:  # kept as a bad row, reported with its index
                rows.append(ValueError(f"line {number + 1} is not JSON ({err})"))
    return rows, False


def detect_format(rows: list[Any], columnar: bool = False) -> str:
    """The format of parsed rows, from the first row's keys (ValueError when unknown)."""
    first = next((r for r in rows if isinstance(r, dict)), None)
    if first is None:
        raise ValueError("no JSON object rows")
    keys = set(first)
    checks = (("lcb", {"question_content", "public_test_cases"}), ("mbpp", {"test_list"}),
              ("humaneval", {"prompt", "test", "entry_point"}), ("leetcode", {"prompt_sft", "test"}),
              ("olympiadbench", {"final_answer"}), ("math", {"problem", "expected_answer"}))
    for fmt, needed in checks:
        if needed <= keys:
            return "math500" if fmt == "math" and columnar else fmt
    if {"problem", "solution"} <= keys and "answer" not in keys:
        return "minerva"
    if {"question", "answer"} <= keys and "####" in str(first["answer"]):
        return "gsm8k"
    if {"problem", "answer"} <= keys and "question" not in keys:
        return "math"
    if "answer" in keys and keys & {"question", "problem"}:
        return "qa"
    raise ValueError(f"unknown benchmark format (first row keys: {sorted(keys)})")


def _default_name(path: Path, fmt: str) -> str:
    if fmt in ("qa", "math", "eurus"):
        stem = path.name.split(".")[0]
        return path.parent.name if stem in ("test", "train", "data") else stem
    return fmt


def _resolve(path: Path) -> Path | list[Path]:
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"benchmark file {path} does not exist")
        return path
    files = sorted(p for p in path.iterdir() if p.is_file() and re.search(
        r"\.(jsonl?|jsonl\.gz|parquet)$", p.name))
    if files and all(p.suffix == ".parquet" for p in files):
        return files
    if len(files) != 1:
        raise ValueError(f"{path}: expected one benchmark file, found {[p.name for p in files]}")
    return files[0]


def _eurus_items(paths: list[Path], name: str, skip_bad_rows: bool) -> list[EvalItem]:
    result = read_rl_parquet(paths, skip_bad_rows=skip_bad_rows)
    items = []
    for i, ex in enumerate(result.examples):
        user = [m["content"] for m in ex.prompt if m["role"] == "user"][-1]
        items.append(EvalItem(name, str(ex.extra_info.get("index", i)), user, ex.ability,
                              ex.ground_truth, {"messages": ex.prompt,
                                                "data_source": ex.data_source}))
    return items


def _keep(item: EvalItem, url_contains: str | None, date_range: tuple[str, str] | None) -> bool:
    if url_contains is not None and url_contains not in item.meta.get("url", ""):
        return False
    if date_range is not None:
        date = item.meta.get("date") or ""
        return bool(date) and date_range[0] <= date <= date_range[1]
    return True


def load_benchmark(path_or_dir: str | Path, fmt: str = "auto", limit: int | None = None, *,
                   name: str | None = None, url_contains: str | None = None,
                   date_range: tuple[str, str] | None = None,
                   skip_bad_rows: bool = False) -> list[EvalItem]:
    """Items of one benchmark file (or a directory holding one file or parquet files).

    ``fmt``: "auto" or one of ``FORMATS``; ``url_contains`` / ``date_range`` (ISO dates,
    inclusive) filter rows (AIME 2024: ``url_contains="2024_AIME"``); ``limit`` keeps the
    first items after filtering. Malformed rows raise ``BadRowsError`` naming their indices,
    or with ``skip_bad_rows`` are dropped and counted in a warning.
    """
    resolved = _resolve(Path(path_or_dir))
    paths = resolved if isinstance(resolved, list) else [resolved]
    if fmt == "auto" and all(p.suffix == ".parquet" for p in paths):
        fmt = "eurus"
    if fmt not in (*FORMATS, "auto"):
        raise ValueError(f"fmt={fmt!r} is not one of {['auto', *FORMATS]}")
    if fmt == "eurus":
        items = _eurus_items(paths, name or _default_name(paths[0], fmt), skip_bad_rows)
    else:
        if len(paths) != 1:
            raise ValueError(f"fmt={fmt} reads one file, got {len(paths)}")
        rows, columnar = _read_records(paths[0])
        fmt = detect_format(rows, columnar) if fmt == "auto" else fmt
        name = name or _default_name(paths[0], fmt)
        items, bad = [], []
        for i, row in enumerate(rows):
            try:
                if isinstance(row, Exception):
                    raise row
                if not isinstance(row, dict):
                    raise ValueError("row is not a JSON object")
                ability, question, truth, meta = _PARSERS[fmt](row)
                if not question.strip() or not truth.strip():
                    raise ValueError("empty question or ground truth")
                ident = next((row[k] for k in _ID_KEYS if row.get(k) is not None), i)
                items.append(EvalItem(name, str(ident), question, ability, truth,
                                      {"row": i, **meta}))
            except (KeyError, ValueError, TypeError, IndexError, StopIteration,
                    pickle.UnpicklingError, zlib.error) as err:
                why = f"missing field {err}" if isinstance(err, KeyError) else str(err)
                bad.append((i, f"{type(err).__name__}: {why}"[:200]))
        if bad and not skip_bad_rows:
            raise BadRowsError(str(paths[0]), bad, len(rows), hint=f" (format {fmt}; set "
                               "skip_bad_rows=true to skip and count them)")
        if bad:
            log.warning("%s: skipped %d bad row(s) of %d (first: row %d: %s)",
                        paths[0], len(bad), len(rows), *bad[0])
        if len({it.id for it in items}) < len(items):  # AMC repeats ids: add the row
            items = [replace(it, id=f"{it.id}#{it.meta['row']}") for it in items]
    items = [it for it in items if _keep(it, url_contains, date_range)]
    return items[:limit] if limit else items
