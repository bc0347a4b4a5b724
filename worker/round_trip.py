"""Commands sent in one write on a pooled connection, their replies read back: the hot
path's round trips without redis-py's per-command layers.

redis-py 8 wraps every command in layers a delivery pays for and does not use: an
observability record per command (the pool's name looked up twice), an event dispatch,
a per-command parse for HIMPORT, closures and argument encoding in Python. On the
2-core benchmark machine a Lua call through ``Script`` cost 137 µs of client CPU, the
same call sent here 74 µs; a five-command ``MULTI`` 122 against 75 µs (``docs/benchmarks.md``,
issue 16). A delivery makes four such round trips (the two throttle scripts in the pool
child; kombu's ``QoS.append`` and ack transactions in the main process), and with task
events on (Flower) the main process publishes three events per task.

What is kept is what makes a round trip safe: the client's own pool (so a fork, a
Sentinel failover or a reconnect is handled as before), the connection's health check
and its ``Retry`` (a connection error disconnects and sends again, as redis-py does, a
``MULTI`` included), and every reply read, error replies too, so the connection stays
in step with the server. Arguments are str, bytes, int or float, packed by hiredis (a
float as its ``repr``, as redis-py writes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

Command = Sequence[str | bytes | int | float]


def round_trip(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Send ``commands`` in one write and return every reply, an error reply as its
    ``ResponseError`` (not raised: the caller knows which ones matter)."""
    # (hiredis's stub types the tuple as one element long)
    packed = [b"".join(hiredis.pack_command(tuple(command)) for command in commands)]  # type: ignore[arg-type]
    pool = client.connection_pool
    conn: Any = pool.get_connection()  # redis-py's Connection methods are untyped

    def attempt() -> list[Any]:
        conn.send_packed_command(packed)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as error:  # an error reply: still in step
                replies.append(error)
        return replies

    try:
        return conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())  # type: ignore[no-any-return]
    finally:
        # The server announced maintenance (redis-py 8's notifications): as redis-py does.
        should_reconnect = getattr(conn, "should_reconnect", None)
        if should_reconnect is not None and should_reconnect():
            conn.disconnect()
        pool.release(conn)


def transaction(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """``MULTI``, ``commands``, ``EXEC`` in one round trip; EXEC's replies. Raises the
    first error: one the server refused to queue (a full ``noeviction`` Redis's OOM,
    which aborts the whole transaction), else one a command met inside it."""
    replies = round_trip(client, [("MULTI",), *commands, ("EXEC",)])
    (results,) = checked(replies)[-1:]
    return checked(results)


def checked(replies: list[Any]) -> list[Any]:
    """``replies``, unless one is an error: then the first error is raised."""
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies


def evalsha(client: redis.Redis, script: Script, keys: Sequence[str], args: Command) -> Any:
    """A registered script's ``EVALSHA`` in one round trip; on ``NOSCRIPT`` (a restarted
    or failed-over Redis has an empty script cache) the script is loaded and sent again,
    as ``Script.__call__`` does."""
    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    (reply,) = round_trip(client, [command])
    if isinstance(reply, NoScriptError):
        script.sha = client.script_load(script.script)
        (reply,) = round_trip(client, [("EVALSHA", script.sha, *command[2:])])
    return checked([reply])[0]
