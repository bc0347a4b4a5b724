"""Delivering one job: the decisions of DESIGN.md's outcomes table, free of Celery.

The task in ``worker.tasks`` hands each message to ``Dispatcher.deliver`` and turns the
returned ``Outcome`` into Celery states. Everything the dispatcher touches (Redis, the
HTTP session, the clock, the random source) is injected, so tests can drive it directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from producers.errors import InvalidEvent
from producers.models import JobMessage, validate_job
from worker import metrics
from worker.backoff import backoff
from worker.deadletter import DeadLetter, DeadLetterStore, invalid_entry_id
from worker.errors import (
    DeadLettered,
    DeliveryError,
    PermanentError,
    RateLimited,
    RedirectRefused,
    RetryableError,
)
from worker.marks import JobMarks
from worker.scalev import ScalevClient
from worker.scheduler import DelayedJobs
from worker.settings import MAX_REQUESTS_PER_RUN, Settings
from worker.throttle import Slot, Throttle

log = logging.getLogger("snackvideo.delivery")

#: When a 429 carries no usable reset, wait this long.
FALLBACK_RATE_LIMIT_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    kind: str  # delivered | duplicate | retried | throttled
    job_id: str
    status_code: int | None = None
    due_at: float | None = None
    cause: Exception | None = None

    def __str__(self) -> str:
        if self.due_at is None:
            return f"{self.kind} status={self.status_code}"
        return f"{self.kind}: next attempt at {self.due_at:.3f} (status={self.status_code})"


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        scalev: ScalevClient,
        *,
        throttle: Throttle | None = None,
        dead_letters: DeadLetterStore | None = None,
        delayed: DelayedJobs | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.scalev = scalev
        self.throttle = throttle or Throttle.from_settings(client, settings)
        self.dead_letters = dead_letters or DeadLetterStore.from_settings(client, settings)
        self.delayed = delayed or DelayedJobs(client)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()

    # -- entry point ---------------------------------------------------------------

    def deliver(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        task_id: str | None = None,
        redelivered: bool = False,
    ) -> Outcome:
        """Deliver one job or decide its fate. Raises ``DeadLettered`` once it is parked.

        ``task_id``: the Celery task id, the name of an unreadable job that carries none.
        ``redelivered``: kombu restored this message (a lost ack, a dead worker): if it is
        sent, it may be the second time, and it is counted as such.
        """
        try:
            if args:
                raise InvalidEvent([("args", "the job takes keyword arguments only")])
            job = validate_job(kwargs)
        except InvalidEvent as exc:
            return self._dead_letter_unreadable(kwargs, str(exc), task_id=task_id)
        marks = JobMarks(job.job_id, job.replay_count, self.settings.delivered_marker_ttl_seconds)
        scope = self._throttle_scope(job)
        # Decided without Redis; the done-check for these rare paths is a round trip of
        # its own. The common path does it inside the throttle's acquire (_send).
        if self.clock() - job.enqueued_at > self.settings.max_age_seconds:
            return self._dead_letter_unless_done(
                job, marks, scope, "expired", "job older than max age"
            )
        api_key = self.settings.api_key_for(job.store_id)
        if api_key is None:
            return self._dead_letter_unless_done(
                job, marks, scope, "no_api_key", "no API key configured for store"
            )
        return self._send(job, api_key, marks, scope, redelivered=redelivered)

    def cut_short(self, kwargs: dict[str, Any], why: str) -> Outcome:
        """The run was stopped before it decided (Celery's soft time limit): park the job
        with backoff and a counted attempt, as for a timeout; ``DeadLettered`` when that
        was its last attempt. A job parked or delivered already is only parked again, and
        the next run's done-check skips it."""
        return self._failed(validate_job(kwargs), RetryableError(why))

    # -- steps ---------------------------------------------------------------------

    def _throttle_scope(self, job: JobMessage) -> str:
        if self.settings.throttle_scope == "store":
            return f"store:{job.store_id}"
        return self.settings.scalev_api_base_url

    def _duplicate(self, job: JobMessage) -> Outcome:
        # Delivered, parked by an earlier run of this very message (a crash between the
        # dead-letter write and the ack redelivers it), or that entry replayed since:
        # either way, do not send again (worker.marks).
        self._report("duplicate", job, None)
        return Outcome("duplicate", job.job_id)

    def _send(
        self, job: JobMessage, api_key: str, marks: JobMarks, scope: str, *, redelivered: bool
    ) -> Outcome:
        waited = 0.0  # spent waiting for throttle slots in this run: the delivered line's wait=
        for _ in range(MAX_REQUESTS_PER_RUN):
            slot, waited = self._wait_for_slot(scope, marks, waited)
            if slot.done:
                return self._duplicate(job)
            if slot.wait > 0:
                return self._postpone(job, slot.wait, "throttled", None, None)
            attempt = job.attempts + 1
            started = self.clock()
            try:
                result = self.scalev.send(job.store_id, api_key, job.payload)
            except RateLimited as exc:
                self.throttle.record(scope, exc.status_code, exc.headers)
                self._report("rate_limited", job, exc.status_code, attempt=attempt)
                continue
            except DeliveryError as exc:
                self.throttle.record(scope, exc.status_code, exc.headers)
                return self._failed(job, exc)
            # Releases the slot and sets the delivered-marker, in one round trip.
            self.throttle.record(scope, result.status_code, result.headers, delivered=marks)
            self._report(
                "delivered",
                job,
                result.status_code,
                attempt=attempt,
                wait=waited,
                seconds=self.clock() - started,
                redelivered=redelivered,
            )
            return Outcome("delivered", job.job_id, result.status_code)
        # Still limited after several 429s in a row: park it rather than hold the worker.
        return self._postpone(job, FALLBACK_RATE_LIMIT_WAIT_SECONDS, "throttled", 429, None)

    def _wait_for_slot(self, scope: str, marks: JobMarks, waited: float) -> tuple[Slot, float]:
        """Sleep through short waits; a wait that would take this run's waiting past the
        max sleep comes back (``wait`` > 0) for the caller to park the job.

        ``waited`` is what the run has spent waiting so far, asking included; returns the
        slot and the new total. The cap is per run, not per wait: a process that keeps
        losing slots to others must not hold its message past the visibility timeout
        (``Settings.min_visibility_timeout_seconds``).
        """
        while True:
            asked_at = self.clock()
            slot = self.throttle.acquire_job(scope, marks)
            waited += self.clock() - asked_at
            if slot.done or slot.wait <= 0:
                return slot, waited
            if waited + slot.wait > self.settings.max_sleep_seconds:
                return slot, waited
            metrics.observe_throttle_wait(slot.wait)
            slept_from = self.clock()
            self.sleep(slot.wait)
            waited += self.clock() - slept_from

    def _failed(self, job: JobMessage, exc: DeliveryError) -> Outcome:
        if isinstance(exc, PermanentError):
            reason = f"http_{exc.status_code}"
            location = exc.location if isinstance(exc, RedirectRefused) else None
            return self._dead_letter(
                job, reason, exc.status_code, exc.body or str(exc), location=location
            )
        assert isinstance(exc, RetryableError)
        attempts = job.attempts + 1
        if attempts >= self.settings.max_attempts:
            return self._dead_letter(
                job, "retries_exhausted", exc.status_code, exc.body or str(exc), attempts=attempts
            )
        wait = backoff(
            attempts, self.settings.retry_base_seconds, self.settings.retry_max_seconds, self.rng
        )
        return self._postpone(job, wait, "retried", exc.status_code, exc, attempts=attempts)

    def _postpone(
        self,
        job: JobMessage,
        wait: float,
        kind: str,
        status_code: int | None,
        cause: Exception | None,
        *,
        attempts: int | None = None,
    ) -> Outcome:
        kwargs = job.model_dump(by_alias=True)
        if attempts is not None:
            kwargs["attempts"] = attempts
        due_at = self.delayed.schedule(kwargs, delay_seconds=wait)  # on the Redis clock
        self._report(kind, job, status_code, attempt=attempts or job.attempts, wait=wait)
        return Outcome(kind, job.job_id, status_code, due_at, cause)

    # -- dead letters ----------------------------------------------------------------

    def _dead_letter_unless_done(
        self, job: JobMessage, marks: JobMarks, scope: str, reason: str, error: str
    ) -> Outcome:
        # A redelivered copy of a job that was delivered or parked (and may have expired
        # meanwhile) must not be parked a second time.
        if self.throttle.job_done(scope, marks):
            return self._duplicate(job)
        return self._dead_letter(job, reason, None, error)

    def _dead_letter(
        self,
        job: JobMessage,
        reason: str,
        status_code: int | None,
        error: str,
        *,
        attempts: int | None = None,
        location: str | None = None,
    ) -> Outcome:
        entry = DeadLetter(
            job_id=job.job_id,
            store_id=job.store_id,
            payload=job.payload,
            reason=reason,
            status_code=status_code,
            error=error[: self.settings.dlq_error_max_chars],
            attempts=attempts if attempts is not None else job.attempts + (status_code is not None),
            enqueued_at=job.enqueued_at,
            dead_lettered_at=self.clock(),
            replay_count=job.replay_count,
            location=location,
        )
        self._store(entry)
        click_id = entry.click_id
        self._report("dead_lettered", job, status_code, attempt=entry.attempts, reason=reason)
        raise DeadLettered(reason, status_code, click_id, job.job_id)

    def dead_letter_unreadable(self, raw: Any, error: str) -> None:
        """Park a message whose body cannot even be called as a task (``worker.strategy``)."""
        try:
            self._dead_letter_unreadable(raw, error)
        except DeadLettered:
            pass  # no task runs for this message, so there is no FAILURE state to end in

    def _dead_letter_unreadable(
        self, kwargs: Any, error: str, *, task_id: str | None = None
    ) -> Outcome:
        raw = kwargs if isinstance(kwargs, dict) else {"raw": kwargs}
        job_id = _unreadable_job_id(raw, task_id)
        store_id = raw.get("store_id")
        replay_count = raw.get("replay_count")
        replay_count = replay_count if isinstance(replay_count, int) else 0
        entry = DeadLetter(
            job_id=job_id,
            store_id=store_id if isinstance(store_id, str) else "",
            payload=raw.get("payload", raw),
            reason="invalid_job",
            error=error[: self.settings.dlq_error_max_chars],
            enqueued_at=_number_or_none(raw.get("enqueued_at")),
            dead_lettered_at=self.clock(),
            replay_count=replay_count,
            id=invalid_entry_id(job_id, replay_count),
        )
        # Not new: a redelivered copy of a message parked already (its ack was lost).
        outcome = "dead_lettered" if self._store(entry) else "duplicate"
        metrics.record_outcome(outcome, None, reason="invalid_job")
        log.warning(
            "outcome=%s reason=invalid_job job_id=%s store_id=%s error=%s",
            outcome,
            entry.job_id,
            entry.store_id or "-",
            error,
        )
        raise DeadLettered("invalid_job", None, entry.click_id, entry.job_id)

    def _store(self, entry: DeadLetter) -> bool:
        """Add ``entry``; False when an entry of that id was there already."""
        added, trimmed = self.dead_letters.add(entry, now=self.clock())
        for item in trimmed:
            log.warning(
                "dead-letter retention trimmed entry=%s reason=%s", item.entry_id, item.reason
            )
        return added

    # -- reporting -------------------------------------------------------------------

    def _report(
        self,
        outcome: str,
        job: JobMessage,
        status_code: int | None,
        *,
        attempt: int | None = None,
        wait: float = 0.0,
        seconds: float | None = None,
        reason: str | None = None,
        redelivered: bool = False,
    ) -> None:
        self._count(outcome, job, status_code, wait=wait, reason=reason, redelivered=redelivered)
        level = logging.WARNING if outcome == "dead_lettered" else logging.INFO
        log.log(
            level,
            "outcome=%s job_id=%s store_id=%s click_id=%s status=%s attempt=%s wait=%.3f%s%s%s",
            outcome,
            job.job_id,
            job.store_id,
            job.payload.get("click_id", "-"),
            status_code if status_code is not None else "-",
            attempt if attempt is not None else job.attempts,
            wait,
            f" reason={reason}" if reason else "",
            f" seconds={seconds:.3f}" if seconds is not None else "",
            " redelivered=1" if redelivered else "",
        )

    def _count(
        self,
        outcome: str,
        job: JobMessage,
        status_code: int | None,
        *,
        wait: float,
        reason: str | None,
        redelivered: bool,
    ) -> None:
        # A 429 answered inside a run is not how the run ends (it tries again, or parks the
        # job as "throttled"), so it has a counter of its own: each run counts once.
        if outcome == "rate_limited":
            metrics.record_rate_limited()
            return
        age = self.clock() - job.enqueued_at if outcome == "delivered" else None
        metrics.record_outcome(outcome, status_code, reason=reason, age_seconds=age)
        if outcome == "delivered" and redelivered:
            # The only deliveries that can be duplicates (docs/durability.md).
            metrics.record_redelivered_delivery()
        if outcome == "throttled":
            metrics.observe_throttle_wait(wait)


def _unreadable_job_id(raw: dict[str, Any], task_id: str | None) -> str:
    """The job's own id, else the Celery task id (Flower's row), else one made from the
    content: the same message parked twice (a lost ack) must land on the same entry."""
    job_id = raw.get("job_id")
    if isinstance(job_id, str) and job_id:
        return job_id
    if task_id:
        return task_id
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=repr)
    return f"invalid-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
