"""Finding and ending every process devstack started, however deep and however orphaned.

honcho starts each Procfile process in a session of its own and, asked to stop, signals
those process groups, then kills them five seconds after the first one exits. That covers
the usual case. What it cannot cover: honcho itself hanging or being killed (its children
then live on, re-parented to init), or a process that left its group. So devstack

- becomes a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``): a process whose parent
  dies is re-parented to devstack instead of init, so it stays in devstack's tree;
- sweeps that tree after honcho is done: whatever is still there is killed and reaped;
- gives its direct children ``PR_SET_PDEATHSIG``: if devstack itself is killed outright
  (SIGKILL, no handler runs), honcho and the embedded Redis get SIGTERM and stop too.

Off Linux, the prctl calls do nothing and the tree comes from ``ps``; honcho's own stop
still runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once, in the parent: a preexec_fn should only call, not load libraries.
_prctl = _load_prctl()


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process; False where unsupported."""
    return _prctl is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def stop_with(parent_pid: int) -> Callable[[], None]:
    """Arms SIGTERM for when ``parent_pid`` (this process's parent) dies, even by SIGKILL:
    a ``preexec_fn`` for a child, or called at once for this process itself."""

    def arm() -> None:
        if _prctl is None:
            return
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the line above
            os._exit(1)

    return arm


def descendants(root: int, *, exclude: Iterable[int] = ()) -> list[int]:
    """Every running process below ``root``, parents before their children; an excluded
    pid's subtree is left out (the embedded Redis and its AOF-rewrite child). Zombies are
    left out too: they run nothing and hold no port (``reap_children`` collects them)."""
    children: dict[int, list[int]] = {}
    zombies: set[int] = set()
    for pid, (ppid, zombie) in _processes().items():
        children.setdefault(ppid, []).append(pid)
        if zombie:
            zombies.add(pid)
    skipped = set(exclude)
    found: list[int] = []
    frontier = [root]
    while frontier:
        for child in children.get(frontier.pop(0), []):
            if child not in skipped:
                found.append(child)
                frontier.append(child)
    return [pid for pid in found if pid not in zombies]


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"


def kill_and_reap(pids: Iterable[int], *, timeout: float = 5.0) -> list[int]:
    """SIGKILL each pid, reap those that are our children, wait until all are gone.

    Returns the pids that were still alive when killed.
    """
    killed: list[int] = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
    deadline = time.monotonic() + timeout
    pending = set(killed)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            if _reaped_or_gone(pid):
                pending.discard(pid)
        if pending:
            time.sleep(0.05)
    return killed


def _reaped_or_gone(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: gone once /proc no longer lists it alive
        return not _alive(pid)
    return done == pid


def _alive(pid: int) -> bool:
    """Running, or dying; not a zombie (a zombie holds no port and runs nothing)."""
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def reap_children() -> None:
    """Collect every child that has exited (orphans re-parented here by the subreaper)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _processes() -> dict[int, tuple[int, bool]]:
    """pid -> (parent pid, is a zombie) of every process."""
    proc = Path("/proc")
    if not proc.is_dir():
        return _processes_from_ps()
    found: dict[int, tuple[int, bool]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        found[int(entry.name)] = (int(ppid), state == "Z")
    return found


def _processes_from_ps() -> dict[int, tuple[int, bool]]:
    try:
        listing = subprocess.run(
            ["ps", "-A", "-o", "pid=,ppid=,stat="], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    found: dict[int, tuple[int, bool]] = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit() and fields[1].isdigit():
            found[int(fields[0])] = (int(fields[1]), fields[2].startswith("Z"))
    return found
