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

#: Every idempotency key starts with this (``idempotency_key``).
IDEMPOTENCY_PREFIX = f"{KEY_PREFIX}idem:"

#: Jobs pushed by enqueue, incremented by the enqueue Lua in the same atomic call: one
#: cluster-wide count that the worker exports as ``snackvideo_events_enqueued_total``.
ENQUEUED_COUNTER = f"{KEY_PREFIX}metrics:enqueued"


def idempotency_key(store_id: str, key: str) -> str:
    """``snackvideo:idem:{store}:{key}``, the store id with ``%`` and ``:`` percent-encoded.

    Scoped by store: two shops may well both use "order-1001-purchase". The encoded store
    id holds no ``:``, so the first ``:`` after it ends it, and no two (store, key) pairs
    share a Redis key: written plainly, store ``shop:eu`` with key ``order-1`` and store
    ``shop`` with key ``eu:order-1`` were one key, and the second event was dropped. A store
    id without ``:`` (``%`` is refused in store ids) keeps the key it always had.
    """
    encoded = store_id.replace("%", "%25").replace(":", "%3A")
    return f"{IDEMPOTENCY_PREFIX}{encoded}:{key}"


def enqueue_call_key(token: str) -> str:
    # One per enqueue call, shared by its retries: a retry whose earlier run was done
    # returns that run's result instead of pushing the batch again (producers/lua/enqueue.lua).
    return f"{KEY_PREFIX}enqueue:call:{token}"
