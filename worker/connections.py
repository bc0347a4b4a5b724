"""The worker's Redis client (bookkeeping: throttle, dead letters, delayed jobs, markers),
built by ``producers.connections`` like every other; the start-up refusal of a Redis
Cluster node; its view of the Redis clock, and how its replies are read."""

from __future__ import annotations

import os
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from producers.connections import cluster_mode_problem
from producers.connections import redis_client as connect
from producers.errors import ConfigurationError
from worker.clock import RedisClock
from worker.settings import get_settings, refuse

_clients: dict[int, redis.Redis] = {}


def redis_client() -> redis.Redis:
    """One client per process: a pool opened before a fork must not be shared by children."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        client = connect(
            get_settings(),
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=10,
        )
        _clients[pid] = client
    return client


#: How long the start-up check for a cluster node waits for Redis.
CLUSTER_CHECK_TIMEOUT_SECONDS = 2.0


def refuse_cluster_mode() -> None:
    """Stop the process (one line, exit 2) when REDIS_URL leads to a Redis Cluster node."""
    # A client of its own, tried once: a Redis that does not answer delays a start by at
    # most the timeout here, and is reported by what the process does next.
    client = connect(
        get_settings(),
        socket_timeout=CLUSTER_CHECK_TIMEOUT_SECONDS,
        socket_connect_timeout=CLUSTER_CHECK_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        problem = cluster_mode_problem(client)
    finally:
        client.close()
    if problem is not None:
        refuse(ConfigurationError([("REDIS_URL", problem)]))


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
