"""Multiprocess mode: every process writes its values to small mmapped files, and one
collector in the worker's main process adds them up.

Why. prometheus_client keeps a value in the memory of the process that changed it, and a
prefork worker delivers in several child processes: a /metrics served by any one of them
would show a fraction of what happened. The wiring:

- ``prepare_multiprocess`` runs on ``worker_init`` in the main process, before the pool
  forks (``server``): it picks the directory (``PROMETHEUS_MULTIPROC_DIR`` if the operator
  set one, else one per worker node name under the temp dir), deletes the files of an
  earlier run (their counts belong to that run) and exports the variable so every child
  inherits it.
- Metric objects are built lazily (``recording``), so a child builds them after the fork
  with multiprocess values (``counter_<pid>.db``, ``histogram_<pid>.db``).
- ``retire_process`` runs on ``worker_process_shutdown`` in the child that exits (a pool
  recycled by ``--max-tasks-per-child`` / ``--max-memory-per-child``, or shutdown): it
  folds the child's counters and histograms into ``*_archive.db`` and deletes its files,
  so totals stay exact while the directory does not grow by two files per dead child.
  A child killed by SIGKILL never runs it; each scrape folds the files of pids that are
  gone. Folding and scraping hold one file lock, so no scrape counts a child twice.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import values
from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from worker.metrics.recording import forget_metrics

log = logging.getLogger("snackvideo.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE = ".snackvideo.lock"  # not *.db: the collector's glob must not read it

# Files of one process: counter_<pid>.db, histogram_<pid>.db (gauges are never per-process
# here: live state is read from Redis at scrape time, see collectors).
_PROCESS_FILE = re.compile(r"^(counter|histogram|summary)_(\d+)\.db$")

_directory: Path | None = None  # set in the main process by prepare_multiprocess; inherited


def current_directory() -> Path | None:
    """This process's multiprocess directory: None until ``prepare_multiprocess`` ran
    (in the main process, or in its parent before the fork)."""
    return _directory


def default_directory(node_name: str) -> Path:
    """One directory per worker node: two workers on one host must never share one."""
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", node_name)
    return Path(tempfile.gettempdir()) / f"snackvideo-metrics-{safe}"


def prepare_multiprocess(directory: Path) -> Path:
    """Main process, before the pool forks: a clean directory every child inherits."""
    global _directory
    directory.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(str(directory / "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client picks its value class (in memory, or mmapped files) once, when
    # prometheus_client.values is first imported; celery or a plugin may have imported it
    # before this ran. Pick again now that the variable is set; metric objects read
    # ``values.ValueClass`` when they are built, and ours are built lazily after this.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()
    forget_metrics()  # built before this with in-memory values? build them again
    _directory = directory
    return directory


def use_in_memory_values() -> None:
    """Back to prometheus_client's per-process values (metrics off)."""
    values.ValueClass = values.MutexValue
    forget_metrics()


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """One lock across processes and threads: folding and scraping never overlap."""
    with open(directory / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fold_process_files(directory: Path, pid: int) -> int:
    """Add a dead process's counters and histograms to the archive files, delete its own.

    Caller holds the directory lock. Returns the number of files folded.
    """
    folded = 0
    for path in sorted(directory.glob(f"*_{pid}.db")):
        match = _PROCESS_FILE.match(path.name)
        if match is None:
            continue
        archive = MmapedDict(str(directory / f"{match.group(1)}_archive.db"))
        try:
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
                # Counters and histogram buckets are stored per process as plain sums
                # (the collector accumulates buckets later): adding them is exact.
                total, _ = archive.read_value(key)
                archive.write_value(key, total + value, 0.0)
        finally:
            archive.close()
        path.unlink()
        folded += 1
    mark_process_dead(pid, str(directory))  # live gauges, should a later change add some
    return folded


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's (a reused pid): not one of ours to fold
        return False
    return False


def fold_dead_processes(directory: Path) -> int:
    """Fold the files of every pid that no longer exists (children killed by SIGKILL)."""
    folded = 0
    pids = {int(m.group(2)) for m in map(_PROCESS_FILE.match, os.listdir(directory)) if m}
    for pid in pids - {os.getpid()}:
        if _process_gone(pid):
            folded += fold_process_files(directory, pid)
    return folded


def retire_process(pid: int) -> None:
    """In an exiting pool child: fold its files so the directory stays small."""
    if _directory is None:
        return
    try:
        with _directory_lock(_directory):
            fold_process_files(_directory, pid)
    except OSError as exc:  # the main process folds it at the next scrape instead
        log.warning("could not fold metrics of process %s: %s", pid, exc)


class FoldingMultiProcessCollector:
    """``MultiProcessCollector`` that first folds dead processes, all under the lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files = MultiProcessCollector(None, str(directory))

    def collect(self) -> Iterator[Metric]:
        with _directory_lock(self.directory):
            fold_dead_processes(self.directory)
            collected = list(self._files.collect())
        yield from collected
