"""Poison messages: whatever lands on a queue list, the worker parks what it cannot read
as ``invalid_job`` in the dead-letter queue and keeps delivering.

Anyone with write access to Redis can push anything onto ``snackvideo``. Without this
module, kombu 5.7 and Celery 5.7 treat such items like this (found by pushing each one
at a real worker; ``tests/test_fault_poison.py`` pushes them all again):

    item on the list                           without this module
    not JSON; JSON but not an object;          kombu parses it inside the event loop, the
      an envelope whose body is not base64     error escapes: "Unrecoverable error", the
                                               WORKER EXITS, and the item is gone
    an object without properties /             KeyError in the event loop: Celery takes it
      delivery_tag / delivery_info             for a lost broker connection, reconnects,
                                               and the item is gone
    headers that are not an object             "Received and deleted unknown message"
    an unknown task name                       "Received unregistered task", rejected: gone
    a body that is not [args, kwargs, embed]   ``worker.strategy`` dead-letters it
    kwargs of an unknown schema version        the task dead-letters it (``validate_job``)

Two layers close the gaps:

- ``PoisonSafeChannel`` checks each popped item BEFORE kombu parses it, because kombu
  parses it outside any handler that Celery gives us. What kombu could not turn into a
  message is dead-lettered right there, and the event loop never sees it.
  ``register_transport()`` makes ``redis://`` (and ``rediss://``) URLs use it, so broker
  URLs, Celery's banner and Flower's broker page still say ``redis://``. Setting
  ``broker_transport`` to the class path would change all three.
- ``PoisonAwareConsumer`` overrides the hooks Celery calls for a well-formed envelope it
  still cannot run (unknown task, unknown format, invalid task, undecodable body). Each
  hook dead-letters first, then lets Celery reject or ack as before. If Redis refuses the
  dead letter, the message is requeued instead of dropped.

One window is left, and it is kombu's own: between BRPOP and the write to the ``unacked``
hash, an item lives only in the worker's memory. A worker killed inside that window loses
it, poison or not.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import kombu.transport
import redis
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from worker.settings import get_settings

log = logging.getLogger("snackvideo.poison")

TRANSPORT_PATH = "worker.poison:PoisonSafeTransport"


def envelope_problem(channel: Any, payload: Any) -> str | None:
    """Why kombu cannot build a message from ``payload`` (a parsed list item), else None.

    It does exactly what kombu does next (build the ``Message``, read ``delivery_info``),
    so anything that would raise there raises here, where it can be caught.
    """
    if not isinstance(payload, dict):
        return f"message is JSON but not an object ({type(payload).__name__})"
    try:
        message = channel.Message(payload, channel=channel)
        delivery_info = message.delivery_info
        delivery_info["exchange"], delivery_info["routing_key"]  # noqa: B018 (QoS.append reads both)
    except Exception as exc:  # noqa: BLE001 - any failure means kombu would fail the same way
        return f"not a kombu message envelope: {type(exc).__name__}: {exc}"
    return None


def dead_letter_raw(raw: Any, problem: str, *, job_id: Any = None, queue: str = "") -> None:
    """Park an unreadable message as ``invalid_job``; its raw text is kept, truncated.

    Raises ``redis.RedisError`` when Redis refuses the entry; the caller decides what
    becomes of the message then.
    """
    from worker.tasks import get_dispatcher  # worker.tasks imports worker.app, which names us

    limit = get_settings().dlq_error_max_chars
    text = _raw_text(raw)
    kept = {
        "job_id": job_id if isinstance(job_id, str) and job_id else None,
        "queue": queue,
        "raw": text[:limit],
        "raw_chars": len(text),
    }
    get_dispatcher().dead_letter_unreadable(kept, problem)


def _raw_text(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):
        return repr(raw)


class PoisonSafeChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that an unreadable item is dead-lettered, not raised."""

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read, line for line, except that the popped item is
        # checked (_readable) before it is handed to _deliver. Keep it in step with kombu:
        # tests/test_fault_poison.py fails when kombu's version of this method changes.
        try:
            try:
                dest__item = self.client.parse_response(
                    self.client.connection, "BRPOP", **options
                )
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                payload = self._readable(item, dest)
                if payload is not None:
                    self.connection._deliver(payload, dest)
                return True
            else:
                raise kombu_redis.Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _readable(self, item: bytes, queue: str) -> Any:
        """The parsed item, or None once an unreadable one has been dead-lettered."""
        try:
            payload = loads(bytes_to_str(item))
        except (TypeError, ValueError) as exc:  # ValueError covers JSON and UTF-8 errors
            problem: str | None = f"message is not JSON: {exc}"
            payload = None
        else:
            problem = envelope_problem(self, payload)
        if problem is None:
            return payload
        job_id = _envelope_task_id(payload)
        try:
            dead_letter_raw(item, problem, job_id=job_id, queue=queue)
        except redis.RedisError as exc:
            self._put_back(item, queue, exc)
        return None

    def _put_back(self, item: bytes, queue: str, cause: Exception) -> None:
        # The item is off the list and in no unacked hash: it exists only here. Push it
        # back to the far end of the queue, to be judged again when Redis takes writes.
        try:
            with self.conn_or_acquire() as client:
                client.lpush(queue, item)
            log.warning("cannot dead-letter an unreadable message (%s); requeued it", cause)
        except redis.RedisError:
            log.critical(
                "LOST an unreadable message: Redis refused both the dead letter (%s) and "
                "the requeue; raw text: %.500s",
                cause,
                _raw_text(item),
            )


class PoisonSafeTransport(kombu_redis.Transport):
    Channel = PoisonSafeChannel


def register_transport() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use ``PoisonSafeTransport``.

    Called by ``worker.app`` at import, before any connection resolves its transport.
    """
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = TRANSPORT_PATH
        # kombu caches the alias -> class lookup; forget any earlier answer.
        kombu.transport._transport_cache.pop(scheme, None)


def _envelope_task_id(payload: Any) -> Any:
    headers = payload.get("headers") if isinstance(payload, dict) else None
    return headers.get("id") if isinstance(headers, dict) else None


class PoisonAwareConsumer(Consumer):  # type: ignore[misc]
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
            raw = {"headers": message.headers, "body": _raw_text(message.body)}
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = (message.delivery_info or {}).get("routing_key") or ""
        try:
            dead_letter_raw(raw, problem, job_id=headers.get("id"), queue=queue)
        except redis.RedisError as exc:
            log.warning("cannot dead-letter an unreadable message (%s); requeued it", exc)
            message.reject_log_error(log, self.connection_errors, requeue=True)
            return False
        return True
