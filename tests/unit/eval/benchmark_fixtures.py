"""Tiny self-made files in every benchmark format, laid out like the catalog's paths
(``write_fixture_root``), with a reference solution for every code problem."""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import zlib
from pathlib import Path

from prime_mcore.data.benchmarks import CATALOG

HE_PROMPT = ('from typing import List\n\n\ndef total(xs: List[int]) -> int:\n'
             '    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n')
HE_TEST = ("\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n"
           "    assert candidate([]) == 0\n")
LC_TEST = ('\nmy_solution = Solution()\n\ntest_input = { "nums": [1, 2, 3] }\n'
           'assert my_solution.maxValue(**test_input) == 3\n\n'
           'test_input = { "nums": [5] }\nassert my_solution.maxValue(**test_input) == 5\n')
# Methods only, as models often answer: the trainer wraps them into ``class Solution``;
# the List annotation needs the import prelude.
LEETCODE_REFERENCE = ("```python\ndef maxValue(self, nums: List[int]) -> int:\n"
                      "    return max(nums)\n```")
LCB_REFERENCES = {
    "lcb_fn": ("```python\nclass Solution:\n    def addTwo(self, a: int, b: int) -> int:\n"
               "        return a + b\n```"),
    "lcb_io": "```python\nn = int(input())\nprint(n * 2)\n```",
}


def _jsonl(path: Path, rows: list[dict], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def _private(cases: list[dict]) -> str:
    """LiveCodeBench's private-test encoding: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def aime_rows() -> list[dict]:
    urls = ["2024_AIME_I_Problems/Problem_1", "2023_AIME_I_Problems/Problem_2",
            "2024_AIME_II_Problems/Problem_3", "2022_AIME_II_Problems/Problem_4",
            "2024_AIME_I_Problems/Problem_5"]
    return [{"id": i, "question": f"AIME question {i}?", "answer": str(100 + i),
             "url": f"https://artofproblemsolving.com/wiki/index.php/{u}", "solution": "s"}
            for i, u in enumerate(urls)]


def write_fixture_root(root: Path) -> Path:
    """Write one small file per catalog entry under ``root`` (and extras); returns root."""
    paths = {k: root / spec.path for k, spec in CATALOG.items()}
    _jsonl(paths["aime2024"], aime_rows())
    _jsonl(paths["amc"], [{"id": 0, "question": "AMC one?", "answer": 142.0, "url": "amc",
                           "solution": None},
                          {"id": 1, "question": "AMC two?", "answer": 2.5, "url": "amc",
                           "solution": None}])
    problems = ["What is $1+1$?", "Simplify $\\frac{2}{4}$.", "What is $3^2$?"]
    columns = {"problem": problems, "level": ["Level 1"] * 3, "type": ["Algebra"] * 3,
               "solution": ["2", "1/2", "9"], "expected_answer": ["2", "\\frac{1}{2}", "9"],
               "id": [f"test/algebra/{i}.json" for i in range(3)]}
    paths["math500"].parent.mkdir(parents=True, exist_ok=True)
    paths["math500"].write_text(json.dumps(
        {c: {str(i): v for i, v in enumerate(vals)} for c, vals in columns.items()}))
    _jsonl(paths["minerva_math"], [
        {"problem": "Speed?", "solution": "So $v=\\boxed{1.6}$ m/s.", "type": "x", "idx": 0},
        {"problem": "Ratio?", "solution": "First \\boxed{2}, finally \\boxed{\\frac{1}{2}}.",
         "type": "x", "idx": 1}])
    _jsonl(paths["olympiadbench"], [
        {"id": 1606, "subfield": "Algebra", "context": None, "question": "Find x.",
         "solution": ["..."], "final_answer": ["$3$"], "is_multiple_answer": False,
         "unit": None, "answer_type": "Numerical", "error": None},
        {"id": 1607, "subfield": "Algebra", "context": None, "question": "Find all x.",
         "solution": ["..."], "final_answer": ["$1$", "$2$"], "is_multiple_answer": True,
         "unit": "m", "answer_type": "Numerical", "error": None}])
    _jsonl(paths["humaneval"], [{"task_id": "HumanEval/0", "prompt": HE_PROMPT,
                                 "entry_point": "total", "canonical_solution": "    return sum(xs)\n",
                                 "test": HE_TEST}], gz=True)
    mbpp = [{"source_file": "a", "task_id": 2, "prompt": "Write a function to add two numbers.",
             "code": "def add(a, b):\n    return a + b", "test_imports": [],
             "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
            {"source_file": "b", "task_id": 3, "prompt": "Write a function for a square root.",
             "code": "import math\ndef root(x):\n    return math.sqrt(x)",
             "test_imports": ["import math"],
             "test_list": ["assert math.isclose(root(4), 2.0)", "assert root(9) == 3.0"]}]
    paths["mbpp"].parent.mkdir(parents=True, exist_ok=True)
    paths["mbpp"].write_text(json.dumps(mbpp))
    _jsonl(paths["leetcode"], [{"task_id": "weekly-contest-1-max-value", "url": "u",
                                "title": "max-value", "meta": {"difficulty": "Easy"},
                                "prompt": "...", "prompt_sft": "Return the largest value.",
                                "test": LC_TEST, "start_time": 1700000000}])
    fn_cases = [{"input": "1\n2", "output": "3", "testtype": "functional"},
                {"input": "-5\n5", "output": "0", "testtype": "functional"}]
    io_cases = [{"input": "4\n", "output": "8\n", "testtype": "stdin"}]
    _jsonl(paths["livecodebench"], [
        {"question_title": "add", "question_content": "Add a and b.", "platform": "leetcode",
         "question_id": "lcb_fn", "contest_id": "c1", "contest_date": "2023-09-02T00:00:00",
         "starter_code": "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        ",
         "difficulty": "easy", "public_test_cases": json.dumps(fn_cases[:1]),
         "private_test_cases": _private(fn_cases[1:]),
         "metadata": json.dumps({"func_name": "addTwo"})},
        {"question_title": "double", "question_content": "Print 2n.", "platform": "atcoder",
         "question_id": "lcb_io", "contest_id": "c2", "contest_date": "2024-01-10T00:00:00",
         "starter_code": "", "difficulty": "easy", "public_test_cases": json.dumps(io_cases),
         "private_test_cases": json.dumps([]), "metadata": "{}"},
        {"question_title": "late", "question_content": "Outside the window.", "platform": "x",
         "question_id": "lcb_late", "contest_id": "c3", "contest_date": "2024-09-01T00:00:00",
         "starter_code": "", "difficulty": "easy", "public_test_cases": json.dumps(io_cases),
         "private_test_cases": "[]", "metadata": "{}"}])
    _jsonl(paths["gsm8k"], [{"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
                            {"question": "How much?", "answer": "Big.\n#### 1,234"}])
    return root
