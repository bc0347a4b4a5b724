"""The Redis key layout, in one place.

    snackvideo                       list   the delivery queue (kombu; Celery messages)
    snackvideo.control               list   control tasks (redrive), never behind deliveries
    unacked, unacked_index           hash/zset  kombu's in-flight messages (visibility timeout;
                                            index scored on the Redis clock,
                                            worker.celery_ext.transport); kombu's own names
    unacked_mutex                    string kombu's lock for the restore sweep (expires in 30 s)
    snackvideo:consumers             zset   consumer incarnation -> last heartbeat (Redis TIME s):
                                            one per worker consumer connection
                                            (worker.celery_ext.ownership)
    snackvideo:consumer:{id}:taken   set    delivery tags that incarnation took and has not acked
                                            or restored (written in kombu's own MULTI)
    snackvideo:taken_by              hash   delivery tag -> the incarnation that holds it now
    snackvideo:consumer:{id}:taking  list   messages that incarnation popped and kombu has not
                                            recorded in unacked yet: the pop moves them here
                                            in one step (BRPOPLPUSH), the unacked MULTI
                                            removes them (worker.celery_ext.taking)
    snackvideo:idem:{store}:{key}    string job id holding an idempotency key (TTL 48 h); in
                                            {store}, % and : are written %25 and %3A
    snackvideo:enqueue:call:{token}  string an enqueue call's result, for its retries (TTL 20 s)
    snackvideo:delivered:{job_id}    string set after a 2xx, so a redelivered message is not sent
                                            again (TTL: max job age + 1 day; set by
                                            throttle/record.lua in the call that releases
                                            the slot)
    snackvideo:generation:{job_id}   string "{replay_count}:{generation}" of the job's latest
                                            parked message (delayed/schedule.lua, atomically
                                            with the parking; TTL like the delivered-marker)
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
                                            "purged"; deadletter/take.lua; TTL: max(600 s,
                                            2 x visibility timeout + restore interval)): a
                                            stale copy of that run's message, restored after
                                            the take, is done
    snackvideo:redrive:lock          string held by the one redrive run in progress
    snackvideo:throttle:{scope}      hash   the shared rate-limit budget of one scope (times are
                                            Redis TIME seconds; written only by
                                            worker/throttle/*.lua; TTL 1 day):
        limit, remaining          last X-Ratelimit-Limit; lowest Remaining seen this window
        reset_at                  end of the tracked window (never before the server's)
        window_s                  window length the server announced when it opened one
        window_bound              learned upper bound of the window (rollovers we watched)
        window_started_at         when the tracked window began for us (older answers are stale)
        window_opened_at          acquire time of the request that opened this window (kept
                                  through a refill until an answer opens the next one)
        provisional               1 after an optimistic refill, until the window's first answer
        rollover_after, sent_max  the tracked window began after rollover_after (a send time
                                  the window before answered for); sent_max: the same for the
                                  tracked window, the bound of the next rollover
        count_seen, count_seen_at lowest Remaining of the window and when its answer came back:
                                  a request sent later that reports no less is a new window
        reset_seen                the tracked window's epoch reset: an answer that names it is
                                  from that window, whatever its count (unset: delta resets)
        foreign_phase             1 after a 429: the server's windows are not assumed to start
                                  at our requests any more
        adaptive_rate             requests/s without rate-limit headers (AIMD, record.lua);
        adaptive_ceiling          the rate the last 429 came at (unset: none yet, or passed);
        adaptive_cut_at           when it was cut; adaptive_seen_at, adaptive_seen,
        adaptive_observed         answers counted per second (a cut starts from that rate)
        blocked_until             no request before this (429: Retry-After, else the reset)
        next_slot_at              earliest next request: the budget is spread over the window
        updated_at, taken, rate_limited    last answer; slots taken; 429s seen (counters)
    snackvideo:throttle:{scope}:in_flight  zset  token -> lease end: slots taken, not yet answered
    snackvideo:throttle_scopes       zset   scope -> its last answer (Redis TIME s): the most
                                            recent TRACKED_SCOPES_MAX scopes of the last day,
                                            trimmed by throttle/record.lua (`snackvideo status`,
                                            /metrics); replaces the unbounded set
                                            snackvideo:throttles, no longer read
    snackvideo:metrics:enqueued      string jobs pushed by enqueue (INCRBY in the enqueue Lua;
                                            exported by worker.metrics.collectors)

Dead-letter entries are fields of ``snackvideo:dlq:entries``, named ``{job_id}-r{n}``
(``entry_id``): a redelivered message finds the entry it already wrote, and a replayed job
that fails again gets a new one. A message the worker cannot read is parked as
``{job_id}-r{n}-invalid`` (``invalid_entry_id``), an id no done-check ever reads: garbage
carrying a real job's id cannot hide that job.

The done-check. A message of job J at replay n, generation g needs no sending (it is
skipped as ``outcome=duplicate``) when any of these exists:

    snackvideo:delivered:J          J reached Scalev (a 2xx); set with a TTL
    snackvideo:dlq:entries[J-rn]    this run of J was dead-lettered (an earlier copy of
                                    this very message parked it, then died before its ack)
    snackvideo:dlq:taken:J-rn       that entry was replayed (as J-r(n+1)) or purged since
    snackvideo:generation:J         records a later (replay, generation) than (n, g): the
                                    job was parked since, and the parked message is the
                                    live copy

The tombstone closes a race the first two leave open: a worker writes ``J-r0`` and dies
before its ack; an operator or the redrive replays ``J-r0`` before the visibility timeout
brings the old message back. Without it the old r0 copy would find neither marker nor
entry and be sent again, beside the replayed r1.

The generation closes the same race for parking. A run that parks a job (a retry, a long
throttle wait) writes a new message of generation g + 1 to the delayed set, and
``delayed/schedule.lua`` records ``n:g+1`` in the same atomic call. If the worker dies
before its ack, kombu restores the old message (generation g); without the record it would
pass the check and be sent beside the parked one. Comparing (replay, generation) pairs
keeps a replay (n + 1, generation 0) ahead of every parking of run n.

The check is part of ``throttle/acquire.lua`` and the marker is set by
``throttle/record.lua``, so the bookkeeping of a delivery is two round trips: one before
the POST (done? else take a slot), one after it (release the slot, mark it delivered).
``JobMarks`` names the keys of one message's check.

API keys are never written under any of these.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "UNACKED",
    "UNACKED_INDEX",
    "UNACKED_MUTEX",
    "JobMarks",
    "consumer_taken_key",
    "consumer_taking_key",
    "delivered_key",
    "dlq_taken_key",
    "entry_id",
    "generation_key",
    "idempotency_key",
    "invalid_entry_id",
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

#: kombu's in-flight messages, its index and its restore lock: kombu's default names,
#: which the transport (worker.celery_ext.transport) sets from here.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
UNACKED_MUTEX = "unacked_mutex"

#: The queue of control tasks: redrive must not wait behind thousands of queued deliveries.
CONTROL_QUEUE = "snackvideo.control"
#: Celery beat's dead-letter reprocessing task (``worker.tasks.redrive``).
REDRIVE_TASK = "snackvideo.redrive"


def delivered_key(job_id: str) -> str:
    return f"{KEY_PREFIX}delivered:{job_id}"


def generation_key(job_id: str) -> str:
    return f"{KEY_PREFIX}generation:{job_id}"


def redeliveries_key(job_id: str, replay_count: int, generation: int) -> str:
    return f"{KEY_PREFIX}redeliveries:{job_id}-r{replay_count}-g{generation}"


def consumer_taken_key(incarnation: str) -> str:
    return f"{KEY_PREFIX}consumer:{incarnation}:taken"


def consumer_taking_key(incarnation: str) -> str:
    return f"{KEY_PREFIX}consumer:{incarnation}:taking"


def dlq_taken_key(entry_id: str) -> str:
    return f"{KEY_PREFIX}dlq:taken:{entry_id}"


def throttle_key(scope: str) -> str:
    return f"{KEY_PREFIX}throttle:{scope}"


def throttle_in_flight_key(scope: str) -> str:
    return f"{KEY_PREFIX}throttle:{scope}:in_flight"


def entry_id(job_id: str, replay_count: int) -> str:
    """The dead-letter entry of run ``replay_count`` of a job."""
    return f"{job_id}-r{replay_count}"


def invalid_entry_id(job_id: str, replay_count: int) -> str:
    """The id of an ``invalid_job`` entry: never one a done-check reads."""
    return f"{entry_id(job_id, replay_count)}-invalid"


@dataclass(frozen=True)
class JobMarks:
    """The keys of one message's done-check (the module docstring), and the lifetime of
    the marks it sets."""

    job_id: str
    replay_count: int
    #: How long the delivered-marker is kept once set (``Settings.delivered_marker_ttl``);
    #: the generation record lives as long.
    delivered_ttl_seconds: int
    #: Parkings of this run so far (the message's ``generation`` kwarg).
    generation: int = 0

    @property
    def delivered_key(self) -> str:
        return delivered_key(self.job_id)

    @property
    def dlq_entry_id(self) -> str:
        return entry_id(self.job_id, self.replay_count)

    @property
    def taken_key(self) -> str:
        return dlq_taken_key(self.dlq_entry_id)

    @property
    def generation_key(self) -> str:
        return generation_key(self.job_id)
