"""The fault-injecting TCP proxy itself, in front of real redis-servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import RedisServer, wait_until
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def proxy(redis_url: str, redis_server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", redis_server.port)) as started:
        yield started


def client_of(proxy: TcpProxy, timeout: float = 2.0) -> redis.Redis:
    # No retries inside redis-py: each test sees exactly what the network did.
    return redis.Redis.from_url(
        proxy.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def test_it_passes_commands_and_replies_through(proxy: TcpProxy, redis_client: redis.Redis) -> None:
    through = client_of(proxy)
    set_command = b"\r\nSET\r\n"  # framed: a bare b"SET" also matches CLIENT SETINFO
    proxy.watch(set_command)
    big = "x" * 1_000_000  # many TCP segments each way
    assert through.set("k", big)
    assert through.get("k") == big.encode()
    assert redis_client.get("k") == big.encode()
    assert proxy.count(set_command) == 1
    through.close()


def test_a_held_reply_times_the_client_out_after_the_server_ran_the_command(
    proxy: TcpProxy, redis_client: redis.Redis
) -> None:
    through = client_of(proxy, timeout=0.3)
    through.ping()
    held = proxy.delay_reply_after(b"INCR", 1.0)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        through.incr("n")
    assert time.monotonic() - started < 1.0
    assert held.wait_fired() and held.fired == 1
    assert redis_client.get("n") == b"1"
    assert through.incr("n") == 2  # spent after one: the next reply passes
    through.close()


def test_a_dropped_link_loses_the_reply_not_the_command(
    proxy: TcpProxy, redis_client: redis.Redis
) -> None:
    through = client_of(proxy)
    through.ping()
    dropped = proxy.drop_after(b"INCR")
    with pytest.raises(redis.ConnectionError):
        through.incr("n")
    assert dropped.fired == 1
    assert redis_client.get("n") == b"1"
    assert through.incr("n") == 2
    through.close()


def test_skip_lets_the_first_matches_pass_and_times_bounds_the_rule(
    proxy: TcpProxy, redis_client: redis.Redis
) -> None:
    through = client_of(proxy)
    fired: list[float] = []
    dropped = proxy.drop_after(b"INCR", skip=2, times=2, on_fire=lambda: fired.append(1))
    results: list[object] = []
    for _ in range(6):
        try:
            results.append(through.incr("n"))
        except redis.ConnectionError:
            results.append("dropped")
    assert results == [1, 2, "dropped", "dropped", 5, 6]
    assert dropped.fired == 2 and len(fired) == 2
    assert proxy.count(b"INCR") == 6
    through.close()


def test_refused_connections_and_the_same_port_again(proxy: TcpProxy) -> None:
    open_before = client_of(proxy)
    open_before.ping()
    proxy.refuse_connections()
    fresh = client_of(proxy)
    with pytest.raises(redis.ConnectionError, match="refused"):
        fresh.ping()
    assert open_before.ping()  # open links stay up
    proxy.accept_connections()
    assert fresh.ping()
    open_before.close()
    fresh.close()


def test_drop_all_cuts_every_open_link(proxy: TcpProxy, redis_client: redis.Redis) -> None:
    waiting = client_of(proxy, timeout=10)
    idle = [client_of(proxy) for _ in range(2)]
    for client in idle:
        client.ping()
    outcome: list[BaseException] = []

    def wait_for_a_push() -> None:
        try:
            waiting.blpop(["never-pushed"], timeout=8)
        except redis.RedisError as exc:
            outcome.append(exc)

    blocked = threading.Thread(target=wait_for_a_push)
    blocked.start()
    wait_until(lambda: proxy.open_connections == 3, what="three links")
    started = time.monotonic()
    assert proxy.drop_all() == 3
    blocked.join(10)
    assert time.monotonic() - started < 5  # cut, not timed out
    assert len(outcome) == 1 and isinstance(outcome[0], redis.ConnectionError)
    accepted = proxy.connections_accepted
    for client in idle:
        # redis-py notices the closed idle connection when it takes it from its pool, and
        # connects again.
        assert client.ping()
        client.close()
    assert proxy.connections_accepted == accepted + 2
    waiting.close()


def test_new_connections_follow_the_upstream(
    proxy: TcpProxy, redis_client: redis.Redis, own_redis: Callable[..., RedisServer]
) -> None:
    other = own_redis(appendonly=False)
    through = client_of(proxy)
    through.set("where", "first")
    proxy.set_upstream(("127.0.0.1", other.port))
    through.set("still", "first")  # an open link keeps its server
    proxy.drop_all()
    through.set("where", "second")
    assert redis_client.get("where") == b"first" and redis_client.get("still") == b"first"
    other_client = redis.Redis.from_url(other.url)
    assert other_client.get("where") == b"second"
    other_client.close()
    through.close()
