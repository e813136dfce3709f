"""Batch verification in a process pool with hard per-item timeouts (spec 7, batch level).

Each item is graded in a worker process (spawned, so math-verify's signal-based timeouts
run in a main thread). The parent waits on every worker with a deadline; a worker that
misses its item's deadline is killed with its whole process tree (sandboxes included) and
replaced, and the item scores 0 with reason ``timeout``. A worker that dies scores its
item ``error``. ``score`` therefore always returns, one ``VerifyResult`` per item.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from multiprocessing.connection import Connection, wait

from prime_mcore.rewards.math_grader import quick_grade_math
from prime_mcore.rewards.result import Reason, VerifyResult

MATH_TIMEOUT_S = 20.0
_START_TIMEOUT_S = 120.0
_MAX_START_FAILURES = 3
_ABILITIES = ("math", "code")


def code_item_timeout(code_timeout_s: float) -> float:
    """Hard limit for a code item: the all-tests pass plus 10 single runs, plus slack."""
    return code_timeout_s * 12 + 15.0


def grade_item(ability: str, completion: object, ground_truth: object, opts: dict) -> VerifyResult:
    """Grade one item in this process (what a worker runs); never raises."""
    try:
        kind = ability.strip().lower() if isinstance(ability, str) else None
        if kind == "math":
            from prime_mcore.rewards.math_grader import grade_math

            return grade_math(completion, ground_truth)  # type: ignore[arg-type]
        if kind == "code":
            from prime_mcore.rewards.code_grader import grade_code

            return grade_code(
                completion,  # type: ignore[arg-type]
                ground_truth,
                timeout_s=opts["code_timeout_s"],
                allow_unsafe=opts["allow_unsafe"],
            )
        return VerifyResult(0.0, Reason.BAD_GROUND_TRUTH, f"unknown ability {ability!r}")
    except Exception as exc:  # a grader bug must not kill the training step
        return VerifyResult(0.0, Reason.ERROR, f"{type(exc).__name__}: {exc}"[:500])


def _quick(item: Sequence[object]) -> VerifyResult | None:
    """The grade of a math item that plain comparison decides (``quick_grade_math``)."""
    ability, completion, ground_truth = item
    if not (isinstance(ability, str) and ability.strip().lower() == "math"):
        return None
    try:
        return quick_grade_math(completion, ground_truth)
    except Exception:  # never decide here what the worker would report as an error
        return None


def _worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # Import costs (~1 s) are paid before "ready", not inside an item's deadline.
    import math_verify  # noqa: F401

    import prime_mcore.rewards.code_grader  # noqa: F401
    import prime_mcore.rewards.math_grader  # noqa: F401

    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, ability, completion, ground_truth, opts = message
        conn.send((index, grade_item(ability, completion, ground_truth, opts)))


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.started = time.monotonic()
        self.item: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        """SIGKILL the worker and everything it started, then remove its sandboxes."""
        import psutil

        pid = self.proc.pid
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.proc.join(timeout=5)
        self.conn.close()
        if pid is not None:
            from prime_mcore.rewards.sandbox import cleanup_owned_by

            cleanup_owned_by(pid)


class VerifierPool:
    """A persistent pool of grading workers; ``score`` grades a batch and always returns."""

    def __init__(self, num_workers: int = 2) -> None:
        self.num_workers = max(1, num_workers)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0
        self._start_failures = 0
        self._cleaned = False

    def _ensure_workers(self) -> None:
        self._workers = [w for w in self._workers if w.proc.is_alive()]
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._ctx))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)
        self._workers.append(_Worker(self._ctx))
        self.restarts += 1

    def score(
        self,
        items: Sequence[tuple[str, object, object]],
        *,
        math_timeout_s: float = MATH_TIMEOUT_S,
        code_timeout_s: float = 10.0,
        item_timeout_s: float | None = None,
        allow_unsafe_sandbox: bool = False,
    ) -> list[VerifyResult]:
        """Grade ``(ability, completion, ground_truth)`` items; one result per item, in order.

        ``item_timeout_s`` overrides the hard per-item limits (math: ``math_timeout_s``;
        code: ``code_item_timeout(code_timeout_s)``).
        """
        if any(_is_code(item) for item in items):
            from prime_mcore.rewards.sandbox import check_available, cleanup_stale

            check_available(allow_unsafe=allow_unsafe_sandbox)  # fail fast, not zero rewards
            if not self._cleaned:
                cleanup_stale()  # sessions left by a crashed earlier run
                self._cleaned = True
        opts = {"code_timeout_s": code_timeout_s, "allow_unsafe": allow_unsafe_sandbox}
        results: list[VerifyResult | None] = [None] * len(items)
        pending: deque[int] = deque()
        for i, item in enumerate(items):
            if not (isinstance(item, tuple | list) and len(item) == 3):
                results[i] = VerifyResult(0.0, Reason.BAD_GROUND_TRUTH, "item is not a 3-tuple")
            elif (quick := _quick(item)) is not None:
                results[i] = quick  # integer answers: no round trip to a worker
            else:
                pending.append(i)
        if pending:
            with self._lock:
                self._run(items, pending, results, opts, math_timeout_s, code_timeout_s,
                          item_timeout_s)
        return [r if r is not None else VerifyResult(0.0, Reason.ERROR, "lost") for r in results]

    def _run(self, items, pending, results, opts, math_t, code_t, item_t) -> None:
        self._ensure_workers()
        while pending or any(w.item is not None for w in self._workers):
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.ready and worker.item is None and pending:
                    index = pending.popleft()
                    ability, completion, ground_truth = items[index]
                    code = _is_code(items[index])
                    limit = item_t or (code_item_timeout(code_t) if code else math_t)
                    try:
                        worker.conn.send((index, ability, completion, ground_truth, opts))
                    except Exception as exc:  # e.g. an unpicklable completion
                        results[index] = VerifyResult(0.0, Reason.ERROR, f"send failed: {exc}")
                        self._replace(worker)
                        continue
                    worker.item, worker.deadline = index, now + limit
                elif not worker.ready and now - worker.started > _START_TIMEOUT_S:
                    self._fail(worker, results, Reason.ERROR, "worker did not start")
            if self._start_failures >= _MAX_START_FAILURES:
                for index in pending:
                    results[index] = VerifyResult(0.0, Reason.ERROR, "workers do not start")
                pending.clear()
            waits = [w.deadline for w in self._workers if w.item is not None]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else 1.0
            ready = wait([w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers],
                         timeout=timeout)
            for worker in list(self._workers):
                self._collect(worker, ready, results)

    def _collect(self, worker: _Worker, ready: list, results: list) -> None:
        if worker.conn in ready:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                message = None
            if message is not None and message[0] == "ready":
                worker.ready, self._start_failures = True, 0
            elif message is not None and worker.item is not None and message[0] == worker.item:
                results[worker.item], worker.item = message[1], None
            else:
                self._fail(worker, results, Reason.ERROR, "worker died")
        elif worker.proc.sentinel in ready and not worker.proc.is_alive():
            self._fail(worker, results, Reason.ERROR, "worker died")
        elif worker.item is not None and time.monotonic() >= worker.deadline:
            self._fail(worker, results, Reason.TIMEOUT, "hard item timeout")

    def _fail(self, worker: _Worker, results: list, reason: Reason, detail: str) -> None:
        if not worker.ready:
            self._start_failures += 1
        if worker.item is not None:
            results[worker.item], worker.item = VerifyResult(0.0, reason, detail), None
        self._replace(worker)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.proc.join(timeout=2)
            if worker.proc.is_alive():
                worker.kill()
        self._workers = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_code(item: object) -> bool:
    if not isinstance(item, tuple | list) or len(item) != 3:
        return False
    return str(item[0]).strip().lower() == "code"


_shared: dict[int, VerifierPool] = {}
_shared_lock = threading.Lock()


def shared_pool(num_workers: int = 2) -> VerifierPool:
    """A process-wide pool with ``num_workers`` workers, closed at exit."""
    with _shared_lock:
        if num_workers not in _shared:
            if not _shared:
                atexit.register(_close_shared)
            _shared[num_workers] = VerifierPool(num_workers)
        return _shared[num_workers]


def _close_shared() -> None:
    for pool in _shared.values():
        pool.close()
    _shared.clear()


def score_batch(
    items: Sequence[tuple[str, object, object]],
    *,
    num_workers: int = 2,
    pool: VerifierPool | None = None,
    **kwargs: object,
) -> list[VerifyResult]:
    """Grade ``(ability, completion, ground_truth)`` items (ability "math" or "code").

    Uses ``pool`` or a shared pool of ``num_workers``; keyword arguments go to
    ``VerifierPool.score``. Returns per item the score and a ``Reason``.
    """
    return (pool or shared_pool(num_workers)).score(items, **kwargs)  # type: ignore[arg-type]


def summarize(results: Iterable[VerifyResult], prefix: str = "verifier/") -> dict[str, float]:
    """Step metrics: mean score, item count and the count of every reason (zeros included)."""
    results = list(results)
    counts = Counter(r.reason for r in results)
    metrics = {f"{prefix}{reason.value}": float(counts.get(reason, 0)) for reason in Reason}
    metrics[f"{prefix}n"] = float(len(results))
    mean = sum(r.score for r in results) / len(results) if results else 0.0
    metrics[f"{prefix}score_mean"] = mean
    return metrics


def score_math(completion: str, ground_truth: str) -> float:
    """1.0 when the completion's final answer equals the ground truth, else 0.0.

    Graded in a shared one-worker pool with a hard timeout, so it never hangs and is safe
    from any thread of the calling process.
    """
    return shared_pool(1).score([("math", completion, ground_truth)])[0].score
