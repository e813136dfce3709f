"""In-sandbox runner for a candidate program (stdlib only; runs as the unprivileged job).

    python -I _runner.py [--deny-net] stdio SOLUTION
    python -I _runner.py [--deny-net] call SOLUTION FN_NAME ARGS_JSON
    python -I _runner.py [--deny-net] check SOLUTION TESTS [ENTRY_POINT]

``stdio`` runs the program as ``__main__`` on the real stdin/stdout. ``call`` calls
``FN_NAME`` (a function, or a method of ``class Solution``) with the JSON argument list and
prints the JSON result after a marker; the expected outputs never enter the sandbox, so
the program cannot fake them. ``check`` reads a nonce from stdin, runs the program, then
the test source in its namespace and ``check(ENTRY_POINT)`` when given, and echoes the
nonce after a marker. In-process checks stop accidental and naive fakes (early exit,
patched builtins or stdout), not a program that walks the interpreter's frames.
``--deny-net`` installs an audit hook refusing sockets, ctypes, subprocesses and /proc
writes: the fallback where no network namespace can be made.
"""

import json
import os
import sys

RESULT_MARKER = b"\n@@PRIME_CALL_RESULT@@"
CHECK_MARKER = b"\n@@PRIME_CHECK_PASSED@@"


def _install_deny_hook():
    denied_events = frozenset(
        {
            "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo",
            "socket.gethostbyname", "socket.sendto", "socket.sendmsg", "os.exec",
            "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "ctypes.dlopen",
            "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "gc.get_objects",
            "gc.get_referrers", "gc.get_referents",
        }
    )
    denied_modules = frozenset({"_socket", "_ctypes", "_posixsubprocess", "_multiprocessing"})

    def hook(event, args):
        if event in denied_events or (event == "import" and args[0] in denied_modules):
            raise PermissionError(f"sandbox: {event} is denied (no network namespace)")
        if event == "open" and isinstance(args[0], str | bytes):
            path = os.fsdecode(args[0])
            writing = (args[2] or 0) & (os.O_WRONLY | os.O_RDWR) or any(
                c in (args[1] or "") for c in "wa+x"
            )
            if path.startswith("/proc") and writing:
                raise PermissionError("sandbox: writing under /proc is denied")

    sys.addaudithook(hook)


def _load(path, name, run=exec, build=compile, read=open):
    with read(path, encoding="utf-8", errors="replace") as f:
        source = f.read()
    namespace = {"__name__": name, "__file__": os.path.basename(path), "__builtins__": __builtins__}
    run(build(source, os.path.basename(path), "exec"), namespace)
    return namespace


def _resolve(namespace, fn_name):
    solution = namespace.get("Solution")
    if isinstance(solution, type) and hasattr(solution, fn_name):
        return getattr(solution(), fn_name)  # LeetCode-style class Solution
    return namespace[fn_name]


def main(argv):
    # Everything used after the program has run is bound here first: the program may
    # monkeypatch builtins, os, json or sys.
    run, build, read, write, leave, dumps = exec, compile, open, os.write, os._exit, json.dumps
    if argv and argv[0] == "--deny-net":
        argv = argv[1:]
        _install_deny_hook()
    mode, solution = argv[0], argv[1]
    sys.argv = [os.path.basename(solution)]
    if mode == "stdio":
        _load(solution, "__main__", run, build, read)
        return
    if mode == "call":
        with read(argv[3], encoding="utf-8") as f:
            args = json.load(f)
        real_stdout, sys.stdout = sys.stdout, sys.stderr  # debug prints must not mix in
        result = _resolve(_load(solution, "__solution__", run, build, read), argv[2])(*args)
        payload = dumps(result).encode()
        real_stdout.flush()
        write(1, RESULT_MARKER + payload + b"\n")
        leave(0)  # nothing the program left behind (atexit, buffers, threads) writes after us
    if mode == "check":
        nonce = os.read(0, 64)  # read before the program runs, which then sees an empty stdin
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        namespace = _load(solution, "__main__", run, build, read)
        with read(argv[2], encoding="utf-8") as f:
            run(build(f.read(), "tests.py", "exec"), namespace)
        if len(argv) > 3:
            namespace["check"](namespace[argv[3]])
        try:
            sys.stdout.flush()
        except Exception:  # a replaced sys.stdout is the program's problem, not a pass
            leave(1)
        write(1, CHECK_MARKER + nonce + b"\n")
        leave(0)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
