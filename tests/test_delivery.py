"""End to end: producer -> Redis -> real celery worker processes -> the sandbox over HTTP.

Every outcome row of the README's table that the core path owns, observed from the
outside: what the sandbox received, what Redis holds afterwards, what the worker logged.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from producers.models import JOB_SCHEMA_VERSION
from tests.conftest import STORE, STORE_KEY, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import PubSubRecorder, event, log_lines, wait_idle
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.keys import delivered_key, entry_id

pytestmark = pytest.mark.integration


@pytest.fixture
def producer(redis_url: str) -> Iterator[Producer]:
    made = Producer(redis_url)
    yield made
    made.close()


@pytest.fixture
def recorder(redis_url: str) -> Iterator[PubSubRecorder]:
    thread = PubSubRecorder(redis_url)
    thread.start()
    yield thread
    thread.stop()


def dead_letter(client: redis.Redis, job_id: str) -> DeadLetter | None:
    return DeadLetterStore(client).get(entry_id(job_id, 0))


def wait_dead_letter(client: redis.Redis, job_id: str) -> DeadLetter:
    entry: DeadLetter = wait_until(
        lambda: dead_letter(client, job_id), SETTLE_SECONDS, what=f"dead letter of {job_id}"
    )
    return entry


def wait_log(worker: Worker, *needles: str, count: int = 1) -> list[str]:
    lines: list[str] = wait_until(
        lambda: len(log_lines(worker, *needles)) >= count and log_lines(worker, *needles),
        SETTLE_SECONDS,
        what=f"{count} worker log line(s) with {needles}",
    )
    return lines


def retried_waits(worker: Worker, job_id: str) -> list[float]:
    return [
        float(re.search(r"\bwait=([0-9.]+)", line).group(1))  # type: ignore[union-attr]
        for line in log_lines(worker, "outcome=retried", f"job_id={job_id}")
    ]


def expected_failure(worker: Worker, job_id: str) -> str:
    """The line Celery logs when the task ended in FAILURE with ``DeadLettered``."""
    (line,) = wait_log(worker, f"[{job_id}] raised expected: DeadLettered(")
    return line


def message_with(kwargs: dict[str, Any], *, args: list[Any] | None = None) -> str:
    """A queue message as the producer builds it, optionally with positional args."""
    task_id = kwargs.get("job_id") if isinstance(kwargs.get("job_id"), str) else str(uuid.uuid4())
    raw = build_message(kwargs, task_id=str(task_id))
    if args is None:
        return raw
    envelope = json.loads(raw)
    _, body_kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    envelope["body"] = base64.b64encode(json.dumps([args, body_kwargs, embed]).encode()).decode()
    return json.dumps(envelope)


# -- delivered ----------------------------------------------------------------------------


def test_a_204_is_delivered_exactly_once(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    recorder: PubSubRecorder,
) -> None:
    # Task events on, as for a deployment that shows Flower from a worker's first second
    # (off by default: a running Flower switches them on by itself).
    worker = start_worker(worker_env(redis_url, sandbox.base_url, SNACKVIDEO_TASK_EVENTS="on"))
    payload = event("clk-204", event_source_url="https://shop.example", note="ok ✓")
    job_id = producer.enqueue(STORE, payload)

    wait_until(lambda: redis_client.exists(delivered_key(job_id)), SETTLE_SECONDS, what="marker")
    wait_idle(redis_client, SETTLE_SECONDS)

    assert sandbox.attempts("clk-204") == 1
    (received,) = sandbox.events(click_id="clk-204")
    assert received["store_id"] == STORE
    assert received["body"] == payload
    assert len(DeadLetterStore(redis_client)) == 0
    (line,) = log_lines(worker, "outcome=delivered", f"job_id={job_id}")
    assert "status=204" in line
    # The task ended in SUCCESS (Flower's view; Celery's own "succeeded" log line is off).
    wait_until(
        lambda: any(
            e["type"] == "task-succeeded" and e["uuid"] == job_id for e in recorder.task_events()
        ),
        SETTLE_SECONDS,
        what="the task-succeeded event",
    )


def test_a_redelivered_message_is_not_sent_again(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    job_id = producer.enqueue(STORE, event("clk-again"))
    (raw,) = redis_client.lrange(DELIVERY_QUEUE, 0, -1)  # the very message, before it is taken
    worker = start_worker(worker_env(redis_url, sandbox.base_url))
    wait_until(lambda: redis_client.exists(delivered_key(job_id)), SETTLE_SECONDS, what="marker")
    wait_idle(redis_client, SETTLE_SECONDS)

    redis_client.lpush(DELIVERY_QUEUE, raw)  # what a lost ack or a restore would do
    wait_log(worker, "outcome=duplicate", f"job_id={job_id}")
    wait_idle(redis_client, SETTLE_SECONDS)

    assert sandbox.attempts("clk-again") == 1
    assert len(sandbox.events(click_id="clk-again")) == 1
    assert len(DeadLetterStore(redis_client)) == 0


# -- dead-lettered at once ----------------------------------------------------------------


def test_a_400_is_dead_lettered_after_one_attempt(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
) -> None:
    # The producer validates with the sandbox's own schema, so no valid job draws a 400
    # on its merits; the sandbox's fault injection answers 400 for these click ids instead.
    sandbox = start_sandbox("--always-fail", "clk-refused-", "--fail-status", "400")
    worker = start_worker(worker_env(redis_url, sandbox.base_url))
    job_id = producer.enqueue(STORE, event("clk-refused-1"))

    entry = wait_dead_letter(redis_client, job_id)
    wait_idle(redis_client, SETTLE_SECONDS)

    assert entry.reason == "http_400"
    assert entry.status_code == 400
    assert "sandbox injected failure" in entry.error  # the response body
    assert entry.attempts == 1
    assert entry.payload == event("clk-refused-1")
    assert sandbox.attempts("clk-refused-1") == 1
    assert sandbox.stats()["by_status"] == {"400": 1}
    assert redis_client.exists(delivered_key(job_id)) == 0
    line = expected_failure(worker, job_id)
    assert "reason=http_400" in line and "status=400" in line and "click_id=clk-refused-1" in line


def test_a_404_is_dead_lettered_after_one_attempt(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    recorder: PubSubRecorder,
) -> None:
    # The worker holds a key for a store the sandbox (Scalev) does not know.
    keys = json.dumps({STORE: STORE_KEY, "store_gone": "pk_gone_0001"})
    env = worker_env(
        redis_url, sandbox.base_url, SCALEV_STOREFRONT_API_KEYS=keys, SNACKVIDEO_TASK_EVENTS="on"
    )
    worker = start_worker(env)
    job_id = producer.enqueue("store_gone", event("clk-gone"))

    entry = wait_dead_letter(redis_client, job_id)
    wait_idle(redis_client, SETTLE_SECONDS)

    assert entry.reason == "http_404"
    assert entry.status_code == 404
    assert entry.store_id == "store_gone"
    assert "store_not_found" in entry.error
    assert entry.attempts == 1
    stats = sandbox.stats()
    assert stats["requests"] == 1
    assert stats["by_status"] == {"404": 1}
    line = expected_failure(worker, job_id)
    assert "reason=http_404" in line and "status=404" in line and "click_id=clk-gone" in line
    # Flower builds its "failed" list from this event.
    failed = wait_until(
        lambda: [
            e for e in recorder.task_events() if e["type"] == "task-failed" and e["uuid"] == job_id
        ],
        SETTLE_SECONDS,
        what="the task-failed event",
    )
    assert "DeadLettered" in failed[0]["exception"]
    assert "reason=http_404 status=404 click_id=clk-gone" in failed[0]["exception"]


def test_a_store_without_a_key_is_dead_lettered_without_a_request(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(worker_env(redis_url, sandbox.base_url))
    job_id = producer.enqueue("store_unconfigured", event("clk-nokey"))

    entry = wait_dead_letter(redis_client, job_id)
    wait_idle(redis_client, SETTLE_SECONDS)

    assert entry.reason == "no_api_key"
    assert entry.status_code is None
    assert entry.attempts == 0
    assert sandbox.stats()["requests"] == 0
    line = expected_failure(worker, job_id)
    assert "reason=no_api_key" in line and "click_id=clk-nokey" in line


# -- retried ------------------------------------------------------------------------------


def test_a_flaky_503_is_retried_then_delivered(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
) -> None:
    sandbox = start_sandbox("--fail-first", "2")
    worker = start_worker(worker_env(redis_url, sandbox.base_url))
    job_id = producer.enqueue(STORE, event("clk-flaky"))

    wait_until(lambda: redis_client.exists(delivered_key(job_id)), SETTLE_SECONDS, what="marker")
    wait_idle(redis_client, SETTLE_SECONDS)

    assert sandbox.attempts("clk-flaky") == 3
    assert len(sandbox.events(click_id="clk-flaky")) == 1
    assert sandbox.stats()["by_status"] == {"204": 1, "503": 2}
    assert len(DeadLetterStore(redis_client)) == 0
    assert len(retried_waits(worker, job_id)) == 2
    (line,) = log_lines(worker, "outcome=delivered", f"job_id={job_id}")
    assert "attempt=3" in line


def test_an_always_503_is_dead_lettered_after_max_attempts_with_growing_waits(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
) -> None:
    sandbox = start_sandbox("--always-fail", "clk-down-")
    worker = start_worker(worker_env(redis_url, sandbox.base_url, SNACKVIDEO_MAX_ATTEMPTS="4"))
    job_id = producer.enqueue(STORE, event("clk-down-1"))

    entry = wait_dead_letter(redis_client, job_id)
    wait_idle(redis_client, SETTLE_SECONDS)

    assert entry.reason == "retries_exhausted"
    assert entry.status_code == 503
    assert entry.attempts == 4
    assert "sandbox injected failure" in entry.error
    assert sandbox.attempts("clk-down-1") == 4
    waits = retried_waits(worker, job_id)
    assert len(waits) == 3  # attempts 1..3 are followed by a wait; the 4th dead-letters
    assert waits[0] < waits[1] < waits[2], waits
    line = expected_failure(worker, job_id)
    assert "reason=retries_exhausted" in line and "status=503" in line
    assert "click_id=clk-down-1" in line


# -- messages the worker cannot read ------------------------------------------------------


def test_garbage_is_dead_lettered_while_the_worker_keeps_delivering(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    good_kwargs = {
        "job_id": "job-with-args",
        "store_id": STORE,
        "payload": event("clk-args"),
        "enqueued_at": 1_700_000_000.0,
        "schema": JOB_SCHEMA_VERSION,
    }
    nonsense = message_with({"hello": "world", "n": [1, 2, 3]})
    nonsense_task_id = json.loads(nonsense)["headers"]["id"]
    garbage = [
        nonsense,
        message_with(good_kwargs, args=["positional", 1]),
        message_with({**good_kwargs, "job_id": "job-from-the-future", "schema": 99}),
        message_with({**good_kwargs, "job_id": "job-bad-payload", "payload": {"click_id": 1}}),
    ]
    redis_client.lpush(DELIVERY_QUEUE, *garbage)  # consumed before the good job below
    worker = start_worker(worker_env(redis_url, sandbox.base_url))
    good_id = producer.enqueue(STORE, event("clk-after-garbage"))

    wait_until(lambda: redis_client.exists(delivered_key(good_id)), SETTLE_SECONDS, what="good")
    store = DeadLetterStore(redis_client)
    wait_until(lambda: len(store) == 4, SETTLE_SECONDS, what="4 invalid_job entries")
    wait_idle(redis_client, SETTLE_SECONDS)

    entries = list(store.iter_entries())
    assert {entry.reason for entry in entries} == {"invalid_job"}
    by_job = {entry.job_id: entry for entry in entries}
    assert "schema" in by_job["job-from-the-future"].error
    assert "args" in by_job["job-with-args"].error
    assert "payload.click_id" in by_job["job-bad-payload"].error
    # No job id in it: named by its Celery task id, as Flower shows it.
    assert "hello" in by_job[nonsense_task_id].error
    # Entries of unreadable messages have ids of their own: "job-with-args-r0" would
    # tell a real job-with-args that it is parked already.
    assert by_job["job-with-args"].id == "job-with-args-r0-invalid"
    assert {entry.id for entry in entries} == {f"{job_id}-r0-invalid" for job_id in by_job}
    assert sandbox.attempts("clk-after-garbage") == 1
    assert sandbox.attempts("clk-args") == 0  # a message with args is not sent either
    assert worker.process.poll() is None, worker.log()
    assert len(log_lines(worker, "raised expected: DeadLettered(", "reason=invalid_job")) == 4
    assert not log_lines(worker, "raised unexpected")


def message_with_body(body: bytes, task_id: str) -> str:
    """A well-formed envelope around a body of the caller's choosing."""
    envelope = json.loads(build_message({"job_id": task_id}, task_id=task_id))
    envelope["body"] = base64.b64encode(body).decode()
    return json.dumps(envelope)


