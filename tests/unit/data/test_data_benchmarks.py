"""Benchmark loaders: every format on self-made fixtures, and on the shared benchmark copy
(../shared/data/benchmarks) when this checkout has one."""

import json
from pathlib import Path

import pytest

from prime_mcore.data.benchmarks import CATALOG, PAPER_SUITE, detect_format, load_benchmark
from prime_mcore.data.schema import BadRowsError, RLExample, write_rl_parquet
from prime_mcore.rewards import parse_tests
from prime_mcore.rewards.code_grader import CheckTests, IOTests
from tests.unit.eval.benchmark_fixtures import LCB_REFERENCES, write_fixture_root

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "benchmarks"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_fixture_root(tmp_path_factory.mktemp("bench"))


def load(root: Path, key: str, **kw):
    spec = CATALOG[key]
    return load_benchmark(root / spec.path, name=spec.name, url_contains=spec.url_contains,
                          date_range=spec.date_range, **kw)


def test_math_formats_ids_answers_and_filters(root):
    aime = load(root, "aime2024")
    assert [it.id for it in aime] == ["0", "2", "4"]  # the 2024 rows of a mixed-year file
    assert [it.ground_truth for it in aime] == ["100", "102", "104"]
    assert len(load_benchmark(root / CATALOG["aime2024"].path)) == 5  # unfiltered
    amc = load(root, "amc")
    assert [it.ground_truth for it in amc] == ["142", "2.5"]
    math500 = load(root, "math500")
    assert [it.id for it in math500] == [f"test/algebra/{i}.json" for i in range(3)]
    assert [it.ground_truth for it in math500] == ["2", "\\frac{1}{2}", "9"]
    assert math500[1].question == "Simplify $\\frac{2}{4}$." and math500[0].meta["level"]
    assert [it.ground_truth for it in load(root, "minerva_math")] == ["1.6", "\\frac{1}{2}"]
    oly = load(root, "olympiadbench")
    assert [(it.id, it.ground_truth) for it in oly] == [("1606", "3"), ("1607", "1, 2")]
    assert oly[1].meta["unit"] == "m"
    assert [it.ground_truth for it in load(root, "gsm8k")] == ["4", "1234"]
    for key in ("aime2024", "amc", "math500", "minerva_math", "olympiadbench", "gsm8k"):
        assert {it.ability for it in load(root, key)} == {"math"}, key
        assert {it.benchmark for it in load(root, key)} == {CATALOG[key].name}


def test_code_formats_give_runnable_ground_truth(root):
    (he,) = load(root, "humaneval")
    tests = parse_tests(he.ground_truth)
    assert isinstance(tests, CheckTests) and tests.entry_point == "total"
    assert "def total(xs: List[int]) -> int" in he.question and he.meta["code_prefix"]
    ns: dict = {}
    exec(he.meta["reference"].strip("`").removeprefix("python\n") + tests.source, ns)
    ns["check"](ns["total"])  # the canonical solution passes check(candidate)

    mbpp = load(root, "mbpp")
    assert [it.id for it in mbpp] == ["2", "3"] and {it.ability for it in mbpp} == {"code"}
    assert "`add(a, b)`" in mbpp[0].question and "assert add(1, 2) == 3" in mbpp[0].question
    assert mbpp[1].ground_truth.startswith("import math\n")  # test_imports come first
    for it in mbpp:
        code = it.meta["reference"].strip("`").removeprefix("python\n")
        exec(code + "\n" + parse_tests(it.ground_truth).source, {})  # asserts pass
    with pytest.raises(AssertionError):
        exec("def add(a, b):\n    return a - b\n" + mbpp[0].ground_truth, {})

    (lc,) = load(root, "leetcode")
    assert lc.question == "Return the largest value." and lc.meta["wrap_solution_class"]
    assert isinstance(parse_tests(lc.ground_truth), CheckTests) and lc.meta["date"] == "2023-11-14"

    lcb = load(root, "livecodebench")  # the 2024-09 problem is outside the paper's window
    assert [it.id for it in lcb] == list(LCB_REFERENCES)
    fn = parse_tests(lcb[0].ground_truth)
    assert isinstance(fn, IOTests) and fn.fn_name == "addTwo"
    assert fn.inputs == [[1, 2], [-5, 5]] and fn.outputs == [3, 0]  # private cases decoded
    io = parse_tests(lcb[1].ground_truth)
    assert io.fn_name is None and io.inputs == ["4\n"] and "stdin" in lcb[1].question


