"""kombu's Redis transport, guarded where a job would otherwise live only in worker memory.

kombu takes a message in two steps. BRPOP pops it off the list, then ``QoS.append``
writes it to the ``unacked`` hash, the copy that the visibility timeout restores after a
crash. Between the two steps the job exists only in this process. kombu 5.7 lets three
things go wrong there, or right after:

- An item it cannot parse (not JSON, not an envelope) raises inside the event loop, and
  the worker exits ("Unrecoverable error"). ``poison`` decides what is unreadable; this
  channel dead-letters it (``worker.deadletter.unreadable``) before kombu parses it.
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

It also records which consumer holds each message it takes, and restores the messages of
consumers that died or were replaced, within seconds (``ownership``). kombu scores
``unacked_index`` and compares against it with each host's own clock (``from time import
time``); here both use the Redis server's clock (``worker.clock``), so a host whose clock
runs ahead cannot restore jobs other workers are still running.

``register_transport()`` points the ``redis://`` and ``rediss://`` aliases at this
transport, and ``sentinel://`` at its Sentinel variant (kombu's ``SentinelChannel``, which
asks the Sentinels for the master's address on each new connection, with every guard
here), so broker URLs, Celery's banner and Flower's broker page still say ``redis://`` or
``sentinel://``. Setting ``broker_transport`` to a class path would change all three.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.redis import Mutex, MutexHeld
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from worker.bounded_json import kept_raw
from worker.celery_ext import ownership
from worker.celery_ext.poison import envelope_problem, envelope_task_id
from worker.clock import RedisClock
from worker.deadletter.unreadable import park_raw
from worker.escaping import log_field, visible
from worker.keys import TAKEN_BY, UNACKED, UNACKED_INDEX, UNACKED_MUTEX, consumer_taken_key

log = logging.getLogger("snackvideo.transport")

TRANSPORT_PATH = "worker.celery_ext.transport:SafeTransport"
SENTINEL_TRANSPORT_PATH = "worker.celery_ext.transport:SafeSentinelTransport"
#: How much of a popped message that could not be returned the CRITICAL line shows.
LOST_MESSAGE_LOG_CHARS = 500

#: Popped items that are in no Redis key yet: (queue, raw item). Kept per process, not per
#: channel, because a reconnect replaces the channel and the next one must return them.
_UNRECORDED: list[tuple[str, bytes]] = []


class SafeQoS(kombu_redis.QoS):
    """kombu's ack emulation, but a failed ack or requeue still frees the prefetch slot;
    with the consumer that holds each message recorded, and the Redis clock."""

    channel: SafeChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        #: This channel's consumer incarnation, once it consumes with acks.
        self.incarnation: str | None = None
        self._clock: RedisClock | None = None
        self._sweep_failing = False

    def _new_client(self) -> redis.Redis:
        """A client on this channel's connection pool (thread-safe, unlike the channel)."""
        with self.channel.conn_or_acquire() as client:
            return client  # type: ignore[no-any-return]

    @property
    def clock(self) -> RedisClock:
        """The Redis server's clock, as seen from this channel's connection."""
        if self._clock is None:
            self._clock = RedisClock(self._new_client())
        return self._clock

    # -- ownership ---------------------------------------------------------------------

    def start_owning(self) -> str:
        """Register this channel as a new consumer incarnation (retiring the process's
        older ones, whose messages the next sweep restores at once)."""
        if self.incarnation is None:
            self.incarnation = ownership.INCARNATIONS.adopt(
                self.channel.consumer_heartbeat_seconds, self._new_client()
            )
        return self.incarnation

    def append(self, message: Any, delivery_tag: str) -> None:
        # kombu's QoS.append, plus the two ownership writes in the same MULTI, and the
        # index scored on the Redis clock.
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        owner = self.incarnation or self.start_owning()
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: self.clock.now()})
            entry = dumps([message._raw, exchange, routing_key])  # type: ignore[no-untyped-call]
            pipe.hset(self.unacked_key, delivery_tag, entry)
            pipe.hset(TAKEN_BY, delivery_tag, owner)
            pipe.sadd(consumer_taken_key(owner), delivery_tag)
            pipe.execute()
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # The ack's MULTI (and a reject's): kombu's two removals, and this consumer's claim.
        with self.pipe_or_acquire(pipe) as pipe:
            pipe.zrem(self.unacked_index_key, delivery_tag)
            pipe.hdel(self.unacked_key, delivery_tag)
            pipe.hdel(TAKEN_BY, delivery_tag)
            if self.incarnation is not None:
                pipe.srem(consumer_taken_key(self.incarnation), delivery_tag)
            return pipe

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        self._restore(tag, client, leftmost=leftmost)

    def _restore(
        self, tag: Any, client: Any = None, *, leftmost: bool = False, owner: str | None = None
    ) -> bool:
        """kombu's ``restore_by_tag`` (one transaction: out of ``unacked``, marked
        redelivered, onto its queue), which also drops the holder's claim. With ``owner``,
        only while that consumer still holds it: once restored and taken again, it
        belongs to its new holder. Returns whether the message was pushed."""
        tag = bytes_to_str(tag)  # type: ignore[no-untyped-call]
        pushed = False

        def restore_transaction(pipe: Any) -> None:
            nonlocal pushed
            pushed = False  # the transaction may run again after a WatchError
            holder = pipe.hget(TAKEN_BY, tag)
            holder = bytes_to_str(holder) if holder is not None else None  # type: ignore[no-untyped-call]
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            if owner is not None:
                pipe.srem(consumer_taken_key(owner), tag)
                if holder is not None and holder != owner:
                    return
            pipe.zrem(self.unacked_index_key, tag)
            pipe.hdel(self.unacked_key, tag)
            pipe.hdel(TAKEN_BY, tag)
            if holder is not None:
                pipe.srem(consumer_taken_key(holder), tag)
            if raw:
                message, exchange, routing_key = loads(bytes_to_str(raw))  # type: ignore[no-untyped-call]
                self.channel._do_restore_message(  # type: ignore[no-untyped-call]
                    message, exchange, routing_key, pipe, leftmost
                )
                pushed = True

        watched = [self.unacked_key, TAKEN_BY]
        if owner is not None:
            watched.append(consumer_taken_key(owner))
        with self.channel.conn_or_acquire(client) as client:
            client.transaction(restore_transaction, *watched)
        return pushed

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        # Called by kombu's timer every unacked_restore_interval (the heartbeat period
        # here) and once when the channel starts: the consumer sweep runs each time, the
        # visibility scan every `interval`-th time.
        if not self.channel.restores_messages:
            return
        self._sweep_consumers()
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        # kombu's restore_visible, with the Redis clock instead of this host's.
        with self.channel.conn_or_acquire() as client:
            ceil = self.clock.now() - self.visibility_timeout
            try:
                with Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    visible = client.zrange(
                        self.unacked_index_key,
                        ceil,
                        0,
                        desc=True,
                        byscore=True,
                        offset=num and start,
                        num=num,
                        withscores=True,
                    )
                    for tag, _score in visible or []:
                        self.restore_by_tag(tag, client)
            except MutexHeld:
                pass

    def restore_unacked_once(self, stderr: Any = None) -> None:
        # The channel closes (shutdown, reconnect): kombu puts back what it holds; then
        # this incarnation retires, and whatever it still owns comes back too (a message
        # whose ack Redis refused).
        try:
            super().restore_unacked_once(stderr)  # type: ignore[no-untyped-call]
        except Exception as exc:
            # After a lost connection Celery closes the channel once the transport has
            # dropped its connection: kombu 5.7 then raises AttributeError building a
            # client, which Celery does not catch ("Unrecoverable error", the worker
            # exits). What this channel held is restored by its retirement instead.
            log.warning(
                "could not put back this channel's messages at close (%s: %s); they come "
                "back with its consumer's retirement",
                type(exc).__name__,
                exc,
            )
        finally:
            if self.incarnation is not None:
                ownership.INCARNATIONS.retire(self.incarnation)
                self._sweep_consumers(retired_only=True)

    def _sweep_consumers(self, *, retired_only: bool = False) -> None:
        """Restore the messages of this process's retired incarnations and of dead ones."""
        dead_after = self.channel.consumer_dead_after_seconds
        try:
            with self.channel.conn_or_acquire() as client:
                for incarnation in ownership.INCARNATIONS.retired():
                    self._restore_consumer(client, incarnation, dead_after, retired=True)
                if retired_only:
                    return
                live = set(ownership.INCARNATIONS.live())
                for incarnation in ownership.dead_incarnations(client, dead_after):
                    if incarnation not in live:  # late, not dead: this very process
                        self._restore_consumer(client, incarnation, dead_after, retired=False)
            if self._sweep_failing:
                log.info("consumer sweep reaches Redis again")
                self._sweep_failing = False
        except Exception as exc:
            # Never fatal: the next sweep (seconds away) tries again, and other workers'
            # sweeps and the visibility timeout still cover these messages. A channel
            # closing after its connection broke cannot even build a client (kombu's own
            # restore at close fails the same way): the next channel's sweep does it.
            if not self._sweep_failing:
                log.warning(
                    "consumer sweep failed: %s: %s",
                    type(exc).__name__,
                    exc,
                    # A closing channel's failure is expected (its connection is gone).
                    exc_info=not (retired_only or isinstance(exc, redis.RedisError)),
                )
                self._sweep_failing = True

    def _restore_consumer(
        self, client: Any, incarnation: str, dead_after: float, *, retired: bool
    ) -> None:
        tags = client.smembers(consumer_taken_key(incarnation))
        restored = sum(self._restore(tag, client, owner=incarnation) for tag in tags)
        if ownership.forget(client, incarnation, dead_after, retired) and retired:
            ownership.INCARNATIONS.forget_retired(incarnation)
        if restored:
            log.warning(
                "restored %d message(s) held by consumer %s (%s)",
                restored,
                incarnation,
                "retired: its channel closed or was replaced"
                if retired
                else f"no heartbeat for {dead_after:g}s",
            )

    # -- kombu's ack emulation, guarded -----------------------------------------------

    def ack(self, delivery_tag: str) -> None:
        if self.channel.closed:
            self._after_close(delivery_tag, "ack")
            return
        try:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            # Still in `unacked`: it comes back (see _give_up_slot), and its
            # delivered-marker keeps it from being sent again.
            self._give_up_slot(delivery_tag, "ack", exc)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        what = "requeue" if requeue else "reject"
        if self.channel.closed:
            self._after_close(delivery_tag, what)
            return
        try:
            super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            self._give_up_slot(delivery_tag, what, exc)

    def _give_up_slot(self, delivery_tag: str, what: str, exc: Exception) -> None:
        # Local bookkeeping only, no Redis call: frees the prefetch slot.
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        log.warning(
            "Redis refused the %s of message %s (%s): it stays in kombu's unacked hash and "
            "returns when this consumer's channel closes or is replaced (a reconnect), or "
            "after the visibility timeout",
            what,
            log_field(delivery_tag),
            exc,
        )

    def _after_close(self, delivery_tag: str, what: str) -> None:
        # A run that outlived its channel (it kept going through a broker reconnect). The
        # channel cannot reach Redis any more (kombu 5.7 raised AttributeError here, which
        # took the worker down), and need not: the closed channel's consumer retired, and
        # its retirement puts back everything it held; the copy meets this run's outcome
        # in the done-check.
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        log.warning(
            "%s of message %s after its channel closed: the message is restored with its "
            "retired consumer's messages",
            what,
            log_field(delivery_tag),
        )


