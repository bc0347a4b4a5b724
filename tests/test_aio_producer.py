"""``AsyncProducer`` against a real redis-server: warming its connections before it serves,
and its first attempt, which runs outside tenacity, retried within the same bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis

from producers.aio import AsyncProducer
from producers.enqueue import ENQUEUE_LUA
from producers.errors import EnqueueError
from tests.conftest import STORE, RedisServer
from tests.queue_helpers import event, queued

Result = TypeVar("Result")


def run(make: Callable[[], Coroutine[Any, Any, Result]]) -> Result:
    return asyncio.run(make())


def clients_of(client: redis.Redis) -> int:
    return len(client.client_list())


def test_warm_opens_the_connections_and_loads_the_script(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.script_flush()
    before = clients_of(redis_client)

    async def warm_then_enqueue() -> tuple[bool, int, str]:
        producer = AsyncProducer(redis_url)
        try:
            warmed = await producer.warm(4)
            opened = clients_of(redis_client) - before
            job_id = (await producer.enqueue(STORE, event("clk-warm"))).job_id
            return warmed, opened, job_id
        finally:
            await producer.aclose()

    warmed, opened, job_id = run(warm_then_enqueue)
    assert warmed is True
    assert opened == 4
    sha = redis_client.script_load(ENQUEUE_LUA)  # the same text: the same sha
    assert redis_client.script_exists(sha) == [True]
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == [job_id]


def test_warm_says_false_when_redis_does_not_answer(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(appendonly=False)
    server.stop()

    async def warm() -> bool:
        producer = AsyncProducer(server.url, timeout_seconds=0.5)
        try:
            return await producer.warm()
        finally:
            await producer.aclose()

    assert run(warm) is False


def test_a_dropped_connection_is_retried_and_the_event_queued_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def enqueue_twice() -> list[str]:
        producer = AsyncProducer(redis_url)
        try:
            first = await producer.enqueue(STORE, event("clk-1"), "order-1")
            # Every connection of the producer's pool is closed by Redis (a restart, an
            # idle timeout): the next call's first attempt meets a dead connection.
            redis_client.client_kill_filter(_type="normal", skipme=True)
            second = await producer.enqueue(STORE, event("clk-2"), "order-2")
            return [first.job_id, second.job_id]
        finally:
            await producer.aclose()

    job_ids = run(enqueue_twice)
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == job_ids


def test_redis_stopped_raises_enqueue_error_within_the_bound(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(appendonly=False)

    async def enqueue_after_stop() -> float:
        producer = AsyncProducer(server.url, timeout_seconds=1.0)
        try:
            await producer.enqueue(STORE, event("clk-before"))  # a connection in the pool
            server.stop()
            started = time.monotonic()
            with pytest.raises(EnqueueError) as info:
                await producer.enqueue(STORE, event("clk-lost"))
            assert "did not accept the job within 1s" in str(info.value)
            assert isinstance(info.value.__cause__, redis.ConnectionError)
            return time.monotonic() - started
        finally:
            await producer.aclose()

    # The retry policy's bound (timeout_seconds), with generous slack for a loaded machine.
    assert run(enqueue_after_stop) < 1.0 + 5.0
