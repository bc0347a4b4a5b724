"""Delivering one job: the decisions of the README's outcomes table, free of Celery.

The task in ``worker.tasks`` hands each message to ``Dispatcher.deliver`` and turns the
returned ``Outcome`` into Celery states. Everything the dispatcher touches (Redis, the
HTTP session, the clock, the random source) is injected, so tests can drive it directly.

Every run ends delivered, parked (a retry with backoff, a long throttle wait), or
dead-lettered, whatever it raises: an exception nothing classifies is retried
``SNACKVIDEO_MAX_INTERNAL_ERRORS`` times and then dead-lettered as ``internal_error``
(``internal_errors``). Only a transient Redis error escapes, for the task to
requeue the message, since nothing can be written then. A message that kombu keeps
restoring without any run of it reaching an outcome is dead-lettered too
(``SNACKVIDEO_MAX_REDELIVERIES``). Kwargs that are no valid job are parked as
``invalid_job`` (``worker.deadletter.unreadable``).

The dispatcher records the metrics of each run, the duration of each request included:
the Scalev client records none.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from producers.errors import InvalidEvent
from producers.models import JobMessage, validate_job
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.deadletter.unreadable import UnreadableMessages
from worker.delayed.store import DelayedJobs
from worker.delivery.backoff import backoff
from worker.delivery.internal_errors import TRANSIENT_REDIS_ERRORS, configured_keys, describe
from worker.delivery.scalev import ScalevClient
from worker.errors import (
    DeadLettered,
    DeliveryError,
    PermanentError,
    RateLimited,
    RedirectRefused,
    RetryableError,
)
from worker.escaping import log_field
from worker.keys import JobMarks, redeliveries_key
from worker.metrics import recording as metrics
from worker.settings import MAX_REQUESTS_PER_RUN, Settings
from worker.throttle.budget import Slot, Throttle

log = logging.getLogger("snackvideo.delivery")

#: When a 429 carries no usable reset, wait this long.
FALLBACK_RATE_LIMIT_WAIT_SECONDS = 1.0
#: How long the run count of a redelivered message is kept. Its restores come a few
#: seconds (a dead worker, a dead pool child) to a visibility timeout apart.
REDELIVERIES_TTL_SECONDS = 86_400


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
        unreadable: UnreadableMessages | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        cut_off_errors: tuple[type[Exception], ...] = (),
    ) -> None:
        self.settings = settings
        self.redis = client
        self.scalev = scalev
        self.throttle = throttle or Throttle.from_settings(client, settings)
        self.dead_letters = dead_letters or DeadLetterStore.from_settings(client, settings)
        self.delayed = delayed or DelayedJobs(client)
        self.unreadable = unreadable or UnreadableMessages.from_settings(
            self.dead_letters, settings, clock
        )
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        # Raised into a run from outside to stop it (Celery's soft time limit): not an
        # internal error; the caller ends the run with ``cut_short``.
        self._passthrough: tuple[type[Exception], ...] = (
            DeadLettered,
            *TRANSIENT_REDIS_ERRORS,
            *cut_off_errors,
        )
        self._secrets = configured_keys(settings)

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
        # Each failure is handled after its except block, so that nothing raised from
        # there carries it as context: Celery would show its (third-party) message.
        problem: str
        try:
            if args:
                raise InvalidEvent([("args", "the job takes keyword arguments only")])
            job = validate_job(kwargs, max_payload_bytes=self.settings.max_payload_bytes)
        except InvalidEvent as exc:
            problem = str(exc)
        except Exception as exc:  # the validator itself failed: unreadable all the same
            problem = f"cannot read the job: {self.describe(exc)}"
        else:
            return self._deliver_or_handle(job, redelivered=redelivered)
        entry = self.unreadable.park(kwargs, problem, task_id=task_id)
        raise DeadLettered("invalid_job", None, entry.click_id, entry.job_id, entry.id)

    def _deliver_or_handle(self, job: JobMessage, *, redelivered: bool) -> Outcome:
        failure: Exception
        try:
            return self._deliver(job, redelivered=redelivered)
        except self._passthrough:
            raise
        except Exception as exc:  # whatever it is, the run must still end in an outcome
            failure = exc
        return self._internal_error(job, failure)

    def _deliver(self, job: JobMessage, *, redelivered: bool) -> Outcome:
        marks = JobMarks(
            job.job_id,
            job.replay_count,
            self.settings.delivered_marker_ttl_seconds,
            job.generation,
        )
        scope = self._throttle_scope(job)
        if redelivered:
            runs = self._count_redelivery(job)
            if runs > self.settings.max_redeliveries:
                return self._dead_letter_unless_done(
                    job,
                    marks,
                    scope,
                    "internal_error",
                    f"redelivered {runs} times without an outcome (each run was cut off: "
                    "a pool process killed, a hard time limit, a lost worker)",
                )
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
        job = validate_job(kwargs, max_payload_bytes=self.settings.max_payload_bytes)
        return self._failed(job, RetryableError(why))

    # -- steps ---------------------------------------------------------------------

    def _throttle_scope(self, job: JobMessage) -> str:
        if self.settings.throttle_scope == "store":
            return f"store:{job.store_id}"
        return self.settings.scalev_api_base_url

    def _duplicate(self, job: JobMessage) -> Outcome:
        # Delivered, parked by an earlier run of this very message (a crash between the
        # dead-letter write and the ack redelivers it), or that entry replayed since:
        # either way, do not send again (the done-check of worker.keys).
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
            failure: DeliveryError | None = None
            started = time.perf_counter()
            try:
                result = self.scalev.send(job.store_id, api_key, job.payload)
            except DeliveryError as exc:
                failure = exc
            # The one timer of a request, whatever its answer: the histogram and the
            # delivered line's seconds=.
            seconds = time.perf_counter() - started
            metrics.observe_http_seconds(seconds)
            if failure is not None:
                self.throttle.record(scope, failure.status_code, failure.headers)
                if isinstance(failure, RateLimited):
                    self._report("rate_limited", job, failure.status_code, attempt=attempt)
                    continue
                return self._failed(job, failure)
            # Releases the slot and sets the delivered-marker, in one round trip.
            self._record_delivered(job, scope, result.status_code, result.headers, marks)
            self._report(
                "delivered",
                job,
                result.status_code,
                attempt=attempt,
                wait=waited,
                seconds=seconds,
                redelivered=redelivered,
            )
            return Outcome("delivered", job.job_id, result.status_code)
        # Still limited after several 429s in a row: park it rather than hold the worker.
        return self._postpone(job, FALLBACK_RATE_LIMIT_WAIT_SECONDS, "throttled", 429, None)

    def _record_delivered(
        self,
        job: JobMessage,
        scope: str,
        status_code: int,
        headers: dict[str, str],
        marks: JobMarks,
    ) -> None:
        try:
            self.throttle.record(scope, status_code, headers, delivered=marks)
        except TRANSIENT_REDIS_ERRORS:
            raise  # Redis away: the task requeues; the copy may be sent again (durability.md)
        except Exception as exc:
            # Scalev has the event. Retrying the run would send it again, every time, so
            # the run ends delivered; the marker is missing, which matters only if this
            # message comes back (its ack lost too).
            log.error(
                "job_id=%s was delivered (status=%s) but recording it failed: %s",
                log_field(job.job_id),
                status_code,
                log_field(self.describe(exc)),
            )

    def _count_redelivery(self, job: JobMessage) -> int:
        """Runs of this redelivered message so far, this one included (one round trip,
        paid only by messages kombu restored)."""
        key = redeliveries_key(job.job_id, job.replay_count, job.generation)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, REDELIVERIES_TTL_SECONDS)
            runs, _ = pipe.execute()
        return int(runs)

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
            location = None
            if isinstance(exc, RedirectRefused):
                location = exc.location
                metrics.record_redirect_refused(exc.status_code or 0)
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
        internal_errors: int | None = None,
        reason: str | None = None,
    ) -> Outcome:
        kwargs = job.model_dump(by_alias=True)
        if attempts is not None:
            kwargs["attempts"] = attempts
        if internal_errors is not None:
            kwargs["internal_errors"] = internal_errors
        # The parked message is the job's live copy from now on; schedule.lua records its
        # generation in the same step, and this message's restored copy stands down.
        kwargs["generation"] = job.generation + 1
        due_at = self.delayed.schedule(  # on the Redis clock
            kwargs,
            delay_seconds=wait,
            generation_ttl_seconds=self.settings.delivered_marker_ttl_seconds,
        )
        if due_at is None:
            return self._duplicate(job)  # a copy of this message parked the job already
        self._report(
            kind, job, status_code, attempt=attempts or job.attempts, wait=wait, reason=reason
        )
        return Outcome(kind, job.job_id, status_code, due_at, cause)

    # -- errors nothing classifies ---------------------------------------------------------

    def describe(self, exc: BaseException) -> str:
        """What the logs and dead letters keep of an error: type, message, no key."""
        return describe(exc, self._secrets, self.settings.dlq_error_max_chars)

    def _internal_error(self, job: JobMessage, exc: Exception) -> Outcome:
        """Retry with backoff a bounded number of times, then dead-letter the job."""
        error = self.describe(exc)
        errors = job.internal_errors + 1  # runs of this job that ended in such an error
        log.warning(
            "internal error %d of at most %d job_id=%s store_id=%s: %s",
            errors,
            self.settings.max_internal_errors,
            log_field(job.job_id),
            log_field(job.store_id),
            log_field(error),
        )
        if errors < self.settings.max_internal_errors:
            wait = backoff(
                errors, self.settings.retry_base_seconds, self.settings.retry_max_seconds, self.rng
            )
            park_failure: Exception
            try:
                return self._postpone(
                    job,
                    wait,
                    "retried",
                    None,
                    None,
                    internal_errors=errors,
                    reason="internal_error",
                )
            except TRANSIENT_REDIS_ERRORS:
                raise
            except Exception as park_exc:  # e.g. a payload that cannot be serialised again
                park_failure = park_exc
            error = f"{error}; parking it failed: {self.describe(park_failure)}"
        error = f"{errors} runs ended in an internal error; the last: {error}"
        return self._dead_letter(job, "internal_error", None, error)

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
        self.dead_letters.add(entry, now=self.clock())
        click_id = entry.click_id
        self._report("dead_lettered", job, status_code, attempt=entry.attempts, reason=reason)
        raise DeadLettered(reason, status_code, click_id, job.job_id, entry.id)


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
        attempt = attempt if attempt is not None else job.attempts
        click_id = job.payload.get("click_id", "-")
        # The same fields, typed, for SNACKVIDEO_LOG_FORMAT=json (worker.celery_ext.json_logs).
        fields: dict[str, object] = {
            "outcome": outcome,
            "job_id": job.job_id,
            "store_id": job.store_id,
            "click_id": click_id,
            "status": status_code,
            "attempt": attempt,
            "wait": round(wait, 3),
        }
        if reason:
            fields["reason"] = reason
        if seconds is not None:
            fields["seconds"] = round(seconds, 3)
        if redelivered:
            fields["redelivered"] = True
        # The ids came from a producer: log_field keeps each one a single field of this line
        # (a click_id holding "\nINFO outcome=delivered" forges no second outcome line).
        log.log(
            level,
            "outcome=%s job_id=%s store_id=%s click_id=%s status=%s attempt=%s wait=%.3f%s%s%s",
            outcome,
            log_field(job.job_id),
            log_field(job.store_id),
            log_field(click_id),
            status_code if status_code is not None else "-",
            attempt,
            wait,
            f" reason={reason}" if reason else "",
            f" seconds={seconds:.3f}" if seconds is not None else "",
            " redelivered=1" if redelivered else "",
            extra=fields,
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
