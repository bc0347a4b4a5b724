"""kombu's Redis transport, guarded where a job would otherwise live only in worker memory.

kombu takes a message in two steps. BRPOP pops it off the list, then ``QoS.append``
writes it to the ``unacked`` hash, the copy that the visibility timeout restores after a
crash. Between the two steps the job exists only in this process. kombu 5.7 lets three
things go wrong there, or right after:

- An item it cannot parse (not JSON, not an envelope) raises inside the event loop, and
  the worker exits ("Unrecoverable error"). ``worker.poison`` decides what is unreadable;
  this channel dead-letters it before kombu parses it.
- Redis refuses the ``unacked`` write. A full ``noeviction`` Redis refuses writes but
  still serves BRPOP, so the job is popped, the OOM error kills the worker, and the job
  is gone (``tests/test_fault_redis_down.py`` catches this). Here the job is pushed back
  to the end of the list it was popped from. While Redis refuses even that push, the job
  is held in memory and this worker pops nothing more.
- ``reject(requeue=True)``, which ``worker.tasks`` uses when Redis fails mid-delivery,
  raises when Redis also refuses the requeue. The message is still safe in ``unacked``,
  because the requeue is one transaction. But kombu then never frees the local prefetch
  slot, and after ``prefetch`` such failures the worker stops consuming until it
  reconnects. Here the slot is freed, and the visibility timeout brings the job back.

``register_transport()`` points the ``redis://`` and ``rediss://`` aliases at this
transport, so broker URLs, Celery's banner and Flower's broker page still say
``redis://``. Setting ``broker_transport`` to a class path would change all three.
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from worker.poison import dead_letter_raw, envelope_problem, envelope_task_id, raw_text

log = logging.getLogger("snackvideo.transport")

TRANSPORT_PATH = "worker.transport:SafeTransport"

#: Popped items that are in no Redis key yet: (queue, raw item). Kept per process, not per
#: channel, because a reconnect replaces the channel and the next one must return them.
_UNRECORDED: list[tuple[str, bytes]] = []


class SafeQoS(kombu_redis.QoS):
    """kombu's ack emulation, but a failed ack or requeue still frees the prefetch slot."""

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            # Still in `unacked`: it comes back after the visibility timeout, and its
            # delivered-marker keeps it from being sent again.
            self._give_up_slot(delivery_tag, "ack", exc)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            self._give_up_slot(delivery_tag, "requeue" if requeue else "reject", exc)

    def _give_up_slot(self, delivery_tag: str, what: str, exc: Exception) -> None:
        # Local bookkeeping only, no Redis call: frees the prefetch slot.
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        log.warning(
            "Redis refused the %s of message %s (%s): it stays in kombu's unacked hash and "
            "returns after the visibility timeout",
            what,
            delivery_tag,
            exc,
        )


class SafeChannel(kombu_redis.Channel):
    QoS = SafeQoS

    def _brpop_start(self, timeout: Any = None) -> None:
        if _UNRECORDED and not return_unrecorded(self):
            # Pop nothing more while popped jobs are not back in Redis. The event loop
            # calls this again on its next tick.
            return
        super()._brpop_start(timeout)  # type: ignore[no-untyped-call]

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read, line for line, except for the two marked steps.
        # Keep it in step with kombu: tests/test_fault_poison.py fails when kombu's
        # version of this method changes.
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
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]  # type: ignore[no-untyped-call]
                self._queue_cycle.rotate(dest)
                payload = self._readable(item, dest)  # changed: poison is dead-lettered
                if payload is not None:
                    self._deliver_recorded(payload, dest, item)  # changed: see below
                return True
            else:
                raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _readable(self, item: bytes, queue: str) -> Any:
        """The parsed item, or None once an unreadable one has been dead-lettered."""
        try:
            payload = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
        except (TypeError, ValueError) as exc:  # ValueError covers JSON and UTF-8 errors
            problem: str | None = f"message is not JSON: {exc}"
            payload = None
        else:
            problem = envelope_problem(self, payload)
        if problem is None:
            return payload
        try:
            dead_letter_raw(item, problem, job_id=envelope_task_id(payload), queue=queue)
        except redis.RedisError as exc:
            hold_unrecorded(self, queue, item, exc)
        return None

    def _deliver_recorded(self, payload: Any, queue: str, item: bytes) -> None:
        """Hand the message to kombu; if Redis refused to record it, keep the job."""
        try:
            self.connection._deliver(payload, queue)
        except redis.RedisError as exc:
            if not self._recorded(payload):
                hold_unrecorded(self, queue, item, exc)
            else:
                log.warning(
                    "Redis error after a message was recorded as in flight (%s); if it "
                    "does not run now, it returns after the visibility timeout",
                    exc,
                )
            if isinstance(exc, self.connection_errors):
                raise  # Celery reconnects; the next channel returns the held job first
            # Anything else (OOM, READONLY) must not kill the worker; a held job pauses
            # consuming until it is back.

    def _recorded(self, payload: dict[str, Any]) -> bool:
        """Whether the message reached kombu's unacked hash (a read: allowed when full)."""
        try:
            with self.conn_or_acquire() as client:
                tag = payload["properties"]["delivery_tag"]
                return bool(client.hexists(self.unacked_key, tag))
        except redis.RedisError:
            return False  # unknown: holding a copy risks a duplicate, not a loss

    def close(self) -> None:
        if _UNRECORDED and not return_unrecorded(self):
            for queue, item in _UNRECORDED:
                log.critical(
                    "popped message not back in Redis (queue %s); it is lost if this "
                    "process exits: %.500s",
                    queue,
                    raw_text(item),
                )
        super().close()  # type: ignore[no-untyped-call]


class SafeTransport(kombu_redis.Transport):
    Channel = SafeChannel


def hold_unrecorded(channel: SafeChannel, queue: str, item: bytes, cause: Exception) -> None:
    """Keep a popped job that is in no Redis key, and try to give it back at once."""
    log.error(
        "Redis refused to record a popped message (%s); holding it and pausing consumption "
        "until it is back on %s",
        cause,
        queue,
    )
    _UNRECORDED.append((queue, item))
    return_unrecorded(channel)


def return_unrecorded(channel: SafeChannel) -> bool:
    """Push held jobs back to the end of the list they came from; True once none is held.

    RPUSH, because kombu pops from the right: the job is taken next, as if never popped.
    """
    while _UNRECORDED:
        queue, item = _UNRECORDED[0]
        try:
            with channel.conn_or_acquire() as client:
                client.rpush(queue, item)
        except redis.RedisError:
            return False
        _UNRECORDED.pop(0)
        log.warning("popped message returned to %s", queue)
    return True


def register_transport() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use ``SafeTransport``.

    ``worker.app`` calls this at import, before any connection resolves its transport.
    """
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = TRANSPORT_PATH
        # kombu caches the alias -> class lookup; forget any earlier answer.
        kombu.transport._transport_cache.pop(scheme, None)
