"""The Celery app: ``celery -A worker worker|beat|flower``.

Configured for durability: a job is acknowledged only after it was delivered, parked in
the delayed set, or dead-lettered (late acks), a killed worker's jobs go back to the
queue (reject on worker lost, the visibility timeout), and a worker holds one job per
process (prefetch 1) so a crash strands as few as possible.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps

from producers.keys import DELIVERY_QUEUE
from worker.connections import redis_client
from worker.scheduler import DelayedJobs, DueJobMover
from worker.settings import get_settings

settings = get_settings()

app = Celery("snackvideo", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    task_default_queue=DELIVERY_QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Flower builds its view from these events.
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a worker waits out a Redis outage, however long
    broker_transport_options={
        # Retries and long throttle waits live in Redis (worker.scheduler), so no message
        # is held longer than one POST plus one short sleep: the timeout can stay short and
        # a killed worker's jobs return within minutes, not the default hour.
        "visibility_timeout": settings.visibility_timeout_seconds,
        "unacked_restore_interval": settings.unacked_restore_interval_seconds,
        # Scan on every sweep, so the interval above alone sets how fast jobs come back.
        "unacked_restore_throttle": 1,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    },
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
)

if settings.visibility_timeout_seconds <= settings.min_visibility_timeout_seconds:
    raise ValueError(
        "invalid configuration: SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS must exceed the HTTP "
        "connect + read timeouts plus SNACKVIDEO_MAX_SLEEP_SECONDS "
        f"({settings.min_visibility_timeout_seconds:g}s), or a slow job runs twice"
    )


class DueJobsStep(bootsteps.StartStopStep):
    """Runs the due-job mover (``worker.scheduler``) in the worker's main process."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.mover: DueJobMover | None = None

    def start(self, parent: Any) -> None:
        self.mover = DueJobMover(DelayedJobs(redis_client()), settings.scheduler_poll_seconds)
        self.mover.start()

    def stop(self, parent: Any) -> None:
        if self.mover is not None:
            self.mover.stop()


app.steps["worker"].add(DueJobsStep)
