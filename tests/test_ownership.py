"""Consumer ownership and heartbeats (``worker.celery_ext.ownership`` through
``worker.celery_ext.transport``) against a real Redis, with real kombu channels of the
project's transport.

A dead consumer is a real one: a separate process takes a message through the transport
and exits at once (``os._exit``: no close, no restore, no retirement), leaving exactly
what a SIGKILLed worker leaves. The full Celery scenarios are in the fault tests
(``test_fault_worker_kill.py``, ``test_fault_redis_restart.py``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from producers.message import build_message
from tests.conftest import PYTHON, ROOT, RedisServer, wait_until
from worker.celery_ext.transport import SafeChannel, SafeTransport
from worker.clock import RedisClock
from worker.keys import (
    CONSUMERS,
    TAKEN_BY,
    UNACKED,
    UNACKED_INDEX,
    consumer_taken_key,
    consumer_taking_key,
)

pytestmark = pytest.mark.integration

QUEUE = "ownership-test"
HEARTBEAT_SECONDS = 0.5
DEAD_AFTER_SECONDS = 2.0
OPTIONS = {
    "consumer_heartbeat_seconds": HEARTBEAT_SECONDS,
    "consumer_dead_after_seconds": DEAD_AFTER_SECONDS,
}

#: Takes one message of QUEUE through the project's transport, prints what it holds, and
#: dies without closing anything.
TAKE_AND_DIE = """
import json, os, sys
from kombu import Connection
from worker.celery_ext.transport import SafeTransport
conn = Connection(sys.argv[1], transport=SafeTransport, transport_options=json.loads(sys.argv[2]))
channel = conn.channel()
channel.basic_qos(0, 1, False)
taken = []
channel.basic_consume(sys.argv[3], False, taken.append, consumer_tag="dying")
conn.drain_events(timeout=5)
print(json.dumps([channel.qos.incarnation, taken[0].delivery_tag]), flush=True)
os._exit(0)
"""


#: Takes one message of QUEUE and dies in the middle of the take: after the pop, before
#: kombu's unacked write (the MULTI of QoS.append). What a SIGKILL of a busy worker's main
#: process can hit on any take.
DIE_BEFORE_RECORDING = """
import json, os, sys
from kombu import Connection
from worker.celery_ext.transport import SafeQoS, SafeTransport
SafeQoS.append = lambda self, message, tag: os._exit(0)
conn = Connection(sys.argv[1], transport=SafeTransport, transport_options=json.loads(sys.argv[2]))
channel = conn.channel()
channel.basic_qos(0, 1, False)
channel.basic_consume(sys.argv[3], False, print, consumer_tag="dying")
print(json.dumps(channel.qos.incarnation), flush=True)
conn.drain_events(timeout=5)
"""


def run_dying_consumer(script: str, redis_url: str) -> Any:
    """Run one of the consumer scripts above on QUEUE; the JSON of its last printed line."""
    out = subprocess.run(
        [PYTHON, "-c", script, redis_url, json.dumps(OPTIONS), QUEUE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def die_while_taking(redis_url: str) -> str:
    """The incarnation of a consumer process that died between the pop and the record."""
    return str(run_dying_consumer(DIE_BEFORE_RECORDING, redis_url))


def take_and_die(redis_url: str) -> tuple[str, str]:
    """(incarnation, delivery tag) of a consumer process that took one message and died."""
    incarnation, tag = run_dying_consumer(TAKE_AND_DIE, redis_url)
    return incarnation, tag


def push(client: redis.Redis, job_id: str) -> None:
    client.lpush(QUEUE, build_message({"job_id": job_id}, task_id=job_id, queue=QUEUE))


class Consumer:
    """One consuming channel of the transport in this process."""

    def __init__(self, redis_url: str, **options: Any) -> None:
        self.connection = Connection(
            redis_url, transport=SafeTransport, transport_options={**OPTIONS, **options}
        )
        # The channel Celery's consumer uses: the one the connection closes with itself.
        self.channel: SafeChannel = self.connection.default_channel
        self.channel.basic_qos(0, 1, False)
        self.taken: list[Any] = []
        self.channel.basic_consume(QUEUE, False, self.taken.append, consumer_tag="live")

    @property
    def incarnation(self) -> str:
        assert self.channel.qos.incarnation is not None
        return self.channel.qos.incarnation

    def take(self) -> Any:
        before = len(self.taken)
        self.connection.drain_events(timeout=5)
        assert len(self.taken) == before + 1
        return self.taken[-1]

    def sweep(self) -> None:
        """What kombu's restore timer calls every heartbeat period."""
        self.channel.qos.restore_visible(num=10, interval=1)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def consumer(redis_url: str) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(**options: Any) -> Consumer:
        made.append(Consumer(redis_url, **options))
        return made[-1]

    yield make
    for one in reversed(made):
        one.close()


