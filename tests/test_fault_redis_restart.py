"""Fault: Redis (AOF on) restarts while jobs wait in the queue and in the delayed set and
deliveries run.

What has to hold: the worker reconnects by itself; every job is delivered or
dead-lettered, and within seconds of Redis returning, not a visibility timeout later.
The jobs the worker held when the connection dropped (running, or prefetched) could not
be acked or requeued without Redis and stay in kombu's ``unacked`` hash; the reconnect
opens a new consuming channel, which retires the old consumer incarnation, and the first
sweep of the new one puts its messages back at once (``worker.celery_ext.ownership``). The
visibility timeout is kept at its production length (120 s), so nothing else can explain a
fast recovery. A delivery whose acknowledgement was lost comes back and is not sent again when
its delivered-marker made it to Redis (duplicates only where the marker itself was lost:
the jobs in flight).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer, Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import (
    RECOVERY_BOUND_SECONDS,
    RECOVERY_ENV,
    SETTLE_SECONDS,
    Ledger,
    marker_stopped,
    report,
    unacked_job_ids,
)
from tests.queue_helpers import wait_idle
from worker.keys import DELIVERY_QUEUE, SCHEDULED, UNACKED, delivered_key

pytestmark = pytest.mark.integration

JOBS = 300
DOWN_AT = 31  # deliveries
CONCURRENCY = 4
PREFETCH_MULTIPLIER = 1  # worker.celery_app's setting
DOWN_SECONDS = 2.0
VISIBILITY_TIMEOUT_SECONDS = float(RECOVERY_ENV["SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS"])


def test_redis_restart_mid_run_recovers_in_seconds(
    own_redis: Callable[..., RedisServer],
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = own_redis(appendonly=True)
    client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    # Every click's first attempt gets a 503, so each job also spends a couple of seconds
    # parked in the delayed set: the restart finds jobs waiting in both places.
    sandbox = start_sandbox("--latency-ms", "20", "--fail-first", "1")
    ledger = Ledger(server.url, sandbox)
    env = worker_env(
        server.url,
        sandbox.base_url,
        **RECOVERY_ENV,
        SNACKVIDEO_RETRY_BASE_SECONDS="2",
        SNACKVIDEO_RETRY_MAX_SECONDS="3",
        # No rate-limit headers from this sandbox: do not let the default 10/s pace (and
        # park) the jobs, or the figures would measure the throttle, not the recovery.
        SNACKVIDEO_DEFAULT_RATE="1000",
    )
    worker = start_worker(env, concurrency=CONCURRENCY)
    ledger.offer("restart", JOBS)
    ledger.wait_delivered(DOWN_AT)
    wait_until(lambda: client.zcard(SCHEDULED) > 0, 30, what="jobs parked in the delayed set")

    queued_at_fault = int(client.llen(DELIVERY_QUEUE))
    parked_at_fault = int(client.zcard(SCHEDULED))
    in_flight = unacked_job_ids(client)
    delivered_at_fault = ledger.summary().delivered
    client.close()
    server.stop()  # SIGTERM: Redis writes the AOF out and exits, as on a planned restart
    time.sleep(DOWN_SECONDS)
    server.start()
    back_up = time.time()
    client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)

    # The worker reconnects on its own: deliveries resume with no one touching it.
    ledger.wait_delivered(delivered_at_fault + 1, timeout=60)
    resumed_s = time.time() - back_up
    # Done: every job marked delivered by a worker, nothing queued, parked or in flight.
    wait_until(
        lambda: all_marked(client, ledger) and idle(client),
        VISIBILITY_TIMEOUT_SECONDS,  # failing here means only the backstop brought them
        interval=0.1,
        what="every job delivered and nothing left in flight",
    )
    recovery_s = time.time() - back_up
    ledger.wait_all_accounted(SETTLE_SECONDS)
    wait_idle(client, SETTLE_SECONDS)
    events = [e for e in sandbox.events() if e["click_id"] in set(ledger.offered.values())]
    last_delivery_s = max(e["received_at"] for e in events) - back_up
    summary = ledger.summary()
    line = summary.line(
        "redis_restart",
        recovery_s,
        resumed_s=f"{resumed_s:.1f}",
        last_delivery_s=f"{last_delivery_s:.1f}",
        down_s=f"{DOWN_SECONDS:.0f}",
        concurrency=CONCURRENCY,
        queued_at_fault=queued_at_fault,
        parked_at_fault=parked_at_fault,
        in_flight_at_fault=len(in_flight),
        marker_stopped=marker_stopped(worker.log()),
        visibility_timeout_s=f"{VISIBILITY_TIMEOUT_SECONDS:.0f}",
    )
    report(line, tmp_path, capsys)
    client.close()

    assert not summary.unaccounted
    assert summary.delivered + summary.dead_lettered == JOBS
    assert summary.dead_lettered == 0  # one 503 per click is far below max attempts
    assert len(in_flight) <= CONCURRENCY * PREFETCH_MULTIPLIER
    assert summary.duplicated <= CONCURRENCY * PREFETCH_MULTIPLIER, summary.duplicated_clicks
    # Back within seconds of Redis, not after the 120 s visibility timeout.
    assert recovery_s < RECOVERY_BOUND_SECONDS, line
    assert worker.process.poll() is None, worker.log()
    assert "Unrecoverable error" not in worker.log()


def all_marked(client: redis.Redis, ledger: Ledger) -> bool:
    try:
        with client.pipeline(transaction=False) as pipe:
            for job_id in ledger.offered:
                pipe.exists(delivered_key(job_id))
            return all(pipe.execute())
    except redis.RedisError:
        return False


def idle(client: redis.Redis) -> bool:
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(DELIVERY_QUEUE)
            pipe.hlen(UNACKED)
            pipe.zcard(SCHEDULED)
            return not any(pipe.execute())
    except redis.RedisError:
        return False
