"""The real worker app with candidate hot-path changes on: ``celery -A bench.variant_worker``.

``BENCH_VARIANT`` (comma-separated) names the changes. Each one imitates, from outside,
a change someone might make in ``worker/``, so its gain is measured before anyone makes
it:

- ``events_off``: no Celery task events (``worker_send_task_events`` off): no PUBLISH
  per task, no event dispatch in the main process; Flower then sees no task states.
- ``quiet_logs``: every INFO line per delivery at WARNING instead: our ``outcome=``
  line, and Celery's received/succeeded lines where they are on.
- ``celery_task_log``: Celery's "received" / "succeeded" INFO lines back on
  (``SNACKVIDEO_CELERY_TASK_LOG=on``; off by default, see ``worker/celery_ext/quiet_task_logs.py``):
  what dropping them saves, measured the other way round.
- ``prefetch4``: ``worker_prefetch_multiplier = 4``, so the consumer is not idle between
  a task's end and the next fetch (late acks keep prefetched jobs safe: unacked).
- ``kombu_client_per_call``: kombu's own ``conn_or_acquire`` back on the transport, a new
  ``redis.Redis`` per ack and per ``QoS.append`` (``SafeChannel`` keeps one per pool):
  what that cache saves, measured the other way round.
- ``requests_post``: each POST through ``requests.Session.post`` again, as before issue
  16, instead of straight to the session's urllib3 pool (``worker.delivery.http_route``);
  the deadline, the bounded body read and the error mapping as shipped.

The delivered/parked check and the delivered-marker ``SET`` that ``skip_preflight`` and
``skip_delivered_set`` used to drop are folded into the throttle's two Lua calls now
(the done-check in ``worker/keys.py``): there is no round trip of their own left to skip.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import requests
import urllib3
from celery.signals import after_setup_logger, worker_process_init

KNOWN = {
    "events_off",
    "quiet_logs",
    "celery_task_log",
    "prefetch4",
    "kombu_client_per_call",
    "requests_post",
}
VARIANTS = {v.strip() for v in os.environ.get("BENCH_VARIANT", "").split(",") if v.strip()}
PER_DELIVERY_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "snackvideo.delivery")

if VARIANTS - KNOWN:
    raise SystemExit(f"unknown BENCH_VARIANT: {', '.join(sorted(VARIANTS - KNOWN))}")
if "celery_task_log" in VARIANTS:
    os.environ["SNACKVIDEO_CELERY_TASK_LOG"] = "on"  # read once, when worker.celery_app is imported

from kombu.transport import redis as kombu_redis  # noqa: E402

from worker import app  # noqa: E402 (after the environment above)
from worker.celery_ext.transport import SafeChannel  # noqa: E402
from worker.delivery.http_route import Route  # noqa: E402

__all__ = ["app"]


def _quiet(**_: Any) -> None:
    for name in PER_DELIVERY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


if "events_off" in VARIANTS:
    app.conf.update(worker_send_task_events=False, task_send_sent_event=False)
if "kombu_client_per_call" in VARIANTS:
    SafeChannel.conn_or_acquire = kombu_redis.Channel.conn_or_acquire  # type: ignore[method-assign]
if "requests_post" in VARIANTS:
    _shipped_route_init = Route.__init__

    def _route_init(self: Route, session: requests.Session, base_url: str) -> None:
        _shipped_route_init(self, session, base_url)
        self.session = session  # type: ignore[attr-defined]

    def _requests_post(
        self: Route, path: str, body: bytes, headers: dict[str, str], timeout: urllib3.Timeout
    ) -> urllib3.BaseHTTPResponse:
        response = self.session.post(  # type: ignore[attr-defined]
            self.base_url + path,
            data=body,
            headers=headers,
            timeout=(timeout.connect_timeout, timeout.read_timeout),
            allow_redirects=False,
            stream=True,
        )
        return response.raw  # type: ignore[no-any-return]

    Route.__init__ = _route_init  # type: ignore[method-assign]
    Route.post = _requests_post  # type: ignore[method-assign]
if "prefetch4" in VARIANTS:
    app.conf.worker_prefetch_multiplier = 4
if "quiet_logs" in VARIANTS:
    _quiet()
    after_setup_logger.connect(_quiet, weak=False)
    worker_process_init.connect(_quiet, weak=False)