class SafeChannel(kombu_redis.Channel):
    QoS = SafeQoS

    # kombu's own defaults, named where every key is (worker.keys).
    unacked_key = UNACKED
    unacked_index_key = UNACKED_INDEX
    unacked_mutex_key = UNACKED_MUTEX

    #: A consumer refreshes its heartbeat this often (ownership); the app sets
    #: both from the settings through broker_transport_options.
    consumer_heartbeat_seconds: float = 2.0
    #: A consumer whose heartbeat is older than this is dead, and its messages restored.
    consumer_dead_after_seconds: float = 10.0
    #: False for a channel that only asks (``snackvideo status``'s worker ping): it takes
    #: no job, so it leaves restoring other consumers' jobs to the workers. The restore
    #: writes kombu's and this project's keys, which an operator's read-only Redis user
    #: may not (deploy/redis/acl.conf).
    restores_messages: bool = True

    from_transport_options = kombu_redis.Channel.from_transport_options + (  # type: ignore[assignment]
        "consumer_heartbeat_seconds",
        "consumer_dead_after_seconds",
        "restores_messages",
    )

    qos: SafeQoS
    _sync_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new redis.Redis for each call (each ack, each QoS.append), and
        # redis-py copies its table of response callbacks into every one: ~5 % of a
        # loaded worker's CPU, all in the main process (docs/benchmarks.md, issue 16).
        # A client holds no connection of its own, only the pool, and is thread-safe; one
        # per pool does the same work. A new pool (after a fork, a reconnect) gets a new one.
        if client:
            yield client
            return
        pool = self.pool
        cached = self._sync_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._sync_client = self._create_client()  # type: ignore[no-untyped-call]
        yield cached

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if not no_ack:
            # Consuming with acks: from now on this channel is a consumer incarnation
            # whose messages are recorded as its own, and restored when it is gone.
            self.qos.start_owning()
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]

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
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
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
        problem: str | None
        try:
            payload = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
        except (TypeError, ValueError) as exc:  # ValueError covers JSON and UTF-8 errors
            problem, payload = f"message is not JSON: {exc}", None
        except RecursionError:
            # json.loads recurses per nesting level; no envelope nests more than a few.
            problem, payload = "message is nested too deep to be an envelope", None
        else:
            problem = envelope_problem(self, payload)
        if problem is None:
            return payload
        try:
            park_raw(item, problem, job_id=envelope_task_id(payload), queue=queue)
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
                    "process exits: %s",
                    log_field(queue),
                    visible(kept_raw(item, LOST_MESSAGE_LOG_CHARS)["raw"]),
                )
        super().close()  # type: ignore[no-untyped-call]


class SafeTransport(kombu_redis.Transport):
    Channel = SafeChannel


class SafeSentinelChannel(SafeChannel, kombu_redis.SentinelChannel):
    """``SafeChannel`` on a pool that follows the master Sentinel names. After a failover
    the old connections fail, Celery reconnects, and the new pool asks the Sentinels."""

    from_transport_options = SafeChannel.from_transport_options + (  # type: ignore[assignment]
        "master_name",
        "min_other_sentinels",
        "sentinel_kwargs",
        "sentinel_fanout_compat",
    )


class SafeSentinelTransport(kombu_redis.SentinelTransport):
    Channel = SafeSentinelChannel


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
    """Make ``redis://`` and ``rediss://`` broker URLs use ``SafeTransport``, and
    ``sentinel://`` ones ``SafeSentinelTransport``.

    ``worker.celery_app`` calls this at import, before any connection resolves its transport.
    """
    paths = {"redis": TRANSPORT_PATH, "rediss": TRANSPORT_PATH, "sentinel": SENTINEL_TRANSPORT_PATH}
    for scheme, path in paths.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = path
        # kombu caches the alias -> class lookup; forget any earlier answer.
        kombu.transport._transport_cache.pop(scheme, None)
