"""The real worker app with every Redis round trip counted: ``celery -A bench.counting_worker``.

A round trip is one ``send_packed_command`` of a redis-py connection: a single command, a
whole pipeline (several commands, one write, one wait), or an ``EVALSHA``. Each one is
tallied under who sent it and the commands it carried:

- ``ours``: the worker's bookkeeping client (``worker.connections.redis_client``),
  from the task (the delivery's own work);
- ``mover``: the same client, from the due-job mover thread (periodic, not per delivery);
- ``broker``: every other connection, i.e. kombu's (consume, ack, unacked bookkeeping,
  task events).

Each process writes its tallies to ``$BENCH_COUNT_DIR/counts-<pid>.json`` about once a
second and when it shuts down; ``bench.roundtrips`` adds them up. Only for benchmarks:
the counting itself costs a little CPU per round trip.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis.connection
from celery.signals import task_postrun, worker_process_init, worker_process_shutdown
from celery.signals import worker_shutdown as worker_shutdown_signal

from worker import app
from worker.connections import redis_client

__all__ = ["app"]

COUNT_DIR = Path(os.environ.get("BENCH_COUNT_DIR", "/tmp"))
MOVER_THREAD = "snackvideo-due-jobs"

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_tasks = 0
_last_dump = 0.0


def _script_names() -> dict[str, str]:
    """sha1 -> the script's name (``throttle/acquire``: its package and file), so an EVALSHA
    says which script it ran."""
    root = Path(__file__).resolve().parent.parent
    names = {}
    for path in [*root.glob("worker/*/*.lua"), *root.glob("producers/lua/*.lua")]:
        name = path.stem if path.parent.name == "lua" else f"{path.parent.name}/{path.stem}"
        names[hashlib.sha1(path.read_bytes()).hexdigest()] = name
    return names


_SCRIPTS = _script_names()


def command_names(packed: Any) -> list[str]:
    """The command names in RESP-packed bytes: one per command of a pipeline."""
    if isinstance(packed, str):
        packed = packed.encode()
    data = b"".join(bytes(chunk) for chunk in packed) if isinstance(packed, list) else packed
    names, pos = [], 0
    while pos < len(data) and data[pos : pos + 1] == b"*":
        end = data.index(b"\r\n", pos)
        argc = int(data[pos + 1 : end])
        pos = end + 2
        args = []
        for _ in range(argc):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : end])
            args.append(data[end + 2 : end + 2 + size])
            pos = end + 2 + size + 2
        name = args[0].decode(errors="replace").upper() if args else "?"
        if name == "EVALSHA" and len(args) > 1:
            name = f"EVALSHA({_SCRIPTS.get(args[1].decode(), args[1][:8].decode())})"
        names.append(name)
    return names


def _label(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    if names[0] == "MULTI":
        names = names[1:-1]  # MULTI ... EXEC: one transaction
        return "MULTI[" + "+".join(names) + "]"
    return "pipeline[" + "+".join(names) + "]"


class BookkeepingMarker:
    """Mixed into the class of the bookkeeping client's connections, to tell them apart."""


_original_send = redis.connection.AbstractConnection.send_packed_command


def _counting_send(self: Any, command: Any, check_health: bool = True) -> None:
    if isinstance(self, BookkeepingMarker):
        who = "mover" if threading.current_thread().name == MOVER_THREAD else "ours"
    else:
        who = "broker"
    try:
        label = _label(command_names(command))
    except (ValueError, IndexError):
        label = "?"
    with _lock:
        _counts[f"{who}\t{label}"] += 1
    _original_send(self, command, check_health)


def _mark_bookkeeping_client() -> None:
    pool = redis_client().connection_pool
    if not issubclass(pool.connection_class, BookkeepingMarker):
        pool.connection_class = type(
            "Bookkeeping" + pool.connection_class.__name__,
            (BookkeepingMarker, pool.connection_class),
            {},
        )
        pool.disconnect()  # connections made before the mark reconnect with the new class


def dump(force: bool = False) -> None:
    global _last_dump
    now = time.monotonic()
    if not force and now - _last_dump < 1.0:
        return
    _last_dump = now
    with _lock:
        data = {"pid": os.getpid(), "tasks": _tasks, "counts": dict(_counts)}
    path = COUNT_DIR / f"counts-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


@task_postrun.connect
def _after_task(**_: Any) -> None:
    global _tasks
    with _lock:
        _tasks += 1
    dump()


@worker_process_init.connect
def _in_pool_child(**_: Any) -> None:
    global _tasks
    with _lock:  # a forked child starts from the parent's tallies: not its own work
        _counts.clear()
        _tasks = 0
    _mark_bookkeeping_client()


@worker_process_shutdown.connect
@worker_shutdown_signal.connect
def _on_shutdown(**_: Any) -> None:
    dump(force=True)


redis.connection.AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]
_mark_bookkeeping_client()
