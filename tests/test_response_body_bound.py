"""A response body is read no further than ``RESPONSE_BODY_MAX_BYTES``, within the
request's deadline, and a dead-letter entry keeps ``SNACKVIDEO_DLQ_ERROR_MAX_CHARS`` of it.

Before, the client read the whole body: a hostile server's endless answer was bounded only
by the request deadline (connect + read timeout), held in memory while it lasted, and
then retried as a timeout. Servers here are ``tests/hostile_http.py`` on loopback.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from producers import Producer
from tests.conftest import STORE, STORE_KEY, Worker, wait_until, worker_env
from tests.hostile_http import Endless, HostileServer, Reply, in_order
from tests.queue_helpers import event
from worker.deadletter.store import DeadLetterStore
from worker.delivery.scalev import RESPONSE_BODY_MAX_BYTES, ScalevClient
from worker.errors import PermanentError, RedirectRefused
from worker.settings import Settings

#: Deadline of the client under test: 1 + 2 s. The answers below would outlast it.
CONNECT_S, READ_S = 1.0, 2.0
#: What may be in flight when the client hangs up: the cap plus socket buffers, far below
#: the 4 GiB the server announced.
SENT_BOUND = 64 * 1024 * 1024


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    started: list[HostileServer] = []

    def start(respond: Any) -> HostileServer:
        server = HostileServer("127.0.0.1", respond).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client_for(server: HostileServer) -> ScalevClient:
    return ScalevClient(server.url, connect_timeout_seconds=CONNECT_S, read_timeout_seconds=READ_S)


def gzip_of_zeros(size: int) -> bytes:
    """A gzip stream that inflates to ``size`` zero bytes (a decompression bomb)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + packer.flush()


def test_an_endless_error_body_is_cut_at_the_cap_and_the_connection_dropped(
    hostile: Callable[..., HostileServer],
) -> None:
    server = hostile(lambda _seen: Endless(400))
    client = client_for(server)
    started = time.monotonic()

    with pytest.raises(PermanentError) as info:  # not a RetryableError: it beat the deadline
        client.send(STORE, STORE_KEY, event("endless"))
    took = time.monotonic() - started

    assert info.value.status_code == 400
    assert info.value.body == "A" * RESPONSE_BODY_MAX_BYTES
    (seen,) = server.requests()
    wait_until(lambda: seen.closed_at is not None, 10, what="the client to hang up")
    assert seen.sent_bytes < SENT_BOUND
    print(f"\nendless 400: answered in {took:.3f}s, server sent {seen.sent_bytes} bytes")
    client.close()


def test_an_endless_redirect_body_is_cut_too(hostile: Callable[..., HostileServer]) -> None:
    # requests reads a 3xx body whole to prepare Response.next, even when it does not follow
    # the redirect: the client turns that off.
    moved = {"Location": "https://elsewhere.example/events"}
    server = hostile(lambda _seen: Endless(302, headers=moved))
    client = client_for(server)

    with pytest.raises(RedirectRefused) as info:
        client.send(STORE, STORE_KEY, event("endless-302"))

    assert info.value.location == moved["Location"]
    assert info.value.body == "A" * RESPONSE_BODY_MAX_BYTES
    (seen,) = server.requests()
    wait_until(lambda: seen.closed_at is not None, 10, what="the client to hang up")
    assert seen.sent_bytes < SENT_BOUND
    client.close()


def test_a_compressed_body_is_inflated_no_further_than_the_cap(
    hostile: Callable[..., HostileServer],
) -> None:
    bomb = gzip_of_zeros(256 * 1024 * 1024)
    server = hostile(lambda _seen: Endless(503, encoded=("gzip", bomb)))
    client = client_for(server)

    with pytest.raises(Exception) as info:
        client.send(STORE, STORE_KEY, event("bomb"))

    assert getattr(info.value, "status_code", None) == 503, info.value
    assert getattr(info.value, "body", None) == "\x00" * RESPONSE_BODY_MAX_BYTES
    client.close()


def test_short_bodies_leave_the_connection_kept_alive(
    hostile: Callable[..., HostileServer],
) -> None:
    server = hostile(in_order(Reply(204), Reply(400, body=b'{"error":"bad"}'), Reply(204)))
    client = client_for(server)
    client.send(STORE, STORE_KEY, event("ka-1"))
    with pytest.raises(PermanentError) as info:
        client.send(STORE, STORE_KEY, event("ka-2"))
    client.send(STORE, STORE_KEY, event("ka-3"))

    assert info.value.body == '{"error":"bad"}'
    assert len({seen.peer for seen in server.requests()}) == 1  # three requests, one socket
    client.close()


@pytest.mark.processes
def test_a_worker_dead_letters_an_endless_400_keeping_its_cut_body(
    hostile: Callable[..., HostileServer],
    redis_url: str,
    redis_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    server = hostile(lambda _seen: Endless(400))
    env = worker_env(
        redis_url,
        server.url,
        SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS=str(CONNECT_S),
        SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS=str(READ_S),
    )
    start_worker(env)
    producer = Producer(redis_url)
    job_id = producer.enqueue(STORE, event("endless-worker"))
    producer.close()

    store = DeadLetterStore(redis_client)
    entry = wait_until(lambda: store.find(job_id), 60, what="the dead letter")
    assert entry.reason == "http_400" and entry.attempts == 1
    assert entry.error == "A" * Settings().dlq_error_max_chars
    assert len(server.requests()) == 1  # a 400 is permanent: one request, no retry
