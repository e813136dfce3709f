"""A Docker-free sandbox for untrusted programs (threat model: docs/sandbox.md).

Each session gets a fresh directory, a clean environment and a launcher in its own
session/process group. The launcher (``_sandbox_init.py``) joins per-session cgroups
(task and memory caps; exact sweep), unshares network, PID and mount namespaces where the
kernel allows, and runs every job as an unprivileged user (``nobody`` when we are root)
with rlimits on CPU, address space, file size, open files and processes, capturing capped
output. ``detect_mechanisms`` reports what this machine supports; ``run_session`` refuses
(``SandboxUnavailable``) when the minimum is missing unless ``allow_unsafe`` or
``PRIME_MCORE_SANDBOX_ALLOW_UNSAFE=1``.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prime_mcore.rewards import cgroups

_HERE = Path(__file__).resolve().parent
INIT_SCRIPT = _HERE / "_sandbox_init.py"
RUNNER_SCRIPT = _HERE / "_runner.py"
UNSAFE_ENV = "PRIME_MCORE_SANDBOX_ALLOW_UNSAFE"
PYTHON_ENV = "PRIME_MCORE_SANDBOX_PYTHON"
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
NAMESPACE_KINDS = ("netns", "pidns", "mountns")
_VIEW = "/tmp/sandbox"  # where the session directory appears inside a mount namespace
_counter = itertools.count()


class SandboxUnavailable(RuntimeError):
    """No adequate containment on this machine (and no explicit opt-out)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-session resource limits (per job where noted)."""

    address_space_bytes: int = 1 << 30  # per process (RLIMIT_AS)
    memory_bytes: int = 1 << 30  # whole tree incl. its tmpfs files (memory cgroup)
    file_size_bytes: int = 16 << 20  # per file written (RLIMIT_FSIZE)
    open_files: int = 64  # per process (RLIMIT_NOFILE)
    processes: int = 64  # tasks in the session (pids cgroup) / RLIMIT_NPROC headroom
    nproc_uid: int = 512  # RLIMIT_NPROC for the shared unprivileged uid
    home_bytes: int = 32 << 20  # tmpfs working directory (with a mount namespace)
    max_stdout_bytes: int = 1 << 20  # per job; more output kills the job
    max_stderr_bytes: int = 64 << 10


@dataclass(frozen=True)
class Mechanisms:
    """The containment this machine allows; ``problems`` lists what is missing."""

    netns: bool
    pidns: bool
    mountns: bool
    userns: bool  # namespaces need a user namespace (we are not root)
    subreaper: bool
    cgroup_pids: str | None
    cgroup_memory: str | None
    run_as_uid: int | None  # the jobs' uid when we are root (nobody); None: our own uid
    run_as_gid: int | None
    python: str | None  # an interpreter the job uid can execute
    private_dirs: tuple[str, ...] = ()

    @property
    def audit_net_deny(self) -> bool:
        """Python-level deny hook used when no network namespace can be made."""
        return not self.netns

    def problems(self) -> list[str]:
        """Missing minimum containment (empty: safe to run untrusted code)."""
        missing = []
        if os.geteuid() == 0 and self.run_as_uid is None:
            missing.append("running as root with no unprivileged user to drop to")
        if not (self.pidns or self.cgroup_pids or self.subreaper):
            missing.append("no way to kill a whole process tree (PID namespace, cgroup)")
        if self.python is None:
            missing.append(f"no Python the job user can execute (set {PYTHON_ENV})")
        return missing

    def summary(self) -> str:
        """One line naming the mechanisms in use."""
        parts = ["netns" if self.netns else "net:audit-hook-deny (weak)"]
        names = ("pidns", "mountns", "userns", "subreaper")
        parts += [name for name in names if getattr(self, name)]
        groups = [c for c in ("pids", "memory") if getattr(self, f"cgroup_{c}")]
        if groups:
            parts.append(f"cgroup({','.join(groups)})")
        if self.run_as_uid is not None:
            parts.append(f"uid {self.run_as_uid}")
        parts.append("rlimits(cpu,as,fsize,nofile,nproc,core)")
        return " + ".join(parts)


@dataclass(frozen=True)
class Job:
    """One program run. ``argv`` may use ``{python}`` and ``{ro}`` (the read-only file dir)."""

    argv: tuple[str, ...]
    stdin: bytes = b""
    timeout_s: float = 10.0


@dataclass(frozen=True)
class JobResult:
    """What a job did; ``stdout``/``stderr`` are capped."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_truncated: bool
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """Exited 0 in time without flooding its output."""
        return self.returncode == 0 and not self.timed_out and not self.output_truncated


@dataclass(frozen=True)
class SessionResult:
    """Per-job results (None: not run); ``error`` set when the session itself failed."""

    jobs: list[JobResult | None]
    error: str | None = None
    mechanisms: str = ""


