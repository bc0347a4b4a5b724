"""Delivering one job: the decisions of DESIGN.md's outcomes table, free of Celery.

The task in ``worker.tasks`` hands each message to ``Dispatcher.deliver`` and turns the
returned ``Outcome`` into Celery states. Everything the dispatcher touches (Redis, the
HTTP session, the clock, the random source) is injected, so tests can drive it directly.
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
from worker import metrics
from worker.backoff import backoff
from worker.deadletter import DeadLetter, DeadLetterStore, entry_id
from worker.errors import DeadLettered, DeliveryError, PermanentError, RateLimited, RetryableError
from worker.keys import DLQ_ENTRIES, delivered_key
from worker.scalev import ScalevClient
from worker.scheduler import DelayedJobs
from worker.settings import Settings
from worker.throttle import Throttle

log = logging.getLogger("snackvideo.delivery")

#: 429s answered within one task run before the job is parked instead of retried in place.
MAX_RATE_LIMITED_IN_RUN = 3
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
        self.dead_letters = dead_letters or DeadLetterStore(
            client,
            max_entries=settings.dlq_max_entries,
            max_age_seconds=settings.dlq_max_age_seconds,
        )
        self.delayed = delayed or DelayedJobs(client)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()

    # -- entry point ---------------------------------------------------------------

    def deliver(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        """Deliver one job or decide its fate. Raises ``DeadLettered`` once it is parked."""
        try:
            if args:
                raise InvalidEvent([("args", "the job takes keyword arguments only")])
            job = validate_job(kwargs)
        except InvalidEvent as exc:
            return self._dead_letter_unreadable(kwargs, str(exc))
        if self._already_done(job):
            self._report("duplicate", job, None)
            return Outcome("duplicate", job.job_id)
        if self.clock() - job.enqueued_at > self.settings.max_age_seconds:
            return self._dead_letter(job, "expired", None, "job older than max age")
        api_key = self.settings.api_key_for(job.store_id)
        if api_key is None:
            return self._dead_letter(job, "no_api_key", None, "no API key configured for store")
        return self._send(job, api_key)

    # -- steps ---------------------------------------------------------------------

    def _already_done(self, job: JobMessage) -> bool:
        # Delivered, or parked by an earlier run of this very message (a crash between
        # the dead-letter write and the ack redelivers it): either way, do not send again.
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(delivered_key(job.job_id))
            pipe.hexists(DLQ_ENTRIES, entry_id(job.job_id, job.replay_count))
            delivered, parked = pipe.execute()
        return bool(delivered) or bool(parked)

    def _throttle_scope(self, job: JobMessage) -> str:
        if self.settings.throttle_scope == "store":
            return f"store:{job.store_id}"
        return self.settings.scalev_api_base_url

    def _send(self, job: JobMessage, api_key: str) -> Outcome:
        scope = self._throttle_scope(job)
        waited = 0.0  # slept for throttle slots in this run: the delivered line's wait=
        for _ in range(MAX_RATE_LIMITED_IN_RUN):
            asked_at = self.clock()
            wait = self._wait_for_slot(scope)
            waited += self.clock() - asked_at
            if wait > 0:
                return self._postpone(job, wait, "throttled", None, None)
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
            self.throttle.record(scope, result.status_code, result.headers)
            self._mark_delivered(job)
            self._report(
                "delivered",
                job,
                result.status_code,
                attempt=attempt,
                wait=waited,
                seconds=self.clock() - started,
            )
            return Outcome("delivered", job.job_id, result.status_code)
        # Still limited after several 429s in a row: park it rather than hold the worker.
        return self._postpone(job, FALLBACK_RATE_LIMIT_WAIT_SECONDS, "throttled", 429, None)

    def _wait_for_slot(self, scope: str) -> float:
        """Sleep through short waits; return a long wait (> max sleep) for the caller to park."""
        while True:
            wait = self.throttle.acquire(scope)
            if wait <= 0:
                return 0.0
            if wait > self.settings.max_sleep_seconds:
                return wait
            metrics.observe_throttle_wait(wait)
            self.sleep(wait)

    def _failed(self, job: JobMessage, exc: DeliveryError) -> Outcome:
        if isinstance(exc, PermanentError):
            reason = f"http_{exc.status_code}"
            return self._dead_letter(job, reason, exc.status_code, exc.body or str(exc))
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
        due_at = self.clock() + wait
        kwargs = job.model_dump(by_alias=True)
        if attempts is not None:
            kwargs["attempts"] = attempts
        self.delayed.schedule(kwargs, due_at)
        self._report(kind, job, status_code, attempt=attempts or job.attempts, wait=wait)
        return Outcome(kind, job.job_id, status_code, due_at, cause)

    def _mark_delivered(self, job: JobMessage) -> None:
        # Kept as long as a redelivered copy could still be considered, then a day more.
        ttl = int(self.settings.max_age_seconds + 86_400)
        self.redis.set(delivered_key(job.job_id), "1", ex=ttl)

    # -- dead letters ----------------------------------------------------------------

    def _dead_letter(
        self,
        job: JobMessage,
        reason: str,
        status_code: int | None,
        error: str,
        *,
        attempts: int | None = None,
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

    def _dead_letter_unreadable(self, kwargs: Any, error: str) -> Outcome:
        raw = kwargs if isinstance(kwargs, dict) else {"raw": kwargs}
        job_id = raw.get("job_id")
        job_id = job_id if isinstance(job_id, str) and job_id else f"invalid-{time.time_ns()}"
        store_id = raw.get("store_id")
        replay_count = raw.get("replay_count")
        entry = DeadLetter(
            job_id=job_id,
            store_id=store_id if isinstance(store_id, str) else "",
            payload=raw.get("payload", raw),
            reason="invalid_job",
            error=error[: self.settings.dlq_error_max_chars],
            enqueued_at=_number_or_none(raw.get("enqueued_at")),
            dead_lettered_at=self.clock(),
            replay_count=replay_count if isinstance(replay_count, int) else 0,
        )
        self._store(entry)
        metrics.record_outcome("dead_lettered", None, reason="invalid_job")
        log.warning(
            "outcome=dead_lettered reason=invalid_job job_id=%s store_id=%s error=%s",
            entry.job_id,
            entry.store_id or "-",
            error,
        )
        raise DeadLettered("invalid_job", None, entry.click_id, entry.job_id)

    def _store(self, entry: DeadLetter) -> None:
        _, trimmed = self.dead_letters.add(entry, now=self.clock())
        for item in trimmed:
            log.warning(
                "dead-letter retention trimmed entry=%s reason=%s", item.entry_id, item.reason
            )

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
    ) -> None:
        self._count(outcome, job, status_code, wait=wait, reason=reason)
        level = logging.WARNING if outcome == "dead_lettered" else logging.INFO
        log.log(
            level,
            "outcome=%s job_id=%s store_id=%s click_id=%s status=%s attempt=%s wait=%.3f%s%s",
            outcome,
            job.job_id,
            job.store_id,
            job.payload.get("click_id", "-"),
            status_code if status_code is not None else "-",
            attempt if attempt is not None else job.attempts,
            wait,
            f" reason={reason}" if reason else "",
            f" seconds={seconds:.3f}" if seconds is not None else "",
        )

    def _count(
        self,
        outcome: str,
        job: JobMessage,
        status_code: int | None,
        *,
        wait: float,
        reason: str | None,
    ) -> None:
        # A 429 answered inside a run is not how the run ends (it tries again, or parks the
        # job as "throttled"), so it has a counter of its own: each run counts once.
        if outcome == "rate_limited":
            metrics.record_rate_limited()
            return
        age = self.clock() - job.enqueued_at if outcome == "delivered" else None
        metrics.record_outcome(outcome, status_code, reason=reason, age_seconds=age)
        if outcome == "throttled":
            metrics.observe_throttle_wait(wait)


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
