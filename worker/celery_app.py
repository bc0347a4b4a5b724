"""The Celery app: ``celery -A worker worker|beat|flower`` (``worker.app`` builds it on
first use, by importing this module).

Configured for durability: a job is acknowledged only after it was delivered, parked in
the delayed set, or dead-lettered (late acks), a killed worker's jobs go back to the
queue (reject on worker lost; the consumer heartbeat sweep of
``worker.celery_ext.ownership`` within seconds; the visibility timeout as the backstop),
and a worker holds one job per process (prefetch 1) so a crash strands as few as possible.

Also here: the beat schedule, and the bootsteps a worker runs in its main process (the
due-job mover, the clock-skew watch, the /metrics server).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps, signals
from kombu.entity import Exchange, Queue

from producers.errors import ConfigurationError
from producers.keys import DELIVER_TASK, DELIVERY_QUEUE
from worker.celery_ext import (
    escaped_logs,  # noqa: F401 (escapes the arguments of every log record)
    json_logs,  # also connects its logging signal handlers
    quiet_task_logs,  # noqa: F401 (connects its logging signal handlers)
)
from worker.celery_ext.broker import broker_use_ssl, sentinel_transport_options
from worker.celery_ext.transport import register_transport
from worker.clock_skew import ClockSkewWatch, start_watch
from worker.connections import redis_client, redis_clock, refuse_cluster_mode
from worker.delayed.mover import DueJobMover
from worker.delayed.store import DelayedJobs
from worker.keys import CONTROL_QUEUE, REDRIVE_TASK
from worker.metrics.server import MetricsServerStep
from worker.settings import get_settings, refuse

try:
    settings = get_settings()
except ConfigurationError as exc:
    # Celery worker, beat and flower build the app first (the snackvideo CLI reads the
    # settings the same way in worker.cli.main). Raised on, the error would be an import
    # traceback (celery's "Unable to load celery application" with it, exit 2 or 1);
    # SystemExit(str) would print the line but exit 1. One line on stderr and exit 2, the
    # usual status of a usage error.
    refuse(exc)
if settings.log_format == "json":
    json_logs.capture_warnings()
# redis:// now means kombu's Redis transport with the guards of worker.celery_ext.transport.
register_transport()


def _direct_queue(name: str) -> Queue:
    """A queue bound to a direct exchange of its own name: the shape of Celery's default."""
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]


restore_interval = settings.unacked_restore_interval_seconds
heartbeat_seconds = settings.consumer_heartbeat_seconds