def job_ids_on_queue(client: redis.Redis) -> list[str]:
    """Job ids on QUEUE in the order BRPOP takes them (from the right)."""
    return [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange(QUEUE, 0, -1))]


def test_taking_a_message_records_its_holder_in_the_same_step(
    redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    push(redis_client, "m1")
    live = consumer()
    message = live.take()
    tag = message.delivery_tag

    assert redis_client.hget(TAKEN_BY, tag) == live.incarnation.encode()
    assert redis_client.smembers(consumer_taken_key(live.incarnation)) == {tag.encode()}
    assert redis_client.hexists(UNACKED, tag)
    # Scored on the Redis clock, and alive.
    (server_s, micros) = redis_client.time()
    score = redis_client.zscore(UNACKED_INDEX, tag)
    assert score is not None and abs(score - (server_s + micros / 1e6)) < 1.0
    assert redis_client.zscore(CONSUMERS, live.incarnation) is not None

    message.ack()
    assert not redis_client.hexists(TAKEN_BY, tag)
    assert not redis_client.exists(consumer_taken_key(live.incarnation))
    assert not redis_client.hexists(UNACKED, tag)


def test_a_dead_consumer_s_messages_come_back_redelivered_and_first_in_line(
    redis_url: str, redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    push(redis_client, "held")
    dead, tag = take_and_die(redis_url)
    push(redis_client, "later")
    assert redis_client.hget(TAKEN_BY, tag) == dead.encode()
    live = consumer()
    live.sweep()
    assert job_ids_on_queue(redis_client) == ["later"]  # still alive, by its heartbeat

    died_at = time.monotonic()
    wait_until(lambda: (live.sweep(), "held" in job_ids_on_queue(redis_client))[1], 10)
    restored_after = time.monotonic() - died_at

    assert DEAD_AFTER_SECONDS - 0.5 < restored_after < DEAD_AFTER_SECONDS + 3 * HEARTBEAT_SECONDS
    assert job_ids_on_queue(redis_client) == ["held", "later"]  # taken next
    message = live.take()
    assert message.headers["id"] == "held"
    assert message.delivery_info["redelivered"] is True
    # The dead consumer is forgotten; the message belongs to the live one now.
    assert redis_client.zscore(CONSUMERS, dead) is None
    assert not redis_client.exists(consumer_taken_key(dead))
    assert redis_client.hget(TAKEN_BY, tag) == live.incarnation.encode()


def test_a_consumer_killed_between_the_pop_and_the_record_loses_nothing(
    redis_url: str, redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    # kombu's own take (BRPOP, then the unacked write) lost this job: it lived only in the
    # dead process. The one-step take leaves it in the consumer's taking list.
    push(redis_client, "mid-take")
    dead = die_while_taking(redis_url)
    assert job_ids_on_queue(redis_client) == []
    assert redis_client.hlen(UNACKED) == 0
    assert redis_client.llen(consumer_taking_key(dead)) == 1

    live = consumer()
    wait_until(lambda: (live.sweep(), "mid-take" in job_ids_on_queue(redis_client))[1], 10)

    message = live.take()
    assert message.headers["id"] == "mid-take"
    # It never ran: back unchanged, not marked redelivered (no redelivery is counted).
    assert not message.delivery_info.get("redelivered")
    assert redis_client.zscore(CONSUMERS, dead) is None
    assert not redis_client.exists(consumer_taking_key(dead))


def test_a_taken_message_leaves_the_taking_list_in_the_unacked_write(
    redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    push(redis_client, "recorded")
    live = consumer()
    message = live.take()
    assert redis_client.hexists(UNACKED, message.delivery_tag)
    assert not redis_client.exists(consumer_taking_key(live.incarnation))


def test_a_second_list_is_taken_from_while_the_take_blocks_on_the_first(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # A worker consumes deliveries and control tasks; the one-step take blocks on one list
    # and looks at the others without blocking, at least once per BRPOP timeout.
    other = f"{QUEUE}.control"
    connection = Connection(
        redis_url,
        transport=SafeTransport,
        transport_options={**OPTIONS, "blocking_queue": QUEUE},
    )
    try:
        channel = connection.default_channel
        channel.basic_qos(0, 1, False)
        taken: list[Any] = []
        channel.basic_consume(QUEUE, False, taken.append, consumer_tag="main")
        channel.basic_consume(other, False, taken.append, consumer_tag="control")
        redis_client.lpush(
            other, build_message({"job_id": "control-1"}, task_id="control-1", queue=other)
        )
        deadline = time.monotonic() + 10
        while not taken and time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=1)
            except TimeoutError:
                pass
        assert [message.headers["id"] for message in taken] == ["control-1"]
        assert redis_client.hexists(UNACKED, taken[0].delivery_tag)
        assert not redis_client.exists(consumer_taking_key(channel.qos.incarnation))
        taken[0].ack()
    finally:
        connection.close()
        redis_client.delete(other)


def test_a_message_held_by_another_consumer_since_is_not_restored_again(
    redis_url: str, redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    # The dead consumer's set still names the message, but another consumer holds it now
    # (it was restored and taken again): restoring it would hand out a second live copy.
    push(redis_client, "moved-on")
    dead, tag = take_and_die(redis_url)
    redis_client.hset(TAKEN_BY, tag, "someone-else")
    redis_client.zadd(CONSUMERS, {dead: 0})  # long dead
    live = consumer()

    live.sweep()

    assert job_ids_on_queue(redis_client) == []
    assert redis_client.hexists(UNACKED, tag)  # the other holder's record stays
    assert redis_client.hget(TAKEN_BY, tag) == b"someone-else"
    assert redis_client.zscore(CONSUMERS, dead) is None  # the dead one holds nothing now


def test_a_new_consuming_channel_retires_the_old_one_and_its_messages_return_at_once(
    redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    # A broker reconnect: the process opens a new channel while the old one, whose
    # connection broke, could restore nothing.
    push(redis_client, "prefetched")
    old = consumer()
    old.take()
    new = consumer()  # adopting a new incarnation retires the old one

    new.sweep()  # the new channel's first sweep: kombu runs it when the channel starts

    assert job_ids_on_queue(redis_client) == ["prefetched"]
    assert redis_client.zscore(CONSUMERS, old.incarnation) is None
    assert redis_client.zscore(CONSUMERS, new.incarnation) is not None
    assert new.take().delivery_info["redelivered"] is True


def test_a_closing_channel_puts_back_what_it_holds_and_is_forgotten(
    redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    push(redis_client, "unstarted")
    live = consumer()
    live.take()
    incarnation = live.incarnation

    live.close()  # a warm shutdown

    assert job_ids_on_queue(redis_client) == ["unstarted"]
    assert redis_client.zscore(CONSUMERS, incarnation) is None
    assert not redis_client.exists(consumer_taken_key(incarnation))
    assert redis_client.hlen(TAKEN_BY) == 0 and redis_client.hlen(UNACKED) == 0


def test_a_run_that_ends_after_its_channel_closed_loses_nothing(
    own_redis: Callable[..., RedisServer],
) -> None:
    # Redis goes away while the consumer holds a message; Celery collects and closes the
    # connection (nothing can be put back: Redis is away), reconnects later, and a run
    # that kept going through it ends by requeueing its message through the closed
    # channel. That call must not reach Redis through the dead channel (in Celery's
    # sequence kombu 5.7 raised AttributeError there, which stopped the worker: seen in
    # tests/test_fault_redis_restart.py); the message comes back with the retirement.
    server = own_redis(appendonly=True)
    client = redis.Redis.from_url(server.url)
    push(client, "straddling")
    old = Consumer(server.url)
    message = old.take()
    server.stop()

    old.connection.collect()
    old.connection.close()
    message.reject(requeue=True)

    server.start()
    new = Consumer(server.url)
    try:
        new.sweep()  # the new channel's first sweep: the old consumer retired
        assert job_ids_on_queue(client) == ["straddling"]
        assert new.take().delivery_info["redelivered"] is True
        assert client.zscore(CONSUMERS, old.incarnation) is None
    finally:
        new.close()
        client.close()


def test_a_host_whose_clock_runs_ahead_does_not_restore_jobs_still_running(
    redis_client: redis.Redis, consumer: Callable[..., Consumer]
) -> None:
    # kombu scored unacked_index and compared against it with each host's own clock: a
    # host 300 s ahead saw every job as older than a 120 s visibility timeout and put
    # back jobs other workers were running. Both sides use the Redis clock now.
    push(redis_client, "running")
    ahead = consumer(visibility_timeout=120)
    ahead.channel.qos._clock = RedisClock(redis_client, local=lambda: time.time() + 300)
    message = ahead.take()

    ahead.sweep()  # the visibility scan too (interval 1)

    (server_s, micros) = redis_client.time()
    score = redis_client.zscore(UNACKED_INDEX, message.delivery_tag)
    assert score is not None and abs(score - (server_s + micros / 1e6)) < 1.0
    assert redis_client.hexists(UNACKED, message.delivery_tag)  # not restored
    assert job_ids_on_queue(redis_client) == []
