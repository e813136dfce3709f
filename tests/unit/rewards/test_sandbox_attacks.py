"""Attack corpus: each hostile program scores 0 and leaves the host unchanged.

Where possible an attack is phrased so that its success would *earn* the points (the
expected output is what only a successful attack could print), and the host is checked
directly: canaries in $HOME and in a world-writable host directory, marker paths, a
listening socket on 127.0.0.1, a process owned by the sandbox user outside the sandbox,
and the processes left behind.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from prime_mcore.rewards.code_grader import grade_code
from prime_mcore.rewards.result import Reason
from prime_mcore.rewards.sandbox import without
from tests.unit.rewards.helpers import fenced

NOBODY = 65534
TIMEOUT_S = 0.5
RAN = (Reason.WRONG,)  # the program ran (and failed)
STOPPED = (Reason.TIMEOUT,)
EITHER = (Reason.WRONG, Reason.TIMEOUT)  # depends on machine speed


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _pids_of_uid(uid: int) -> set[int]:
    procs = psutil.process_iter(["uids"])
    return {p.pid for p in procs if p.info["uids"] and p.info["uids"].real == uid}


def _pids_with(token: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(token in part for part in proc.info["cmdline"] or ()):
            found.append(proc.pid)
    return found


@dataclass
class Host:
    token: str
    home_canary: Path
    open_dir: Path
    port: int
    listener: socket.socket
    secret: str
    sentinel: subprocess.Popen
    before_children: set[int]
    before_nobody: set[int]

    def fill(self, code: str) -> str:
        for key in ("token", "home_canary", "open_dir", "port", "secret"):
            code = code.replace("{" + key + "}", str(getattr(self, key)))
        return code.replace("{sentinel}", str(self.sentinel.pid))

    def assert_unchanged(self) -> None:
        assert self.home_canary.read_text() == "canary"
        assert sorted(p.name for p in self.open_dir.iterdir()) == ["canary"]
        assert (self.open_dir / "canary").read_text() == "canary"
        for base in ("/tmp", "/var/tmp", "/dev/shm", "/", str(Path.home())):
            assert set(Path(base).glob(f"*{self.token}*")) <= {self.home_canary}, base
        with pytest.raises(BlockingIOError):
            self.listener.accept()  # nobody ever connected
        assert self.sentinel.poll() is None, "a process outside the sandbox was killed"
        assert _pids_with(self.token) == []
        assert _descendants() == self.before_children
        assert _pids_of_uid(NOBODY) == self.before_nobody


@pytest.fixture
def host(mechanisms, monkeypatch):
    token = f"prime{uuid.uuid4().hex[:12]}"
    home_canary = Path.home() / f".canary_{token}"
    home_canary.write_text("canary")
    open_dir = Path(tempfile.mkdtemp(prefix="open_", dir="/tmp"))  # world-writable host dir
    (open_dir / "canary").write_text("canary")
    os.chmod(open_dir, 0o777)
    os.chmod(open_dir / "canary", 0o666)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    secret = f"s3cret-{token}"
    monkeypatch.setenv("PRIME_TEST_SECRET", secret)
    as_nobody = {"user": NOBODY} if os.geteuid() == 0 else {}
    sentinel = subprocess.Popen(["sleep", "120"], **as_nobody)
    time.sleep(0.05)
    state = Host(token, home_canary, open_dir, listener.getsockname()[1], listener, secret,
                 sentinel, _descendants(), _pids_of_uid(NOBODY))
    yield state
    sentinel.kill()
    sentinel.wait()
    listener.close()
    home_canary.unlink(missing_ok=True)
    shutil.rmtree(open_dir, ignore_errors=True)


def stdin_tests(expected: str) -> dict:
    return {"inputs": ["\n"], "outputs": [expected]}


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c",
            "import time; time.sleep(0.3); open('{open_dir}/daemon_{token}', 'w').write('x');"
            "open('/tmp/daemon_{token}', 'w').write('x'); time.sleep(60)", "{token}"])
    os._exit(0)
os.wait()
"""
WRITE_OUTSIDE = """
import os
for path in ["{open_dir}/out_{token}", "/tmp/out_{token}", "/var/tmp/out_{token}",
             "/dev/shm/out_{token}", "../out_{token}", "../../out_{token}", "/out_{token}",
             "{home_canary}_out"]:
    try:
        open(path, "w").write("x")
    except OSError:
        pass
for victim in ["{open_dir}/canary", "{home_canary}"]:
    try:
        os.remove(victim)
    except OSError:
        pass
"""
DELETE_HOME = """
import os
try:
    os.remove("{home_canary}")
    print("deleted")
except OSError:
    pass
"""
ENV_SECRETS = """
import os, glob
found = [v for k, v in os.environ.items() if k == "PRIME_TEST_SECRET"]
for path in glob.glob("/proc/*/environ"):
    try:
        for entry in open(path, "rb").read().split(b"\\0"):
            if entry.startswith(b"PRIME_TEST_SECRET="):
                found.append(entry.split(b"=", 1)[1].decode())
    except OSError:
        pass
print(found[0] if found else "")
"""
SOCKETS = """
import socket
ok = False
for addr in [("127.0.0.1", {port}), ("8.8.8.8", 53), ("1.1.1.1", 80)]:
    try:
        socket.create_connection(addr, timeout=0.3).close()
        ok = True
    except OSError:
        pass
try:
    socket.getaddrinfo("example.com", 80)
    ok = True
except OSError:
    pass
print("connected" if ok else "")
"""
KILL_PARENT = """
import os, signal
for pid in (os.getppid(), 1, {sentinel}):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
os.kill(-1, signal.SIGKILL)
"""
MONKEYPATCH_CHECK = """
import builtins, os, sys
builtins.exec = lambda *a, **k: None
builtins.compile = lambda *a, **k: None
builtins.AssertionError = type("NotAnAssertion", (Exception,), {})
os.read = lambda fd, n: b"0" * 32
sys.stdout.write("\\n@@PRIME_CHECK_PASSED@@\\n")
sys.exit = lambda *a: os._exit(0)
def f(x):
    return 0
"""
MONKEYPATCH_CALL = """
import builtins, json, os, sys
fake = "\\n@@PRIME_CALL_RESULT@@3\\n"
json.dumps = lambda *a, **k: "3"
real_write = os.write
os.write = lambda fd, data: real_write(fd, fake.encode())
builtins.print = lambda *a, **k: sys.__stdout__.write(fake)
sys.__stdout__.write(fake)  # stays buffered: would land after the real result at exit
def f(x):
    sys.__stdout__.write(fake)
    sys.__stdout__.flush()
    return 4
"""
LATE_THREAD = """
import threading, time
def late():
    time.sleep(1.0)
    print(3, flush=True)
threading.Thread(target=late).start()
"""

