"""A process the harness started: stopping it, and facts about it from /proc (Linux)."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stop_process(
    process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, grace_seconds: float = 10.0
) -> None:
    """Signal ``process`` and reap it; SIGKILL if it is still there ``grace_seconds`` later."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kib_field(path: str, name: str) -> int:
    """The ``name:`` line of a /proc file, in KiB; 0 if the process is gone."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """Proportional set size (pages shared by N processes count 1/N), 0 if it is gone."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            # The command name may hold spaces: fields are counted after its closing paren.
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            children.append(int(entry))
    return sorted(children)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
