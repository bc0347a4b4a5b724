"""Fault: Redis (AOF on) restarts while jobs wait in the queue and in the delayed set and
deliveries run.

What has to hold: the worker reconnects by itself; every job is delivered or
dead-lettered; a delivery whose acknowledgement was lost with the connection comes back
after the visibility timeout and is not sent again, because its delivered-marker made it
to Redis (duplicates only where the marker itself was lost: the jobs in flight).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer, Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import (
    FAULT_ENV,
    SETTLE_SECONDS,
    Ledger,
    marker_stopped,
    report,
    unacked_job_ids,
)
from worker.keys import SCHEDULED

pytestmark = pytest.mark.integration

JOBS = 200
CONCURRENCY = 2
PREFETCH_MULTIPLIER = 1  # worker.app's setting
DOWN_SECONDS = 2.0


def test_redis_restart_mid_run_loses_nothing(
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
        **FAULT_ENV,
        SNACKVIDEO_RETRY_BASE_SECONDS="2",
        SNACKVIDEO_RETRY_MAX_SECONDS="3",
    )
    worker = start_worker(env, concurrency=CONCURRENCY)
    ledger.offer("restart", JOBS)
    ledger.wait_delivered(20)
    wait_until(lambda: client.zcard(SCHEDULED) > 0, 30, what="jobs parked in the delayed set")

    queued_at_fault = int(client.llen("snackvideo"))
    parked_at_fault = int(client.zcard(SCHEDULED))
    in_flight = unacked_job_ids(client)
    delivered_at_fault = ledger.summary().delivered
    client.close()
    server.stop()  # SIGTERM: Redis writes the AOF out and exits, as on a planned restart
    time.sleep(DOWN_SECONDS)
    server.start()
    back_up = time.monotonic()

    # The worker reconnects on its own: deliveries resume with no one touching it.
    ledger.wait_delivered(delivered_at_fault + 1, timeout=60)
    resumed_s = time.monotonic() - back_up
    # The jobs running at the fault could not be acked (or requeued) without Redis: they
    # wait in kombu's unacked hash, which the AOF kept, for the visibility timeout.
    wait_until(
        lambda: not in_flight & set(ledger.unaccounted()),
        SETTLE_SECONDS,
        interval=0.1,
        what="the jobs in flight at the restart to be delivered",
    )
    recovery_s = time.monotonic() - back_up
    ledger.wait_all_accounted(SETTLE_SECONDS)
    summary = ledger.summary()
    line = summary.line(
        "redis_restart",
        recovery_s,
        resumed_s=f"{resumed_s:.1f}",
        down_s=f"{DOWN_SECONDS:.0f}",
        queued_at_fault=queued_at_fault,
        parked_at_fault=parked_at_fault,
        in_flight_at_fault=len(in_flight),
        marker_stopped=marker_stopped(worker.log()),
    )
    report(line, tmp_path, capsys)

    assert not summary.unaccounted
    assert summary.delivered + summary.dead_lettered == JOBS
    assert summary.dead_lettered == 0  # one 503 per click is far below max attempts
    assert len(in_flight) <= CONCURRENCY * PREFETCH_MULTIPLIER
    assert summary.duplicated <= CONCURRENCY * PREFETCH_MULTIPLIER, summary.duplicated_clicks
    assert worker.process.poll() is None, worker.log()
    assert "Unrecoverable error" not in worker.log()