def _reachable_by_other(path: str) -> bool:
    """World read+execute on the file and search permission on every parent directory."""
    real = Path(os.path.realpath(path))
    try:
        if real.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH) != (stat.S_IROTH | stat.S_IXOTH):
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)
    except OSError:
        return False


def _choose_python(drop_uid: bool) -> str | None:
    candidates = [os.environ.get(PYTHON_ENV), sys.executable, getattr(sys, "_base_executable", "")]
    candidates.append(shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            if not drop_uid or _reachable_by_other(candidate):
                return candidate
    return None


def _probe_namespaces() -> dict:
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", str(INIT_SCRIPT), "--probe"],
            capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"}, check=True,
        ).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, OSError, ValueError):
        return {}


@lru_cache(maxsize=1)
def detect_mechanisms() -> Mechanisms:
    """Probe (once per process) which containment mechanisms this machine allows."""
    found = _probe_namespaces()
    uid = gid = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("nobody")
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            pass
    mountns = bool(found.get("mountns"))
    private = tuple(p for p in _WORLD_WRITABLE if os.path.isdir(p) and not os.path.islink(p))
    private = tuple(p for p in private if os.stat(p).st_mode & stat.S_IWOTH or p == "/tmp")
    return Mechanisms(
        netns=bool(found.get("netns")),
        pidns=bool(found.get("pidns")),
        mountns=mountns,
        userns=bool(found.get("userns")) and any(found.get(k) for k in NAMESPACE_KINDS),
        subreaper=bool(found.get("subreaper")),
        cgroup_pids=cgroups.usable_parent("pids"),
        cgroup_memory=cgroups.usable_parent("memory"),
        run_as_uid=uid,
        run_as_gid=gid,
        python=_choose_python(uid is not None),
        private_dirs=private if mountns else (),
    )


def check_available(mechanisms: Mechanisms | None = None, *, allow_unsafe: bool = False) -> None:
    """Raise ``SandboxUnavailable`` unless the minimum containment exists or opted out."""
    mech = mechanisms or detect_mechanisms()
    problems = mech.problems()
    if problems and not (allow_unsafe or os.environ.get(UNSAFE_ENV) == "1"):
        raise SandboxUnavailable(
            "refusing to run untrusted code: " + "; ".join(problems)
            + f" (mechanisms: {mech.summary()}; opt out with {UNSAFE_ENV}=1)"
        )


def _sessions_root() -> Path:
    root = Path(tempfile.gettempdir()) / f"prime_sandbox_{os.geteuid()}"
    root.mkdir(mode=0o711, exist_ok=True)
    os.chmod(root, 0o711)  # the job user traverses it but cannot list it
    return root


def _nproc_limit(mech: Mechanisms, limits: SandboxLimits) -> int:
    if mech.run_as_uid is not None:
        return limits.nproc_uid
    # RLIMIT_NPROC counts every task of our uid: leave headroom above what already runs.
    uid, tasks = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    tasks += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return tasks + limits.processes


