"""Faults at enqueue time: Redis is down, and Redis is full.

What has to hold: ``enqueue`` retries within its bound, then raises ``EnqueueError``;
a call that returned a job id has the job in Redis, and a call that raised has stored
nothing (not even its idempotency key), so the backend's "retry later with the same
idempotency key" enqueues each event once. A full Redis (``noeviction``) makes enqueue
raise; it never evicts a queued job, and a worker running against it loses none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers.enqueue import Producer
from producers.errors import EnqueueError
from producers.keys import DELIVERY_QUEUE, idempotency_key
from tests.conftest import STORE, RedisServer, Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import (
    FAULT_ENV,
    SETTLE_SECONDS,
    Ledger,
    event,
    marker_stopped,
    report,
)
from worker.keys import UNACKED

pytestmark = pytest.mark.integration

CONCURRENCY = 2
PREFETCH_MULTIPLIER = 1  # worker.celery_app's setting
ENQUEUE_BOUND_SECONDS = 1.0
REFUSED_CALLS = 10


def try_enqueue(producer: Producer, click_id: str) -> tuple[str | None, float, Exception | None]:
    started = time.monotonic()
    try:
        job_id = producer.enqueue(STORE, event(click_id), idempotency_key=click_id)
    except EnqueueError as exc:
        return None, time.monotonic() - started, exc
    return job_id, time.monotonic() - started, None


def test_enqueue_while_redis_is_down_raises_stores_nothing_and_a_retry_later_enqueues_once(
    own_redis: Callable[..., RedisServer],
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = own_redis(appendonly=True)
    sandbox = start_sandbox()
    ledger = Ledger(server.url, sandbox)
    ledger.offer("before", 20)
    server.stop()

    # Down for good: every call gives up after its bound and says so.
    quick = Producer(server.url, timeout_seconds=ENQUEUE_BOUND_SECONDS)
    refused = [try_enqueue(quick, f"down-{i:02d}") for i in range(REFUSED_CALLS)]
    assert all(job_id is None and isinstance(exc, EnqueueError) for job_id, _, exc in refused)
    raise_after_s = max(seconds for _, seconds, _ in refused)

    # Down for a moment: the call that is retrying when Redis comes back succeeds.
    patient = Producer(server.url, timeout_seconds=30)
    came_back: list[float] = []

    def restart_later() -> None:
        time.sleep(1.0)
        server.start()
        came_back.append(time.monotonic())

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    bridged_id, _, exc = try_enqueue(patient, "bridged")
    returned = time.monotonic()
    restarter.join()
    assert exc is None and bridged_id is not None
    recovery_s = returned - came_back[0]
    ledger.offered[bridged_id] = "bridged"

    client = redis.Redis.from_url(server.url)
    # A call that raised stored nothing, not even the idempotency key it would claim.
    assert client.llen(DELIVERY_QUEUE) == 20 + 1
    for i in range(REFUSED_CALLS):
        assert not client.exists(idempotency_key(STORE, f"down-{i:02d}"))

    # The backend's pattern: retry later with the same idempotency keys. A second retry
    # of the same event returns the first job id and enqueues nothing.
    for i in range(REFUSED_CALLS):
        click = f"down-{i:02d}"
        job_id = patient.enqueue(STORE, event(click), idempotency_key=click)
        assert patient.enqueue(STORE, event(click), idempotency_key=click) == job_id
        ledger.offered[job_id] = click
    assert client.llen(DELIVERY_QUEUE) == 20 + 1 + REFUSED_CALLS
    client.close()

    start_worker(worker_env(server.url, sandbox.base_url, **FAULT_ENV), concurrency=CONCURRENCY)
    ledger.wait_all_accounted(SETTLE_SECONDS)
    summary = ledger.summary()
    line = summary.line(
        "redis_down_at_enqueue",
        recovery_s,
        refused_calls=REFUSED_CALLS,
        raise_after_s=f"{raise_after_s:.1f}",
        bound_s=f"{ENQUEUE_BOUND_SECONDS:g}",
    )
    report(line, tmp_path, capsys)

    assert not summary.unaccounted
    assert summary.offered == 20 + 1 + REFUSED_CALLS
    assert summary.delivered == summary.offered
    assert summary.duplicated == 0, summary.duplicated_clicks


def test_a_full_redis_makes_enqueue_raise_and_the_running_worker_loses_nothing(
    own_redis: Callable[..., RedisServer],
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = own_redis(appendonly=True)  # maxmemory-policy noeviction, as in production
    sandbox = start_sandbox("--latency-ms", "50")
    ledger = Ledger(server.url, sandbox)
    worker = start_worker(
        worker_env(server.url, sandbox.base_url, **FAULT_ENV), concurrency=CONCURRENCY
    )
    ledger.offer("full", 150)
    ledger.wait_delivered(20)

    client = redis.Redis.from_url(server.url)
    client.set("test:filler", "x" * 3_000_000)
    client.config_set("maxmemory", "1mb")  # now over the limit: every write is refused
    queued_when_full = int(client.llen(DELIVERY_QUEUE))

    quick = Producer(server.url, timeout_seconds=ENQUEUE_BOUND_SECONDS)
    refused = [try_enqueue(quick, f"oom-{i:02d}") for i in range(5)]
    for job_id, _, exc in refused:
        assert job_id is None and isinstance(exc, EnqueueError)
        assert "maxmemory" in str(exc)
    # The worker meets the full Redis too: it pauses instead of dying with a popped job.
    wait_until(
        lambda: "Redis refused" in worker.log() or "maxmemory" in worker.log(),
        30,
        what="the worker to run into the full Redis",
    )
    time.sleep(2)
    assert worker.process.poll() is None, worker.log()
    # noeviction: every job that was queued is still there (none evicted), plus at most
    # the few the worker took (they are in kombu's unacked hash, or held and returned).
    assert int(client.llen(DELIVERY_QUEUE)) + int(client.hlen(UNACKED)) >= queued_when_full - 1

    client.config_set("maxmemory", "0")
    client.delete("test:filler")
    freed = time.monotonic()
    for i in range(5):  # retry later, same keys: nothing was claimed while full
        click = f"oom-{i:02d}"
        ledger.offered[quick.enqueue(STORE, event(click), idempotency_key=click)] = click
    client.close()

    delivered_when_freed = ledger.summary().delivered
    ledger.wait_delivered(delivered_when_freed + 1, timeout=60)
    resumed_s = time.monotonic() - freed
    ledger.wait_all_accounted(SETTLE_SECONDS)
    recovery_s = time.monotonic() - freed
    summary = ledger.summary()
    line = summary.line(
        "redis_full",
        recovery_s,
        resumed_s=f"{resumed_s:.1f}",
        refused_calls=len(refused),
        queued_when_full=queued_when_full,
        marker_stopped=marker_stopped(worker.log()),
    )
    report(line, tmp_path, capsys)

    assert not summary.unaccounted
    assert summary.offered == 150 + 5
    assert summary.delivered + summary.dead_lettered == summary.offered
    # A duplicate needs a POST whose delivered-marker Redis refused: only jobs in flight.
    assert summary.duplicated <= CONCURRENCY * PREFETCH_MULTIPLIER, summary.duplicated_clicks
    log = worker.log()
    assert worker.process.poll() is None, log
    assert "Unrecoverable error" not in log
