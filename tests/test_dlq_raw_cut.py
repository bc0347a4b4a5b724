"""Every unreadable message is parked the same way, whichever guard finds it: its text cut
to ``SNACKVIDEO_DLQ_ERROR_MAX_CHARS`` with ``raw_chars`` its full length, the job id and
the queue beside it (``worker.bounded_json.kept_raw`` via ``worker.deadletter.unreadable``).

Three guards park messages a real worker cannot read: the transport (an item kombu cannot
parse), Celery's strategy (a body that cannot be called as a task) and the consumer's hooks
(an unknown task). Each is handed a message far larger than the limit.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from tests.conftest import STORE, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event
from worker.bounded_json import kept_raw
from worker.deadletter.store import DeadLetterStore

pytestmark = pytest.mark.integration

LIMIT = 300  # SNACKVIDEO_DLQ_ERROR_MAX_CHARS for the worker under test
BIG = "z" * 20_000


def envelope(task_id: str, body: str | None = None, **headers: Any) -> dict[str, Any]:
    kwargs = {
        "job_id": task_id,
        "store_id": STORE,
        "payload": {**event(f"click-{task_id}"), "pad": BIG},
        "enqueued_at": time.time(),
        "schema": 1,
    }
    message: dict[str, Any] = json.loads(build_message(kwargs, task_id=task_id))
    if body is not None:
        message["body"] = base64.b64encode(body.encode()).decode()
    message["headers"].update(headers)
    return message


def test_kept_raw_cuts_text_bytes_and_values_alike() -> None:
    assert kept_raw("é" * 10, 4) == {"raw": "éééé", "raw_chars": 10}
    assert kept_raw(b"ab\xffcd", 3) == {"raw": "ab\ufffd", "raw_chars": 5}
    value = {"k": ["v" * 10]}
    compact = json.dumps(value, separators=(",", ":"))
    assert kept_raw(value, 8) == {"raw": compact[:8], "raw_chars": len(compact)}


def test_each_guard_keeps_the_same_cut_of_a_huge_unreadable_message(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    transport_item = "not json " + BIG
    strategy_body = json.dumps({"not": "[args, kwargs, embed]", "pad": BIG})
    unknown_task = envelope("raw-unknown-task", task="snackvideo.nope")
    items = {
        "transport": transport_item,
        "strategy": json.dumps(envelope("raw-bad-body", body=strategy_body)),
        "consumer": json.dumps(unknown_task),
    }
    for item in items.values():
        redis_client.lpush(DELIVERY_QUEUE, item)
    env = worker_env(redis_url, sandbox.base_url, SNACKVIDEO_DLQ_ERROR_MAX_CHARS=str(LIMIT))
    worker = start_worker(env)

    store = DeadLetterStore(redis_client)
    wait_until(lambda: len(store) == 3, 60, what="three invalid_job entries")
    by_job = {entry.job_id: entry for entry in store.find_entries()}
    transport = next(e for job, e in by_job.items() if job.startswith("invalid-"))
    strategy, consumer = by_job["raw-bad-body"], by_job["raw-unknown-task"]

    # One shape: the job id, the queue, the cut text and its full length; nothing else.
    for entry in (transport, strategy, consumer):
        assert entry.reason == "invalid_job"
        assert set(entry.payload) == {"job_id", "queue", "raw", "raw_chars"}, entry.payload
        assert entry.payload["queue"] == DELIVERY_QUEUE
        assert len(entry.payload["raw"]) == LIMIT
    assert transport.payload["raw"] == transport_item[:LIMIT]
    assert transport.payload["raw_chars"] == len(transport_item)
    assert strategy.payload["raw"] == strategy_body[:LIMIT]
    assert strategy.payload["raw_chars"] == len(strategy_body)
    assert consumer.payload["raw_chars"] > len(BIG)  # the envelope, body and all
    assert strategy.error == "message body must be [args, kwargs, embed]"
    assert "unknown task" in consumer.error
    assert worker.process.poll() is None


def test_the_task_keeps_an_unreadable_job_whole_unless_it_is_over_the_payload_bound(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    # Readable messages of jobs the task refuses: a small one is kept as it is (an operator
    # can fix and replay it); one over SNACKVIDEO_MAX_PAYLOAD_BYTES is cut like the rest.
    small = envelope("raw-small-schema")
    small_kwargs = json.loads(base64.b64decode(small["body"]))[1]
    small_kwargs["schema"] = 99
    small_kwargs["payload"] = event("click-small")
    big_kwargs = {**small_kwargs, "job_id": "raw-big-schema", "payload": {"pad": BIG}}
    for kwargs in (small_kwargs, big_kwargs):
        redis_client.lpush(DELIVERY_QUEUE, build_message(kwargs, task_id=kwargs["job_id"]))
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SNACKVIDEO_DLQ_ERROR_MAX_CHARS=str(LIMIT),
        SNACKVIDEO_MAX_PAYLOAD_BYTES="5000",
    )
    start_worker(env)

    store = DeadLetterStore(redis_client)
    wait_until(lambda: len(store) == 2, 60, what="two invalid_job entries")
    by_job = {entry.job_id: entry for entry in store.find_entries()}
    assert by_job["raw-small-schema"].payload == event("click-small")
    big = by_job["raw-big-schema"].payload
    assert set(big) == {"raw", "raw_chars"} and len(big["raw"]) == LIMIT
    assert big["raw_chars"] == len(json.dumps({"pad": BIG}, separators=(",", ":")))
