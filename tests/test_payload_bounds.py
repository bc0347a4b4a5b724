"""The payload size bound (``SNACKVIDEO_MAX_PAYLOAD_BYTES``) and the batch bound, at every
entry point: ``enqueue``, ``enqueue_many``, ``snackvideo enqueue`` (each line and the
whole input) and a real worker handed an oversize job that skipped ``enqueue``.

Size is what the worker would POST: compact JSON, UTF-8 (``producers.models.request_body``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import InvalidEvent, Producer
from producers.enqueue import MAX_BATCH_PAYLOADS
from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from producers.models import (
    MAX_PAYLOAD_BYTES,
    check_payload_size,
    request_body,
    validate_job,
    validate_payload,
)
from tests.conftest import PYTHON, ROOT, STORE, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event
from worker.cli.enqueue import MAX_INPUT_BYTES
from worker.deadletter.store import DeadLetterStore
from worker.keys import DLQ_ENTRIES, invalid_entry_id
from worker.settings import Settings

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
FIVE_MIB = 5 * 1024 * 1024


def sized(size: int, click_id: str = "big") -> dict[str, Any]:
    """A valid event whose request body is exactly ``size`` bytes (an extra key pads it)."""
    payload = event(click_id, pad="")
    payload["pad"] = "x" * (size - len(request_body(payload)))
    assert len(request_body(payload)) == size
    return payload


def too_big_message(size: int) -> str:
    return f"payload: {size} bytes, more than SNACKVIDEO_MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES})"


# -- the models -----------------------------------------------------------------------------


def test_a_payload_at_the_bound_passes_and_one_byte_more_is_refused_naming_the_limit() -> None:
    assert validate_payload(sized(MAX_PAYLOAD_BYTES))
    with pytest.raises(InvalidEvent) as info:
        validate_payload(sized(MAX_PAYLOAD_BYTES + 1))
    assert str(info.value) == "invalid event: " + too_big_message(MAX_PAYLOAD_BYTES + 1)
    assert info.value.fields == ["payload"]


def test_size_is_counted_in_utf8_bytes_of_the_compact_json_not_characters() -> None:
    payload = event("é", note="日本語 " * 10)
    size = len(request_body(payload))
    assert size > len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    assert check_payload_size(payload, size) == size
    with pytest.raises(InvalidEvent, match=f"payload: {size} bytes, more than"):
        check_payload_size(payload, size - 1)
    with pytest.raises(InvalidEvent, match=f"payload: {size} bytes"):
        validate_payload(payload, max_bytes=size - 1)


def test_the_worker_s_job_check_applies_the_same_bound() -> None:
    kwargs = {"job_id": "j", "store_id": STORE, "payload": sized(FIVE_MIB)}
    kwargs.update(enqueued_at=time.time(), schema=1)
    with pytest.raises(InvalidEvent) as info:
        validate_job(kwargs)
    assert str(info.value) == "job j: invalid event: " + too_big_message(FIVE_MIB)


# -- enqueue and enqueue_many against a real Redis ------------------------------------------


def test_enqueue_refuses_a_5_mib_payload_and_writes_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    producer = Producer(redis_url)
    with pytest.raises(InvalidEvent) as info:
        producer.enqueue(STORE, sized(FIVE_MIB))
    assert str(info.value) == "invalid event: " + too_big_message(FIVE_MIB)
    assert redis_client.dbsize() == 0
    producer.close()


def test_enqueue_many_names_the_oversize_payload_and_writes_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    producer = Producer(redis_url)
    payloads = [event("ok-0"), sized(MAX_PAYLOAD_BYTES + 10), event("ok-2")]
    with pytest.raises(InvalidEvent) as info:
        producer.enqueue_many(STORE, payloads)
    assert info.value.problems == [
        ("payloads[1].payload", too_big_message(MAX_PAYLOAD_BYTES + 10).removeprefix("payload: "))
    ]
    assert redis_client.dbsize() == 0
    producer.close()


def test_enqueue_many_refuses_a_batch_over_the_count_bound(
    redis_url: str, redis_client: redis.Redis
) -> None:
    producer = Producer(redis_url)
    too_many = [event(f"c-{i}") for i in range(MAX_BATCH_PAYLOADS + 1)]
    with pytest.raises(InvalidEvent, match=f"payloads: {MAX_BATCH_PAYLOADS + 1} in one call"):
        producer.enqueue_many(STORE, too_many)
    assert redis_client.dbsize() == 0
    assert len(producer.enqueue_many(STORE, too_many[:MAX_BATCH_PAYLOADS])) == MAX_BATCH_PAYLOADS
    producer.close()


def test_the_bound_is_read_from_the_environment(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNACKVIDEO_MAX_PAYLOAD_BYTES", "2000")
    producer = Producer(redis_url)
    assert producer.max_payload_bytes == 2000
    with pytest.raises(InvalidEvent, match=r"payload: 2001 bytes, more than .* \(2000\)"):
        producer.enqueue(STORE, sized(2001))
    producer.enqueue(STORE, sized(2000))
    assert redis_client.llen(DELIVERY_QUEUE) == 1
    producer.close()


# -- the CLI --------------------------------------------------------------------------------


def run_cli(redis_url: str, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
    env["REDIS_URL"] = redis_url
    return subprocess.run(
        [SNACKVIDEO, "enqueue", "--store", STORE, *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.processes
def test_the_cli_reports_an_oversize_line_by_number_and_enqueues_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    big = MAX_PAYLOAD_BYTES + 1
    lines = [event("cli-1"), sized(big, "cli-2"), event("cli-3")]
    stdin = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()

    result = run_cli(redis_url, stdin=stdin)

    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert f"error: line 2: {too_big_message(big)}" in stderr
    assert "nothing enqueued: 1 problem(s)" in stderr
    assert redis_client.llen(DELIVERY_QUEUE) == 0


@pytest.mark.processes
def test_the_cli_refuses_an_input_over_its_bound_before_reading_it_all(
    redis_url: str, redis_client: redis.Redis
) -> None:
    line = (json.dumps(event("bulk"), separators=(",", ":")) + "\n").encode()
    stdin = line * (MAX_INPUT_BYTES // len(line) + 1)
    assert len(stdin) > MAX_INPUT_BYTES

    result = run_cli(redis_url, stdin=stdin)

    assert result.returncode == 1
    assert f"error: input: more than {MAX_INPUT_BYTES} bytes" in result.stderr.decode()
    assert redis_client.llen(DELIVERY_QUEUE) == 0


# -- a real worker --------------------------------------------------------------------------


@pytest.mark.processes
def test_a_worker_dead_letters_an_oversize_job_with_its_text_cut_and_never_posts_it(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    # Pushed as a message, as anything with access to Redis could: enqueue would refuse it.
    kwargs = {
        "job_id": "oversize-job",
        "store_id": STORE,
        "payload": sized(FIVE_MIB, "oversize"),
        "enqueued_at": time.time(),
        "schema": 1,
    }
    redis_client.lpush(DELIVERY_QUEUE, build_message(kwargs, task_id="oversize-job"))
    producer = Producer(redis_url)
    producer.enqueue(STORE, event("after-oversize"))
    producer.close()
    worker = start_worker(worker_env(redis_url, sandbox.base_url))

    store = DeadLetterStore(redis_client)
    entry = wait_until(
        lambda: store.get(invalid_entry_id("oversize-job", 0)), 60, what="the oversize entry"
    )
    wait_until(lambda: sandbox.events(click_id="after-oversize"), 60, what="the next job")

    limit = Settings().dlq_error_max_chars
    assert entry.reason == "invalid_job"
    assert entry.error == "job oversize-job: invalid event: " + too_big_message(FIVE_MIB)
    assert entry.payload["raw_chars"] == FIVE_MIB  # ASCII: characters are bytes here
    assert len(entry.payload["raw"]) == limit
    assert entry.payload["raw"].startswith('{"click_id":"oversize"')
    assert len(redis_client.hget(DLQ_ENTRIES, entry.id) or b"") < 2 * limit + 1000
    assert sandbox.attempts("oversize") == 0
    assert worker.process.poll() is None
