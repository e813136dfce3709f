"""Per-session cgroups (v1 or delegated v2) that cap and sweep a sandbox's process tree.

A session's group caps the number of tasks (fork bombs) and memory of everything it
starts, and its ``cgroup.procs`` lists every member however it daemonised, which makes
"kill everything that was started" exact. Groups are created under this process's own
cgroup so limits set by whoever runs us still apply above them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PREFIX = "prime_sb_"
_LIMIT_FILES = {"pids": ("pids.max",), "memory": ("memory.limit_in_bytes", "memory.max")}


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(fstype, mount point, super options) of the cgroup mounts."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if rest and rest[0] in ("cgroup", "cgroup2"):
            found.append((rest[0], fields[4], set(rest[-1].split(","))))
    return found


def _own_dir(controller: str) -> Path | None:
    """The directory of this process's cgroup for ``controller`` (v1 first, then v2)."""
    try:
        membership = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = _mounts()
    except OSError:
        return None
    for line in membership:
        hierarchy, controllers, path = line.split(":", 2)
        for fstype, mount_point, options in mounts:
            v1 = fstype == "cgroup" and controller in controllers.split(",")
            v1 = v1 and controller in options
            v2 = fstype == "cgroup2" and hierarchy == "0"
            if v1 or v2:
                candidate = Path(mount_point) / path.lstrip("/")
                if not v2 or controller in _read(candidate / "cgroup.controllers").split():
                    return candidate if candidate.is_dir() else Path(mount_point)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def usable_parent(controller: str) -> str | None:
    """Where session groups for ``controller`` can be made (probed by making one), or None."""
    parent = _own_dir(controller)
    if parent is None:
        return None
    probe = parent / f"{PREFIX}probe_{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
    except OSError:
        return None
    try:
        usable = any((probe / name).exists() for name in _LIMIT_FILES[controller])
    finally:
        destroy(str(probe))
    return str(parent) if usable else None


def create(parent: str, tag: str, *, pids_max: int | None, memory_bytes: int | None) -> str:
    """Make ``parent/PREFIX<pid>_<tag>`` and write the limit that its controller supports."""
    path = Path(parent) / f"{PREFIX}{os.getpid()}_{tag}"
    path.mkdir()
    if (path / "pids.max").exists() and pids_max is not None:
        (path / "pids.max").write_text(str(pids_max))
    if memory_bytes is not None:
        for name, value in (
            ("memory.limit_in_bytes", memory_bytes),  # v1
            ("memory.memsw.limit_in_bytes", memory_bytes),  # v1 with swap accounting
            ("memory.max", memory_bytes),  # v2
            ("memory.swap.max", 0),  # v2
        ):
            if (path / name).exists():
                (path / name).write_text(str(value))
    return str(path)


def destroy(path: str, *, timeout_s: float = 5.0) -> bool:
    """SIGKILL every member until the group is empty, then remove it; False if it stays."""
    procs = Path(path) / "cgroup.procs"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            members = [int(p) for p in procs.read_text().split()]
        except FileNotFoundError:
            return True
        except OSError:
            members = []
        if not members:
            try:
                os.rmdir(path)
                return True
            except FileNotFoundError:
                return True
            except OSError:  # EBUSY: the last member is still exiting
                pass
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)
    return False


def destroy_owned_by(parent: str, owner_pid: int) -> int:
    """Destroy the session groups a (dead or killed) process left under ``parent``."""
    removed = 0
    for entry in Path(parent).glob(f"{PREFIX}{owner_pid}_*"):
        removed += destroy(str(entry))
    return removed


def owners(parent: str) -> set[int]:
    """Pids that own session groups under ``parent``."""
    found = set()
    for entry in Path(parent).glob(f"{PREFIX}*_*"):
        head = entry.name[len(PREFIX) :].split("_", 1)[0]
        if head.isdigit():
            found.add(int(head))
    return found
