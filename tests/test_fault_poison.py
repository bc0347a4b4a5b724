"""Fault: raw garbage pushed onto the delivery queue, between good jobs.

What has to hold: each unreadable item is dead-lettered as ``invalid_job`` with its raw
text kept (truncated); the worker never exits, never reconnects, never loops on one, and
delivers every good job around them exactly once. Before ``worker.celery_ext.transport`` and
``worker.celery_ext.poison``, the first three kinds below made the worker exit and took the item
with it (see ``worker/poison.py``).
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.transport.redis import Channel

from producers.enqueue import Producer
from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from tests.conftest import STORE, Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import FAULT_ENV, SETTLE_SECONDS, Ledger, event, report
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.keys import UNACKED
from worker.settings import Settings

pytestmark = pytest.mark.integration

GOOD_PER_GAP = 15
CONCURRENCY = 2
DLQ_ERROR_MAX_CHARS = Settings().dlq_error_max_chars

#: sha256 of kombu 5.7.0's ``Channel._brpop_read``, which ``worker.celery_ext.transport`` copies.
KOMBU_BRPOP_READ_SHA256 = "c42518699709f2df90f55a048fe6346612ae5527e5c4a6819f2c0920dc62088f"
#: sha256 of kombu 5.7.0's ``Channel._brpop_start``, whose list of keys (queues times
#: priority steps, with the poll bookkeeping) the one-step take repeats (``SafeChannel``).
KOMBU_BRPOP_START_SHA256 = "06723d707ddf224025af70ff511e07a27e1e8a37ec509e7dfa11ee408a79ccec"


def envelope(task_id: str, **changes: Any) -> dict[str, Any]:
    """A well-formed message of a valid job, as a dict to spoil."""
    kwargs = {
        "job_id": task_id,
        "store_id": STORE,
        "payload": event(f"poison-{task_id}"),
        "enqueued_at": time.time(),
        "schema": 1,
    }
    message: dict[str, Any] = json.loads(build_message(kwargs, task_id=task_id))
    message.update(changes)
    return message


def spoiled(task_id: str, spoil: Callable[[dict[str, Any]], None]) -> str:
    message = envelope(task_id)
    spoil(message)
    return json.dumps(message)


def poison_items() -> dict[str, str | bytes]:
    """name -> raw item. Names with an ``id-`` prefix carry a task id in their headers."""
    garbage_body = base64.b64encode(b"not json at all").decode()
    huge = "x" * (DLQ_ERROR_MAX_CHARS * 5)
    return {
        "not-json": "this is {not json",
        "not-utf8": b"\xff\xfe\x00garbage",
        "huge-not-json": huge,
        "json-array": "[1, 2, 3]",
        "json-number": "42",
        "json-object": '{"hello": "world"}',
        "id-no-delivery-tag": spoiled(
            "id-no-delivery-tag", lambda m: m["properties"].pop("delivery_tag")
        ),
        "id-no-delivery-info": spoiled(
            "id-no-delivery-info", lambda m: m["properties"].pop("delivery_info")
        ),
        "id-body-not-base64": spoiled("id-body-not-base64", lambda m: m.update(body="!!!")),
        "id-body-not-json": spoiled("id-body-not-json", lambda m: m.update(body=garbage_body)),
        "id-unknown-task": spoiled(
            "id-unknown-task", lambda m: m["headers"].update(task="snackvideo.nope")
        ),
        "id-schema-99": build_message(
            {**json.loads(base64.b64decode(envelope("id-schema-99")["body"]))[1], "schema": 99},
            task_id="id-schema-99",
        ),
        "headers-null": spoiled("headers-null", lambda m: m.update(headers=None)),
    }


def entries(client: redis.Redis) -> list[DeadLetter]:
    return list(DeadLetterStore(client).iter_entries())


def test_kombus_brpop_read_is_the_one_worker_transport_copies() -> None:
    # worker.celery_ext.transport.SafeChannel._brpop_read is kombu's method plus two marked steps.
    # When kombu changes its version, re-copy it there, then update this hash.
    source = inspect.getsource(Channel._brpop_read)
    assert hashlib.sha256(source.encode()).hexdigest() == KOMBU_BRPOP_READ_SHA256


def test_kombus_brpop_start_is_the_one_the_one_step_take_follows() -> None:
    # SafeChannel._brpop_start sends BRPOPLPUSH (or take_any.lua) instead of BRPOP, over
    # the keys kombu's method would list, and sets the same _in_poll / _brpop_sent_at.
    # When kombu changes its version, check the take against it, then update this hash.
    source = inspect.getsource(Channel._brpop_start)
    assert hashlib.sha256(source.encode()).hexdigest() == KOMBU_BRPOP_START_SHA256


def test_garbage_on_the_queue_is_dead_lettered_and_the_worker_keeps_delivering(
    redis_url: str,
    redis_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox = start_sandbox("--latency-ms", "20")
    ledger = Ledger(redis_url, sandbox)
    producer = Producer(redis_url)
    worker = start_worker(
        worker_env(redis_url, sandbox.base_url, **FAULT_ENV), concurrency=CONCURRENCY
    )
    items = poison_items()

    # Good jobs, one poison item, good jobs, the next item...: the worker meets each
    # item between deliveries, and anything that stalls it shows as undelivered jobs.
    for index, item in enumerate(items.values()):
        ledger.offer(f"good-{index:02d}", GOOD_PER_GAP, producer)
        redis_client.lpush(DELIVERY_QUEUE, item)
    ledger.offer("good-last", GOOD_PER_GAP, producer)

    ledger.wait_all_accounted(SETTLE_SECONDS)
    wait_until(
        lambda: len(entries(redis_client)) >= len(items),
        SETTLE_SECONDS,
        what="every poison item dead-lettered",
    )
    # There is no outage to recover from; what a poison item may cost is a pause in
    # deliveries, so the report's recovery time is the longest gap between two of them.
    received = sorted(e["received_at"] for e in sandbox.events())
    recovery_s = max(b - a for a, b in zip(received, received[1:], strict=False))
    wait_until(
        lambda: not redis_client.llen(DELIVERY_QUEUE) and not redis_client.hlen(UNACKED),
        SETTLE_SECONDS,
        what="an empty queue",
    )

    parked = entries(redis_client)
    by_job = {entry.job_id: entry for entry in parked}
    good = ledger.summary()
    line = (
        f"FAULT poison: offered={good.offered + len(items)} delivered={good.delivered} "
        f"dead_lettered={good.dead_lettered + len(parked)} duplicated={good.duplicated} "
        f"recovery_s={recovery_s:.1f} poison_items={len(items)} good_jobs={good.offered}"
    )
    report(line, tmp_path, capsys)

    # Every good job delivered exactly once, every poison item parked once, nothing else.
    assert not good.unaccounted
    assert good.delivered == good.offered and good.dead_lettered == 0
    assert good.duplicated == 0, good.duplicated_clicks
    assert len(parked) == len(items)
    assert {entry.reason for entry in parked} == {"invalid_job"}
    for name in items:
        if name.startswith("id-"):
            assert name in by_job, name
    assert "schema" in by_job["id-schema-99"].error
    assert "unknown task" in by_job["id-unknown-task"].error
    assert "delivery_tag" in by_job["id-no-delivery-tag"].error
    # Raw text kept, truncated to the dead-letter error size.
    raws = [entry.payload.get("raw", "") for entry in parked if isinstance(entry.payload, dict)]
    assert any("this is {not json" in raw for raw in raws)
    assert any("garbage" in raw for raw in raws)  # the non-UTF-8 item, decoded leniently
    huge = [e.payload for e in parked if isinstance(e.payload, dict) and e.payload.get("raw_chars")]
    assert any(p["raw_chars"] == DLQ_ERROR_MAX_CHARS * 5 for p in huge)
    assert all(len(p["raw"]) <= DLQ_ERROR_MAX_CHARS for p in huge)
    # Nothing crashed, reconnected or looped.
    log = worker.log()
    assert worker.process.poll() is None, log
    assert "Unrecoverable error" not in log
    assert "Connection to broker lost" not in log
    assert log.count("outcome=dead_lettered reason=invalid_job") == len(items)
