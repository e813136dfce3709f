"""Trusted launcher and init of one sandbox session (stdlib only; run as ``python -I -S``).

``sandbox.py`` runs ``python -I -S _sandbox_init.py CONFIG`` in a new session with a clean
environment. This process joins the session's cgroups, unshares the namespaces, and (with a
PID namespace) forks the namespace's PID 1, which sets up private mounts and runs each job
as an unprivileged process with rlimits, capturing capped output. It prints one JSON line of
results. ``--probe`` prints which namespaces this kernel lets us create. Jobs never see the
config, this process's stdout or its environment.
"""

import base64
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
_LOCKED_FLAGS = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
                 "relatime": 1 << 21}
PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE = 36, 4
NAMESPACES = {"netns": CLONE_NEWNET, "pidns": CLONE_NEWPID, "mountns": CLONE_NEWNS}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None):
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _try_write(path, text):
    try:
        _write(path, text)
    except OSError:  # e.g. lowering oom_score_adj needs CAP_SYS_RESOURCE
        pass


def probe():
    """Fork one child per namespace kind; report which unshares succeed."""
    userns = os.geteuid() != 0
    found = {}
    for name, flag in NAMESPACES.items():
        pid = os.fork()
        if pid == 0:
            rc = _libc.unshare(flag | (CLONE_NEWUSER if userns else 0))
            os._exit(0 if rc == 0 else 1)
        found[name] = os.waitpid(pid, 0)[1] == 0
    found["userns"] = userns
    found["subreaper"] = _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    print(json.dumps(found))


def _remount_all_read_only():
    """Make every mount of our private tree read-only (MS_BIND: per mount, never the fs)."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mounts.append((fields[4].replace("\\040", " "), fields[5]))
    for point, options in sorted(mounts, key=lambda m: len(m[0])):
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options.split(","):
            flags |= _LOCKED_FLAGS.get(option, 0)  # a user namespace must keep these
        rc = _libc.mount(None, point.encode(), None, flags, None)
        if rc != 0 and point == "/":
            _check(rc, "remount / read-only")


def _setup_mounts(cfg):
    """Private mount tree: all read-only, fresh tmpfs over world-writable dirs, the session
    dir bound back read-only, a tmpfs home, a private /proc."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _remount_all_read_only()
    base_fd = os.open(cfg["base"], os.O_RDONLY | os.O_DIRECTORY)  # opened inside the new ns
    opts = "size=16m,nr_inodes=4096,mode=1777"
    for path in cfg["private_dirs"]:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    os.makedirs(cfg["view"], exist_ok=True)
    _mount(f"/proc/self/fd/{base_fd}", cfg["view"], None, MS_BIND)
    os.close(base_fd)
    home_opts = f"size={cfg['home_bytes']},nr_inodes=4096,mode=0700"
    if cfg["uid"] is not None:
        home_opts += f",uid={cfg['uid']},gid={cfg['gid']}"
    _mount("tmpfs", cfg["home"], "tmpfs", MS_NOSUID | MS_NODEV, home_opts)
    if cfg["pidns"]:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _exec_job(cfg, job, stdin_fd, out_w, err_w):
    """Child side of a job: never returns."""
    try:
        os.setsid()
        for target, fd in ((0, stdin_fd), (1, out_w), (2, err_w)):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        os.chdir(cfg["home"])
        _try_write("/proc/self/oom_score_adj", "1000")  # the OOM killer takes jobs, not init
        for name, value in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"]))
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["gid"])
            os.setuid(cfg["uid"])
        os.umask(0o077)
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(job["argv"][0], job["argv"], cfg["env"])
    except BaseException as exc:
        os.write(2, f"sandbox: cannot start job: {exc!r}\n".encode())
    os._exit(126)


def _kill_job(pid):
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except OSError:
            pass


