"""The Redis key layout, in one place.

    snackvideo                       list   the delivery queue (kombu; Celery messages)
    unacked, unacked_index           hash/zset  kombu's in-flight messages (visibility timeout)
    snackvideo:idem:{store}:{key}    string job id holding an idempotency key (TTL 48 h)
    snackvideo:delivered:{job_id}    string set after a 2xx, so a redelivered message is not sent
                                            again (TTL: max job age + 1 day)
    snackvideo:scheduled             zset   job_id -> due time (epoch s): retries and long waits
    snackvideo:scheduled:messages    hash   job_id -> the Celery message to push when due
    snackvideo:dlq:index             zset   entry id -> dead_lettered_at
    snackvideo:dlq:entries           hash   entry id -> entry JSON
    snackvideo:dlq:reasons           hash   reason -> live entry count
    snackvideo:dlq:trimmed           hash   reason -> entries trimmed by retention (counter)
    snackvideo:redrive:lock          string held by the one redrive run in progress
    snackvideo:throttle:{scope}      hash   the shared rate-limit budget of one scope
    snackvideo:metrics:*             see worker.metrics

API keys are never written under any of these.
"""

from __future__ import annotations

from producers.keys import DELIVERY_QUEUE, KEY_PREFIX, idempotency_key

__all__ = [
    "DELIVERY_QUEUE",
    "DLQ_ENTRIES",
    "DLQ_INDEX",
    "DLQ_REASONS",
    "DLQ_TRIMMED",
    "KEY_PREFIX",
    "REDRIVE_LOCK",
    "SCHEDULED",
    "SCHEDULED_MESSAGES",
    "delivered_key",
    "idempotency_key",
    "throttle_key",
]

SCHEDULED = f"{KEY_PREFIX}scheduled"
SCHEDULED_MESSAGES = f"{KEY_PREFIX}scheduled:messages"
DLQ_INDEX = f"{KEY_PREFIX}dlq:index"
DLQ_ENTRIES = f"{KEY_PREFIX}dlq:entries"
DLQ_REASONS = f"{KEY_PREFIX}dlq:reasons"
DLQ_TRIMMED = f"{KEY_PREFIX}dlq:trimmed"
REDRIVE_LOCK = f"{KEY_PREFIX}redrive:lock"


def delivered_key(job_id: str) -> str:
    return f"{KEY_PREFIX}delivered:{job_id}"


def throttle_key(scope: str) -> str:
    return f"{KEY_PREFIX}throttle:{scope}"