# name -> (code, tests, the reasons it may get)
ATTACKS = {
    "infinite_loop": ("while True:\n    pass", stdin_tests("done"), STOPPED),
    "sleep": ("import time\ntime.sleep(60)\nprint('done')", stdin_tests("done"), STOPPED),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                  "        pass", stdin_tests("done"), STOPPED),
    "memory_bomb": ("try:\n    big = bytearray(1 << 36)\nexcept MemoryError:\n    pass\n"
                    "x = []\nwhile True:\n    x.append(bytearray(256 << 20))",
                    stdin_tests("done"), EITHER),
    "output_1gb": ("import os\nchunk = b'x' * (1 << 20)\nfor _ in range(1024):\n"
                   "    os.write(1, chunk)", stdin_tests("x"), RAN),
    "daemon": (DAEMON, stdin_tests("survived"), RAN),
    "write_outside": (WRITE_OUTSIDE, stdin_tests("done"), RAN),
    "delete_home_canary": (DELETE_HOME, stdin_tests("deleted"), RAN),
    "env_secrets": (ENV_SECRETS, None, RAN),  # expected output: the secret
    "sockets": (SOCKETS, stdin_tests("connected"), RAN),
    "kill_parent": (KILL_PARENT, stdin_tests("done"), RAN),
    "exit0_before_output": ("import sys\nsys.exit(0)\nprint(3)", stdin_tests("3"), RAN),
    "right_output_then_crash": ("print(3, flush=True)\nraise SystemExit(1)", stdin_tests("3"),
                                RAN),
    "monkeypatch_check": (MONKEYPATCH_CHECK, "assert f(2) == 4\n", RAN),
    "monkeypatch_call": (MONKEYPATCH_CALL, {"inputs": [[2]], "outputs": [[3]], "fn_name": "f"},
                         RAN),
    "monkeypatch_stdout": ("import sys\nclass Sink:\n    def write(self, s): pass\n"
                           "    def flush(self): pass\nsys.stdout = Sink()\nprint(3)",
                           stdin_tests("3"), RAN),
    "segfault_ctypes": ("print(3, flush=True)\nimport ctypes\nctypes.string_at(0)",
                        stdin_tests("3"), RAN),
    "recursion_bomb": ("import sys\nsys.setrecursionlimit(10**7)\nprint(3, flush=True)\n"
                       "def f(n):\n    return f(n + 1) + 1\nf(0)", stdin_tests("3"),
                       EITHER),
    "late_thread": (LATE_THREAD, stdin_tests("3"), STOPPED),
}


def run_attack(host: Host, name: str, mechanisms, **kwargs):
    code, tests, _ = ATTACKS[name]
    tests = tests if tests is not None else stdin_tests(host.secret)
    start = time.monotonic()
    result = grade_code(fenced(host.fill(code)), tests, timeout_s=TIMEOUT_S,
                        mechanisms=mechanisms, **kwargs)
    return result, time.monotonic() - start


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_scores_zero_and_host_is_unchanged(host, mechanisms, name):
    result, elapsed = run_attack(host, name, mechanisms)
    assert result.score == 0.0, result
    assert result.reason in ATTACKS[name][2], result
    # One pass plus a rerun of the counted test, each bounded by the timeout (the slack is
    # for a loaded machine; the sleep attack alone would take 60 s).
    assert elapsed < 2 * TIMEOUT_S + 20.0
    if name == "daemon":
        time.sleep(0.6)  # the daemon would have written its markers by now
    host.assert_unchanged()


@pytest.mark.parametrize(
    ("name", "disabled"),
    [
        ("daemon", {"pidns": False}),  # the cgroup sweep catches it
        ("daemon", {"pidns": False, "cgroup_pids": None, "cgroup_memory": None}),  # subreaper
        ("fork_bomb", {"pidns": False}),
        ("kill_parent", {"mountns": False, "private_dirs": ()}),  # the PID namespace alone
        ("sockets", {"netns": False}),  # the audit-hook deny fallback
        ("env_secrets", {"pidns": False, "mountns": False, "private_dirs": ()}),
    ],
)
def test_attacks_in_degraded_modes(host, mechanisms, name, disabled):
    result, _ = run_attack(host, name, without(mechanisms, **disabled))
    assert result.score == 0.0, result
    if name == "daemon":
        time.sleep(0.6)
    host.assert_unchanged()


def test_listener_check_detects_a_real_connection(host):
    """Control: the socket check used above does see an unsandboxed connection."""
    socket.create_connection(("127.0.0.1", host.port), timeout=1).close()
    time.sleep(0.05)
    conn, _ = host.listener.accept()
    conn.close()