def run_session(
    files: Mapping[str, str | bytes],
    jobs: Sequence[Job],
    *,
    limits: SandboxLimits = SandboxLimits(),
    mechanisms: Mechanisms | None = None,
    allow_unsafe: bool = False,
    stop_on_failure: bool = False,
    session_timeout_s: float | None = None,
) -> SessionResult:
    """Run ``jobs`` in order in one fresh sandbox holding ``files`` (read-only, at ``{ro}``).

    The runner script is always present as ``{ro}/_runner.py``. With ``stop_on_failure``
    the jobs after the first failed one are not run (``None``). Never raises for anything
    the programs do; raises ``SandboxUnavailable`` for a machine without containment.
    """
    mech = mechanisms or detect_mechanisms()
    check_available(mech, allow_unsafe=allow_unsafe)
    budget = session_timeout_s if session_timeout_s is not None else sum(j.timeout_s for j in jobs)
    base = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_sessions_root()))
    groups: list[str] = []
    proc: subprocess.Popen | None = None
    try:
        os.chmod(base, 0o711)
        ro, home = base / "ro", base / "home"
        ro.mkdir(mode=0o755)
        home.mkdir(mode=0o700)
        if mech.run_as_uid is not None:
            os.chown(home, mech.run_as_uid, mech.run_as_gid or mech.run_as_uid)
        for name, content in {**files, "_runner.py": RUNNER_SCRIPT.read_bytes()}.items():
            data = content.encode() if isinstance(content, str) else content
            (ro / name).write_bytes(data)
            os.chmod(ro / name, 0o644)
        view = _VIEW if mech.mountns else str(base)
        python = mech.python or sys.executable
        cfg_jobs = []
        for i, job in enumerate(jobs):
            stdin_path = base / f"stdin_{i}"
            stdin_path.write_bytes(job.stdin)
            argv = [a.replace("{python}", python).replace("{ro}", f"{view}/ro") for a in job.argv]
            cfg_jobs.append({"argv": argv, "stdin": f"{view}/stdin_{i}",
                             "timeout_s": job.timeout_s, "cpu_s": int(job.timeout_s) + 1})
        tag = f"{next(_counter)}_{base.name.rsplit('-', 1)[-1]}"
        for parent, kwargs in (
            (mech.cgroup_pids, {"pids_max": limits.processes + 2, "memory_bytes": None}),
            (mech.cgroup_memory, {"pids_max": None, "memory_bytes": limits.memory_bytes}),
        ):
            if parent:
                groups.append(cgroups.create(parent, tag, **kwargs))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"{view}/home", "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "TMPDIR": f"{view}/home", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        rlimits = {
            "RLIMIT_AS": limits.address_space_bytes,
            "RLIMIT_FSIZE": limits.file_size_bytes,
            "RLIMIT_NOFILE": limits.open_files,
            "RLIMIT_NPROC": _nproc_limit(mech, limits),
            "RLIMIT_CORE": 0,
        }
        cfg = {
            "base": str(base), "view": view, "home": f"{view}/home", "jobs": cfg_jobs,
            "uid": mech.run_as_uid, "gid": mech.run_as_gid, "rlimits": rlimits, "env": env,
            "netns": mech.netns, "pidns": mech.pidns, "mountns": mech.mountns,
            "userns": mech.userns, "private_dirs": list(mech.private_dirs),
            "home_bytes": limits.home_bytes, "cgroup_procs": [f"{g}/cgroup.procs" for g in groups],
            "max_stdout": limits.max_stdout_bytes, "max_stderr": limits.max_stderr_bytes,
            "session_timeout_s": budget, "stop_on_failure": stop_on_failure,
        }
        config = base / "config.json"
        config.write_text(json.dumps(cfg))
        os.chmod(config, 0o600)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(INIT_SCRIPT), str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=base, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=budget + 5.0 + 0.05 * len(jobs))
            error = None
        except subprocess.TimeoutExpired:  # init enforces the job timeouts; this is a backstop
            _killpg(proc.pid)
            out, err = proc.communicate()
            error = "session exceeded its time budget"
        return _parse(out, err, proc.returncode, error, len(jobs), mech)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted: never killpg a reaped pid
            _killpg(proc.pid)
            proc.wait()
        stuck = [g for g in groups if not cgroups.destroy(g)]
        shutil.rmtree(base, ignore_errors=True)
        if stuck:  # members in uninterruptible sleep; cleanup_stale retries later
            sys.stderr.write(f"sandbox: could not empty cgroups {stuck}\n")


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _parse(out: bytes, err: bytes, rc: int | None, error: str | None, n: int, mech: Mechanisms):
    lines = out.strip().splitlines()
    try:
        raw = json.loads(lines[-1])["jobs"]
    except (IndexError, ValueError, KeyError, TypeError):
        tail = err.decode(errors="replace")[-2000:]
        error = error or f"launcher failed (rc={rc}): {tail}"
        return SessionResult([None] * n, error, mech.summary())
    jobs = [
        None if r is None else JobResult(
            returncode=r["returncode"], stdout=base64.b64decode(r["stdout"]),
            stderr=base64.b64decode(r["stderr"]), timed_out=r["timed_out"],
            output_truncated=r["output_truncated"], elapsed_s=r["elapsed_s"],
        )
        for r in raw
    ]
    return SessionResult(jobs, error, mech.summary())


def cleanup_owned_by(pid: int) -> None:
    """Remove the cgroups and directories of a killed process's sessions."""
    mech = detect_mechanisms()
    for parent in (mech.cgroup_pids, mech.cgroup_memory):
        if parent:
            cgroups.destroy_owned_by(parent, pid)
    for entry in _sessions_root().glob(f"{pid}-*"):
        shutil.rmtree(entry, ignore_errors=True)


def cleanup_stale() -> None:
    """Remove sessions left by processes that no longer exist (after a crash)."""
    mech = detect_mechanisms()
    owners: set[int] = set()
    for parent in (mech.cgroup_pids, mech.cgroup_memory):
        if parent:
            owners |= cgroups.owners(parent)
    owners |= {int(e.name.split("-", 1)[0]) for e in _sessions_root().iterdir()
               if e.name.split("-", 1)[0].isdigit()}
    for pid in owners:
        if not Path(f"/proc/{pid}").exists():
            cleanup_owned_by(pid)


def without(mechanisms: Mechanisms, **disabled: object) -> Mechanisms:
    """A copy with some mechanisms turned off (tests and the docs' degraded modes)."""
    return dataclasses.replace(mechanisms, **disabled)  # type: ignore[arg-type]
