"""Fault: a job whose every run kills its pool process (an OOM kill, a segfault in a C
extension, a hard time limit).

Celery requeues it each time (``reject_on_worker_lost``) and kombu marks it redelivered;
before the bound, it came back for ever, killing a process per run. Now the dispatcher
counts the runs of a redelivered message in Redis (only for those: the common path pays
nothing) and dead-letters it as ``internal_error`` once it has come back more than
``SNACKVIDEO_MAX_REDELIVERIES`` times without an outcome; the worker delivers everything
else around it. The death is real: ``tests/recovery_seam`` makes the pool process
``os._exit`` whenever it is about to post that job's click_id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers import Producer
from tests.conftest import STORE, Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import SETTLE_SECONDS, event, report, seam_env
from tests.queue_helpers import log_lines, wait_idle
from worker.deadletter.store import DeadLetterStore
from worker.keys import entry_id

pytestmark = pytest.mark.integration

MAX_REDELIVERIES = 2


def test_a_job_that_kills_its_process_every_run_is_dead_lettered_after_the_bound(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = worker_env(
        redis_url, sandbox.base_url, SNACKVIDEO_MAX_REDELIVERIES=str(MAX_REDELIVERIES)
    )
    worker = start_worker(seam_env(env, "exit_on_click:crash-"), concurrency=2)
    producer = Producer(redis_url)
    crash = producer.enqueue(STORE, event("crash-1"))
    good = producer.enqueue_many(STORE, [event(f"fine-{i}") for i in range(10)])
    producer.close()

    store = DeadLetterStore(redis_client)
    entry = wait_until(
        lambda: store.get(entry_id(crash, 0)), SETTLE_SECONDS, what="the crashing job's entry"
    )
    wait_until(
        lambda: all(sandbox.attempts(f"fine-{i}") == 1 for i in range(10)),
        SETTLE_SECONDS,
        what="the other jobs",
    )
    wait_idle(redis_client)

    deaths = worker.log().count("SEAM: exiting on click crash-1")
    report(
        f"FAULT redelivery_bound: max_redeliveries={MAX_REDELIVERIES} deaths={deaths} "
        f"reason={entry.reason} delivered_others={len(good)}",
        tmp_path,
        capsys,
    )
    # The first run and MAX_REDELIVERIES redelivered runs died; the next one did not run.
    assert deaths == 1 + MAX_REDELIVERIES
    assert entry.reason == "internal_error"
    assert entry.error.startswith(f"redelivered {MAX_REDELIVERIES + 1} times without an outcome")
    assert sandbox.attempts("crash-1") == 0
    assert log_lines(worker, "outcome=dead_lettered", f"job_id={crash}", "reason=internal_error")
    assert worker.process.poll() is None, worker.log()
