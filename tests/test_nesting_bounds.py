"""Payloads nested 3,000 and 100,000 levels deep, at every entry point: each refuses or
parks them with the project's own error, never a RecursionError, and the checks walk
with explicit stacks instead of recursing.

Python's recursive encoders and decoders (json, pickle, repr) give up near 1,000 levels;
both depths here are past that, the second by far.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import InvalidEvent, Producer
from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from producers.models import MAX_PAYLOAD_DEPTH, nested_deeper_than, validate_job, validate_payload
from tests.conftest import PYTHON, ROOT, STORE, STORE_KEY, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event
from worker.celery_ext.body_guard import MAX_BODY_DEPTH
from worker.cli.dlq import list_row, payload_text, show_text
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.delivery.dispatcher import Dispatcher
from worker.delivery.scalev import ScalevClient
from worker.errors import DeadLettered
from worker.settings import Settings

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
DEPTHS = pytest.mark.parametrize("depth", [3_000, 100_000])


def nested(depth: int) -> dict[str, Any]:
    """Dicts ``depth`` levels deep, built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nested_text(depth: int) -> str:
    """The JSON text of ``nested(depth)`` (json.dumps itself cannot write it)."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def deep_event(depth: int, click_id: str = "deep") -> dict[str, Any]:
    return {**event(click_id), "extra": nested(depth)}


def deep_event_text(depth: int, click_id: str = "deep") -> str:
    shallow = json.dumps({**event(click_id), "extra": "@DEEP@"}, separators=(",", ":"))
    return shallow.replace('"@DEEP@"', nested_text(depth))


# -- the checks themselves ------------------------------------------------------------------


@DEPTHS
def test_validate_payload_and_validate_job_refuse_by_name(depth: int) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_payload(deep_event(depth))
    assert f"nested deeper than {MAX_PAYLOAD_DEPTH} levels" in str(info.value)
    assert info.value.fields == ["extra" + ".a" * (MAX_PAYLOAD_DEPTH - 1)]
    kwargs = {"job_id": "j", "store_id": STORE, "payload": deep_event(depth)}
    kwargs.update(enqueued_at=time.time(), schema=1)
    with pytest.raises(InvalidEvent, match=f"nested deeper than {MAX_PAYLOAD_DEPTH} levels"):
        validate_job(kwargs)


def test_the_depth_walk_does_not_recurse() -> None:
    value = nested(100_000)
    # Far past the recursion limit: a walk that recursed per level could not answer.
    assert sys.getrecursionlimit() < 100_000
    assert not nested_deeper_than(value, 100_000)
    assert nested_deeper_than(value, 99_999)
    cycle: list[Any] = []
    cycle.append(cycle)
    assert nested_deeper_than(cycle, 10)  # a cycle is deeper than any bound, and ends


# -- enqueue, enqueue_many, the CLI ---------------------------------------------------------


@DEPTHS
def test_enqueue_and_enqueue_many_refuse_and_write_nothing(
    depth: int, redis_url: str, redis_client: redis.Redis
) -> None:
    producer = Producer(redis_url)
    with pytest.raises(InvalidEvent):
        producer.enqueue(STORE, deep_event(depth))
    with pytest.raises(InvalidEvent) as info:
        producer.enqueue_many(STORE, [event("fine"), deep_event(depth)])
    assert info.value.fields == ["payloads[1].extra" + ".a" * (MAX_PAYLOAD_DEPTH - 1)]
    assert redis_client.dbsize() == 0
    producer.close()


@pytest.mark.processes
@DEPTHS
def test_the_cli_reports_the_line_and_enqueues_nothing(
    depth: int, redis_url: str, redis_client: redis.Redis
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
    env["REDIS_URL"] = redis_url
    good = json.dumps(event("cli-fine"))
    for lines in ([deep_event_text(depth)], [good, deep_event_text(depth)]):
        result = subprocess.run(
            [SNACKVIDEO, "enqueue", "--store", STORE],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        number = len(lines)
        assert f"error: line {number}: payload: nested deeper than" in result.stderr
    assert redis_client.llen(DELIVERY_QUEUE) == 0


# -- the worker: the dispatcher, and a real worker ------------------------------------------


@DEPTHS
def test_the_dispatcher_parks_a_deep_job_with_its_text_cut(
    depth: int, redis_client: redis.Redis, sandbox: Sandbox
) -> None:
    settings = Settings(
        scalev_api_base_url=sandbox.base_url, storefront_api_keys={STORE: STORE_KEY}
    )
    scalev = ScalevClient(sandbox.base_url, connect_timeout_seconds=3, read_timeout_seconds=10)
    dispatcher = Dispatcher(settings, redis_client, scalev)
    kwargs = {"job_id": f"deep-{depth}", "store_id": STORE, "payload": deep_event(depth)}
    kwargs.update(enqueued_at=time.time(), schema=1)

    with pytest.raises(DeadLettered):
        dispatcher.deliver((), kwargs)

    (entry,) = DeadLetterStore(redis_client).find_entries()
    assert entry.reason == "invalid_job"
    assert len(entry.payload["raw"]) == settings.dlq_error_max_chars
    assert entry.payload["raw_chars"] > depth * len('{"a":}')
    assert sandbox.attempts("deep") == 0
    scalev.close()


@pytest.mark.processes
@DEPTHS
def test_a_worker_parks_deep_messages_on_every_path_and_keeps_delivering(
    depth: int,
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    # 1. A list item that is only nesting: the transport's JSON decode gives up on it.
    redis_client.lpush(DELIVERY_QUEUE, "[" * depth + "]" * depth)
    # 2. A well-formed envelope whose body nests that deep: kombu's decode gives up.
    envelope = json.loads(build_message({"job_id": "x"}, task_id=f"deep-body-{depth}"))
    body = '[[],{"job_id":"deep-body","payload":' + nested_text(depth) + "},null]"
    envelope["body"] = base64.b64encode(body.encode()).decode()
    redis_client.lpush(DELIVERY_QUEUE, json.dumps(envelope))
    # 3. A body nested past the strategy's bound but within json's reach.
    shallow = '[[],{"job_id":"mid","payload":' + nested_text(MAX_BODY_DEPTH + 10) + "},null]"
    envelope["body"] = base64.b64encode(shallow.encode()).decode()
    envelope["headers"]["id"] = f"mid-body-{depth}"
    redis_client.lpush(DELIVERY_QUEUE, json.dumps(envelope))
    producer = Producer(redis_url)
    producer.enqueue(STORE, event(f"after-deep-{depth}"))
    producer.close()
    worker = start_worker(worker_env(redis_url, sandbox.base_url))

    store = DeadLetterStore(redis_client)
    wait_until(lambda: len(store) == 3, 60, what="three invalid_job entries")
    wait_until(lambda: sandbox.events(click_id=f"after-deep-{depth}"), 60, what="the good job")

    limit = Settings().dlq_error_max_chars
    entries = {entry.job_id: entry for entry in store.find_entries()}
    assert {entry.reason for entry in entries.values()} == {"invalid_job"}
    assert f"deep-body-{depth}" in entries and f"mid-body-{depth}" in entries
    for entry in entries.values():
        assert "nested" in entry.error, entry.error
        assert len(entry.payload["raw"]) <= limit
        assert entry.payload["raw_chars"] >= 2 * min(depth, MAX_BODY_DEPTH)
    log = worker.log()
    assert worker.process.poll() is None, log
    assert "RecursionError" not in log and "Unrecoverable error" not in log


# -- the dead-letter rendering --------------------------------------------------------------


@pytest.mark.processes
@DEPTHS
def test_an_entry_with_a_deep_payload_stores_reads_and_prints(
    depth: int, redis_url: str, redis_client: redis.Redis
) -> None:
    entry = DeadLetter(job_id=f"render-{depth}", store_id=STORE, payload=deep_event(depth),
                       reason="invalid_job")  # fmt: skip
    # In memory, as the CLI's helpers receive it: printed, not raised.
    assert "nested too deep to indent" in payload_text(entry.payload)
    assert show_text(entry) and list_row(entry)
    # Through the store and the real command.
    DeadLetterStore(redis_client).add(entry)
    loaded = DeadLetterStore(redis_client).get(entry.id)
    assert loaded is not None and loaded.payload["raw_chars"] > depth
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
    env["REDIS_URL"] = redis_url
    for args in (["show", entry.job_id], ["show", entry.job_id, "--json"], ["list"]):
        result = subprocess.run(
            [SNACKVIDEO, "dlq", *args], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert entry.job_id in result.stdout
