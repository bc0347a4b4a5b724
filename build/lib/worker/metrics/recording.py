"""What a delivering process records: the metric objects and one function per event.

A leaf: it imports nothing of this project, so any module may record without pulling in
the collectors, the server or Celery. Metric objects are built lazily, on first use, so a
pool child builds them after the fork with the values ``multiprocess`` set up (files per
process), and recording never fails a delivery (a full disk is logged once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("snackvideo.metrics")

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
_failing = False


def get_metrics() -> Metrics:
    """This process's metric objects, built on first use (after the fork in a child)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            # A private registry: in multiprocess mode /metrics reads the files instead, and
            # a rebuilt set (see forget_metrics) must not collide with the first one.
            _metrics = Metrics(CollectorRegistry())
        return _metrics


def forget_metrics() -> None:
    """Build the metric objects again at their next use: prometheus_client's value class
    changed (``multiprocess``), and objects built before read the old one."""
    global _metrics
    with _metrics_lock:
        _metrics = None


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
