"""The real worker app with candidate hot-path changes on: ``celery -A bench.variant_worker``.

``BENCH_VARIANT`` (comma-separated) names the changes. Each one imitates, from outside,
a change someone might make in ``worker/``, so its gain is measured before anyone makes
it; the skip_* ones are upper bounds (the step's round trip is dropped rather than
folded into another call, which keeps a little of its cost):

- ``events_off``: no Celery task events (``worker_send_task_events`` off): no PUBLISH
  per task, no event dispatch in the main process; Flower then sees no task states.
- ``quiet_logs``: the three INFO lines per delivery (Celery's received/succeeded and
  ours) at WARNING instead.
- ``prefetch4``: ``worker_prefetch_multiplier = 4``, so the consumer is not idle between
  a task's end and the next fetch (late acks keep prefetched jobs safe: unacked).
- ``skip_delivered_set``: no ``SET delivered:{job}`` round trip (what folding that SET
  into the throttle's record Lua would save).
- ``skip_preflight``: no ``EXISTS + HEXISTS`` pipeline (what folding the
  delivered/parked check into the acquire Lua would save).

Only for benchmarks: the skip_* variants drop a safety check.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import after_setup_logger, worker_process_init

from worker import delivery
from worker.app import app

__all__ = ["app"]

KNOWN = {"events_off", "quiet_logs", "prefetch4", "skip_delivered_set", "skip_preflight"}
VARIANTS = {v.strip() for v in os.environ.get("BENCH_VARIANT", "").split(",") if v.strip()}
PER_DELIVERY_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "snackvideo.delivery")

if VARIANTS - KNOWN:
    raise SystemExit(f"unknown BENCH_VARIANT: {', '.join(sorted(VARIANTS - KNOWN))}")


def _replace(name: str, replacement: Any) -> None:
    if not hasattr(delivery.Dispatcher, name):
        raise SystemExit(f"worker.delivery.Dispatcher has no {name}: update bench/variant_worker")
    setattr(delivery.Dispatcher, name, replacement)


def _quiet(**_: Any) -> None:
    for name in PER_DELIVERY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


if "events_off" in VARIANTS:
    app.conf.update(worker_send_task_events=False, task_send_sent_event=False)
if "prefetch4" in VARIANTS:
    app.conf.worker_prefetch_multiplier = 4
if "skip_delivered_set" in VARIANTS:
    _replace("_mark_delivered", lambda self, job: None)
if "skip_preflight" in VARIANTS:
    _replace("_already_done", lambda self, job: False)
if "quiet_logs" in VARIANTS:
    _quiet()
    after_setup_logger.connect(_quiet, weak=False)
    worker_process_init.connect(_quiet, weak=False)
