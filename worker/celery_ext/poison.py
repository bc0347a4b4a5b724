"""Poison messages: whatever lands on a queue list, the worker parks what it cannot read
as ``invalid_job`` in the dead-letter queue and keeps delivering.

Anyone with write access to Redis can push anything onto ``snackvideo``. Without this
module, kombu 5.7 and Celery 5.7 handle such items like this. Each was pushed at a real
worker; ``tests/test_fault_poison.py`` pushes them all again.

    item on the list                           without this module
    not JSON; JSON but not an object;          kombu parses it inside the event loop, the
      an envelope whose body is not base64     error escapes: "Unrecoverable error", the
                                               WORKER EXITS, and the item is gone
    an object without properties /             KeyError in the event loop: Celery takes it
      delivery_tag / delivery_info             for a lost broker connection, reconnects,
                                               and the item is gone
    headers that are not an object             "Received and deleted unknown message"
    an unknown task name                       "Received unregistered task", rejected: gone
    a body that is not [args, kwargs, embed]   ``body_guard`` dead-letters it
    kwargs of an unknown schema version        the task dead-letters it (``validate_job``)

Two layers close the gaps, and both park through ``worker.deadletter.unreadable``:

- ``transport.SafeChannel`` checks each popped item with ``envelope_problem``
  BEFORE kombu parses it, because kombu parses it outside any handler that Celery gives
  us. It dead-letters what kombu could not turn into a message.
- ``PoisonAwareConsumer`` overrides the hooks Celery calls for a well-formed envelope it
  still cannot run (unknown task, unknown format, invalid task, undecodable body). Each
  hook dead-letters first, then lets Celery reject or ack as before. If Redis refuses the
  dead letter, the message is requeued instead of dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.worker.consumer import Consumer

from worker.deadletter.unreadable import park_raw

log = logging.getLogger("snackvideo.poison")


def envelope_problem(channel: Any, payload: Any) -> str | None:
    """Why kombu cannot build a message from ``payload`` (a parsed list item), else None.

    It does what kombu does next: it builds the ``Message`` and reads ``delivery_info``.
    Anything that would raise there raises here, where it can be caught.
    """
    if not isinstance(payload, dict):
        return f"message is JSON but not an object ({type(payload).__name__})"
    try:
        message = channel.Message(payload, channel=channel)
        delivery_info = message.delivery_info
        delivery_info["exchange"], delivery_info["routing_key"]  # noqa: B018 (QoS.append reads both)
    except Exception as exc:  # any failure here is one kombu would hit next
        return f"not a kombu message envelope: {type(exc).__name__}: {exc}"
    return None


def envelope_task_id(payload: Any) -> Any:
    headers = payload.get("headers") if isinstance(payload, dict) else None
    return headers.get("id") if isinstance(headers, dict) else None


class PoisonAwareConsumer(Consumer):
    """Celery's consumer, with its unreadable-message hooks dead-lettering first."""

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if self._park(message, "unknown message format: no task name in the headers"):
            super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        if self._park(message, f"unknown task: {exc}"):
            super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if self._park(message, f"invalid task message: {exc}"):
            super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if self._park(message, f"message body cannot be decoded: {exc}"):
            super().on_decode_error(message, exc)

    def _park(self, message: Any, problem: str) -> bool:
        """Dead-letter ``message``; False (and the message requeued) if Redis refused."""
        raw = getattr(message, "_raw", None)  # the envelope as popped (kombu virtual Message)
        if raw is None:
            raw = {"headers": message.headers, "body": message.body}
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = (message.delivery_info or {}).get("routing_key") or ""
        try:
            park_raw(raw, problem, job_id=headers.get("id"), queue=queue)
        except redis.RedisError as exc:
            log.warning("cannot dead-letter an unreadable message (%s); requeued it", exc)
            message.reject_log_error(log, self.connection_errors, requeue=True)
            return False
        return True
