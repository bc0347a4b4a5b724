"""Fault: warm shutdown (SIGTERM) while jobs wait and deliveries run.

What has to hold: the jobs that are running finish; the ones the worker had taken but
not started go back to the queue when the worker exits, not a visibility timeout later;
a new worker delivers the rest; nothing is lost and nothing is sent twice.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers.keys import DELIVERY_QUEUE
from tests.conftest import Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import (
    FAULT_ENV,
    SETTLE_SECONDS,
    VISIBILITY_TIMEOUT_SECONDS,
    Ledger,
    report,
    unacked_job_ids,
)
from worker.keys import UNACKED

pytestmark = pytest.mark.integration

JOBS = 200
CONCURRENCY = 2


def queued_job_ids(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(DELIVERY_QUEUE, 0, -1)]


@pytest.mark.parametrize(
    "prefetch_multiplier",
    [
        # The shipped setting: the worker holds only the jobs it runs.
        1,
        # Taken but not started jobs exist too: they must come back at the exit.
        4,
    ],
)
def test_sigterm_finishes_running_jobs_and_returns_the_rest_at_once(
    prefetch_multiplier: int,
    redis_url: str,
    redis_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox = start_sandbox("--latency-ms", "50")
    ledger = Ledger(redis_url, sandbox)
    env = worker_env(redis_url, sandbox.base_url, **FAULT_ENV)
    prefetch = ("--prefetch-multiplier", str(prefetch_multiplier))
    worker = start_worker(env, concurrency=CONCURRENCY, extra_args=prefetch)
    ledger.offer("term", JOBS)
    ledger.wait_delivered(20)

    held_at_signal = unacked_job_ids(redis_client)
    signalled = time.monotonic()
    # The main process only, as `docker stop` and systemd's KillMode=mixed do: a SIGTERM
    # to every pool child would kill the running deliveries (a cold shutdown).
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(60)
    exited_s = time.monotonic() - signalled

    def every_unfinished_job_is_back() -> bool:
        unfinished = set(ledger.unaccounted())
        return not redis_client.hlen(UNACKED) and set(queued_job_ids(redis_client)) == unfinished

    # Nothing else runs now, so only the exiting worker can have put them back. Waiting a
    # little lets a slow machine finish its writes; a visibility-timeout restore could not
    # happen at all without a running worker.
    wait_until(
        every_unfinished_job_is_back,
        VISIBILITY_TIMEOUT_SECONDS / 2,
        what="the unstarted jobs back on the queue after a warm shutdown",
    )
    recovery_s = time.monotonic() - signalled
    back = len(queued_job_ids(redis_client))
    assert "Warm shutdown" in worker.log()
    assert 0 < back < JOBS
    if prefetch_multiplier > 1:
        # kombu puts the taken-but-unstarted ones back when Celery closes the channel.
        assert "unacknowledged message(s)" in worker.log()

    start_worker(env, concurrency=CONCURRENCY)
    ledger.wait_all_accounted(SETTLE_SECONDS)
    summary = ledger.summary()
    line = summary.line(
        f"sigterm(prefetch={prefetch_multiplier})",
        recovery_s,
        exit_s=f"{exited_s:.1f}",
        held_at_signal=len(held_at_signal),
        requeued=back,
    )
    report(line, tmp_path, capsys)

    assert not summary.unaccounted
    assert summary.offered == JOBS
    assert summary.delivered + summary.dead_lettered == JOBS
    # Running jobs finish and are acked; the rest were never sent: no duplicates at all
    # is the expectation, at most the jobs held at the signal is the bound.
    assert len(held_at_signal) <= CONCURRENCY * prefetch_multiplier
    assert summary.duplicated <= len(held_at_signal), summary.duplicated_clicks
