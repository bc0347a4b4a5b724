"""One ``enqueue`` call queues each event at most once, across its own retries.

The producer retries a timeout or a dropped connection, and Redis may have run the
script whose reply was lost. These tests put a TCP proxy (``tests/tcp_proxy.py``) between
the producer and a real redis-server, lose or hold exactly that reply, and count what is
on the queue.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from producers import EnqueueError, Producer
from producers.enqueue import MAX_BATCH_PAYLOADS, call_ttl_seconds
from producers.keys import DELIVERY_QUEUE, ENQUEUED_COUNTER, KEY_PREFIX, idempotency_key
from tests.conftest import STORE, RedisServer
from tests.queue_helpers import event, queued
from tests.tcp_proxy import TcpProxy
from tests.test_cli_enqueue import printed_ids, run_enqueue, write_lines
from worker.cli.enqueue import ENQUEUE_CHUNK

TIMEOUT_SECONDS = 5.0  # the default: the socket timeout is then 2 s
HOLD_SECONDS = 2.6  # longer than that socket timeout
CALL_KEYS = f"{KEY_PREFIX}enqueue:call:*"


@pytest.fixture
def proxy(redis_url: str, redis_server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", redis_server.port)) as started:
        yield started


@pytest.fixture
def producer(proxy: TcpProxy, redis_client: redis.Redis) -> Iterator[Producer]:
    made = Producer(proxy.url, timeout_seconds=TIMEOUT_SECONDS)
    # Load the script and open a connection first: a NOSCRIPT round trip would otherwise
    # be the reply the proxy holds. Then start from an empty Redis.
    made.enqueue(STORE, event("clk-warm-up"))
    redis_client.flushdb()
    yield made
    made.close()


def enqueued_total(client: redis.Redis) -> int:
    return int(client.get(ENQUEUED_COUNTER) or 0)


KEYS = pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "idempotency-key"])


# -- a reply held past the socket timeout ---------------------------------------------------


@KEYS
def test_a_late_reply_to_enqueue_queues_the_event_once(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis, with_key: bool
) -> None:
    held = proxy.delay_reply_after(b"EVALSHA", HOLD_SECONDS)
    key = "order-late" if with_key else None

    started = time.monotonic()
    job_id = producer.enqueue(STORE, event("clk-late"), idempotency_key=key)
    elapsed = time.monotonic() - started

    assert held.fired == 1
    assert proxy.count(b"EVALSHA") == 2  # the held run and the retry: Redis ran both
    assert elapsed >= 2.0  # it waited out the socket timeout before retrying
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [job_id]
    assert enqueued_total(redis_client) == 1
    if with_key:
        assert redis_client.get(idempotency_key(STORE, "order-late")) == job_id.encode()


@KEYS
def test_a_late_reply_to_enqueue_many_queues_each_event_once(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis, with_key: bool
) -> None:
    payloads = [event(f"clk-{i}") for i in range(50)]
    keys = [f"order-{i}" for i in range(50)] if with_key else None
    held = proxy.delay_reply_after(b"EVALSHA", HOLD_SECONDS)

    ids = producer.enqueue_many(STORE, payloads, idempotency_keys=keys)

    assert held.fired == 1 and proxy.count(b"EVALSHA") == 2
    assert len(set(ids)) == 50
    messages = queued(redis_client)
    assert [m.kwargs["job_id"] for m in messages] == ids
    assert [m.kwargs["payload"] for m in messages] == payloads
    assert enqueued_total(redis_client) == 50


def test_a_late_reply_returns_what_the_first_run_returned_for_keys_already_held(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis
) -> None:
    # Not every item gets its own job id: one key is held by an earlier call and one is
    # repeated in the batch. The retry must return the first run's answer item by item.
    earlier = producer.enqueue(STORE, event("clk-earlier"), idempotency_key="order-held")
    held = proxy.delay_reply_after(b"EVALSHA", HOLD_SECONDS)

    ids = producer.enqueue_many(
        STORE,
        [event("clk-a"), event("clk-b"), event("clk-c"), event("clk-d")],
        idempotency_keys=["order-held", "order-new", None, "order-new"],
    )

    assert held.fired == 1 and proxy.count(b"EVALSHA") == 2  # watched from the rule on
    assert ids[0] == earlier
    assert ids[1] == ids[3] != ids[2]
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [earlier, ids[1], ids[2]]
    assert enqueued_total(redis_client) == 3


# -- a reply lost with a dropped connection -------------------------------------------------


@KEYS
def test_a_reply_lost_with_the_connection_queues_the_event_once(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis, with_key: bool
) -> None:
    dropped = proxy.drop_after(b"EVALSHA")
    key = "order-dropped" if with_key else None

    job_id = producer.enqueue(STORE, event("clk-dropped"), idempotency_key=key)

    assert dropped.fired == 1 and proxy.count(b"EVALSHA") == 2
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [job_id]
    assert enqueued_total(redis_client) == 1


@KEYS
def test_a_reply_to_enqueue_many_lost_with_the_connection_queues_each_event_once(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis, with_key: bool
) -> None:
    # The largest batch a call takes: past the script's push chunk, so pushed in several.
    payloads = [event(f"clk-{i}") for i in range(MAX_BATCH_PAYLOADS)]
    keys = [f"order-{i}" for i in range(MAX_BATCH_PAYLOADS)] if with_key else None
    dropped = proxy.drop_after(b"EVALSHA")

    ids = producer.enqueue_many(STORE, payloads, idempotency_keys=keys)

    assert dropped.fired == 1 and proxy.count(b"EVALSHA") == 2
    assert len(set(ids)) == MAX_BATCH_PAYLOADS
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == ids
    assert enqueued_total(redis_client) == MAX_BATCH_PAYLOADS


def test_every_retry_of_a_call_returns_the_same_answer(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis
) -> None:
    # Lost twice in a row (a timeout, then a dropped connection): the third run answers.
    proxy.delay_reply_after(b"EVALSHA", HOLD_SECONDS)
    proxy.drop_after(b"EVALSHA", skip=1)

    outcomes = producer.enqueue_many_outcomes(STORE, [event("clk-1"), event("clk-2")])

    assert proxy.count(b"EVALSHA") == 3
    assert [outcome.queued_now for outcome in outcomes] == [True, True]
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [o.job_id for o in outcomes]


# -- a paused Redis, no proxy ---------------------------------------------------------------


def test_a_redis_paused_past_the_socket_timeout_queues_the_event_once(
    own_redis: Callable[..., RedisServer],
) -> None:
    # SIGSTOP: the first run's command waits in Redis's socket buffer, the producer times
    # out and sends a retry on a new connection. When Redis resumes it runs both.
    server = own_redis(appendonly=False)
    assert server.process is not None
    producer = Producer(server.url, timeout_seconds=TIMEOUT_SECONDS)
    producer.enqueue(STORE, event("clk-warm-up"))
    client = redis.Redis.from_url(server.url)
    client.delete(DELIVERY_QUEUE)
    server.process.send_signal(signal.SIGSTOP)
    resume = threading.Timer(2.5, server.process.send_signal, args=(signal.SIGCONT,))
    resume.start()
    try:
        job_id = producer.enqueue(STORE, event("clk-paused"))
    finally:
        resume.join()
        producer.close()
    try:
        assert [m.kwargs["job_id"] for m in queued(client)] == [job_id]
    finally:
        client.close()


# -- the call key ---------------------------------------------------------------------------


def test_the_call_key_holds_one_byte_and_expires_after_the_retry_window(
    producer: Producer, redis_client: redis.Redis
) -> None:
    producer.enqueue_many(STORE, [event("clk-1"), event("clk-2")])
    first = producer.enqueue(STORE, event("clk-3"), idempotency_key="order-3")
    producer.enqueue(STORE, event("clk-4"), idempotency_key="order-3")  # held: stored whole

    keys = list(redis_client.scan_iter(CALL_KEYS))
    assert len(keys) == 3
    values = sorted(redis_client.get(key) or b"" for key in keys)
    assert values[:2] == [b"=", b"="]  # every item got the job id its call built
    assert json.loads(values[2]) == [first]
    for key in keys:
        assert 0 < int(redis_client.ttl(key)) <= producer.call_ttl_seconds == 20


def test_a_refused_push_leaves_no_call_key(producer: Producer, redis_client: redis.Redis) -> None:
    redis_client.set(DELIVERY_QUEUE, "not a list")
    with pytest.raises(EnqueueError, match="WRONGTYPE"):
        producer.enqueue(STORE, event("clk-1"))
    assert list(redis_client.scan_iter(CALL_KEYS)) == []


@pytest.mark.parametrize("timeout", [0.2, 1.0, 4.0, 5.0, 30.0])
def test_the_call_key_outlives_the_last_moment_a_retry_can_be_sent(timeout: float) -> None:
    socket_timeout = min(2.0, timeout / 2)
    last_start = timeout - socket_timeout
    # connect, CLIENT SETINFO x2, SELECT, NOSCRIPT, SCRIPT LOAD: each up to a socket timeout
    last_send = last_start + 6 * socket_timeout
    assert call_ttl_seconds(timeout, socket_timeout) >= last_send + 5


# -- snackvideo enqueue ---------------------------------------------------------------------


def order_event(i: int) -> dict[str, object]:
    return event(f"clk-{i}", order_id=f"order-{i}")


@pytest.mark.processes
def test_the_cli_with_one_chunk_held_queues_each_line_once(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = [order_event(i) for i in range(2 * ENQUEUE_CHUNK - 100)]
    path = write_lines(tmp_path / "events.jsonl", events)
    held = proxy.delay_reply_after(b"EVALSHA", HOLD_SECONDS)

    result = run_enqueue(
        proxy.url, "--store", STORE, str(path),
        SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert held.fired == 1 and proxy.count(b"EVALSHA") == 3  # 2 chunks, the first twice
    ids = printed_ids(result.stdout)
    messages = queued(redis_client)
    assert [m.kwargs["job_id"] for m in messages] == ids
    assert [m.kwargs["payload"] for m in messages] == events
    assert f"enqueued {len(events)} event(s)" in result.stderr


KEY_OPTIONS = pytest.mark.parametrize(
    "option",
    [("--idempotency-key-field", "order_id"), ("--idempotency-key-from-content",)],
    ids=["field", "content"],
)


@pytest.mark.processes
@KEY_OPTIONS
def test_running_a_file_again_after_redis_went_away_queues_only_what_was_missing(
    proxy: TcpProxy,
    producer: Producer,
    redis_client: redis.Redis,
    tmp_path: Path,
    option: tuple[str, ...],
) -> None:
    events = [order_event(i) for i in range(2 * ENQUEUE_CHUNK + 200)]  # three chunks
    path = write_lines(tmp_path / "events.jsonl", events)
    # Chunk 1 goes through. Redis runs chunk 2, but its reply is lost and Redis is gone
    # from then on: the command fails without knowing that chunk 2 is queued.
    lost = proxy.drop_after(b"EVALSHA", skip=1, on_fire=proxy.refuse_connections)

    first = run_enqueue(
        proxy.url, "--store", STORE, *option, str(path), SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS="1"
    )

    assert first.returncode == 1
    assert lost.fired == 1
    first_ids = printed_ids(first.stdout)
    assert len(first_ids) == ENQUEUE_CHUNK
    assert f"{ENQUEUE_CHUNK} of {len(events)} event(s) are queued" in first.stderr
    assert "run the same command again" in first.stderr
    assert len(queued(redis_client)) == 2 * ENQUEUE_CHUNK  # chunk 2 is there all the same

    proxy.accept_connections()
    again = run_enqueue(proxy.url, "--store", STORE, *option, str(path))

    assert again.returncode == 0, again.stderr
    ids = printed_ids(again.stdout)
    assert ids[:ENQUEUE_CHUNK] == first_ids
    messages = queued(redis_client)
    assert [m.kwargs["job_id"] for m in messages] == ids  # each line once, in file order
    assert [m.kwargs["payload"] for m in messages] == events
    assert f"enqueued 200 event(s) for store {STORE}; 1000 already queued" in again.stderr


@pytest.mark.processes
def test_a_file_without_keys_that_failed_part_way_says_a_re_run_would_repeat_it(
    proxy: TcpProxy, producer: Producer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "events.jsonl", [order_event(i) for i in range(600)])
    proxy.drop_after(b"EVALSHA", skip=1, on_fire=proxy.refuse_connections)
    result = run_enqueue(
        proxy.url, "--store", STORE, str(path), SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS="1"
    )
    assert result.returncode == 1
    assert len(printed_ids(result.stdout)) == ENQUEUE_CHUNK
    assert f"would queue those {ENQUEUE_CHUNK} again" in result.stderr
    assert "--idempotency-key-field" in result.stderr