def test_detect_format_of_every_fixture(root):
    expected = {"aime2024": "qa", "amc": "qa", "minerva_math": "minerva",
                "olympiadbench": "olympiadbench", "leetcode": "leetcode", "livecodebench": "lcb",
                "gsm8k": "gsm8k", "mbpp": "mbpp"}
    for key, fmt in expected.items():
        text = (root / CATALOG[key].path).read_text()
        rows = json.loads(text) if text.startswith("[") else [
            json.loads(x) for x in text.splitlines()]
        assert detect_format(rows) == fmt, key
    assert load_benchmark(root / CATALOG["math500"].path)[0].benchmark == "math500"
    assert load_benchmark(root / CATALOG["humaneval"].path)[0].benchmark == "humaneval"
    with pytest.raises(ValueError, match="unknown benchmark format"):
        detect_format([{"foo": 1}])


def test_generic_jsonl_parquet_directory_and_limit(tmp_path):
    qa = tmp_path / "mine" / "test.jsonl"
    qa.parent.mkdir()
    qa.write_text('{"question": "q1", "answer": 7}\n{"problem": "q2", "answer": "x^2"}\n')
    items = load_benchmark(qa.parent)  # a directory holding one file
    assert [(i.benchmark, i.question, i.ground_truth) for i in items] == [
        ("mine", "q1", "7"), ("mine", "q2", "x^2")]
    assert len(load_benchmark(qa, limit=1)) == 1
    ex = RLExample("numina", [{"role": "system", "content": "S"},
                              {"role": "user", "content": "Q?"}], "math", "5",
                   {"split": "test", "index": 9})
    write_rl_parquet([ex], tmp_path / "pq" / "part.parquet")
    (it,) = load_benchmark(tmp_path / "pq", name="eurus")
    assert (it.id, it.question, it.ground_truth, it.ability) == ("9", "Q?", "5", "math")
    assert it.meta["messages"][0] == {"role": "system", "content": "S"}


def test_bad_rows_fail_with_their_index_or_are_skipped(tmp_path):
    f = tmp_path / "gsm.jsonl"
    f.write_text('{"question": "a", "answer": "x\\n#### 3"}\n{"question": "b", "answer": "none"}\n'
                 'not json\n{"question": "c", "answer": "#### 5"}\n')
    with pytest.raises(BadRowsError) as err:
        load_benchmark(f)
    assert [i for i, _ in err.value.bad] == [1, 2] and "line 3 is not JSON" in str(err.value)
    assert [i.ground_truth for i in load_benchmark(f, skip_bad_rows=True)] == ["3", "5"]
    with pytest.raises(ValueError, match="fmt="):
        load_benchmark(f, fmt="nope")
    with pytest.raises(FileNotFoundError):
        load_benchmark(tmp_path / "absent.jsonl")


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared benchmark copy absent ({SHARED}): "
                    "only the self-made fixtures are tested")
def test_shared_benchmark_counts():
    counts = {"aime2024": 30, "amc": 83, "math500": 500, "minerva_math": 272,
              "olympiadbench": 675, "humaneval": 164, "mbpp": 399, "leetcode": 180}
    for key, want in counts.items():
        items = load(SHARED, key)
        assert len(items) == want, key
        assert len({i.id for i in items}) == want, f"{key}: ids are not unique"
    assert {i.ground_truth for i in load(SHARED, "amc")} >= {"142"}
    assert set(PAPER_SUITE) <= set(CATALOG)
