"""The producer against a real Redis: what lands on the queue, idempotency, failure bounds."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import producers
from producers import EnqueueError, InvalidEvent, Producer
from producers.enqueue import MAX_BATCH_PAYLOADS, reset_default_producer
from producers.keys import DELIVER_TASK, DELIVERY_QUEUE, idempotency_key
from producers.models import JOB_SCHEMA_VERSION
from tests.conftest import STORE, RedisServer
from tests.queue_helpers import event, queued

JOB_KWARGS = {"job_id", "store_id", "payload", "enqueued_at", "schema"}


@pytest.fixture
def producer(redis_url: str) -> Iterator[Producer]:
    made = Producer(redis_url)
    yield made
    made.close()


def queue_length(client: redis.Redis) -> int:
    return int(client.llen(DELIVERY_QUEUE))


# -- the message on the queue -------------------------------------------------------------


def test_the_message_is_the_contract_and_nothing_else(
    producer: Producer, redis_client: redis.Redis
) -> None:
    payload = event(
        "clk-contract",
        event_source_url="https://shop.example",  # pydantic would add a slash
        note="bakso ✓",
        extra_top_level={"kept": [1, 2.5, None]},
    )
    before = time.time()
    job_id = producer.enqueue(STORE, payload)

    (message,) = queued(redis_client)
    assert message.headers["task"] == DELIVER_TASK == "snackvideo.deliver"
    assert message.headers["id"] == job_id
    assert message.envelope["properties"]["correlation_id"] == job_id
    assert message.envelope["properties"]["delivery_info"]["routing_key"] == DELIVERY_QUEUE
    assert message.args == []
    assert set(message.kwargs) == JOB_KWARGS
    assert message.kwargs["job_id"] == job_id
    assert message.kwargs["store_id"] == STORE
    assert message.kwargs["schema"] == JOB_SCHEMA_VERSION == 1
    assert before <= message.kwargs["enqueued_at"] <= time.time()
    assert message.kwargs["payload"] == payload
    assert list(message.kwargs["payload"]) == list(payload)
    assert message.kwargs["payload"]["event_source_url"] == "https://shop.example"
    assert message.embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert uuid.UUID(job_id)


def test_the_message_names_no_key(producer: Producer, redis_client: redis.Redis) -> None:
    producer.enqueue(STORE, event("clk-nokey"))
    (raw,) = redis_client.lrange(DELIVERY_QUEUE, 0, -1)
    (message,) = queued(redis_client)
    text = raw.decode() + repr(message.kwargs) + message.headers["kwargsrepr"]
    for word in ("api_key", "Api-Key", "apikey", "storefront"):
        assert word.lower() not in text.lower()


def test_the_input_payload_is_not_changed(producer: Producer) -> None:
    payload = event("clk-same")
    snapshot = repr(payload)
    producer.enqueue(STORE, payload)
    assert repr(payload) == snapshot


def test_kwargsrepr_shows_the_job_for_flower(producer: Producer, redis_client: redis.Redis) -> None:
    job_id = producer.enqueue(STORE, event("clk-flower"))
    (message,) = queued(redis_client)
    assert job_id in message.headers["kwargsrepr"]
    assert "clk-flower" in message.headers["kwargsrepr"]


# -- idempotency --------------------------------------------------------------------------


def test_an_idempotency_key_returns_the_first_id_and_pushes_nothing_more(
    producer: Producer, redis_client: redis.Redis
) -> None:
    first = producer.enqueue(STORE, event("clk-idem-1"), idempotency_key="order-1001-purchase")
    again = producer.enqueue(STORE, event("clk-idem-2"), idempotency_key="order-1001-purchase")
    assert again == first
    (message,) = queued(redis_client)
    assert message.kwargs["payload"]["click_id"] == "clk-idem-1"
    key = idempotency_key(STORE, "order-1001-purchase")
    assert redis_client.get(key) == first.encode()
    ttl = int(redis_client.ttl(key))
    assert 47 * 3600 < ttl <= 48 * 3600


def test_the_same_key_in_another_store_is_another_job(
    producer: Producer, redis_client: redis.Redis
) -> None:
    first = producer.enqueue(STORE, event("clk-a"), idempotency_key="order-1")
    other = producer.enqueue("store_other", event("clk-b"), idempotency_key="order-1")
    assert other != first
    assert [m.kwargs["store_id"] for m in queued(redis_client)] == [STORE, "store_other"]


def test_without_a_key_every_call_is_a_new_job(
    producer: Producer, redis_client: redis.Redis
) -> None:
    ids = {producer.enqueue(STORE, event("clk-same")) for _ in range(3)}
    assert len(ids) == 3
    assert queue_length(redis_client) == 3


def test_a_key_repeated_inside_one_batch_pushes_once(
    producer: Producer, redis_client: redis.Redis
) -> None:
    ids = producer.enqueue_many(
        STORE,
        [event("clk-1"), event("clk-2"), event("clk-3")],
        idempotency_keys=["k", None, "k"],
    )
    assert ids[0] == ids[2] != ids[1]
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == ids[:2]


@pytest.mark.parametrize("bad", ["", 17, "order-\ud800"])
def test_a_bad_idempotency_key_is_invalid(
    producer: Producer, redis_client: redis.Redis, bad: Any
) -> None:
    with pytest.raises(InvalidEvent, match="idempotency_key"):
        producer.enqueue(STORE, event("clk-1"), idempotency_key=bad)
    assert queue_length(redis_client) == 0


def test_outcomes_say_which_events_this_call_queued(
    producer: Producer, redis_client: redis.Redis
) -> None:
    held = producer.enqueue(STORE, event("clk-0"), idempotency_key="order-0")
    outcomes = producer.enqueue_many_outcomes(
        STORE,
        [event("clk-0"), event("clk-1"), event("clk-2"), event("clk-1")],
        idempotency_keys=["order-0", "order-1", None, "order-1"],
    )
    assert [o.queued_now for o in outcomes] == [False, True, True, False]
    assert outcomes[0].job_id == held
    assert outcomes[3].job_id == outcomes[1].job_id
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [
        held,
        outcomes[1].job_id,
        outcomes[2].job_id,
    ]


# -- batches ------------------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """A real connection that counts the replies it reads: one per round trip."""

    replies = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        type(self).replies += 1
        return super().read_response(*args, **kwargs)


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def test_enqueue_many_is_one_round_trip(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, port=redis_server.port, host="127.0.0.1"
    )
    counted = redis.Redis(connection_pool=pool)
    producer = Producer(redis_server.url, client=counted)
    producer.enqueue(STORE, event("clk-warm-up"))  # loads the script, opens the connection
    CountingConnection.replies = 0
    before = commandstats(redis_client)

    ids = producer.enqueue_many(STORE, [event(f"clk-{i}") for i in range(100)])

    after = commandstats(redis_client)
    producer.close()
    assert CountingConnection.replies == 1
    # Seen from the server (script-internal commands count too): one EVALSHA, one LPUSH.
    assert after["evalsha"] - before["evalsha"] == 1
    assert after["lpush"] - before["lpush"] == 1
    assert len(ids) == len(set(ids)) == 100
    assert queue_length(redis_client) == 101
    assert [m.kwargs["job_id"] for m in queued(redis_client)][1:] == ids


BIG_BATCH = MAX_BATCH_PAYLOADS  # the largest batch one call takes


def test_the_largest_batch_is_pushed_whole_and_in_order(
    producer: Producer, redis_client: redis.Redis
) -> None:
    payloads = [event(f"clk-{i}") for i in range(BIG_BATCH)]
    keys = [f"order-{i}" for i in range(BIG_BATCH)]
    ids = producer.enqueue_many(STORE, payloads, idempotency_keys=keys)
    assert len(set(ids)) == BIG_BATCH
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == ids
    # A retry of the same batch is recognised item by item and pushes nothing.
    assert producer.enqueue_many(STORE, payloads, idempotency_keys=keys) == ids
    assert queue_length(redis_client) == BIG_BATCH


def test_a_refused_big_batch_releases_every_key(
    producer: Producer, redis_client: redis.Redis
) -> None:
    redis_client.set(DELIVERY_QUEUE, "not a list")
    payloads = [event(f"clk-{i}") for i in range(BIG_BATCH)]
    keys = [f"order-{i}" for i in range(BIG_BATCH)]
    with pytest.raises(EnqueueError, match="WRONGTYPE"):
        producer.enqueue_many(STORE, payloads, idempotency_keys=keys)
    assert list(redis_client.scan_iter("snackvideo:idem:*", count=1000)) == []


def test_one_bad_payload_refuses_the_whole_batch(
    producer: Producer, redis_client: redis.Redis
) -> None:
    payloads = [event(f"clk-{i}") for i in range(5)]
    payloads[3] = event("clk-3", events=[])
    payloads[4]["variants"] = [{"variant_unique_id": "v", "quantity": 0}]
    with pytest.raises(InvalidEvent) as info:
        producer.enqueue_many(STORE, payloads, idempotency_keys=[f"k{i}" for i in range(5)])
    assert "payloads[3].events" in info.value.fields
    assert "payloads[4].variants.0.quantity" in info.value.fields
    assert "payloads[3].events: " in str(info.value)
    assert redis_client.dbsize() == 0


def test_an_invalid_single_event_names_the_field(
    producer: Producer, redis_client: redis.Redis
) -> None:
    with pytest.raises(InvalidEvent) as info:
        producer.enqueue(STORE, {"click_id": 5, "events": [{"event_name": "x"}]})
    assert info.value.fields == ["click_id"]
    assert isinstance(info.value, ValueError)
    assert redis_client.dbsize() == 0


def test_text_that_is_not_unicode_is_invalid_not_a_crash(
    producer: Producer, redis_client: redis.Redis
) -> None:
    # A lone surrogate passes a str check but cannot be written as UTF-8, neither into
    # the message body nor onto the wire to Scalev.
    with pytest.raises(InvalidEvent) as info:
        producer.enqueue(STORE, event("clk-\ud800"))
    assert "click_id" in info.value.fields
    with pytest.raises(InvalidEvent):
        producer.enqueue(STORE, event("clk-1", note={"x": "\udcff"}))
    assert redis_client.dbsize() == 0


def test_a_bad_store_id_is_invalid(producer: Producer, redis_client: redis.Redis) -> None:
    with pytest.raises(InvalidEvent, match="store_id"):
        producer.enqueue("a/b", event("clk-1"))
    assert redis_client.dbsize() == 0


def test_an_empty_batch_touches_nothing(producer: Producer, redis_client: redis.Redis) -> None:
    assert producer.enqueue_many(STORE, []) == []
    assert redis_client.dbsize() == 0


def test_the_module_functions_use_redis_url(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    reset_default_producer()
    try:
        job_id = producers.enqueue(STORE, event("clk-env"), idempotency_key="env-1")
        ids = producers.enqueue_many(STORE, [event("clk-env-2")], idempotency_keys=["env-1"])
    finally:
        reset_default_producer()
    assert ids == [job_id]
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [job_id]


# -- Redis failures -----------------------------------------------------------------------


def test_redis_stopped_raises_enqueue_error_within_the_bound_and_writes_nothing(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(appendonly=True)
    producer = Producer(server.url, timeout_seconds=1.0)
    producer.enqueue(STORE, event("clk-before"))  # the connection was up and in use
    server.stop()

    started = time.monotonic()
    with pytest.raises(EnqueueError) as info:
        producer.enqueue(STORE, event("clk-lost"), idempotency_key="order-lost")
    elapsed = time.monotonic() - started
    producer.close()
    # The retry policy's bound (timeout_seconds), with generous slack for a loaded machine.
    assert elapsed < 1.0 + 5.0
    assert "within 1s" in str(info.value)
    assert isinstance(info.value.__cause__, redis.ConnectionError)

    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        assert [m.kwargs["payload"]["click_id"] for m in queued(client)] == ["clk-before"]
        assert client.exists(idempotency_key(STORE, "order-lost")) == 0
    finally:
        client.close()


def test_enqueue_many_with_redis_stopped_raises_and_recovers(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(appendonly=True)
    producer = Producer(server.url, timeout_seconds=1.0)
    server.stop()
    with pytest.raises(EnqueueError):
        producer.enqueue_many(STORE, [event("clk-1"), event("clk-2")], idempotency_keys=["a", "b"])
    server.start()
    # The same producer works again once Redis is back; the keys were never claimed.
    ids = producer.enqueue_many(
        STORE, [event("clk-1"), event("clk-2")], idempotency_keys=["a", "b"]
    )
    producer.close()
    client = redis.Redis.from_url(server.url)
    try:
        assert [m.kwargs["job_id"] for m in queued(client)] == ids
    finally:
        client.close()


def test_a_refused_push_releases_the_idempotency_key(
    producer: Producer, redis_client: redis.Redis
) -> None:
    # A string where the queue list should be: LPUSH answers WRONGTYPE inside the script.
    redis_client.set(DELIVERY_QUEUE, "not a list")
    key = idempotency_key(STORE, "order-7")
    with pytest.raises(EnqueueError, match="WRONGTYPE"):
        producer.enqueue(STORE, event("clk-7"), idempotency_key="order-7")
    assert redis_client.exists(key) == 0
    with pytest.raises(EnqueueError):
        producer.enqueue_many(
            STORE, [event("clk-8"), event("clk-9")], idempotency_keys=["order-8", "order-9"]
        )
    assert redis_client.keys("snackvideo:idem:*") == []

    # Once the queue is a list again, the same key can be claimed.
    redis_client.delete(DELIVERY_QUEUE)
    job_id = producer.enqueue(STORE, event("clk-7"), idempotency_key="order-7")
    assert redis_client.get(key) == job_id.encode()
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [job_id]


def test_a_repeated_key_does_not_need_the_queue(
    producer: Producer, redis_client: redis.Redis
) -> None:
    # A deduplicated call pushes nothing, so it answers even when a push would fail.
    first = producer.enqueue(STORE, event("clk-1"), idempotency_key="order-1")
    redis_client.delete(DELIVERY_QUEUE)
    redis_client.set(DELIVERY_QUEUE, "not a list")
    assert producer.enqueue(STORE, event("clk-1"), idempotency_key="order-1") == first


def test_a_retry_after_a_timed_out_call_is_safe_with_an_idempotency_key(
    own_redis: Callable[..., RedisServer],
) -> None:
    # A frozen Redis times the call out, but may still run the command once it thaws:
    # EnqueueError after a timeout means "unknown", and the idempotency key makes the
    # caller's retry safe either way.
    server = own_redis(appendonly=False)
    assert server.process is not None
    producer = Producer(server.url, timeout_seconds=1.0)
    producer.enqueue(STORE, event("clk-warm"))
    server.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(EnqueueError):
            producer.enqueue(STORE, event("clk-frozen"), idempotency_key="order-frozen")
    finally:
        server.process.send_signal(signal.SIGCONT)
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        job_id = producer.enqueue(STORE, event("clk-frozen"), idempotency_key="order-frozen")
        frozen = [m for m in queued(client) if m.kwargs["payload"]["click_id"] == "clk-frozen"]
        assert [m.kwargs["job_id"] for m in frozen] == [job_id]
        assert client.get(idempotency_key(STORE, "order-frozen")) == job_id.encode()
    finally:
        client.close()
        producer.close()