def test_a_body_celery_cannot_unpack_is_dead_lettered_and_not_fatal(
    redis_url: str,
    redis_client: redis.Redis,
    producer: Producer,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    # Celery unpacks [args, kwargs, embed] in the worker's main process: a body of another
    # shape used to kill the worker, and the restored message then killed the next one.
    bodies = {
        "g-dict": b'{"a": 1}',
        "g-short": b"[[], {}]",
        "g-number": b"5",
        "g-kwargs-list": b"[[], [1, 2], {}]",
        "g-args-number": b"[5, {}, {}]",
        "g-not-json": b"not json at all",
    }
    redis_client.lpush(
        DELIVERY_QUEUE, *(message_with_body(body, task_id) for task_id, body in bodies.items())
    )
    worker = start_worker(worker_env(redis_url, sandbox.base_url), concurrency=1)
    good_id = producer.enqueue(STORE, event("clk-after-bodies"))

    wait_until(lambda: redis_client.exists(delivered_key(good_id)), SETTLE_SECONDS, what="good")
    store = DeadLetterStore(redis_client)
    wait_until(lambda: len(store) == len(bodies), SETTLE_SECONDS, what="dead letters")
    wait_idle(redis_client, SETTLE_SECONDS)

    entries = {entry.job_id: entry for entry in store.iter_entries()}
    assert set(entries) == set(bodies)
    assert {entry.reason for entry in entries.values()} == {"invalid_job"}
    assert "not valid JSON" in entries["g-not-json"].error
    assert "[args, kwargs, embed]" in entries["g-dict"].error
    assert "kwargs" in entries["g-kwargs-list"].error
    assert worker.process.poll() is None, worker.log()
    assert "Unrecoverable error" not in worker.log()


def test_a_job_older_than_max_age_is_dead_lettered_as_expired_without_a_request(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    kwargs = {
        "job_id": "job-stale",
        "store_id": STORE,
        "payload": event("clk-stale"),
        "enqueued_at": time.time() - 3_600,
        "schema": JOB_SCHEMA_VERSION,
    }
    redis_client.lpush(DELIVERY_QUEUE, build_message(kwargs, task_id="job-stale"))
    worker = start_worker(worker_env(redis_url, sandbox.base_url, SNACKVIDEO_MAX_AGE_SECONDS="600"))

    entry = wait_dead_letter(redis_client, "job-stale")
    wait_idle(redis_client, SETTLE_SECONDS)

    assert entry.reason == "expired"
    assert entry.status_code is None
    assert entry.enqueued_at == kwargs["enqueued_at"]
    assert sandbox.stats()["requests"] == 0
    assert "reason=expired" in expected_failure(worker, "job-stale")
