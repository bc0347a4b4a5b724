"""The storefront key never leaves the worker's configuration.

A full run (delivered, retried, and dead-lettered for 400, 404, no_api_key,
retries_exhausted and invalid_job) with a distinctive key; meanwhile every key in Redis is
read in full, message bodies decoded, and every pub/sub message (the task events Flower
reads) is recorded. The key must appear in none of them, nor in the worker's log.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from producers.keys import DELIVERY_QUEUE, IDEMPOTENCY_PREFIX
from producers.message import build_message
from tests.conftest import STORE, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import PubSubRecorder, event
from worker.deadletter.store import DeadLetterStore
from worker.keys import DLQ_ENTRIES, SCHEDULED, SCHEDULED_MESSAGES, UNACKED, delivered_key
from worker.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "pk_live_ZETA9q7Xw3Secret5e1"
SINGLE_SECRET = "pk_live_FALLBACK8r2Secret0c"
SECRET_FORMS = (SECRET, SINGLE_SECRET)


def expand(raw: bytes) -> list[bytes]:
    """``raw`` plus what hides inside it: base64 message bodies, base64 anything."""
    found = [raw]
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        document = None
    for text in strings_in(document):
        try:
            found.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def redis_contents(client: redis.Redis) -> list[tuple[bytes, bytes]]:
    """(key, one stored value) for every value of every key, whatever its type."""
    contents: list[tuple[bytes, bytes]] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        values: list[bytes] = [key]
        if kind == "string":
            values.append(client.get(key) or b"")
        elif kind == "list":
            values += client.lrange(key, 0, -1)
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                values += [field, value]
        elif kind == "set":
            values += list(client.smembers(key))
        elif kind == "zset":
            values += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in client.xrange(key):
                for field, value in fields.items():
                    values += [field, value]
        elif kind != "none":  # gone between SCAN and TYPE is fine; anything else is new
            pytest.fail(f"unexpected Redis type {kind} at {key!r}: teach this test to read it")
        contents += [(key, value) for value in values]
    return contents


def leaks(blobs: list[tuple[bytes, bytes]]) -> list[str]:
    found = []
    for where, blob in blobs:
        for form in expand(blob):
            for secret in SECRET_FORMS:
                if secret.encode() in form:
                    found.append(f"{where!r}: {secret}")
    return found


@pytest.fixture
def recorder(redis_url: str) -> Iterator[PubSubRecorder]:
    thread = PubSubRecorder(redis_url)
    thread.start()
    yield thread
    thread.stop()


def test_the_key_is_nowhere_in_redis_events_or_logs(
    redis_url: str,
    redis_client: redis.Redis,
    recorder: PubSubRecorder,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
) -> None:
    # store_gone has a key in the worker but is unknown to the sandbox: a 404.
    sandbox = start_sandbox("--fail-first", "1", "--always-fail", "clk-s-down", stores={
        STORE: SECRET, "store_single": SINGLE_SECRET,
    })  # fmt: skip
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS=json.dumps({STORE: SECRET, "store_gone": SECRET}),
        SNACKVIDEO_MAX_ATTEMPTS="3",
        # Task events on (off by default): what they carry is part of what is checked.
        SNACKVIDEO_TASK_EVENTS="on",
    )
    worker = start_worker(env)
    producer = Producer(redis_url)
    seen: list[tuple[bytes, bytes]] = []

    def settled(predicate: Callable[[], Any], what: str) -> None:
        # Scan while jobs move, not only at the end: parked and in-flight copies count too.
        def check() -> Any:
            seen.extend(redis_contents(redis_client))
            return predicate()

        wait_until(check, SETTLE_SECONDS, interval=0.02, what=what)

    dead = DeadLetterStore(redis_client)
    delivered = producer.enqueue(STORE, event("clk-s-ok"), idempotency_key="order-s-1")
    exhausted = producer.enqueue(STORE, event("clk-s-down"))
    missing = producer.enqueue("store_gone", event("clk-s-404"))
    no_key = producer.enqueue("store_nokey", event("clk-s-nokey"))
    junk = build_message({"job_id": "junk-1", "junk": True}, task_id="junk-1")
    redis_client.lpush(DELIVERY_QUEUE, junk)
    settled(
        lambda: redis_client.exists(delivered_key(delivered)) and len(dead) == 4,
        "delivered after a 503, and four dead letters",
    )

    # 400s: the sandbox's fault injection, now answering 400 instead of 503.
    sandbox.configure(fail_first=0, fail_status=400, always_fail=["clk-s-400"])
    refused = producer.enqueue(STORE, event("clk-s-400"))
    settled(lambda: len(dead) == 5, "the 400 dead letter")

    # The fallback key of single-store setups takes the same care.
    single_worker_env = {**env, "SCALEV_STOREFRONT_API_KEY": SINGLE_SECRET}
    worker.stop()
    worker = start_worker(single_worker_env)
    sandbox.configure(always_fail=[])
    single = producer.enqueue("store_single", event("clk-s-single"))
    settled(lambda: redis_client.exists(delivered_key(single)), "the fallback-key delivery")

    def idle() -> bool:
        with redis_client.pipeline(transaction=False) as pipe:
            pipe.llen(DELIVERY_QUEUE)
            pipe.hlen(UNACKED)
            pipe.zcard(SCHEDULED)
            return not any(pipe.execute())

    settled(idle, "everything to settle")
    producer.close()
    worker.stop()

    reasons = {entry.job_id: entry.reason for entry in dead.iter_entries()}
    assert reasons == {
        exhausted: "retries_exhausted",
        missing: "http_404",
        no_key: "no_api_key",
        "junk-1": "invalid_job",
        refused: "http_400",
    }
    assert sandbox.attempts("clk-s-ok") == 2  # retried once, then delivered
    assert sandbox.attempts("clk-s-single") == 1
    # The run really exercised the paths it claims to: sanity of what was scanned.
    assert any(key == DLQ_ENTRIES.encode() for key, _ in seen)
    assert any(key == SCHEDULED_MESSAGES.encode() for key, _ in seen)
    assert any(key.startswith(IDEMPOTENCY_PREFIX.encode()) for key, _ in seen)
    # Task events carry the kwargs Flower shows; the decoding above really reads them.
    event_texts = [form for _, blob in recorder.messages for form in expand(blob)]
    assert any(b"clk-s-ok" in text and b"task-received" in text for text in event_texts)

    assert leaks(seen + redis_contents(redis_client)) == []
    assert leaks(recorder.messages) == []
    log = worker.log() + "".join(
        path.read_text(errors="replace") for path in worker.log_path.parent.glob("worker-*.log")
    )
    for secret in SECRET_FORMS:
        assert secret not in log


def test_the_scan_would_find_a_leak(redis_client: redis.Redis) -> None:
    # The scanner itself is tested: a key hidden in a base64 message body is found.
    message = build_message({"payload": {"oops": SECRET}}, task_id="t")
    redis_client.hset("somewhere", "field", message)
    redis_client.zadd("ranked", {f"x{SINGLE_SECRET}": 1.0})
    found = leaks(redis_contents(redis_client))
    assert any("somewhere" in item for item in found)
    assert any("ranked" in item for item in found)


def test_settings_mask_keys_in_repr() -> None:
    settings = Settings.from_env(
        {
            "SCALEV_STOREFRONT_API_KEYS": json.dumps({STORE: SECRET}),
            "SCALEV_STOREFRONT_API_KEY": SINGLE_SECRET,
        }
    )
    assert settings.api_key_for(STORE) == SECRET
    assert settings.api_key_for("other") == SINGLE_SECRET
    for shown in (repr(settings), str(settings), settings.model_dump_json(), f"{settings!r}"):
        for secret in SECRET_FORMS:
            assert secret not in shown
    assert "**********" in repr(settings)


def test_a_bad_configuration_does_not_echo_the_key() -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({"SCALEV_STOREFRONT_API_KEYS": f"{{'{STORE}': '{SECRET}'}}"})
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError) as info:
        Settings.from_env({"SCALEV_STOREFRONT_API_KEYS": json.dumps({STORE: [SECRET]})})
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError) as info:
        Settings.from_env({"SNACKVIDEO_MAX_ATTEMPTS": SECRET})
    assert SECRET not in str(info.value)
    assert "SNACKVIDEO_MAX_ATTEMPTS" in str(info.value)
