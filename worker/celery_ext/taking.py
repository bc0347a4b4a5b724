"""Taking a message in one step: the pop moves it into the consumer's own list.

kombu pops with BRPOP and then records the message in its ``unacked`` hash (``QoS.append``).
Between the two round trips the job lived only in the worker's memory: a SIGKILL there
lost it without a trace (seen in ``tests/test_fault_worker_kill.py``, a few runs in ten).
Here the pop is a move, BRPOPLPUSH (Redis >= 2.2, still served by 7 and 8), into
``snackvideo:consumer:{id}:taking``; the MULTI that writes ``unacked`` also removes it from
there. At every instant the job is in exactly one Redis key: its queue, the taking list
of the consumer that popped it, or ``unacked``. A consumer that dies holding something in
its taking list has it handed back to its queue by the sweep that restores its
``unacked`` messages (``worker.celery_ext.ownership``), unchanged: it never ran.

A blocking move waits on one list only, and a worker consumes two (deliveries and
control tasks) times kombu's priority steps. So the channel blocks on the delivery list,
and at least once per BRPOP timeout (1 s) takes from all its lists without blocking
(``take_any.lua``), the other lists first: a control task waits at most that long, however
deep the delivery backlog.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from worker.keys import consumer_taking_key
from worker.lua_scripts import lua_source

#: Messages looked at per dead consumer per sweep; a consumer holds at most its prefetch.
HAND_BACK_LIMIT = 100


def take_any_source() -> str:
    return lua_source("worker.celery_ext", "take_any")


def hand_back(client: redis.Redis, taking_key: str, queue_key: str, item: bytes) -> bool:
    """Move ``item`` from a taking list back to the queue popped next; False if it had
    left the taking list already."""
    script = client.register_script(lua_source("worker.celery_ext", "hand_back"))
    return bool(script(keys=[taking_key, queue_key], args=[item]))


def hand_back_all(client: redis.Redis, incarnation: str, queue_of: Any) -> int:
    """Hand back every message in a (dead or retired) consumer's taking list; returns how
    many. ``queue_of(item)`` names the list an item came from."""
    taking_key = consumer_taking_key(incarnation)
    items: list[bytes] = client.lrange(taking_key, 0, HAND_BACK_LIMIT - 1)  # type: ignore[assignment]
    return sum(hand_back(client, taking_key, queue_of(item), item) for item in items)


def routing_of(item: bytes) -> tuple[str, str, int] | None:
    """(exchange, routing key, priority) of a Celery message, or None when it is not one
    (an unreadable item: it goes back to the delivery queue, which dead-letters it)."""
    try:
        payload = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
        info = payload["properties"]["delivery_info"]
        priority = payload["properties"].get("priority") or 0
        return str(info["exchange"]), str(info["routing_key"]), int(priority)
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError):
        return None