def _read_into(fd, buf, cap):
    """Read what is available from ``fd``; returns (eof, overflowed)."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False, False
        if not chunk:
            return True, False
        buf += chunk
        if len(buf) > cap:
            del buf[cap:]
            return False, True


def _run_job(cfg, job, timeout_s, wake_r):
    stdin_fd = os.open(job["stdin"], os.O_RDONLY)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _exec_job(cfg, job, stdin_fd, out_w, err_w)
    for fd in (stdin_fd, out_w, err_w):
        os.close(fd)
    caps = {out_r: cfg["max_stdout"], err_r: cfg["max_stderr"]}
    bufs = {out_r: bytearray(), err_r: bytearray()}
    open_fds = [out_r, err_r]
    for fd in open_fds:
        os.set_blocking(fd, False)
    status, timed_out, overflow = None, False, False
    deadline = start + timeout_s
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        # SIGCHLD writes to wake_r (set_wakeup_fd), so exits wake us without polling.
        ready = select.select([*open_fds, wake_r], [], [], remaining)[0]
        if wake_r in ready:
            _read_into(wake_r, bytearray(), 1 << 16)
        for fd in ready:
            if fd in bufs:
                eof, over = _read_into(fd, bufs[fd], caps[fd])
                overflow = overflow or over
                if eof:
                    open_fds.remove(fd)
        if overflow:
            break
    if status is None:
        _kill_job(pid)
        status = os.waitpid(pid, 0)[1]
    # Drain what the job left buffered; never wait for EOF (a daemon may hold the pipe).
    for fd in open_fds:
        overflow = _read_into(fd, bufs[fd], caps[fd])[1] or overflow
    _kill_job(pid)  # its process group may outlive it
    for fd in (out_r, err_r):
        os.close(fd)
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "output_truncated": overflow,
        "elapsed_s": round(time.monotonic() - start, 4),
        "stdout": base64.b64encode(bytes(bufs[out_r])).decode(),
        "stderr": base64.b64encode(bytes(bufs[err_r])).decode(),
    }


def _kill_strays():
    """Kill every process a job left behind (daemons included) before the next job."""
    for _ in range(10000):
        if os.getpid() == 1:  # a PID namespace's init: kill(-1) reaches every other member
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:  # a subreaper: orphans of our jobs were re-parented to us
            for kid in _children():
                try:
                    os.kill(kid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.001)  # SIGKILLed children are still exiting
        except ChildProcessError:
            return  # no children: every process of the tree is gone


def _children():
    me, kids = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                kids.append(int(entry))
    return kids


def run_init(cfg):
    """Run the jobs in order; print one JSON line of results."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # same-uid jobs (user namespace) cannot ptrace us
    _try_write("/proc/self/oom_score_adj", "-1000")
    if cfg["mountns"]:
        _setup_mounts(cfg)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    deadline = time.monotonic() + cfg["session_timeout_s"]
    results, stopped = [], False
    for job in cfg["jobs"]:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stopped:
            results.append(None)  # not run
            continue
        results.append(_run_job(cfg, job, min(job["timeout_s"], remaining), wake_r))
        stopped = cfg["stop_on_failure"] and not _ok(results[-1])
        _kill_strays()
    sys.stdout.write(json.dumps({"jobs": results}) + "\n")
    sys.stdout.flush()


def _ok(result):
    return result["returncode"] == 0 and not result["timed_out"] and not result["output_truncated"]


def main(config_path):
    with open(config_path) as f:
        cfg = json.load(f)
    for procs in cfg["cgroup_procs"]:
        _write(procs, str(os.getpid()))
    flags = sum(flag for name, flag in NAMESPACES.items() if cfg[name])
    if cfg["userns"]:
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(flags | CLONE_NEWUSER), "unshare")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    elif flags:
        _check(_libc.unshare(flags), "unshare")
    if not cfg["pidns"]:
        run_init(cfg)
        return
    pid = os.fork()  # the first child is PID 1 of the new namespace; its exit kills the rest
    if pid == 0:
        code = 0
        try:
            run_init(cfg)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        probe()
    else:
        main(sys.argv[1])