app = Celery("snackvideo", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    task_default_queue=DELIVERY_QUEUE,
    # A worker consumes both lists. Producers push deliveries straight onto the
    # "snackvideo" list (anonymous exchange, routing_key "snackvideo"), which this
    # declaration leaves as Celery's default queue would be. Redrive has a list of its own
    # because kombu pops the queues in turn: however deep the delivery backlog, a control
    # task is taken at the next free slot.
    task_queues=(_direct_queue(DELIVERY_QUEUE), _direct_queue(CONTROL_QUEUE)),
    task_routes={REDRIVE_TASK: {"queue": CONTROL_QUEUE}},
    beat_schedule={
        "redrive-dead-letters": {
            "task": REDRIVE_TASK,
            "schedule": settings.redrive_interval_seconds,
            # A run not started within one interval is dropped: the next one does its
            # work, so runs never pile up behind a busy worker. The floor absorbs clock
            # skew between the beat host and the workers when the interval is tiny.
            "options": {
                "queue": CONTROL_QUEUE,
                "expires": max(settings.redrive_interval_seconds, 5.0),
            },
        }
    },
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Time limits of one delivery run (prefork only: the threads pool enforces none; there
    # the request deadline alone bounds a run). Soft: SoftTimeLimitExceeded, and the task
    # parks the job with backoff (worker.tasks). Hard: the pool child is killed; with
    # acks_on_timeout off Celery requeues the message (Request.on_timeout and on_failure
    # reject it with requeue) instead of acking it, Celery's default, which would drop a
    # job that has no outcome. Only the delivery task: a redrive run may take longer.
    task_annotations={
        DELIVER_TASK: {
            "soft_time_limit": settings.soft_time_limit_seconds,
            "time_limit": settings.hard_time_limit_seconds,
            "acks_on_timeout": False,
        }
    },
    worker_prefetch_multiplier=1,
    # Flower builds its view from these events.
    worker_send_task_events=settings.task_events,
    task_send_sent_event=settings.task_events,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a worker waits out a Redis outage, however long
    # Keep deliveries running through a broker reconnect (Celery 6 flips this default):
    # a running POST finishes and sets its delivered-marker. The reconnect retires the
    # old consumer and its messages come back at once (worker.celery_ext.ownership, as kombu
    # itself does when Redis answers at the close): a copy taken while the original still runs
    # may be sent beside it, at most the jobs in flight. A cancelled run could die
    # between its POST and its marker: a duplicate all the same (docs/durability.md).
    worker_cancel_long_running_tasks_on_connection_loss=False,
    broker_transport_options={
        # Retries and long throttle waits live in Redis (worker.delayed), so no message
        # is held longer than one POST plus one short sleep: the timeout can stay short.
        # It is the backstop only: a killed worker's jobs return when its heartbeat ends
        # (worker.celery_ext.ownership), within seconds.
        "visibility_timeout": settings.visibility_timeout_seconds,
        # kombu's restore timer runs at the consumer heartbeat period: each tick restores
        # the jobs of consumers that died or were replaced (ownership), and every
        # n-th tick also scans for jobs older than the visibility timeout, the backstop.
        "unacked_restore_interval": settings.consumer_heartbeat_seconds,
        "unacked_restore_throttle": max(1, round(restore_interval / heartbeat_seconds)),
        "consumer_heartbeat_seconds": settings.consumer_heartbeat_seconds,
        "consumer_dead_after_seconds": settings.consumer_dead_after_seconds,
        # The sweep runs under a Redis lock. A worker killed while holding it would block
        # every other worker's sweep for kombu's default 300 s. Restores are transactions,
        # so two sweeps at once are safe, and a short lock is enough.
        "unacked_mutex_expire": 30,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
        # sentinel://: the master's name, and the Sentinels' timeouts and password.
        **sentinel_transport_options(settings),
    },
    broker_use_ssl=broker_use_ssl(settings),
    # Celery's hooks for unknown / invalid messages dead-letter them (worker.celery_ext.poison).
    worker_consumer="worker.celery_ext.poison:PoisonAwareConsumer",
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
)


class DueJobsStep(bootsteps.StartStopStep):
    """Runs the due-job mover (``worker.delayed.mover``) in the worker's main process."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.mover: DueJobMover | None = None

    def start(self, parent: Any) -> None:
        self.mover = DueJobMover(DelayedJobs(redis_client()), settings.scheduler_poll_seconds)
        self.mover.start()

    def stop(self, parent: Any) -> None:
        if self.mover is not None:
            self.mover.stop()


class ClockSkewStep(bootsteps.StartStopStep):
    """Watches the host's clock against Redis TIME (``worker.clock_skew``) in the worker's
    main process, the one that serves /metrics."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.watch: ClockSkewWatch | None = None

    def start(self, parent: Any) -> None:
        self.watch = start_watch(redis_clock())

    def stop(self, parent: Any) -> None:
        if self.watch is not None:
            self.watch.stop()


app.steps["worker"].add(DueJobsStep)
# The host's clock against Redis TIME: snackvideo_clock_skew_seconds, a WARNING past 1 s.
app.steps["worker"].add(ClockSkewStep)
# /metrics from the main process; importing worker.metrics.server also connects its
# worker_init (multiprocess files, before the pool forks) and worker_process_shutdown
# handlers.
app.steps["worker"].add(MetricsServerStep)


@signals.worker_init.connect
@signals.beat_init.connect
def _refuse_cluster(**_: Any) -> None:
    # A cluster URL is refused with the settings; a cluster node behind a plain URL is
    # seen only once connected. Refused before anything is consumed or scheduled.
    refuse_cluster_mode()
