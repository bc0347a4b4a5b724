"""The worker side of snackvideo-dispatch: ``celery -A worker worker|beat|flower``.

Each concept has a package of its own, its Lua scripts beside it:

    celery_app.py  the Celery app: configuration, beat schedule, bootsteps
    tasks.py       the tasks, thin adapters: deliver, redrive
    delivery/      one job to its outcome: the dispatcher and the Scalev client
    throttle/      the shared rate-limit budget
    deadletter/    the dead-letter queue: store, unreadable messages, redrive, reasons
    delayed/       retries and long waits parked in Redis, and their mover
    metrics/       Prometheus metrics: recording, multiprocess files, collectors, server
    celery_ext/    what touches Celery's and kombu's internals: transport, ownership,
                   poison guards, log filters
    cli/           the ``snackvideo`` command
    settings.py, keys.py, errors.py, clock.py, clock_skew.py, connections.py,
    lua_scripts.py, escaping.py, bounded_json.py, cluster_state.py: what they all share

``worker.app`` is the Celery app, built on first use: Celery's ``-A worker`` reads it, and
importing any module of the package (the ``snackvideo`` CLI, the dispatcher) does not
start Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # `celery -A worker` looks up `worker.app` (then `worker.celery`); so does
    # `from worker import app`. Building it imports Celery and reads the settings (a bad
    # one ends the process: one line, exit 2).
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
