"""The Celery tasks, thin adapters from messages to the domain: ``snackvideo.deliver``
(``worker.delivery.dispatcher``) and beat's ``snackvideo.redrive``
(``worker.deadletter.redrive``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import cache
from typing import Any

from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from celery.signals import worker_process_init

from producers.keys import DELIVER_TASK
from worker.bounded_json import bounded_json
from worker.celery_app import app
from worker.connections import redis_client, redis_clock
from worker.deadletter.redrive import Redriver
from worker.delivery.dispatcher import Dispatcher
from worker.delivery.internal_errors import TRANSIENT_REDIS_ERRORS
from worker.delivery.scalev import ScalevClient
from worker.errors import DeadLettered
from worker.keys import REDRIVE_TASK
from worker.metrics import recording as metrics
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: How much of a job the outcome=lost line holds (payloads are small; this is a bound).
LOST_JOB_LOG_MAX_CHARS = 20_000


@cache
def get_dispatcher() -> Dispatcher:
    """One dispatcher per worker process, built after the fork (sockets are not shared)."""
    settings = get_settings()
    scalev = ScalevClient(
        settings.scalev_api_base_url,
        connect_timeout_seconds=settings.http_connect_timeout_seconds,
        read_timeout_seconds=settings.http_read_timeout_seconds,
    )
    # Job ages and dead-letter times on the Redis clock, as every other host reads them.
    return Dispatcher(
        settings,
        redis_client(),
        scalev,
        clock=redis_clock().now,
        cut_off_errors=(SoftTimeLimitExceeded,),
    )


@worker_process_init.connect
def _fresh_dispatcher_after_fork(**_: Any) -> None:
    get_dispatcher.cache_clear()


@app.task(
    name=DELIVER_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # Expected: logged as a one-line INFO by Celery, shown by Flower under failed tasks.
    throws=(DeadLettered,),
    # A body Celery cannot unpack would kill the consumer: dead-letter it first.
    Strategy="worker.celery_ext.body_guard:guarded",
)
def deliver(self: Any, *args: Any, **kwargs: Any) -> str:
    # kombu flags a message it restored (a lost ack, a dead worker, a requeue): if this
    # run sends it, it may be the job's second delivery, and it is counted as such; and
    # the dispatcher bounds how often one message may come back without an outcome.
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    dispatcher = get_dispatcher()
    failure: Exception
    try:
        try:
            outcome = dispatcher.deliver(
                args, kwargs, task_id=self.request.id, redelivered=redelivered
            )
        except SoftTimeLimitExceeded:
            # The run outlived its soft limit (worker.celery_app; prefork only): it ends in
            # an outcome, the job parked with backoff. The hard limit would requeue it.
            log.warning("soft time limit: parking job %s", kwargs.get("job_id"))
            outcome = dispatcher.cut_short(kwargs, "task run exceeded its soft time limit")
    except DeadLettered:
        raise
    except TRANSIENT_REDIS_ERRORS as exc:
        # Redis is where the job would be parked or marked: without it nothing can be
        # decided. Requeue (or, if even that fails, leave it unacked for the consumer
        # sweep or the visibility timeout to restore); never ack a job we could not
        # account for.
        log.warning("Redis unavailable while delivering job %s: %s", kwargs.get("job_id"), exc)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        # The dispatcher turns every other error into an outcome; this one struck while
        # it was writing the dead letter itself (Redis refusing it deterministically).
        failure = exc
    else:
        if outcome.due_at is not None:
            # The job is parked in Redis already; Retry only tells Celery and Flower so.
            when = datetime.fromtimestamp(outcome.due_at, UTC)
            raise Retry(str(outcome), exc=outcome.cause, when=when)
        return str(outcome)
    # Requeueing would fail the same way for ever. The job leaves the queue, and this
    # CRITICAL line holds all of it, for an operator to enqueue it again.
    text, size = bounded_json(kwargs, LOST_JOB_LOG_MAX_CHARS)
    log.critical(
        "outcome=lost job_id=%s store_id=%s error=%s job=%s%s",
        kwargs.get("job_id"),
        kwargs.get("store_id"),
        dispatcher.describe(failure),
        text,
        "" if size <= len(text) else f" (cut at {len(text)} of {size} characters)",
        extra={
            "outcome": "lost",
            "job_id": kwargs.get("job_id"),
            "store_id": kwargs.get("store_id"),
        },
    )
    metrics.record_outcome("lost", None)
    raise Reject("the job could not be dead-lettered; logged as outcome=lost", requeue=False)


@app.task(name=REDRIVE_TASK, ignore_result=True, acks_late=False)
def redrive(**_: Any) -> str:
    # acks_late=False: a run lost with its worker is simply the next run's work; redelivering
    # it after the visibility timeout would only add a stale run.
    report = Redriver.from_settings(get_settings(), redis_client()).run()
    logging.getLogger("snackvideo.redrive").info("redrive %s", report)
    return str(report)
