"""Which worker holds which in-flight message, and who is still alive: crash recovery in
seconds instead of a visibility timeout (Sidekiq's "reliable fetch", adapted to kombu).

kombu keeps a taken message in its ``unacked`` hash until the ack, and puts it back on
the queue only when it is older than the visibility timeout (2 minutes here): the jobs of a
SIGKILLed worker, or those a worker held when its broker connection dropped, waited that
long. Now:

* **Incarnations.** Each consuming channel (a worker's consumer connection; a new one per
  start and per broker reconnect) gets an id, ``host:pid:random``. ``transport``
  records every message it takes under that id, in the MULTI in which kombu writes
  ``unacked`` (the set ``snackvideo:consumer:{id}:taken`` and the hash
  ``snackvideo:taken_by``: no extra round trip), and removes it in the MULTI of the ack.
  Before that MULTI the message is in the incarnation's taking list, where the pop moved
  it (``taking``).
* **Heartbeat.** A thread in the consuming process scores each live incarnation in the
  zset ``snackvideo:consumers`` with the Redis clock (TIME) every
  ``SNACKVIDEO_CONSUMER_HEARTBEAT_SECONDS``.
* **Sweep.** As often, every worker (kombu's restore timer, in its event loop) looks for
  incarnations whose heartbeat is older than ``SNACKVIDEO_CONSUMER_DEAD_AFTER_SECONDS``
  and restores their messages exactly as kombu's ``restore_by_tag`` does (marked
  redelivered, pushed to the end of the list that is popped next), one transaction per
  message; what is left in their taking lists goes back unchanged (it never ran). A
  message restored since and taken by another consumer is left alone.
* **Retirement.** A process that opens a new consuming channel (a reconnect) retires its
  older incarnations, and a channel that closes retires its own: their messages come back
  at once, not after the heartbeat expires. If Redis is away at that moment, the next
  sweep of the new channel tries again; other workers get there when the heartbeat ends.

kombu's visibility-timeout restore stays as the backstop (a consumer alive but stuck), on
the Redis clock too. Keys: ``worker/keys.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis

from worker.connections import reply_text
from worker.keys import CONSUMERS, consumer_taken_key, consumer_taking_key
from worker.lua_scripts import lua_source

log = logging.getLogger("snackvideo.ownership")

#: Dead incarnations looked at per sweep; more wait for the next one, seconds later.
SWEEP_LIMIT = 100


def new_incarnation_id() -> str:
    # Readable in `ZRANGE snackvideo:consumers`: which host and process it was.
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def beat(client: redis.Redis, incarnations: list[str]) -> None:
    """Score ``incarnations`` with the Redis clock: they are alive."""
    if incarnations:
        beat_script = client.register_script(lua_source("worker.celery_ext", "consumers_beat"))
        beat_script(keys=[CONSUMERS], args=incarnations)


def dead_incarnations(client: redis.Redis, dead_after_seconds: float) -> list[str]:
    """Incarnations whose last heartbeat is older than ``dead_after_seconds``."""
    found = client.register_script(lua_source("worker.celery_ext", "consumers_dead"))(
        keys=[CONSUMERS], args=[dead_after_seconds, SWEEP_LIMIT]
    )
    return [reply_text(item) for item in found]


def forget(client: redis.Redis, incarnation: str, dead_after_seconds: float, retired: bool) -> bool:
    """Drop a dead (or retired) incarnation that holds nothing any more."""
    forgotten = client.register_script(lua_source("worker.celery_ext", "consumer_forget"))(
        keys=[CONSUMERS, consumer_taken_key(incarnation), consumer_taking_key(incarnation)],
        args=[incarnation, dead_after_seconds, "1" if retired else "0"],
    )
    return bool(forgotten)


class Incarnations:
    """This process's consumer incarnations: the live ones (heartbeat) and the retired
    ones whose messages are not restored yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: list[str] = []
        self._retired: list[str] = []
        self._client: redis.Redis | None = None
        self._heartbeat: Heartbeat | None = None

    def adopt(self, heartbeat_seconds: float, client: redis.Redis) -> str:
        """A new incarnation, live from now on; every older one of this process retires
        (a new consuming channel replaces them: a broker reconnect). ``client`` is on the
        new channel's connection pool; the heartbeat uses it from now on."""
        incarnation = new_incarnation_id()
        with self._lock:
            self._retired += self._live
            self._live = [incarnation]
            self._client = client
            self._start_heartbeat(heartbeat_seconds)
        try:
            beat(client, [incarnation])  # at once; the thread repeats it from now on
        except Exception as exc:  # never fatal: the heartbeat thread registers it too
            log.warning("cannot register consumer %s yet: %s", incarnation, exc)
        return incarnation

    def retire(self, incarnation: str) -> None:
        with self._lock:
            if incarnation in self._live:
                self._live.remove(incarnation)
            if incarnation not in self._retired:
                self._retired.append(incarnation)

    def forget_retired(self, incarnation: str) -> None:
        with self._lock:
            if incarnation in self._retired:
                self._retired.remove(incarnation)

    def live(self) -> list[str]:
        with self._lock:
            return list(self._live)

    def beat(self) -> None:
        """Refresh the heartbeat of the live incarnations (the heartbeat thread's call)."""
        with self._lock:
            live, client = list(self._live), self._client
        if live and client is not None:
            beat(client, live)

    def retired(self) -> list[str]:
        with self._lock:
            return list(self._retired)

    def _start_heartbeat(self, interval: float) -> None:
        # Threads do not survive a fork: a pool process that inherited a started one has
        # none (it never consumes, so it never gets here either).
        if self._heartbeat is None or self._heartbeat.pid != os.getpid():
            self._heartbeat = Heartbeat(self, interval)
            self._heartbeat.start()


class Heartbeat(threading.Thread):
    """Refreshes the heartbeat of this process's live incarnations; survives outages."""

    def __init__(self, owner: Incarnations, interval: float) -> None:
        super().__init__(name="snackvideo-consumer-heartbeat", daemon=True)
        self.owner = owner
        self.interval = interval
        self.pid = os.getpid()
        self._failing = False

    def run(self) -> None:
        while True:
            try:
                self.owner.beat()
                if self._failing:
                    log.info("consumer heartbeat reaches Redis again")
                    self._failing = False
            except Exception as exc:  # this thread must outlive anything: a silent
                # heartbeat gets this live worker's jobs handed out again
                if not self._failing:  # one warning per outage, not one per beat
                    log.warning(
                        "consumer heartbeat failed: %s: %s",
                        type(exc).__name__,
                        exc,
                        exc_info=not isinstance(exc, redis.RedisError),
                    )
                    self._failing = True
            time.sleep(self.interval)


#: The one registry of this process.
INCARNATIONS = Incarnations()
