"""Prometheus metrics of the worker, correct under Celery's prefork pool.

Why multiprocess mode. prometheus_client keeps a value in the memory of the process that
changed it, and a prefork worker delivers in several child processes: a /metrics served
by any one of them would show a fraction of what happened. In multiprocess mode every
process writes its values to small mmapped files in ``PROMETHEUS_MULTIPROC_DIR`` and one
collector in the worker's main process adds them up. The wiring:

- ``prepare_multiprocess`` runs on ``worker_init`` in the main process, before the pool
  forks: it picks the directory (``PROMETHEUS_MULTIPROC_DIR`` if the operator set one,
  else one per worker node name under the temp dir), deletes the files of an earlier run
  (their counts belong to that run) and exports the variable so every child inherits it.
- Metric objects are built lazily, on first use, so a child builds them after the fork
  with multiprocess values (``counter_<pid>.db``, ``histogram_<pid>.db``).
- ``retire_process`` runs on ``worker_process_shutdown`` in the child that exits (a pool
  recycled by ``--max-tasks-per-child`` / ``--max-memory-per-child``, or shutdown): it
  folds the child's counters and histograms into ``*_archive.db`` and deletes its files,
  so totals stay exact while the directory does not grow by two files per dead child.
  A child killed by SIGKILL never runs it; each scrape folds the files of pids that are
  gone. Folding and scraping hold one file lock, so no scrape counts a child twice.
- ``MetricsServerStep`` serves ``/metrics`` on ``SNACKVIDEO_METRICS_ADDRESS`` (loopback
  unless set) and ``SNACKVIDEO_METRICS_PORT`` from the main process once the pool is up
  (port 0 disables metrics); a child never binds the port.

Live state (queue depth, scheduled retries, dead-letter depth, rate-limit remaining,
events enqueued) is read from Redis at scrape time by ``RedisStateCollector``, not kept in
per-process gauges that would go stale. It is cluster-wide: every worker exports the same
numbers, so aggregate them with ``max`` across instances, never ``sum``.
``snackvideo_clock_skew_seconds`` is the exception: this worker host's clock minus the
Redis server's, as its main process last measured it (``worker.skew``).
``snackvideo_events_enqueued_total`` is a Redis counter the producers' enqueue Lua
increments in the same atomic call that pushes the jobs (``producers.keys
.ENQUEUED_COUNTER``): one number for every backend, with no HTTP port in the backends.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from celery import bootsteps
from celery.signals import worker_init, worker_process_shutdown
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from worker.skew import current_skew_seconds

log = logging.getLogger("snackvideo.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE = ".snackvideo.lock"  # not *.db: the collector's glob must not read it

# Files of one process: counter_<pid>.db, histogram_<pid>.db (gauges are never per-process
# here, see the module docstring).
_PROCESS_FILE = re.compile(r"^(counter|histogram|summary)_(\d+)\.db$")

HTTP_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
EVENT_AGE_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0,
    86_400.0, 259_200.0,
)  # fmt: skip
THROTTLE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The metric objects a delivering process changes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.deliveries = Counter(
            "snackvideo_deliveries",
            "Task runs by how they ended (outcome) and the last HTTP status (or none).",
            ["outcome", "status"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "snackvideo_dead_letters",
            "Jobs put in the dead-letter queue, by reason.",
            ["reason"],
            registry=registry,
        )
        self.redelivered_deliveries = Counter(
            "snackvideo_redelivered_deliveries",
            "Deliveries (2xx) of a message kombu had restored (lost ack, dead worker): the "
            "only ones that can be a job's second delivery.",
            registry=registry,
        )
        self.rate_limited = Counter(
            "snackvideo_rate_limited_responses",
            "429 answers from Scalev (each one, including those retried within a run).",
            registry=registry,
        )
        self.redirects_refused = Counter(
            "snackvideo_redirects_refused",
            "3xx answers from Scalev, never followed (the job is dead-lettered), by status.",
            ["status"],
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "snackvideo_delivery_seconds",
            "Duration of each HTTP request to Scalev, any answer, timeouts included.",
            buckets=HTTP_SECONDS_BUCKETS,
            registry=registry,
        )
        self.event_age_seconds = Histogram(
            "snackvideo_event_age_seconds",
            "From enqueue to delivered (2xx), per delivered job.",
            buckets=EVENT_AGE_BUCKETS,
            registry=registry,
        )
        self.throttle_wait_seconds = Histogram(
            "snackvideo_throttle_wait_seconds",
            "Each wait the rate-limit throttle imposed: short sleeps and parked jobs.",
            buckets=THROTTLE_WAIT_BUCKETS,
            registry=registry,
        )


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()
_directory: Path | None = None  # set in the main process by prepare_multiprocess; inherited
_failing = False


def get_metrics() -> Metrics:
    """This process's metric objects, built on first use (after the fork in a child)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            # A private registry: in multiprocess mode /metrics reads the files instead, and
            # a rebuilt set (see prepare_multiprocess) must not collide with the first one.
            _metrics = Metrics(CollectorRegistry())
        return _metrics


