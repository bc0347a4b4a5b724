"""kombu's Redis transport, guarded where a job would otherwise live only in worker memory.

kombu takes a message in two steps. BRPOP pops it off the list, then ``QoS.append``
writes it to the ``unacked`` hash, the copy that the visibility timeout restores after a
crash. Between the two steps the job existed only in this process: a SIGKILL there lost
it. Here the pop moves it into the consumer's own taking list in the same step, and the
``unacked`` MULTI takes it out of there (``taking``): it is always in some Redis key.
kombu 5.7 also lets three things go wrong around the take:

- An item it cannot parse (not JSON, not an envelope) raises inside the event loop, and
  the worker exits ("Unrecoverable error"). ``poison`` decides what is unreadable; this
  channel dead-letters it (``worker.deadletter.unreadable``) before kombu parses it.
- Redis refuses the ``unacked`` write. A full ``noeviction`` Redis refuses writes but
  still serves BRPOP, so kombu's job was popped, the OOM error killed the worker, and the
  job was gone (``tests/test_fault_redis_down.py`` catches this). Here a full Redis
  refuses the take itself (a move is a write), and the worker waits a second before the
  next try; a job taken just before Redis filled up goes back to the end of the list it
  came from. While Redis refuses even that, it stays in the taking list and this worker
  takes nothing more.
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
from time import monotonic
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.redis import Mutex, MutexHeld
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from worker.bounded_json import kept_raw
from worker.celery_ext import ownership, taking
from worker.celery_ext.poison import envelope_problem, envelope_task_id
from worker.clock import RedisClock
from worker.deadletter.unreadable import park_raw
from worker.escaping import log_field, visible
from worker.keys import (
    DELIVERY_QUEUE,
    TAKEN_BY,
    UNACKED,
    UNACKED_INDEX,
    UNACKED_MUTEX,
    consumer_taken_key,
    consumer_taking_key,
)
from worker.round_trip import Command, checked, round_trip, transaction

log = logging.getLogger("snackvideo.transport")

TRANSPORT_PATH = "worker.celery_ext.transport:SafeTransport"
SENTINEL_TRANSPORT_PATH = "worker.celery_ext.transport:SafeSentinelTransport"
#: How much of a popped message that could not be returned the CRITICAL line shows.
LOST_MESSAGE_LOG_CHARS = 500

#: How long the take pauses after Redis refused it (a full noeviction Redis refuses moves).
TAKE_REFUSED_PAUSE_SECONDS = 1.0


class Held:
    """A taken job that did not reach ``unacked`` and must go back to its list first.

    ``taking_key`` is the taking list that still holds it, so it is safe in Redis even if
    this process dies (the sweep of its consumer hands it back); None for a job kombu's
    own BRPOP popped (a channel consuming without acks), which lives only here.
    """

    def __init__(self, taking_key: str | None, source_key: str, item: bytes) -> None:
        self.taking_key = taking_key
        self.source_key = source_key
        self.item = item


#: Held jobs, per process, not per channel: a reconnect replaces the channel and the next
#: one must return them.
_HELD: list[Held] = []


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
        # index scored on the Redis clock; sent as one write (worker.round_trip).
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        owner = self.incarnation or self.start_owning()
        entry = dumps([message._raw, exchange, routing_key])  # type: ignore[no-untyped-call]
        commands: list[Command] = [
            ("ZADD", self.unacked_index_key, self.clock.now(), delivery_tag),
            ("HSET", self.unacked_key, delivery_tag, entry),
            ("HSET", TAKEN_BY, delivery_tag, owner),
            ("SADD", consumer_taken_key(owner), delivery_tag),
        ]
        in_taking = self.channel.being_taken
        if in_taking is not None and in_taking.taking_key is not None:
            # out of the taking list in the same step
            commands.append(("LREM", in_taking.taking_key, 1, in_taking.item))
        with self.channel.conn_or_acquire() as client:
            transaction(client, commands)
        self.channel.being_taken = None
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def _removals(self, delivery_tag: str) -> list[Command]:
        # The ack's MULTI (and a reject's): kombu's two removals, and this consumer's claim.
        commands: list[Command] = [
            ("ZREM", self.unacked_index_key, delivery_tag),
            ("HDEL", self.unacked_key, delivery_tag),
            ("HDEL", TAKEN_BY, delivery_tag),
        ]
        if self.incarnation is not None:
            commands.append(("SREM", consumer_taken_key(self.incarnation), delivery_tag))
        return commands

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # kombu's reject (without requeue) executes what this returns.
        with self.pipe_or_acquire(pipe) as pipe:
            for command in self._removals(delivery_tag):
                pipe.execute_command(*command)
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
        # First what it had popped but not recorded (it never ran: back unchanged), then
        # what it held in unacked (marked redelivered, as kombu restores).
        handed_back = taking.hand_back_all(client, incarnation, self.channel.source_key_of)
        tags = client.smembers(consumer_taken_key(incarnation))
        restored = sum(self._restore(tag, client, owner=incarnation) for tag in tags)
        if ownership.forget(client, incarnation, dead_after, retired) and retired:
            ownership.INCARNATIONS.forget_retired(incarnation)
        if restored or handed_back:
            log.warning(
                "restored %d message(s) held by consumer %s (%s)%s",
                restored + handed_back,
                incarnation,
                "retired: its channel closed or was replaced"
                if retired
                else f"no heartbeat for {dead_after:g}s",
                f"; {handed_back} of them taken but not yet recorded, back unchanged"
                if handed_back
                else "",
            )

    # -- kombu's ack emulation, guarded -----------------------------------------------

    def ack(self, delivery_tag: str) -> None:
        if self.channel.closed:
            self._after_close(delivery_tag, "ack")
            return
        try:
            # kombu's ack (the removals' MULTI, then the local slot), in one write.
            with self.channel.conn_or_acquire() as client:
                transaction(client, self._removals(delivery_tag))
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
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
    #: The list the take blocks on (``taking``); the channel's other lists are looked at
    #: without blocking, at least once per ``brpop_timeout``.
    blocking_queue: str = DELIVERY_QUEUE

    from_transport_options = kombu_redis.Channel.from_transport_options + (  # type: ignore[assignment]
        "consumer_heartbeat_seconds",
        "consumer_dead_after_seconds",
        "restores_messages",
        "blocking_queue",
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

    def _put_fanout(self, exchange: Any, message: Any, routing_key: Any, **kwargs: Any) -> None:
        # kombu's, with the PUBLISHes in one write (worker.round_trip): with task events on
        # (Flower), the main process publishes three events per task.
        if kwargs.get("_publish_batch") is not None:
            super()._put_fanout(exchange, message, routing_key, **kwargs)  # type: ignore[no-untyped-call]
            return
        topics = self._get_publish_topics(exchange, routing_key)  # type: ignore[no-untyped-call]
        payload = dumps(message)  # type: ignore[no-untyped-call]
        with self.conn_or_acquire() as client:
            checked(round_trip(client, [("PUBLISH", topic, payload) for topic in topics]))

    #: The taken job being recorded now (QoS.append removes it from the taking list).
    being_taken: Held | None = None
    #: What the command in flight is: ("move", its list) for BRPOPLPUSH, ("any", "") for
    #: take_any.lua, None for kombu's own BRPOP.
    _take: tuple[str, str] | None = None
    _took_any_at: float = 0.0
    _take_paused_until: float = 0.0
    _take_refused: bool = False

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if not no_ack:
            # Consuming with acks: from now on this channel is a consumer incarnation
            # whose messages are recorded as its own, and restored when it is gone.
            self.qos.start_owning()
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]

    # -- the take ----------------------------------------------------------------------

    @property
    def taking_key(self) -> str | None:
        """This consumer's taking list; None while it consumes without acks (then kombu's
        BRPOP takes: nothing restores such a message anyway)."""
        incarnation = self.qos.incarnation
        return consumer_taking_key(incarnation) if incarnation else None

    def _brpop_start(self, timeout: Any = None) -> None:
        if _HELD and not return_held(self):
            # Take nothing more while taken jobs are not back on their lists. The event
            # loop calls this again on its next tick.
            return
        taking_key = self.taking_key
        if taking_key is None or self.global_keyprefix:
            self._take = None
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        if monotonic() < self._take_paused_until:
            return
        keys = self._take_keys()
        if not keys:
            return
        if timeout is None:
            timeout = self.brpop_timeout
        now = monotonic()
        blocking_key = self.blocking_queue if self.blocking_queue in keys else keys[0]
        if len(keys) > 1 and now - self._took_any_at >= (self.brpop_timeout or 1):
            self._took_any_at = now
            # The other lists first: the blocking move serves its own list all the rest
            # of the time (kombu instead rotates the order of one BRPOP after each take).
            others = [key for key in keys if key != blocking_key]
            command: list[Any] = [
                "EVAL",
                taking.take_any_source(),
                len(keys) + 1,
                taking_key,
                *others,
                blocking_key,
            ]
            self._take = ("any", "")
        else:
            command = ["BRPOPLPUSH", blocking_key, taking_key, timeout or 0]
            self._take = ("move", blocking_key)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(*command)

    def _take_keys(self) -> list[str]:
        """The lists this channel consumes, in kombu's order (priority, then queue)."""
        return [
            self._q_for_pri(queue, pri)  # type: ignore[no-untyped-call]
            for pri in self.priority_steps
            for queue in self.active_queues
        ]

    def _brpop_read(self, **options: Any) -> bool:
        if self._take is None:
            return self._kombu_brpop_read(**options)
        (how, blocking_key), self._take = self._take, None
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "BRPOPLPUSH" if how == "move" else "EVAL", **options
                )
            except self.connection_errors:
                # As kombu: the next iteration reconnects.
                self.client.connection.disconnect()
                raise
            except redis.ResponseError as exc:
                self._refused_take(exc)
                raise Empty() from exc
            if self._take_refused:
                log.info("Redis takes jobs again")
                self._take_refused = False
            source, item = (blocking_key, reply) if how == "move" else (reply or (None, None))
            if not item:
                raise Empty()
            source = bytes_to_str(source)  # type: ignore[no-untyped-call]
            queue = source.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self._take_one(queue, source, item)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _refused_take(self, exc: redis.ResponseError) -> None:
        # A full noeviction Redis refuses the move (OOM); a NOPERM means the ACL lacks a
        # command. Either way nothing was taken; try again in a second, not in a spin.
        self._take_paused_until = monotonic() + TAKE_REFUSED_PAUSE_SECONDS
        if not self._take_refused:
            log.warning(
                "Redis refused to hand out a job (%s); trying again every %gs",
                exc,
                TAKE_REFUSED_PAUSE_SECONDS,
            )
            self._take_refused = True

    def _take_one(self, queue: str, source: str, item: bytes) -> None:
        """Hand a job, now in this consumer's taking list, to kombu; a poison item to the
        dead-letter queue."""
        held = Held(self.taking_key, source, item)
        payload = self._readable(held, queue)
        if payload is None:
            return
        self.being_taken = held
        try:
            self._deliver_recorded(payload, held)
        finally:
            if self.being_taken is not None and not _is_held(held):
                # Delivered without QoS.append (a consumer without acks): nothing will
                # restore it, so it leaves the taking list here.
                self._forget_taken(held)
            self.being_taken = None

    def _forget_taken(self, held: Held) -> None:
        if held.taking_key is None:
            return
        try:
            with self.conn_or_acquire() as client:
                client.lrem(held.taking_key, 1, held.item)
        except redis.RedisError as exc:
            # It stays in the taking list: the sweep of this consumer hands it back when
            # the consumer is gone, and the job's delivered-marker stops a second send.
            log.warning("could not clear a taken job from %s: %s", held.taking_key, exc)

    def source_key_of(self, item: bytes) -> str:
        """The list a taken item came from: where a sweep hands it back."""
        routing = taking.routing_of(item)
        if routing is None:
            return self.blocking_queue  # unreadable: that list's consumer dead-letters it
        exchange, routing_key, priority = routing
        queues = self._lookup(exchange, routing_key, default=self.blocking_queue)  # type: ignore[no-untyped-call]
        return str(self._q_for_pri(queues[0], priority))  # type: ignore[no-untyped-call]

    def _kombu_brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read, line for line, except for the two marked steps.
        # Keep it in step with kombu: tests/test_fault_poison.py fails when kombu's
        # version of this method changes. Used only while the channel consumes without
        # acks (the take above is in one step).
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
                held = Held(None, dest, item)
                payload = self._readable(held, dest)  # changed: poison is dead-lettered
                if payload is not None:
                    self._deliver_recorded(payload, held)  # changed: see below
                return True
            else:
                raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _readable(self, held: Held, queue: str) -> Any:
        """The parsed item, or None once an unreadable one has been dead-lettered."""
        item = held.item
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
            hold(self, held, exc)
        else:
            self._forget_taken(held)
        return None

    def _deliver_recorded(self, payload: Any, held: Held) -> None:
        """Hand the message to kombu; if Redis refused to record it, put the job back."""
        queue = held.source_key.rsplit(self.sep, 1)[0]
        try:
            self.connection._deliver(payload, queue)
        except redis.RedisError as exc:
            if not self._recorded(payload):
                hold(self, held, exc)
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
        if _HELD and not return_held(self):
            for held in _HELD:
                if held.taking_key is not None:
                    log.warning(
                        "taken job not back on %s yet; it stays in %s, and the sweep of "
                        "this consumer hands it back",
                        log_field(held.source_key),
                        held.taking_key,
                    )
                    continue
                log.critical(
                    "popped message not back in Redis (queue %s); it is lost if this "
                    "process exits: %s",
                    log_field(held.source_key),
                    visible(kept_raw(held.item, LOST_MESSAGE_LOG_CHARS)["raw"]),
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


def _is_held(held: Held) -> bool:
    return any(one is held for one in _HELD)


def hold(channel: SafeChannel, held: Held, cause: Exception) -> None:
    """Keep a taken job that did not reach ``unacked``, and try to put it back at once."""
    log.error(
        "Redis refused to record a taken message (%s); pausing consumption until it is back on %s",
        cause,
        held.source_key,
    )
    _HELD.append(held)
    return_held(channel)


def return_held(channel: SafeChannel) -> bool:
    """Put held jobs back at the end of the list they came from; True once none is held.

    The end kombu pops from: the job is taken next, as if never taken.
    """
    while _HELD:
        held = _HELD[0]
        try:
            with channel.conn_or_acquire() as client:
                if held.taking_key is None:
                    client.rpush(held.source_key, held.item)
                else:
                    taking.hand_back(client, held.taking_key, held.source_key, held.item)
        except redis.RedisError:
            return False
        _HELD.pop(0)
        log.warning("taken message returned to %s", held.source_key)
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
