"""The Redis key layout, in one place.

    snackvideo                       list   the delivery queue (kombu; Celery messages)
    snackvideo.control               list   control tasks (redrive), never behind deliveries
    unacked, unacked_index           hash/zset  kombu's in-flight messages (visibility timeout;
                                            index scored on the Redis clock, worker.transport)
    unacked_mutex                    string kombu's lock for the restore sweep (expires in 30 s)
    snackvideo:consumers             zset   consumer incarnation -> last heartbeat (Redis TIME s):
                                            one per worker consumer connection (worker.ownership)
    snackvideo:consumer:{id}:taken   set    delivery tags that incarnation took and has not acked
                                            or restored (written in kombu's own MULTI)
    snackvideo:taken_by              hash   delivery tag -> the incarnation that holds it now
    snackvideo:idem:{store}:{key}    string job id holding an idempotency key (TTL 48 h); in
                                            {store}, % and : are written %25 and %3A
    snackvideo:enqueue:call:{token}  string an enqueue call's result, for its retries (TTL 20 s)
    snackvideo:delivered:{job_id}    string set after a 2xx, so a redelivered message is not sent
                                            again (TTL: max job age + 1 day; set by
                                            throttle_record.lua in the call that releases
                                            the slot)
    snackvideo:generation:{job_id}   string "{replay_count}:{generation}" of the job's latest
                                            parked message (schedule.lua, atomically with the
                                            parking; TTL like the delivered-marker)
    snackvideo:redeliveries:{job_id}-r{n}-g{g}  string  runs of a redelivered message (INCR,
                                            TTL 1 day; only for messages kombu flags redelivered)
    snackvideo:scheduled             zset   job_id -> due time (epoch s): retries and long waits
    snackvideo:scheduled:messages    hash   job_id -> the Celery message to push when due
    snackvideo:dlq:index             zset   entry id -> dead_lettered_at
    snackvideo:dlq:entries           hash   entry id -> entry JSON
    snackvideo:dlq:reasons           hash   reason -> live entry count
    snackvideo:dlq:stores            hash   store_id -> live entry count
    snackvideo:dlq:trimmed           hash   reason -> entries trimmed by retention (counter)
    snackvideo:dlq:taken:{entry_id}  string tombstone of a replayed or purged entry ("replayed" /
                                            "purged"; dlq_take.lua; TTL: max(600 s, 2 x visibility
                                            timeout + restore interval)): a stale copy of that
                                            run's message, restored after the take, is done
    snackvideo:redrive:lock          string held by the one redrive run in progress
    snackvideo:throttle:{scope}      hash   the shared rate-limit budget of one scope (times are
                                            Redis TIME seconds; written only by
                                            worker/lua/throttle_*.lua; TTL 1 day):
        limit, remaining          last X-Ratelimit-Limit; lowest Remaining seen this window
        reset_at                  end of the tracked window (never before the server's)
        window_s                  window length the server announced when it opened one
        window_bound              learned upper bound of the window (rollovers we watched)
        window_started_at         when the tracked window began for us (older answers are stale)
        window_opened_at          acquire time of the request that opened this window
        provisional               1 after an optimistic refill, until the window's first answer
        blocked_until             no request before this (429: Retry-After, else the reset)
        next_slot_at              earliest next request: the budget is spread over the window
        updated_at, taken, rate_limited    last answer; slots taken; 429s seen (counters)
    snackvideo:throttle:{scope}:in_flight  zset  token -> lease end: slots taken, not yet answered
    snackvideo:throttle_scopes       zset   scope -> its last answer (Redis TIME s): the most
                                            recent TRACKED_SCOPES_MAX scopes of the last day,
                                            trimmed by throttle_record.lua (`snackvideo status`,
                                            /metrics); replaces the unbounded set
                                            snackvideo:throttles, no longer read
    snackvideo:metrics:enqueued      string jobs pushed by enqueue (INCRBY in the enqueue Lua;
                                            exported by worker.metrics)

A message of job J at replay n, generation g is *done* (skipped as ``outcome=duplicate``)
when ``delivered:J``, the entry ``J-rn`` or the tombstone ``dlq:taken:J-rn`` exists, or
``generation:J`` records a later (replay, generation) than (n, g); the check runs inside
throttle_acquire.lua (``worker.marks``). Unreadable messages are parked under
``{job_id}-rn-invalid``, an id no done-check ever reads.

API keys are never written under any of these.
"""

from __future__ import annotations

from producers.keys import DELIVERY_QUEUE, KEY_PREFIX, idempotency_key

__all__ = [
    "CONSUMERS",
    "CONTROL_QUEUE",
    "DELIVERY_QUEUE",
    "DLQ_ENTRIES",
    "DLQ_INDEX",
    "DLQ_REASONS",
    "DLQ_STORES",
    "DLQ_TRIMMED",
    "KEY_PREFIX",
    "REDRIVE_LOCK",
    "REDRIVE_TASK",
    "SCHEDULED",
    "SCHEDULED_MESSAGES",
    "TAKEN_BY",
    "THROTTLE_SCOPES",
    "consumer_taken_key",
    "delivered_key",
    "dlq_taken_key",
    "generation_key",
    "idempotency_key",
    "redeliveries_key",
    "throttle_in_flight_key",
    "throttle_key",
]

SCHEDULED = f"{KEY_PREFIX}scheduled"
SCHEDULED_MESSAGES = f"{KEY_PREFIX}scheduled:messages"
DLQ_INDEX = f"{KEY_PREFIX}dlq:index"
DLQ_ENTRIES = f"{KEY_PREFIX}dlq:entries"
DLQ_REASONS = f"{KEY_PREFIX}dlq:reasons"
DLQ_STORES = f"{KEY_PREFIX}dlq:stores"
DLQ_TRIMMED = f"{KEY_PREFIX}dlq:trimmed"
REDRIVE_LOCK = f"{KEY_PREFIX}redrive:lock"
THROTTLE_SCOPES = f"{KEY_PREFIX}throttle_scopes"
CONSUMERS = f"{KEY_PREFIX}consumers"
TAKEN_BY = f"{KEY_PREFIX}taken_by"

#: The queue of control tasks: redrive must not wait behind thousands of queued deliveries.
CONTROL_QUEUE = "snackvideo.control"
#: Celery beat's dead-letter reprocessing task (``worker.redrive``).
REDRIVE_TASK = "snackvideo.redrive"


def delivered_key(job_id: str) -> str:
    return f"{KEY_PREFIX}delivered:{job_id}"


def generation_key(job_id: str) -> str:
    return f"{KEY_PREFIX}generation:{job_id}"


def redeliveries_key(job_id: str, replay_count: int, generation: int) -> str:
    return f"{KEY_PREFIX}redeliveries:{job_id}-r{replay_count}-g{generation}"


def consumer_taken_key(incarnation: str) -> str:
    return f"{KEY_PREFIX}consumer:{incarnation}:taken"


def dlq_taken_key(entry_id: str) -> str:
    return f"{KEY_PREFIX}dlq:taken:{entry_id}"


def throttle_key(scope: str) -> str:
    return f"{KEY_PREFIX}throttle:{scope}"


def throttle_in_flight_key(scope: str) -> str:
    return f"{KEY_PREFIX}throttle:{scope}:in_flight"
