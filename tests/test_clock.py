"""The Redis clock: a host's clock corrected by the offset measured against Redis TIME."""

from __future__ import annotations

import time

import redis

from worker.clock import RedisClock


def test_a_host_behind_redis_reads_the_redis_clock(redis_client: redis.Redis) -> None:
    clock = RedisClock(redis_client, local=lambda: time.time() - 300.0)
    seconds, micros = redis_client.time()
    server_now = seconds + micros / 1e6
    assert abs(clock.now() - server_now) < 0.5
    assert 299.5 < clock.offset_seconds < 300.5


def test_an_unreachable_redis_keeps_the_last_offset(redis_client: redis.Redis) -> None:
    clock = RedisClock(redis_client, local=lambda: time.time() + 60.0, refresh_seconds=0.0)
    clock.now()
    measured = clock.offset_seconds
    clock.client = redis.Redis(port=1, socket_connect_timeout=0.1)
    assert clock.refresh() is None
    assert clock.offset_seconds == measured
    assert abs(clock.now() - (time.time() + 60.0 + measured)) < 0.5
