"""Names the producer shares with the worker: the task, its queue, the keys enqueue writes.

The whole Redis key layout is documented in ``worker/keys.py``; the names a producer
needs live here because ``producers`` must never import ``worker``.
"""

from __future__ import annotations

#: Celery task that delivers one job. Producers publish by this name only.
DELIVER_TASK = "snackvideo.deliver"

#: The kombu/Redis list the workers consume (``task_default_queue``).
DELIVERY_QUEUE = "snackvideo"

#: Every key this project owns starts with this, so one ``SCAN`` finds them all.
KEY_PREFIX = "snackvideo:"

#: Jobs pushed by enqueue, incremented by the enqueue Lua in the same atomic call: one
#: cluster-wide count that the worker exports as ``snackvideo_events_enqueued_total``.
ENQUEUED_COUNTER = f"{KEY_PREFIX}metrics:enqueued"


def idempotency_key(store_id: str, key: str) -> str:
    # Scoped by store: two shops may well both use "order-1001-purchase".
    return f"{KEY_PREFIX}idem:{store_id}:{key}"


def enqueue_call_key(token: str) -> str:
    # One per enqueue call, shared by its retries: a retry whose earlier run was done
    # returns that run's result instead of pushing the batch again (producers/lua/enqueue.lua).
    return f"{KEY_PREFIX}enqueue:call:{token}"
