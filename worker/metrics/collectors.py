"""What /metrics serves: the process files folded, the live state read from Redis, and
this host's clock skew.

Live state (queue depth, scheduled retries, dead-letter depth, rate-limit remaining,
events enqueued) is read from Redis at scrape time by ``RedisStateCollector``, not kept in
per-process gauges that would go stale: the same read as ``snackvideo status``
(``worker.cluster_state``), so the CLI and the gauges can never disagree. It is
cluster-wide: every worker exports the same numbers, so aggregate them with ``max`` across
instances, never ``sum``. ``snackvideo_clock_skew_seconds`` is the exception: this worker
host's clock minus the Redis server's, as its main process last measured it
(``worker.clock_skew``). ``snackvideo_events_enqueued_total`` is a Redis counter the
producers' enqueue Lua increments in the same atomic call that pushes the jobs
(``producers.keys.ENQUEUED_COUNTER``): one number for every backend, with no HTTP port in
the backends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from worker.clock_skew import current_skew_seconds
from worker.cluster_state import read_cluster_state
from worker.metrics.multiprocess import FoldingMultiProcessCollector

log = logging.getLogger("snackvideo.metrics")


class RedisStateCollector:
    """Live, cluster-wide state read from Redis at every scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("snackvideo_redis_up", "1 when this scrape could read Redis.")
        try:
            state = read_cluster_state(self.client)
        except redis.RedisError as exc:
            log.warning("metrics scrape cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from state_metrics(state)


def state_metrics(state: dict[str, Any]) -> Iterator[Metric]:
    """The gauges and Redis-kept counters for one ``read_cluster_state()`` result."""
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
    if "redis" in state:
        yield from redis_role_metrics(state["redis"])


def redis_role_metrics(redis_state: dict[str, Any]) -> Iterator[Metric]:
    """The server this worker reads, its role, and its replicas (``worker.redis_role``)."""
    info = GaugeMetricFamily(
        "snackvideo_redis_info",
        "Always 1: the Redis server this worker uses (address), its replication role "
        "(master, replica, unknown when INFO is refused) and, on a replica, its master.",
        labels=["address", "role", "master_address"],
    )
    info.add_metric(
        [redis_state["address"], redis_state["role"], redis_state.get("master_address") or ""],
        1,
    )
    yield info
    replicas = GaugeMetricFamily(
        "snackvideo_redis_connected_replicas",
        "Replicas connected to the Redis master this worker uses (absent on a replica).",
    )
    if redis_state.get("connected_replicas") is not None:
        replicas.add_metric([], redis_state["connected_replicas"])
    yield replicas


#: Throttle state fields exported per scope: (field of worker.throttle.state, metric, help).
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
    (``worker.clock_skew``): one value per worker, unlike the cluster-wide Redis state."""

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
