"""Batch API: reasons per item, step metrics, hard per-item timeouts, the public functions."""

import threading
import time
from pathlib import Path

import psutil
import pytest

from prime_mcore.rewards import (
    Reason,
    SandboxUnavailable,
    VerifierPool,
    VerifyResult,
    score_batch,
    score_code,
    score_math,
    summarize,
)
from prime_mcore.rewards.sandbox import check_available, without
from tests.unit.rewards.helpers import ADD_STDIN, fenced

ADD = "a, b = map(int, input().split())\nprint(a + b)"
ADD_3_OF_4 = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)"


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2) as workers:
        yield workers


@pytest.mark.usefixtures("mechanisms")
def test_mixed_batch_reasons_and_metrics(pool):
    items = [
        ("math", "so the answer is \\boxed{\\frac{1}{2}}", "0.5"),
        ("math", "\\boxed{3}", "4"),
        ("math", "I give up.", "4"),
        ("math", "\\boxed{3}", ""),
        ("code", fenced(ADD), ADD_STDIN),
        ("code", fenced(ADD_3_OF_4), ADD_STDIN),
        ("code", fenced(ADD), "{'inputs': broken json"),
        ("code", "", ADD_STDIN),
        ("chemistry", "H2O", "water"),
        ("math", "not a triple"),
    ]
    results = score_batch(items, pool=pool, code_timeout_s=5.0)
    assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.75, 0.0, 0.0, 0.0, 0.0]
    assert [r.reason for r in results] == [
        Reason.CORRECT, Reason.WRONG, Reason.NO_ANSWER, Reason.BAD_GROUND_TRUTH,
        Reason.CORRECT, Reason.WRONG, Reason.BAD_GROUND_TRUTH, Reason.NO_ANSWER,
        Reason.BAD_GROUND_TRUTH, Reason.BAD_GROUND_TRUTH,
    ]
    metrics = summarize(results)
    assert metrics["verifier/bad_ground_truth"] == 4.0
    assert metrics["verifier/correct"] == 2.0 and metrics["verifier/timeout"] == 0.0
    assert metrics["verifier/n"] == 10.0
    assert metrics["verifier/score_mean"] == pytest.approx(2.75 / 10)


@pytest.mark.usefixtures("mechanisms")
def test_hard_item_timeout_kills_and_replaces_the_worker(pool):
    from prime_mcore.rewards.sandbox import detect_mechanisms

    restarts = pool.restarts
    items = [
        ("code", fenced("import time\ntime.sleep(60)"), ADD_STDIN),  # sandbox timeout 30 s
        ("math", "\\boxed{10^{10^{10}}}", "1"),  # math-verify alone needs its 5 s timeout
        ("math", "\\boxed{42}", "42"),
    ]
    start = time.monotonic()
    results = pool.score(items, code_timeout_s=30.0, item_timeout_s=1.5)
    elapsed = time.monotonic() - start
    assert [r.reason for r in results] == [Reason.TIMEOUT, Reason.TIMEOUT, Reason.CORRECT]
    assert [r.score for r in results] == [0.0, 0.0, 1.0]
    assert elapsed < 30.0  # generous for a loaded machine; the sleep alone would take 60 s
    assert pool.restarts == restarts + 2
    # The killed worker's sandbox (launcher, init, the sleeping job) and cgroups are gone.
    workers = {w.proc.pid for w in pool._workers}
    sandboxed = [
        p for p in psutil.Process().children(recursive=True)
        if "_sandbox_init.py" in " ".join(p.cmdline()) or p.uids().real == 65534
    ]
    assert sandboxed == []
    pids_parent = detect_mechanisms().cgroup_pids
    if pids_parent:
        live = {int(p.name.split("_")[2]) for p in Path(pids_parent).glob("prime_sb_*_*")}
        assert live <= workers | {psutil.Process().pid}


def test_worker_crash_is_an_error_not_an_exception(pool, monkeypatch):
    victim = None

    def kill_a_worker():
        nonlocal victim
        deadline = time.monotonic() + 30  # workers replaced just before may still be starting
        while time.monotonic() < deadline:
            busy = [w for w in pool._workers if w.item is not None]
            if busy:
                victim = busy[0].proc.pid
                psutil.Process(victim).kill()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=kill_a_worker)
    thread.start()
    results = pool.score([("math", "\\boxed{10^{10^{10}}}", "1")], item_timeout_s=10.0)
    thread.join()
    assert victim is not None
    assert results == [VerifyResult(0.0, Reason.ERROR, "worker died")]
    assert pool.score([("math", "\\boxed{2}", "2")])[0].score == 1.0  # a new worker grades


def test_score_math_is_safe_from_threads():
    assert score_math("The answer is \\boxed{\\sqrt{2}/2}", "\\frac{1}{\\sqrt{2}}") == 1.0
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(score_math("\\boxed{5}", "6")))
    thread.start()
    thread.join()
    assert out == [0.0]


@pytest.mark.usefixtures("mechanisms")
def test_score_code_partial_credit():
    assert score_code(fenced(ADD_3_OF_4), ADD_STDIN, timeout_s=5.0) == 0.75


def test_refuses_without_containment(mechanisms, monkeypatch):
    bare = without(mechanisms, pidns=False, cgroup_pids=None, subreaper=False)
    with pytest.raises(SandboxUnavailable, match="kill a whole process tree"):
        check_available(bare)
    check_available(bare, allow_unsafe=True)
    monkeypatch.setenv("PRIME_MCORE_SANDBOX_ALLOW_UNSAFE", "1")
    check_available(bare)


def test_mechanisms_report(mechanisms):
    summary = mechanisms.summary()
    assert "rlimits" in summary
    assert ("netns" in summary) == mechanisms.netns
    assert ("pidns" in summary) == mechanisms.pidns
    if mechanisms.netns:
        assert "audit-hook" not in summary
