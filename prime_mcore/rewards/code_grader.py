"""Code outcome verifier (spec 7): APPS-style I/O tests and HumanEval-style checks, sandboxed.

Accepted ``tests`` (a dict, or a string holding JSON or Python source):

* ``{"inputs": [...], "outputs": [...]}``: stdin/stdout problems. An input or output may be
  a string or a list of lines. Output matches line by line (trailing whitespace ignored),
  else token by token with floats equal to 1e-6.
* the same with ``"fn_name"``: call-based problems. Each input is the argument list; the
  function (or ``Solution().fn_name``) result must equal the output (or its only element,
  APPS's wrapping), floats to 1e-6.
* ``{"test": "<source defining check(candidate)>", "entry_point": "f"}`` (HumanEval; the
  key ``"check"`` works too): passes when ``check(f)`` returns. Without ``entry_point``,
  or given as a plain source string, the source (e.g. MBPP ``assert`` lines) runs after the
  solution in its namespace and passes when it finishes.

Scoring: every I/O test runs first (each in its own process, one time budget); all pass ->
1. Otherwise the first 10 are counted: r = #passed / min(#tests, 10), exactly (ORIG), and a
test that did not finish in the first pass is run again alone with its own timeout.
A program passes a test only if it exits 0 in time without flooding its output.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass

from prime_mcore.rewards.result import BadGroundTruth, Reason, VerifyResult
from prime_mcore.rewards.sandbox import Job, JobResult, Mechanisms, SandboxLimits, run_session

_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)\b[^\n]*\n?", re.IGNORECASE)
_RESULT_MARKER = b"\n@@PRIME_CALL_RESULT@@"
_CHECK_MARKER = b"\n@@PRIME_CHECK_PASSED@@"
MAX_COUNTED_TESTS = 10
_FLOAT_TOL = 1e-6


@dataclass(frozen=True)
class IOTests:
    """APPS-style tests; ``fn_name`` set for call-based problems."""

    inputs: list
    outputs: list
    fn_name: str | None = None


@dataclass(frozen=True)
class CheckTests:
    """HumanEval/MBPP-style test source, optionally ``check(entry_point)``."""

    source: str
    entry_point: str | None = None


def extract_code(completion: str) -> str:
    """The last fenced python block (text after the last fence); the whole text if none."""
    fences = list(_FENCE_RE.finditer(completion))
    if not fences:
        return completion
    start = fences[-1].end()
    end = completion.find("```", start)
    return completion[start : end if end >= 0 else len(completion)]


def _as_text(value: object, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise BadGroundTruth(f"{what} must be a string or a list of lines, got {type(value)}")


def parse_tests(tests: object) -> IOTests | CheckTests:
    """Validate the ground truth of a code problem; raises ``BadGroundTruth``."""
    if isinstance(tests, str):
        text = tests.strip()
        if not text:
            raise BadGroundTruth("empty tests")
        if text[0] in "{[":
            try:
                tests = json.loads(text)
            except ValueError as exc:
                raise BadGroundTruth(f"tests are not valid JSON: {exc}") from None
        else:
            tests = {"test": tests}
    if not isinstance(tests, dict):
        raise BadGroundTruth(f"tests must be a dict or a string, got {type(tests)}")
    if "inputs" in tests or "outputs" in tests:
        inputs, outputs = tests.get("inputs"), tests.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            raise BadGroundTruth("'inputs' and 'outputs' must both be lists")
        if not inputs or len(inputs) != len(outputs):
            raise BadGroundTruth(f"{len(inputs)} inputs for {len(outputs)} outputs")
        fn_name = tests.get("fn_name") or None
        if fn_name is None:
            inputs = [_as_text(x, "an input") for x in inputs]
            outputs = [_as_text(y, "an output") for y in outputs]
        elif not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise BadGroundTruth(f"bad fn_name {fn_name!r}")
        else:
            inputs = [x if isinstance(x, list) else [x] for x in inputs]
            try:
                json.dumps(inputs)
            except (TypeError, ValueError):
                raise BadGroundTruth("call inputs are not JSON") from None
        return IOTests(inputs, outputs, fn_name)
    source = tests.get("test", tests.get("check"))
    entry = tests.get("entry_point") or None
    if not isinstance(source, str) or not source.strip():
        raise BadGroundTruth("tests need 'inputs'/'outputs' or a 'test' source")
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        raise BadGroundTruth(f"bad entry_point {entry!r}")
    try:
        compile(source, "tests.py", "exec")  # compiling runs nothing
    except (SyntaxError, ValueError) as exc:
        raise BadGroundTruth(f"test source does not compile: {exc}") from None
    return CheckTests(source, entry)


def _numbers_close(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=_FLOAT_TOL, abs_tol=_FLOAT_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_numbers_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k]) for k in a)
    return a == b


def call_output_matches(got: object, expected: object) -> bool:
    """APPS call-based comparison: equal, or equal to the only element of a wrapped output."""
    if _numbers_close(got, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _numbers_close(got, expected[0])


def stdout_matches(got: str, expected: str) -> bool:
    """Line-wise match ignoring trailing whitespace, else token-wise with float tolerance."""
    got_lines = [line.rstrip() for line in got.strip().splitlines()]
    if got_lines == [line.rstrip() for line in expected.strip().splitlines()]:
        return True
    got_tokens, want_tokens = got.split(), expected.split()
    if len(got_tokens) != len(want_tokens) or not got_tokens:
        return False
    for a, b in zip(got_tokens, want_tokens):
        if a != b:
            try:
                if not math.isclose(float(a), float(b), rel_tol=_FLOAT_TOL, abs_tol=_FLOAT_TOL):
                    return False
            except ValueError:
                return False
    return True


def _runner_argv(deny_net: bool, *args: str) -> tuple[str, ...]:
    flag = ("--deny-net",) if deny_net else ()
    return ("{python}", "-I", "{ro}/_runner.py", *flag, *args)


def _io_job(spec: IOTests, i: int, timeout_s: float, deny_net: bool) -> Job:
    if spec.fn_name is None:
        stdin = spec.inputs[i] if spec.inputs[i].endswith("\n") else spec.inputs[i] + "\n"
        argv = _runner_argv(deny_net, "stdio", "{ro}/solution.py")
        return Job(argv, stdin.encode(), timeout_s)
    argv = _runner_argv(deny_net, "call", "{ro}/solution.py", spec.fn_name, f"{{ro}}/args_{i}.json")
    return Job(argv, b"", timeout_s)


def _io_passed(spec: IOTests, i: int, result: JobResult) -> bool:
    if not result.ok:
        return False
    if spec.fn_name is None:
        return stdout_matches(result.stdout.decode(errors="replace"), spec.outputs[i])
    pos = result.stdout.rfind(_RESULT_MARKER)
    if pos < 0:
        return False
    try:
        got = json.loads(result.stdout[pos + len(_RESULT_MARKER) :])
    except ValueError:
        return False
    return call_output_matches(got, spec.outputs[i])


def _grade_io(code: str, spec: IOTests, timeout_s: float, opts: dict) -> VerifyResult:
    deny_net = (opts["mechanisms"]).audit_net_deny
    files = {"solution.py": code}
    if spec.fn_name is not None:
        files |= {f"args_{i}.json": json.dumps(args) for i, args in enumerate(spec.inputs)}
    n = len(spec.inputs)
    jobs = [_io_job(spec, i, timeout_s, deny_net) for i in range(n)]
    # First pass: all tests, one time budget (spec 7, step 2).
    first = run_session(files, jobs, session_timeout_s=timeout_s, stop_on_failure=True, **opts)
    if first.error and all(j is None for j in first.jobs):
        return VerifyResult(0.0, Reason.ERROR, f"sandbox: {first.error}")
    passed = [r is not None and _io_passed(spec, i, r) for i, r in enumerate(first.jobs)]
    if all(passed):
        return VerifyResult(1.0, Reason.CORRECT, f"{n}/{n} tests")
    # Second pass: the first 10, each alone with its own timeout; a test that finished in
    # the first pass keeps its result.
    counted = min(n, MAX_COUNTED_TESTS)
    final: dict[int, JobResult | None] = {i: first.jobs[i] for i in range(counted)}
    rerun = [i for i in range(counted) if final[i] is None or final[i].timed_out]
    if rerun:
        second = run_session(files, [jobs[i] for i in rerun], **opts)
        if second.error and all(j is None for j in second.jobs):
            return VerifyResult(0.0, Reason.ERROR, f"sandbox: {second.error}")
        final.update(zip(rerun, second.jobs))
    n_pass = sum(r is not None and _io_passed(spec, i, r) for i, r in final.items())
    score = n_pass / counted
    detail = f"{n_pass}/{counted} counted tests ({n} total)"
    if score == 0 and all(r is not None and r.timed_out for r in final.values()):
        return VerifyResult(0.0, Reason.TIMEOUT, detail)
    return VerifyResult.of(score, detail=detail)


def _grade_check(code: str, spec: CheckTests, timeout_s: float, opts: dict) -> VerifyResult:
    nonce = secrets.token_hex(16).encode()
    args = ["check", "{ro}/solution.py", "{ro}/tests.py"]
    args += [spec.entry_point] if spec.entry_point else []
    job = Job(_runner_argv(opts["mechanisms"].audit_net_deny, *args), nonce, timeout_s)
    session = run_session({"solution.py": code, "tests.py": spec.source}, [job], **opts)
    result = session.jobs[0]
    if result is None:
        return VerifyResult(0.0, Reason.ERROR, f"sandbox: {session.error}")
    if result.timed_out:
        return VerifyResult(0.0, Reason.TIMEOUT, "check timed out")
    ok = result.ok and result.stdout.rstrip().endswith(_CHECK_MARKER + nonce)
    return VerifyResult.of(1.0 if ok else 0.0, detail=f"check rc={result.returncode}")


def grade_code(
    completion: str,
    tests: object,
    *,
    timeout_s: float = 10.0,
    limits: SandboxLimits | None = None,
    mechanisms: Mechanisms | None = None,
    allow_unsafe: bool = False,
) -> VerifyResult:
    """Grade one code completion in the sandbox: score in [0, 1] and the reason.

    Bad tests give ``bad_ground_truth``; raises ``SandboxUnavailable`` only when this
    machine offers no containment and ``allow_unsafe`` is off.
    """
    from prime_mcore.rewards.sandbox import detect_mechanisms

    try:
        spec = parse_tests(tests)
    except BadGroundTruth as exc:
        return VerifyResult(0.0, Reason.BAD_GROUND_TRUTH, str(exc))
    code = extract_code(completion) if isinstance(completion, str) else ""
    if not code.strip():
        return VerifyResult(0.0, Reason.NO_ANSWER, "no code")
    opts = {"mechanisms": mechanisms or detect_mechanisms(), "allow_unsafe": allow_unsafe,
            "limits": limits or SandboxLimits()}
    if isinstance(spec, CheckTests):
        return _grade_check(code, spec, timeout_s, opts)
    return _grade_io(code, spec, timeout_s, opts)
