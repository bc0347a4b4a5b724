"""Fault: the worker's whole process group is SIGKILLed mid-run, then started again.

What has to hold: every job is delivered or dead-lettered after the restart. The jobs the
dead worker held stay in kombu's ``unacked`` hash until the visibility timeout, then the
new worker's restore sweep (every ``unacked_restore_interval``) puts them back. A job can
be delivered twice only if it was in flight at the kill (its POST reached Scalev, its
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
    FAULT_ENV,
    RESTORE_INTERVAL_SECONDS,
    SETTLE_SECONDS,
    VISIBILITY_TIMEOUT_SECONDS,
    Ledger,
    marker_stopped,
    report,
    unacked_job_ids,
)

pytestmark = pytest.mark.integration

JOBS = 300
CONCURRENCY = 2
PREFETCH_MULTIPLIER = 1  # worker.app's setting


def test_sigkill_mid_run_loses_nothing_and_duplicates_only_jobs_in_flight(
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
    env = worker_env(redis_url, sandbox.base_url, **FAULT_ENV)
    worker = start_worker(env, concurrency=CONCURRENCY)
    ledger.offer("kill", JOBS)
    ledger.wait_delivered(40)
    wait_until(lambda: redis_client.hlen("unacked") >= CONCURRENCY, 30, what="jobs in flight")

    worker.kill()  # SIGKILL to the process group: main process and pool children at once
    killed = time.monotonic()
    stranded = unacked_job_ids(redis_client)
    assert stranded, "the kill should have caught jobs in flight"
    assert len(stranded) <= CONCURRENCY * PREFETCH_MULTIPLIER
    delivered_at_kill = ledger.summary().delivered

    restarted = start_worker(env, concurrency=CONCURRENCY)

    def stranded_jobs_done() -> bool:
        return not stranded & set(ledger.unaccounted())

    # The promise is "within the visibility timeout plus the restore interval"; the
    # slack is for a loaded machine, the measured time is in the report line.
    wait_until(
        stranded_jobs_done,
        VISIBILITY_TIMEOUT_SECONDS + RESTORE_INTERVAL_SECONDS + 60,
        interval=0.1,
        what="the jobs held by the killed worker to be restored and delivered",
    )
    recovery_s = time.monotonic() - killed
    ledger.wait_all_accounted(SETTLE_SECONDS)
    summary = ledger.summary()
    line = summary.line(
        "worker_sigkill",
        recovery_s,
        in_flight_at_kill=len(stranded),
        delivered_at_kill=delivered_at_kill,
        marker_stopped=marker_stopped(restarted.log()),
    )
    report(line, tmp_path, capsys)

    assert not summary.unaccounted
    assert summary.delivered + summary.dead_lettered == JOBS
    assert summary.dead_lettered == 0  # the sandbox accepts every event here
    assert summary.duplicated <= len(stranded), summary.duplicated_clicks
    assert restarted.process.poll() is None, restarted.log()
