"""The Celery side of metrics: the signal handlers of multiprocess mode, and the bootstep
that serves /metrics on ``SNACKVIDEO_METRICS_ADDRESS`` (loopback unless set) and
``SNACKVIDEO_METRICS_PORT`` from the worker's main process once the pool is up (port 0
disables metrics); a child never binds the port.

Importing this module connects ``worker_init`` (multiprocess files, before the pool forks)
and ``worker_process_shutdown`` (an exiting child folds its files): ``worker.celery_app``
imports it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.signals import worker_init, worker_process_shutdown
from prometheus_client import start_http_server

from worker.connections import redis_client
from worker.metrics import multiprocess
from worker.metrics.collectors import build_registry
from worker.settings import get_settings

log = logging.getLogger("snackvideo.metrics")


def _metrics_port() -> int:
    return get_settings().metrics_port


@worker_init.connect
def _prepare_before_fork(sender: Any = None, **_: Any) -> None:
    if _metrics_port() == 0:
        # Nothing serves the files, so write none, even if PROMETHEUS_MULTIPROC_DIR is set
        # (prometheus_client would otherwise go multiprocess on the variable alone).
        multiprocess.use_in_memory_values()
        return
    configured = os.environ.get(multiprocess.MULTIPROC_ENV)
    node_name = str(getattr(sender, "hostname", None) or f"pid{os.getpid()}")
    directory = Path(configured) if configured else multiprocess.default_directory(node_name)
    multiprocess.prepare_multiprocess(directory)
    log.info("metrics: multiprocess files in %s", directory)


@worker_process_shutdown.connect
def _retire_child(pid: int | None = None, **_: Any) -> None:
    multiprocess.retire_process(pid if pid is not None else os.getpid())


def _metrics_address() -> str:
    return get_settings().metrics_address


def _host_port(address: str, port: int) -> str:
    """``127.0.0.1:9808``, ``[::1]:9808``: what an operator pastes into a URL."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class MetricsServerStep(bootsteps.StartStopStep):
    """Serves /metrics from the worker's main process, once the pool's children exist."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: Any = None

    def start(self, parent: Any) -> None:
        port = _metrics_port()
        directory = multiprocess.current_directory()
        if port == 0 or directory is None:
            return
        address = _metrics_address()
        try:
            self.server, _thread = start_http_server(
                port, address, registry=build_registry(directory, redis_client())
            )
        except OSError as exc:  # in use, an address not on this host, a name that won't resolve
            # Delivering events matters more than exposing numbers about it: keep working;
            # Prometheus shows this target down, which is what the operator must notice.
            log.error("metrics: cannot serve on port %s of %s: %s", port, address, exc)
            return
        log.info("metrics: serving /metrics on %s", _host_port(address, port))

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
