"""The Celery task ``snackvideo.deliver``: a thin adapter from messages to the Dispatcher."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from celery.signals import worker_process_init

from producers.keys import DELIVER_TASK
from worker.app import app
from worker.connections import redis_client, redis_clock
from worker.delivery import Dispatcher
from worker.errors import DeadLettered
from worker.scalev import ScalevClient
from worker.settings import get_settings

log = logging.getLogger(__name__)


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
    return Dispatcher(settings, redis_client(), scalev, clock=redis_clock().now)


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
    Strategy="worker.strategy:guarded",
)
def deliver(self: Any, *args: Any, **kwargs: Any) -> str:
    # kombu flags a message it restored (a lost ack, a dead worker, a requeue): if this
    # run sends it, it may be the job's second delivery, and it is counted as such.
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        try:
            outcome = get_dispatcher().deliver(
                args, kwargs, task_id=self.request.id, redelivered=redelivered
            )
        except SoftTimeLimitExceeded:
            # The run outlived its soft limit (worker.app; prefork only): it still ends in
            # an outcome, the job parked with backoff. The hard limit would requeue it.
            log.warning("soft time limit: parking job %s", kwargs.get("job_id"))
            outcome = get_dispatcher().cut_short(kwargs, "task run exceeded its soft time limit")
    except redis.RedisError as exc:
        # Redis is where the job would be parked or marked: without it nothing can be
        # decided. Requeue (or, if even that fails, leave it unacked for the visibility
        # timeout to restore); never ack a job we could not account for.
        log.warning("Redis unavailable while delivering job %s: %s", kwargs.get("job_id"), exc)
        raise Reject(exc, requeue=True) from exc
    if outcome.due_at is not None:
        # The job is parked in Redis already; Retry only tells Celery and Flower so.
        when = datetime.fromtimestamp(outcome.due_at, UTC)
        raise Retry(str(outcome), exc=outcome.cause, when=when)
    return str(outcome)