def _safely(record: Callable[[Metrics], None]) -> None:
    """Metrics never fail a delivery: a full disk under the metrics dir is logged once."""
    global _failing
    try:
        record(get_metrics())
    except Exception as exc:  # whatever broke, the job's fate stands
        if not _failing:
            log.warning("cannot record metrics: %s", exc)
            _failing = True


# -- what the dispatcher records -----------------------------------------------------------


def record_outcome(
    outcome: str,
    status_code: int | None,
    *,
    reason: str | None = None,
    age_seconds: float | None = None,
) -> None:
    """One task run ended: ``delivered``, ``retried``, ``dead_lettered``, ``throttled``..."""

    def record(m: Metrics) -> None:
        m.deliveries.labels(outcome, str(status_code) if status_code is not None else "none").inc()
        if outcome == "dead_lettered":
            m.dead_letters.labels(reason or "unknown").inc()
        if outcome == "delivered" and age_seconds is not None:
            m.event_age_seconds.observe(max(0.0, age_seconds))

    _safely(record)


def record_redelivered_delivery() -> None:
    _safely(lambda m: m.redelivered_deliveries.inc())


def record_rate_limited() -> None:
    _safely(lambda m: m.rate_limited.inc())


def record_redirect_refused(status_code: int) -> None:
    _safely(lambda m: m.redirects_refused.labels(str(status_code)).inc())


def observe_http_seconds(seconds: float) -> None:
    _safely(lambda m: m.delivery_seconds.observe(seconds))


def observe_throttle_wait(seconds: float) -> None:
    if seconds > 0:
        _safely(lambda m: m.throttle_wait_seconds.observe(seconds))


# -- multiprocess wiring --------------------------------------------------------------------


def default_directory(node_name: str) -> Path:
    """One directory per worker node: two workers on one host must never share one."""
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", node_name)
    return Path(tempfile.gettempdir()) / f"snackvideo-metrics-{safe}"


def prepare_multiprocess(directory: Path) -> Path:
    """Main process, before the pool forks: a clean directory every child inherits."""
    global _directory, _metrics
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
    with _metrics_lock:
        _metrics = None  # built before this with in-memory values? build them again
    _directory = directory
    return directory


def use_in_memory_values() -> None:
    """Back to prometheus_client's per-process values (metrics off)."""
    global _metrics
    values.ValueClass = values.MutexValue
    with _metrics_lock:
        _metrics = None


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


