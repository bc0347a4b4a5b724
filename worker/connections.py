"""The worker's Redis client (bookkeeping: throttle, dead letters, delayed jobs, markers),
its view of the Redis clock, and how its replies are read."""

from __future__ import annotations

import os
from typing import Any

import redis

from worker.clock import RedisClock
from worker.settings import get_settings

_clients: dict[int, redis.Redis] = {}


def redis_client() -> redis.Redis:
    """One client per process: a pool opened before a fork must not be shared by children."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        client = redis.Redis.from_url(
            get_settings().redis_url,
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=10,
        )
        _clients[pid] = client
    return client


_clocks: dict[int, RedisClock] = {}


def redis_clock() -> RedisClock:
    """This process's view of the Redis server's clock (``worker.clock``)."""
    pid = os.getpid()
    clock = _clocks.get(pid)
    if clock is None:
        clock = RedisClock(redis_client())
        _clocks[pid] = clock
    return clock


def reply_text(value: Any) -> str:
    """A Redis reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)
