"""The cluster's state in Redis, read in one go: queue depths, messages in flight,
scheduled retries, events enqueued, dead letters, the throttle of each scope, and the
Redis server itself (its address and replication role).

``snackvideo status`` prints it (``--json``: as is) and the worker's /metrics exports it
at every scrape (``worker.metrics.collectors``): one read, so the two never disagree.
"""

from __future__ import annotations

from typing import Any

import redis

from producers.keys import ENQUEUED_COUNTER
from worker.deadletter.store import DeadLetterStore
from worker.delayed.store import DelayedJobs
from worker.keys import CONTROL_QUEUE, DELIVERY_QUEUE, UNACKED
from worker.redis_role import replication_state
from worker.throttle.state import throttle_status


def read_cluster_state(client: redis.Redis) -> dict[str, Any]:
    """The state as a JSON-ready dict (what ``snackvideo status --json`` prints, without
    the workers its ping adds)."""
    dead_letters = DeadLetterStore(client)
    return {
        "queue_depth": int(client.llen(DELIVERY_QUEUE)),
        "control_queue_depth": int(client.llen(CONTROL_QUEUE)),
        "in_flight": int(client.hlen(UNACKED)),
        "scheduled": DelayedJobs(client).depth(),
        "enqueued_total": int(client.get(ENQUEUED_COUNTER) or 0),
        "dead_letters": len(dead_letters),
        "dead_letters_by_reason": dead_letters.counts_by_reason(),
        "dead_letters_trimmed_by_reason": dead_letters.trimmed_by_reason(),
        # {scope: {limit, remaining, reset_in_s, blocked_until, in_flight, ...}}
        "throttle": throttle_status(client),
        # {address, role, connected_replicas, master_address, master_link}
        "redis": replication_state(client),
    }
