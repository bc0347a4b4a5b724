"""The delivery hot path from outside: real prefork workers, Redis and the sandbox.

- Celery's "received" and "succeeded" INFO lines are dropped (the first is written by the
  main process, the second by the pool children); its retry and failure lines stay, and
  ``SNACKVIDEO_CELERY_TASK_LOG=on`` brings the two back.
- A message kombu restored (flagged ``redelivered``) says so on its delivered line.
- The replay race: the stale copy of a parked run, coming back after its entry was
  replayed, is not sent again (the tombstone, ``worker/marks.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import redis

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from producers.models import JOB_SCHEMA_VERSION
from tests.conftest import STORE, STORE_KEY, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event, log_lines, wait_idle
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.keys import delivered_key, dlq_taken_key, entry_id

pytestmark = pytest.mark.integration

GONE_STORE = "store_gone"  # a key in the worker's config, unknown to the sandbox: 404
KEYS_WITH_GONE = json.dumps({STORE: STORE_KEY, GONE_STORE: "pk_test_gone_0001"})


@pytest.mark.parametrize("task_log", ["default", "on"])
def test_celerys_per_task_lines_are_dropped_unless_asked_for(
    task_log: str,
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    overrides = {"SCALEV_STOREFRONT_API_KEYS": KEYS_WITH_GONE}
    if task_log == "on":
        overrides["SNACKVIDEO_CELERY_TASK_LOG"] = "on"
    worker = start_worker(worker_env(redis_url, sandbox.base_url, **overrides), concurrency=2)
    producer = Producer(redis_url)
    delivered = producer.enqueue_many(STORE, [event("tl-ok-1"), event("tl-ok-2")])
    gone = producer.enqueue(GONE_STORE, event("tl-gone"))
    wait_until(
        lambda: (
            all(redis_client.exists(delivered_key(j)) for j in delivered)
            and log_lines(worker, f"[{gone}] raised expected: DeadLettered(")
        ),
        SETTLE_SECONDS,
        what="two deliveries and one dead letter",
    )
    sandbox.configure(fail_first=1)  # the next click id fails once: a retry
    retried = producer.enqueue(STORE, event("tl-retry"))
    wait_until(
        lambda: redis_client.exists(delivered_key(retried)), SETTLE_SECONDS, what="the retry"
    )
    wait_idle(redis_client, SETTLE_SECONDS)
    producer.close()

    # Ours, and Celery's retry and failure lines, are there either way.
    for job_id in [*delivered, retried]:
        assert log_lines(worker, "outcome=delivered", f"job_id={job_id}")
    assert log_lines(worker, f"[{retried}] retry:")
    assert log_lines(worker, f"[{gone}] raised expected: DeadLettered(", "reason=http_404")
    every_job = [*delivered, gone, retried]
    received = [j for j in every_job if log_lines(worker, f"[{j}] received")]
    succeeded = [j for j in [*delivered, retried] if log_lines(worker, f"[{j}] succeeded in")]
    if task_log == "on":
        assert received == every_job
        assert succeeded == [*delivered, retried]
        # Written by the pool children (the succeeded line) and the main process (received).
        assert log_lines(worker, "ForkPoolWorker", "succeeded in")
        assert log_lines(worker, "MainProcess", "received")
    else:
        assert received == [] and succeeded == [], worker.log()


def restored_message(kwargs: dict[str, object]) -> str:
    """The message as kombu writes it back when it restores it (``_do_restore_message``)."""
    envelope = json.loads(build_message(kwargs, task_id=str(kwargs["job_id"])))
    envelope["headers"]["redelivered"] = True
    envelope["properties"]["delivery_info"]["redelivered"] = True
    return json.dumps(envelope)


def test_a_restored_message_that_is_sent_says_so(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    restored = {
        "job_id": "job-restored",
        "store_id": STORE,
        "payload": event("rd-restored"),
        "enqueued_at": time.time(),
        "schema": JOB_SCHEMA_VERSION,
    }
    redis_client.lpush(DELIVERY_QUEUE, restored_message(restored))
    worker = start_worker(worker_env(redis_url, sandbox.base_url), concurrency=1)
    fresh = Producer(redis_url).enqueue(STORE, event("rd-fresh"))
    wait_until(lambda: redis_client.exists(delivered_key(fresh)), SETTLE_SECONDS, what="fresh")
    wait_until(
        lambda: redis_client.exists(delivered_key("job-restored")), SETTLE_SECONDS, what="restored"
    )
    # A restored copy of a job already delivered is stopped before the POST.
    redis_client.lpush(DELIVERY_QUEUE, restored_message(restored))
    wait_until(
        lambda: log_lines(worker, "outcome=duplicate", "job_id=job-restored"),
        SETTLE_SECONDS,
        what="the duplicate",
    )

    (restored_line,) = log_lines(worker, "outcome=delivered", "job_id=job-restored")
    (fresh_line,) = log_lines(worker, "outcome=delivered", f"job_id={fresh}")
    assert restored_line.endswith(" redelivered=1")
    assert "redelivered" not in fresh_line
    assert sandbox.attempts("rd-restored") == 1


def test_a_stale_copy_restored_after_its_entry_was_replayed_is_not_sent(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    # A worker parked J-r0 (a 404) and died before its ack, so its r0 message is still to
    # come back; meanwhile an operator replays J-r0 as r1.
    store = DeadLetterStore(redis_client)
    parked = DeadLetter(
        job_id="job-race",
        store_id=GONE_STORE,
        payload=event("race"),
        reason="http_404",
        status_code=404,
        attempts=1,
        enqueued_at=time.time(),
    )
    store.add(parked)
    stale = {
        "job_id": parked.job_id,
        "store_id": parked.store_id,
        "payload": parked.payload,
        "enqueued_at": parked.enqueued_at,
        "schema": JOB_SCHEMA_VERSION,
    }
    redis_client.lpush(DELIVERY_QUEUE, restored_message(stale))
    assert store.replay([parked]) == [parked.id]  # r1 goes behind the stale r0
    assert redis_client.exists(dlq_taken_key(parked.id))

    env = worker_env(redis_url, sandbox.base_url, SCALEV_STOREFRONT_API_KEYS=KEYS_WITH_GONE)
    worker = start_worker(env, concurrency=1)
    replayed_id = entry_id(parked.job_id, 1)
    wait_until(lambda: store.get(replayed_id), SETTLE_SECONDS, what="the replay's own entry")
    wait_idle(redis_client, SETTLE_SECONDS)

    assert log_lines(worker, "outcome=duplicate", "job_id=job-race")
    assert sandbox.stats()["requests"] == 1  # the replay's request only
    assert [entry.id for entry in store.find_entries()] == [replayed_id]  # no J-r0 beside it
