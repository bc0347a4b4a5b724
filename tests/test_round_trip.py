"""worker.round_trip against a real Redis: replies, error replies, NOSCRIPT, a dropped
connection, a full Redis. Each case ends by using the same pool again, since a reply left
unread would hand the next command the wrong answer."""

from __future__ import annotations

import pytest
import redis

from worker.round_trip import evalsha, round_trip, transaction


def test_every_reply_comes_back_in_order(redis_client: redis.Redis) -> None:
    replies = round_trip(
        redis_client,
        [("SET", "a", "1"), ("INCRBYFLOAT", "a", 0.5), ("ZADD", "z", 1764876543.123456, "m")],
    )
    assert replies == [b"OK", b"1.5", 1]
    # A float goes out as its repr, as redis-py writes it: the score is exact.
    assert redis_client.zscore("z", "m") == 1764876543.123456


def test_an_error_reply_is_returned_and_the_connection_stays_in_step(
    redis_client: redis.Redis,
) -> None:
    redis_client.rpush("list", "x")
    replies = round_trip(redis_client, [("HSET", "list", "f", "v"), ("LLEN", "list")])
    assert isinstance(replies[0], redis.ResponseError)
    assert "WRONGTYPE" in str(replies[0])
    assert replies[1] == 1
    assert round_trip(redis_client, [("PING",)]) == [b"PONG"]  # raw: no response callbacks
    assert redis_client.llen("list") == 1


def test_transaction_returns_exec_replies(redis_client: redis.Redis) -> None:
    assert transaction(redis_client, [("HSET", "h", "f", "v"), ("SADD", "s", "m")]) == [1, 1]
    assert redis_client.hget("h", "f") == b"v"


def test_a_command_failing_inside_the_transaction_raises_after_exec(
    redis_client: redis.Redis,
) -> None:
    redis_client.rpush("list", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        transaction(redis_client, [("SET", "before", "1"), ("HSET", "list", "f", "v")])
    # MULTI does not roll back: what ran, ran; the connection is still in step.
    assert redis_client.get("before") == b"1"
    assert transaction(redis_client, [("INCR", "n")]) == [1]


def test_a_command_refused_at_queue_time_aborts_the_whole_transaction(
    redis_client: redis.Redis,
) -> None:
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        transaction(redis_client, [("SET", "never", "1"), ("GET",)])
    assert redis_client.get("never") is None
    assert transaction(redis_client, [("INCR", "n")]) == [1]


def test_a_full_noeviction_redis_refuses_the_transaction_whole(own_redis) -> None:  # type: ignore[no-untyped-def]
    server = own_redis(appendonly=False)
    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory-policy", "noeviction")
    client.set("ballast", "x" * 2_000_000)
    client.config_set("maxmemory", "1mb")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        transaction(client, [("HSET", "unacked", "tag", "entry"), ("SADD", "taken", "tag")])
    assert client.exists("unacked", "taken") == 0
    client.config_set("maxmemory", "0")
    assert transaction(client, [("HSET", "unacked", "tag", "entry")]) == [1]
    client.close()


def test_evalsha_loads_a_script_the_server_forgot(redis_client: redis.Redis) -> None:
    script = redis_client.register_script("return ARGV[1] .. KEYS[1]")
    redis_client.script_flush()  # a restarted or failed-over Redis: its cache is empty
    assert evalsha(redis_client, script, ["k"], ["v"]) == b"vk"
    assert evalsha(redis_client, script, ["k"], [1.5]) == b"1.5k"


def test_evalsha_raises_a_script_error(redis_client: redis.Redis) -> None:
    script = redis_client.register_script("return redis.call('HSET', KEYS[1], 'f', 'v')")
    redis_client.rpush("list", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        evalsha(redis_client, script, ["list"], [])
    assert round_trip(redis_client, [("PING",)]) == [b"PONG"]  # raw: no response callbacks


def test_a_connection_the_server_dropped_is_reconnected_and_sent_again(
    redis_client: redis.Redis,
) -> None:
    redis_client.ping()
    (pooled,) = redis_client.connection_pool._available_connections
    admin = redis.Redis(connection_pool=redis.ConnectionPool.from_url(_url(redis_client)))
    admin.client_kill_filter(_id=str(redis_client.client_id()))
    # The pooled connection's socket is dead; the client's Retry reconnects and resends.
    assert transaction(redis_client, [("INCR", "n")]) == [1]
    assert redis_client.get("n") == b"1"
    assert redis_client.connection_pool._available_connections == [pooled]
    admin.close()


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
