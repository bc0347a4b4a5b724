"""Fault: the worker's whole process group is SIGKILLed mid-run, then started again.

What has to hold: every job is delivered or dead-lettered after the restart, and the jobs
the dead worker held are delivered within seconds of the kill, not a visibility timeout
later. They stay in kombu's ``unacked`` hash, recorded as taken by the dead worker's
consumer incarnation; its heartbeat stops, and once it is older than
``SNACKVIDEO_CONSUMER_DEAD_AFTER_SECONDS`` the next sweep of any worker (here the
restarted one) puts them back (``worker.celery_ext.ownership``). The visibility timeout is kept at
its production length (120 s), so nothing else can explain a fast recovery. A job can be
delivered twice only if it was in flight at the kill (its POST reached Scalev, its
delivered-marker did not reach Redis), so duplicates are bounded by the jobs held then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import (
    RECOVERY_BOUND_SECONDS,
    RECOVERY_ENV,
    SETTLE_SECONDS,
    Ledger,
    marker_stopped,
    report,
    unacked_job_ids,
)
from tests.queue_helpers import queued, wait_idle
from worker.keys import CONSUMERS, UNACKED, delivered_key

pytestmark = pytest.mark.integration

JOBS = 400
KILL_AT = 60  # deliveries
CONCURRENCY = 8
PREFETCH_MULTIPLIER = 1  # worker.celery_app's setting
RESTART_AFTER_SECONDS = 1.0
VISIBILITY_TIMEOUT_SECONDS = float(RECOVERY_ENV["SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS"])


def settled(client: redis.Redis, job_ids: set[str]) -> bool:
    """Each job marked delivered by a worker, and none in kombu's unacked hash or queued."""
    if not all(client.exists(delivered_key(job_id)) for job_id in job_ids):
        return False
    in_queue = {message.headers["id"] for message in queued(client)}
    return not (unacked_job_ids(client) | in_queue) & job_ids


def test_sigkill_mid_run_recovers_in_seconds_and_duplicates_only_jobs_in_flight(
    redis_url: str,
    redis_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 40 ms inside the sandbox after it recorded the event: a kill there is a delivery
    # Scalev has and the worker never heard of, the case that makes a duplicate.
    sandbox = start_sandbox("--latency-ms", "40")
    ledger = Ledger(redis_url, sandbox)
    # The sandbox sends no rate-limit headers here: without a high default rate the
    # throttle would pace 8 processes at 10/s and park jobs at the back of the queue,
    # and the last delivery would measure that instead of the recovery.
    env = worker_env(redis_url, sandbox.base_url, **RECOVERY_ENV, SNACKVIDEO_DEFAULT_RATE="1000")
    worker = start_worker(env, concurrency=CONCURRENCY)
    ledger.offer("kill", JOBS)
    ledger.wait_delivered(KILL_AT)
    wait_until(lambda: redis_client.hlen(UNACKED) >= 2, 30, what="jobs in flight")

    worker.kill()  # SIGKILL to the process group: main process and pool children at once
    killed_at = time.time()
    stranded = unacked_job_ids(redis_client)
    assert stranded, "the kill should have caught jobs in flight"
    assert len(stranded) <= CONCURRENCY * PREFETCH_MULTIPLIER
    dead_consumers = [m.decode() for m in redis_client.zrange(CONSUMERS, 0, -1)]
    assert len(dead_consumers) == 1, dead_consumers  # the killed worker's one incarnation
    delivered_at_kill = ledger.summary().delivered

    time.sleep(RESTART_AFTER_SECONDS)
    restarted = start_worker(env, concurrency=CONCURRENCY)

    # The sandbox may have recorded a stranded job already (the kill came during its
    # latency), so "accepted" is not enough: each must be marked delivered by a worker
    # and out of kombu's hands, i.e. restored and run to its outcome.
    wait_until(
        lambda: settled(redis_client, stranded),
        VISIBILITY_TIMEOUT_SECONDS,  # failing here means only the backstop brought them
        interval=0.1,
        what="the jobs held by the killed worker to be restored and delivered",
    )
    stranded_recovered_s = time.time() - killed_at
    ledger.wait_all_accounted(SETTLE_SECONDS)
    wait_idle(redis_client, SETTLE_SECONDS)
    events = [e for e in sandbox.events() if e["click_id"] in set(ledger.offered.values())]
    last_delivery_s = max(e["received_at"] for e in events) - killed_at
    summary = ledger.summary()
    line = summary.line(
        "worker_sigkill",
        stranded_recovered_s,
        last_delivery_s=f"{last_delivery_s:.1f}",
        concurrency=CONCURRENCY,
        in_flight_at_kill=len(stranded),
        delivered_at_kill=delivered_at_kill,
        marker_stopped=marker_stopped(restarted.log()),
        visibility_timeout_s=f"{VISIBILITY_TIMEOUT_SECONDS:.0f}",
    )
    report(line, tmp_path, capsys)

    assert not summary.unaccounted
    assert summary.delivered + summary.dead_lettered == JOBS
    assert summary.dead_lettered == 0  # the sandbox accepts every event here
    assert summary.duplicated <= len(stranded), summary.duplicated_clicks
    # Brought back by the heartbeat sweep, not by the 120 s visibility timeout.
    assert stranded_recovered_s < RECOVERY_BOUND_SECONDS, line
    assert f"held by consumer {dead_consumers[0]} (no heartbeat" in restarted.log()
    assert restarted.process.poll() is None, restarted.log()
    # The dead incarnation is forgotten once its jobs are back; only the new one is left.
    consumers = [m.decode() for m in redis_client.zrange(CONSUMERS, 0, -1)]
    assert dead_consumers[0] not in consumers and len(consumers) == 1, consumers
