"""Parking what the worker cannot read as ``invalid_job``: one path for every guard.

A message the worker cannot read, or a job it refuses (an unknown ``schema``, a payload
over ``SNACKVIDEO_MAX_PAYLOAD_BYTES``), is dead-lettered and never posted. Each guard that
finds one comes here: in ``worker.celery_ext``, the transport (an item kombu cannot
parse), the guard in front of Celery's strategy (a body that cannot be called as a task)
and the consumer's hooks (an unknown task, an undecodable body); and the dispatcher, for
kwargs that are no valid job. What an entry keeps is bounded: an id longer than any real
one (``MAX_ID_CHARS``) stays in the text only, and text that is not a job, or a payload too
large or too deep to keep whole, is cut to ``SNACKVIDEO_DLQ_ERROR_MAX_CHARS`` with its full
length (``kept_raw``).

Parking needs the dead-letter store, the settings, the clock and the metrics, nothing of
Celery: the guards that run inside kombu's event loop reach it without the task.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from producers.models import MAX_ID_CHARS, nested_deeper_than
from worker.bounded_json import bounded_json, kept_raw
from worker.connections import redis_client, redis_clock
from worker.deadletter.store import MAX_STORED_DEPTH, DeadLetter, DeadLetterStore
from worker.escaping import log_field
from worker.keys import invalid_entry_id
from worker.metrics import recording as metrics
from worker.settings import Settings, get_settings

# Every outcome= line comes from this one logger (docs/operations.md, "Logs").
log = logging.getLogger("snackvideo.delivery")


class UnreadableMessages:
    """Stores ``invalid_job`` entries: once per message, however often it comes back."""

    def __init__(
        self,
        store: DeadLetterStore,
        *,
        clock: Callable[[], float],
        max_payload_bytes: int,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes

    @classmethod
    def from_settings(
        cls, store: DeadLetterStore, settings: Settings, clock: Callable[[], float]
    ) -> UnreadableMessages:
        return cls(store, clock=clock, max_payload_bytes=settings.max_payload_bytes)

    def park(self, kwargs: Any, problem: str, *, task_id: str | None = None) -> DeadLetter:
        """Dead-letter ``kwargs`` (a message's kwargs, or what a guard kept of a message)
        as ``invalid_job``; returns the entry. A redelivered copy of a message parked
        already finds its entry: logged and counted as ``duplicate``, nothing written.

        ``task_id``: the Celery task id, the name of an unreadable job that carries none.
        Raises ``redis.RedisError`` when Redis refuses the entry.
        """
        raw = kwargs if isinstance(kwargs, dict) else {"raw": kwargs}
        job_id = _unreadable_job_id(raw, task_id)
        store_id = raw.get("store_id")
        replay_count = raw.get("replay_count")
        replay_count = replay_count if isinstance(replay_count, int) else 0
        entry = DeadLetter(
            job_id=job_id,
            # Cut: it names a count in the dead-letter store and shows in every listing.
            store_id=store_id[:MAX_ID_CHARS] if isinstance(store_id, str) else "",
            payload=self._kept_payload(raw.get("payload", raw)),
            reason="invalid_job",
            error=problem[: self.store.raw_max_chars],
            enqueued_at=_number_or_none(raw.get("enqueued_at")),
            dead_lettered_at=self.clock(),
            replay_count=replay_count,
            id=invalid_entry_id(job_id, replay_count),
        )
        # Not new: a redelivered copy of a message parked already (its ack was lost).
        added, _trimmed = self.store.add(entry, now=self.clock())
        outcome = "dead_lettered" if added else "duplicate"
        metrics.record_outcome(outcome, None, reason="invalid_job")
        log.warning(
            "outcome=%s reason=invalid_job job_id=%s store_id=%s error=%s",
            outcome,
            log_field(entry.job_id),
            log_field(entry.store_id or "-"),
            log_field(entry.error),
            extra={
                "outcome": outcome,
                "reason": "invalid_job",
                "job_id": entry.job_id,
                "store_id": entry.store_id,
                "error": entry.error,
            },
        )
        return entry

    def _kept_payload(self, payload: Any) -> Any:
        """An unreadable job's payload as its entry keeps it: as it is, unless it is over
        the payload bound or nested deeper than an entry holds; then its text, cut the way
        every unreadable message's is (``kept_raw``), with its full length."""
        kept = kept_raw(payload, self.store.raw_max_chars)
        small = kept["raw_chars"] <= self.max_payload_bytes
        if small and not nested_deeper_than(payload, MAX_STORED_DEPTH):
            return payload
        return kept


def park_raw(raw: Any, problem: str, *, job_id: Any = None, queue: str = "") -> DeadLetter:
    """Park a message that is no task call at all (the guards of ``worker.celery_ext``):
    its text cut to ``SNACKVIDEO_DLQ_ERROR_MAX_CHARS``, with its full length.

    ``job_id`` and ``queue`` come from the message too. Raises ``redis.RedisError`` when
    Redis refuses the entry; the caller decides what becomes of the message then.
    """
    kept = {
        # An id longer than any real one is only in `raw`.
        "job_id": job_id if isinstance(job_id, str) and 0 < len(job_id) <= MAX_ID_CHARS else None,
        "queue": queue[:MAX_ID_CHARS] if isinstance(queue, str) else "",
        **kept_raw(raw, get_settings().dlq_error_max_chars),
    }
    return _process_parking().park(kept, problem)


_parking: dict[int, UnreadableMessages] = {}


def _process_parking() -> UnreadableMessages:
    """One per process, as its Redis client is (``worker.connections``)."""
    pid = os.getpid()
    parking = _parking.get(pid)
    if parking is None:
        settings = get_settings()
        client = redis_client()
        # Dead-letter times on the Redis clock, as every other host reads them.
        parking = UnreadableMessages.from_settings(
            DeadLetterStore.from_settings(client, settings), settings, redis_clock().now
        )
        _parking[pid] = parking
    return parking


def _unreadable_job_id(raw: dict[str, Any], task_id: str | None) -> str:
    """The job's own id, else the Celery task id (Flower's row), else one made from the
    content: the same message parked twice (a lost ack) must land on the same entry. An
    id longer than any real one (``MAX_ID_CHARS``) is not used: it would be the entry's
    key and show in every listing."""
    for candidate in (raw.get("job_id"), task_id):
        if isinstance(candidate, str) and 0 < len(candidate) <= MAX_ID_CHARS:
            return candidate
    text, _ = bounded_json(raw, sys.maxsize)  # JSON text of anything, however deep
    return f"invalid-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