class RedisStateCollector:
    """Live, cluster-wide state read from Redis at every scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        from worker.status import collect as collect_state  # status imports the app

        up = GaugeMetricFamily("snackvideo_redis_up", "1 when this scrape could read Redis.")
        try:
            state = collect_state(self.client, workers=False)
        except redis.RedisError as exc:
            log.warning("metrics scrape cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from state_metrics(state)


def state_metrics(state: dict[str, Any]) -> Iterator[Metric]:
    """The gauges and Redis-kept counters for one ``worker.status.collect()`` result."""
    yield CounterMetricFamily(
        "snackvideo_events_enqueued",
        "Jobs pushed by producers' enqueue (idempotent repeats excluded); cluster-wide.",
        value=state.get("enqueued_total", 0),
    )
    yield GaugeMetricFamily(
        "snackvideo_queue_depth",
        "Messages waiting in the delivery queue (not yet taken by a worker).",
        value=state["queue_depth"],
    )
    yield GaugeMetricFamily(
        "snackvideo_scheduled_jobs",
        "Jobs parked until a due time: retry backoffs and long throttle waits.",
        value=state["scheduled"],
    )
    depth = GaugeMetricFamily(
        "snackvideo_dead_letter_depth",
        "Entries in the dead-letter queue now, by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(state["dead_letters_by_reason"].items()):
        depth.add_metric([reason], count)
    yield depth
    trimmed = CounterMetricFamily(
        "snackvideo_dead_letters_trimmed",
        "Dead-letter entries removed by retention (count or age bound), by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(state.get("dead_letters_trimmed_by_reason", {}).items()):
        trimmed.add_metric([reason], count)
    yield trimmed
    yield from throttle_metrics(state.get("throttle") or {})


#: Throttle state fields exported per scope: (field in worker.throttle's status, metric, help).
THROTTLE_GAUGES = (
    (
        "remaining",
        "snackvideo_rate_limit_remaining",
        "Requests left in the current rate-limit window, as Scalev last said, per scope.",
    ),
    (
        "limit",
        "snackvideo_rate_limit_limit",
        "Requests allowed per rate-limit window (X-Ratelimit-Limit), per scope.",
    ),
    (
        "in_flight",
        "snackvideo_rate_limit_in_flight",
        "Requests sent and not yet answered, counted against the budget, per scope.",
    ),
)


def throttle_metrics(throttle: dict[str, Any]) -> Iterator[Metric]:
    """Gauges from ``{scope: {"remaining": .., "limit": .., "in_flight": ..}}``."""
    for field, name, documentation in THROTTLE_GAUGES:
        gauge = GaugeMetricFamily(name, documentation, labels=["scope"])
        for scope, info in sorted(throttle.items()):
            value = info.get(field) if isinstance(info, dict) else None
            # None: not learned yet (no rate-limit header seen in this window).
            if isinstance(value, int | float) and not isinstance(value, bool):
                gauge.add_metric([str(scope)], float(value))
        yield gauge


class ClockSkewCollector:
    """This host's clock minus the Redis server's, as the main process last measured it
    (``worker.skew``): one value per worker, unlike the cluster-wide Redis state."""

    def __init__(self, skew_seconds: Callable[[], float | None]) -> None:
        self.skew_seconds = skew_seconds

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "snackvideo_clock_skew_seconds",
            "This worker host's clock minus the Redis server's (TIME), signed; measured at "
            "start and every minute. Due times use Redis TIME; kombu's visibility timeout "
            "and Celery beat read the local clock.",
        )
        skew = self.skew_seconds()
        if skew is not None:  # None: not measured yet (Redis away since the start)
            gauge.add_metric([], skew)
        yield gauge


def build_registry(directory: Path, client: redis.Redis) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FoldingMultiProcessCollector(directory))
    registry.register(RedisStateCollector(client))
    registry.register(ClockSkewCollector(current_skew_seconds))
    return registry


# -- Celery hooks ---------------------------------------------------------------------------


def _metrics_port() -> int:
    from worker.settings import get_settings

    return get_settings().metrics_port


@worker_init.connect
def _prepare_before_fork(sender: Any = None, **_: Any) -> None:
    if _metrics_port() == 0:
        # Nothing serves the files, so write none, even if PROMETHEUS_MULTIPROC_DIR is set
        # (prometheus_client would otherwise go multiprocess on the variable alone).
        use_in_memory_values()
        return
    configured = os.environ.get(MULTIPROC_ENV)
    node_name = str(getattr(sender, "hostname", None) or f"pid{os.getpid()}")
    directory = Path(configured) if configured else default_directory(node_name)
    prepare_multiprocess(directory)
    log.info("metrics: multiprocess files in %s", directory)


@worker_process_shutdown.connect
def _retire_child(pid: int | None = None, **_: Any) -> None:
    retire_process(pid if pid is not None else os.getpid())


def _metrics_address() -> str:
    from worker.settings import get_settings

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
        if port == 0 or _directory is None:
            return
        from worker.connections import redis_client

        address = _metrics_address()
        try:
            self.server, _thread = start_http_server(
                port, address, registry=build_registry(_directory, redis_client())
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
