"""Runs that would end in neither outcome, with real workers: every one now ends delivered,
parked with backoff, or dead-lettered.

- A deterministic Redis error (here ``WRONGTYPE``: one store's throttle state overwritten
  with a list) used to be treated as an outage: requeued at once, no backoff, no attempt
  counted, for ever. It is retried ``SNACKVIDEO_MAX_INTERNAL_ERRORS`` times with backoff
  and then dead-lettered as ``internal_error`` with its type and message.
- A message nested deeper than pickling survives (~500 levels) made the worker exit
  ("Unrecoverable error") when Celery handed it to a pool process; restored, it took the
  next worker down too. It is dead-lettered as ``invalid_job`` before that.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from producers.models import JOB_SCHEMA_VERSION
from tests.conftest import STORE, STORE_KEY, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event, log_lines, wait_idle
from worker.celery_ext.body_guard import MAX_BODY_DEPTH
from worker.deadletter.store import DeadLetterStore
from worker.keys import entry_id, invalid_entry_id, throttle_key
from worker.settings import Settings

pytestmark = pytest.mark.integration

BROKEN_STORE = "store_broken"
BROKEN_KEY = "pk_test_broken_7c41d2"
MAX_INTERNAL_ERRORS = 3  # the default


def test_a_deterministic_redis_error_is_retried_with_backoff_then_dead_lettered(
    redis_url: str,
    redis_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
) -> None:
    sandbox = start_sandbox(stores={STORE: STORE_KEY, BROKEN_STORE: BROKEN_KEY})
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS=json.dumps({STORE: STORE_KEY, BROKEN_STORE: BROKEN_KEY}),
        SNACKVIDEO_THROTTLE_SCOPE="store",  # one state per store: only one store is broken
        SNACKVIDEO_RETRY_BASE_SECONDS="0.5",
    )
    # Not a state hash any more: every HMGET of the throttle script fails with WRONGTYPE.
    redis_client.rpush(throttle_key(f"store:{BROKEN_STORE}"), "not a hash")
    worker = start_worker(env, concurrency=2)
    producer = Producer(redis_url)
    broken = producer.enqueue(BROKEN_STORE, event("broken-1"))
    good = [producer.enqueue(STORE, event(f"good-{i}")) for i in range(5)]
    producer.close()

    store = DeadLetterStore(redis_client)
    entry = wait_until(
        lambda: store.get(entry_id(broken, 0)), SETTLE_SECONDS, what="the internal_error entry"
    )
    wait_idle(redis_client)

    assert entry.reason == "internal_error"
    assert entry.error.startswith(
        f"{MAX_INTERNAL_ERRORS} runs ended in an internal error; the last: ResponseError: "
    )
    assert "WRONGTYPE" in entry.error
    assert entry.payload == event("broken-1")  # stored as it came, replayable once fixed
    # Two parked retries with growing backoff, then the dead letter: no requeue loop.
    retried = log_lines(worker, "outcome=retried", f"job_id={broken}", "reason=internal_error")
    waits = [float(re.search(r"\bwait=([0-9.]+)", line).group(1)) for line in retried]  # type: ignore[union-attr]
    assert len(waits) == MAX_INTERNAL_ERRORS - 1, retried
    assert 0.5 <= waits[0] < waits[1], waits
    assert len(log_lines(worker, "internal error", f"job_id={broken}")) == MAX_INTERNAL_ERRORS
    assert not log_lines(worker, "Redis unavailable", broken)
    assert log_lines(worker, "outcome=dead_lettered", f"job_id={broken}", "reason=internal_error")
    assert log_lines(worker, f"[{broken}] raised expected: DeadLettered(")
    # The broken store never reached Scalev; the other store's jobs were delivered.
    assert sandbox.attempts("broken-1") == 0
    assert all(sandbox.attempts(f"good-{i}") == 1 for i in range(5)), good
    assert worker.process.poll() is None


def deep_message(job_id: str, depth: int) -> str:
    """A message of a valid job whose payload carries a value nested ``depth`` levels.

    Built as text: json.dumps itself cannot write it."""
    kwargs: dict[str, Any] = {
        "job_id": job_id,
        "store_id": STORE,
        "payload": {**event(f"click-{job_id}"), "deep": "@DEEP@"},
        "enqueued_at": time.time(),
        "schema": JOB_SCHEMA_VERSION,
    }
    envelope = json.loads(build_message(kwargs, task_id=job_id))
    body = json.dumps([[], kwargs, None]).replace('"@DEEP@"', '{"a":' * depth + "1" + "}" * depth)
    envelope["body"] = base64.b64encode(body.encode()).decode()
    return json.dumps(envelope)


def test_a_payload_too_deep_to_pickle_is_dead_lettered_and_the_worker_lives(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(worker_env(redis_url, sandbox.base_url), concurrency=1)
    # 600 levels decode fine, but pickling the request for the pool process raised
    # RecursionError in the worker's main process: "Unrecoverable error", worker gone.
    redis_client.lpush(DELIVERY_QUEUE, deep_message("deep-600", 600))
    redis_client.lpush(DELIVERY_QUEUE, deep_message("shallow", 3))

    store = DeadLetterStore(redis_client)
    entry = wait_until(
        lambda: store.get(invalid_entry_id("deep-600", 0)), SETTLE_SECONDS, what="the entry"
    )
    wait_until(lambda: sandbox.attempts("click-shallow") == 1, SETTLE_SECONDS, what="delivery")
    wait_idle(redis_client)

    assert entry.reason == "invalid_job"
    assert entry.error == f"message body is nested deeper than {MAX_BODY_DEPTH} levels"
    # Its text is kept, cut, with its full length: the value itself is too deep to store.
    raw = entry.payload["raw"]
    assert raw.startswith('[[], {"job_id": "deep-600"') and '{"a":{"a":' in raw
    assert entry.payload["raw_chars"] > len(raw) == Settings().dlq_error_max_chars
    assert sandbox.attempts("click-deep-600") == 0
    assert worker.process.poll() is None, worker.log()
    assert "Unrecoverable error" not in worker.log()
