"""The Dispatcher driven directly, against a real Redis and the sandbox over HTTP.

What the task adapter hides: how many round trips a delivery costs, which marks make a
message "done" (delivered-marker, dead-letter entry, replay tombstone) and in what order
the checks run, the ids of unreadable messages' entries, the per-run cap on throttle
sleeps, and the counting of redelivered messages that were sent.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from producers.models import JOB_SCHEMA_VERSION
from tests.conftest import PYTHON, ROOT, STORE, STORE_KEY, Sandbox
from tests.queue_helpers import decode_message, event
from worker.delivery.dispatcher import Dispatcher
from worker.delivery.scalev import ScalevClient
from worker.errors import DeadLettered
from worker.keys import (
    DELIVERY_QUEUE,
    SCHEDULED,
    SCHEDULED_MESSAGES,
    delivered_key,
    dlq_taken_key,
    entry_id,
    generation_key,
    redeliveries_key,
    throttle_in_flight_key,
    throttle_key,
)
from worker.lua_scripts import lua_source
from worker.metrics import recording as metrics
from worker.settings import Settings

GONE_STORE = "store_gone"  # the worker holds a key for it; the sandbox answers 404


# -- a client that counts its round trips ---------------------------------------------------

_SCRIPT_NAMES = {
    hashlib.sha1(lua_source(package, name).encode()).hexdigest(): label
    for label, package, name in (
        ("throttle_acquire", "worker.throttle", "acquire"),
        ("throttle_record", "worker.throttle", "record"),
        ("dlq_add", "worker.deadletter", "add"),
        ("dlq_take", "worker.deadletter", "take"),
        ("schedule", "worker.delayed", "schedule"),
    )
}


class CountingConnection(redis.Connection):
    """A real connection that notes each round trip (one send: a command, a pipeline)."""

    sent: list[str] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent.append(_first_command(command))
        super().send_packed_command(command, check_health)


def _first_command(packed: Any) -> str:
    data = b"".join(bytes(c) for c in packed) if isinstance(packed, list) else bytes(packed)
    parts = data.split(b"\r\n")
    name = parts[2].decode().upper()  # *N, $len, NAME, $len, ARG1...
    if name == "EVALSHA":
        return f"EVALSHA({_SCRIPT_NAMES.get(parts[4].decode(), '?')})"
    return name


@pytest.fixture
def counting_client(redis_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()
    pool.disconnect()


# -- building a dispatcher ------------------------------------------------------------------


class ManualClock:
    """A clock the dispatcher's sleeps advance, without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


MakeDispatcher = Callable[..., Dispatcher]


@pytest.fixture(params=["throttle_on", "throttle_off"])
def throttle_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_dispatcher(
    counting_client: redis.Redis, sandbox: Sandbox, throttle_mode: str
) -> MakeDispatcher:
    def make(*, clock: ManualClock | None = None, **overrides: Any) -> Dispatcher:
        options: dict[str, Any] = {
            "scalev_api_base_url": sandbox.base_url,
            "storefront_api_keys": {STORE: STORE_KEY, GONE_STORE: "pk_test_gone_0001"},
            "default_rate_per_second": 1_000_000.0,
            "throttle_enabled": throttle_mode == "throttle_on",
            **overrides,
        }
        settings = Settings(**options)
        scalev = ScalevClient(
            settings.scalev_api_base_url, connect_timeout_seconds=3, read_timeout_seconds=10
        )
        if clock is None:
            return Dispatcher(settings, counting_client, scalev)
        return Dispatcher(settings, counting_client, scalev, clock=clock, sleep=clock.sleep)

    return make


def job(click_id: str, *, store_id: str = STORE, **changes: Any) -> dict[str, Any]:
    kwargs = {
        "job_id": f"job-{click_id}-{uuid.uuid4().hex[:8]}",
        "store_id": store_id,
        "payload": event(click_id),
        "enqueued_at": time.time(),
        "schema": JOB_SCHEMA_VERSION,
    }
    return {**kwargs, **changes}


def dead_letter(dispatcher: Dispatcher, kwargs: dict[str, Any], **options: Any) -> DeadLettered:
    with pytest.raises(DeadLettered) as info:
        dispatcher.deliver((), kwargs, **options)
    return info.value


def requests_to(sandbox: Sandbox) -> int:
    return int(sandbox.stats()["requests"])


# -- round trips ----------------------------------------------------------------------------


def test_a_delivery_costs_two_round_trips_of_bookkeeping(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis, throttle_mode: str
) -> None:
    dispatcher = make_dispatcher()
    assert dispatcher.deliver((), job("rt-warm")).kind == "delivered"  # scripts loaded
    CountingConnection.sent.clear()

    kwargs = job("rt-1")
    outcome = dispatcher.deliver((), kwargs)

    assert outcome.kind == "delivered" and outcome.status_code == 204
    after = "EVALSHA(throttle_record)" if throttle_mode == "throttle_on" else "SET"
    assert CountingConnection.sent == ["EVALSHA(throttle_acquire)", after]
    ttl = redis_client.ttl(delivered_key(kwargs["job_id"]))
    assert Settings().max_age_seconds + 86_400 - 5 < ttl <= Settings().max_age_seconds + 86_400
    assert requests_to(sandbox) == 2


def test_a_copy_of_a_delivered_job_is_stopped_in_one_round_trip(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis
) -> None:
    dispatcher = make_dispatcher()
    kwargs = job("dup")
    assert dispatcher.deliver((), kwargs).kind == "delivered"
    CountingConnection.sent.clear()

    assert dispatcher.deliver((), kwargs).kind == "duplicate"

    assert CountingConnection.sent == ["EVALSHA(throttle_acquire)"]
    assert requests_to(sandbox) == 1
    # Nothing was taken from the budget for it: no slot left in flight.
    scope = dispatcher.settings.scalev_api_base_url
    assert redis_client.zcard(throttle_in_flight_key(scope)) == 0


# -- the replay tombstone -------------------------------------------------------------------


def test_a_stale_copy_of_a_replayed_entry_is_not_acted_upon(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis
) -> None:
    # A worker parks J-r0 and dies before its ack; J-r0 is replayed (as r1) before the
    # visibility timeout brings the old r0 message back.
    dispatcher = make_dispatcher()
    r0 = job("replayed", store_id=GONE_STORE)
    assert dead_letter(dispatcher, r0).reason == "http_404"
    store = dispatcher.dead_letters
    entry = store.get(entry_id(r0["job_id"], 0))
    assert entry is not None

    assert dispatcher.deliver((), r0).kind == "duplicate"  # before the replay: the entry
    assert store.replay([entry]) == [entry.id]
    tombstone = dlq_taken_key(entry.id)
    assert redis_client.get(tombstone) == b"replayed"
    assert 590 < redis_client.pttl(tombstone) / 1000 <= 600  # Settings().dlq_taken_ttl_seconds

    stale = dispatcher.deliver((), r0)  # the old r0 message, restored after the replay

    assert stale.kind == "duplicate"
    assert requests_to(sandbox) == 1
    assert store.get(entry.id) is None  # not parked again beside the replay
    # The replayed message itself is a new run: it is sent (and parked again as r1).
    replayed = entry.replay_kwargs()
    assert redis_client.llen(DELIVERY_QUEUE) == 1
    assert dead_letter(dispatcher, replayed).reason == "http_404"
    assert requests_to(sandbox) == 2
    assert [e.id for e in store.find_entries()] == [entry_id(r0["job_id"], 1)]


def test_a_purged_entry_leaves_a_tombstone_too(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis
) -> None:
    dispatcher = make_dispatcher()
    r0 = job("purged", store_id=GONE_STORE)
    dead_letter(dispatcher, r0)
    entry_id_ = entry_id(r0["job_id"], 0)
    assert dispatcher.dead_letters.purge([entry_id_]) == [entry_id_]
    assert redis_client.get(dlq_taken_key(entry_id_)) == b"purged"

    assert dispatcher.deliver((), r0).kind == "duplicate"
    assert requests_to(sandbox) == 1
    assert len(dispatcher.dead_letters) == 0


def test_the_tombstone_lives_past_a_visibility_timeout_and_a_restore_sweep() -> None:
    assert Settings().dlq_taken_ttl_seconds == 600
    slow = Settings(visibility_timeout_seconds=400, unacked_restore_interval_seconds=10)
    assert slow.dlq_taken_ttl_seconds == 810


# -- the order of the checks ----------------------------------------------------------------


def test_an_expired_copy_of_a_done_job_is_not_dead_lettered(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox
) -> None:
    clock = ManualClock()
    dispatcher = make_dispatcher(clock=clock, max_age_seconds=600)
    delivered, parked = job("old-delivered"), job("old-parked", store_id=GONE_STORE)
    assert dispatcher.deliver((), delivered).kind == "delivered"
    dead_letter(dispatcher, parked)
    replayed_entry = dispatcher.dead_letters.get(entry_id(parked["job_id"], 0))
    assert replayed_entry is not None
    dispatcher.dead_letters.replay([replayed_entry])

    clock.now += 3_600  # their copies come back after the max age
    assert dispatcher.deliver((), delivered).kind == "duplicate"
    assert dispatcher.deliver((), parked).kind == "duplicate"  # the tombstone
    assert len(dispatcher.dead_letters) == 0
    # A job that is not done is still dead-lettered as expired, without a request.
    assert dead_letter(dispatcher, job("old-new", enqueued_at=clock.now - 3_600)).reason == (
        "expired"
    )
    assert requests_to(sandbox) == 2


def test_a_done_job_without_a_key_is_not_dead_lettered(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox
) -> None:
    kwargs = job("keyless")
    assert make_dispatcher().deliver((), kwargs).kind == "delivered"
    keyless = make_dispatcher(storefront_api_keys={})  # the key was removed since

    assert keyless.deliver((), kwargs).kind == "duplicate"
    assert len(keyless.dead_letters) == 0
    assert dead_letter(keyless, job("keyless-new")).reason == "no_api_key"
    assert requests_to(sandbox) == 1


# -- unreadable messages --------------------------------------------------------------------


def test_an_unreadable_message_with_a_real_jobs_id_does_not_hide_that_job(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox
) -> None:
    dispatcher = make_dispatcher()
    real = job("hidden")

    with pytest.raises(DeadLettered):  # positional args: unreadable, same job id
        dispatcher.deliver(("positional",), real, task_id=real["job_id"])
    with pytest.raises(DeadLettered):  # its redelivered copy: no twin
        dispatcher.deliver(("positional",), real, task_id=real["job_id"])

    (entry,) = dispatcher.dead_letters.find_entries()
    assert entry.id == f"{real['job_id']}-r0-invalid"
    assert entry.reason == "invalid_job" and entry.job_id == real["job_id"]
    assert dispatcher.deliver((), real).kind == "delivered"  # the real job is not "parked"
    assert requests_to(sandbox) == 1


def test_an_unreadable_job_without_an_id_is_named_by_its_task_id(
    make_dispatcher: MakeDispatcher,
) -> None:
    dispatcher = make_dispatcher()
    assert dead_letter(dispatcher, {"hello": "world"}, task_id="task-123").job_id == "task-123"
    # Without a task id either (a caller outside Celery): named by its content, so the
    # same message parked twice lands on the same entry.
    first = dead_letter(dispatcher, {"hello": "again"})
    second = dead_letter(dispatcher, {"hello": "again"})
    assert first.job_id == second.job_id and first.job_id.startswith("invalid-")

    ids = sorted(entry.id for entry in dispatcher.dead_letters.find_entries())
    assert ids == sorted(["task-123-r0-invalid", f"{first.job_id}-r0-invalid"])


# -- the cap on throttle sleeps in one run ----------------------------------------------------


@pytest.mark.parametrize("throttle_mode", ["throttle_on"])
def test_throttle_sleeps_are_capped_per_run_then_the_job_is_parked(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis
) -> None:
    clock = ManualClock()
    dispatcher = make_dispatcher(clock=clock, max_sleep_seconds=5.0)
    # Another process keeps winning the slots: every ask says "about 2 s more". The clock
    # in Redis does not move (nothing really sleeps), so the answer never changes.
    seconds, micros = redis_client.time()
    redis_now = seconds + micros / 1e6
    scope = dispatcher.settings.scalev_api_base_url
    redis_client.hset(throttle_key(scope), "blocked_until", f"{redis_now + 2.0:.6f}")
    kwargs = job("starved")

    outcome = dispatcher.deliver((), kwargs)

    assert outcome.kind == "throttled"
    assert len(clock.sleeps) == 2 and sum(clock.sleeps) <= 5.0, clock.sleeps
    assert outcome.due_at is not None and outcome.due_at <= clock.now + 2.01
    assert redis_client.zscore(SCHEDULED, kwargs["job_id"]) is not None
    assert requests_to(sandbox) == 0


@pytest.mark.processes
def test_the_visibility_bound_covers_every_request_of_a_run() -> None:
    settings = Settings()
    # 3 requests cut at connect + read (+1 s slack), the max sleep, 10 s of Redis calls.
    assert settings.longest_run_seconds == pytest.approx(3 * (3.05 + 10.0 + 1.0) + 5.0 + 10.0)
    assert settings.soft_time_limit_seconds > settings.longest_run_seconds
    assert settings.min_visibility_timeout_seconds == settings.hard_time_limit_seconds
    assert settings.hard_time_limit_seconds == pytest.approx(77.15)
    assert settings.visibility_timeout_seconds > settings.min_visibility_timeout_seconds
    # 60 s covers the longest run but not the hard time limit: refused at start.
    refused = subprocess.run(
        [PYTHON, "-c", "import worker.celery_app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS": "60"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS must exceed" in refused.stderr
    assert "(77.15s:" in refused.stderr


# -- redelivered messages --------------------------------------------------------------------


def redelivered_total() -> float:
    (family,) = metrics.get_metrics().redelivered_deliveries.collect()
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


def test_a_redelivered_message_that_is_sent_is_logged_and_counted(
    make_dispatcher: MakeDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = make_dispatcher()
    before = redelivered_total()
    fresh, restored = job("fresh"), job("restored")
    with caplog.at_level(logging.INFO, logger="snackvideo.delivery"):
        assert dispatcher.deliver((), fresh).kind == "delivered"
        assert dispatcher.deliver((), restored, redelivered=True).kind == "delivered"
        # A restored copy of a job already delivered is stopped: a duplicate, not counted.
        assert dispatcher.deliver((), restored, redelivered=True).kind == "duplicate"

    lines = [r.getMessage() for r in caplog.records if "outcome=" in r.getMessage()]
    (fresh_line,) = [line for line in lines if f"job_id={fresh['job_id']}" in line]
    restored_lines = [line for line in lines if f"job_id={restored['job_id']}" in line]
    assert "redelivered" not in fresh_line
    assert restored_lines[0].startswith("outcome=delivered ")
    assert restored_lines[0].endswith(" redelivered=1")
    assert restored_lines[1].startswith("outcome=duplicate ")
    assert redelivered_total() == before + 1


# -- generations: the restored copy of a parked job stands down ------------------------------


def test_a_copy_behind_the_recorded_generation_stands_down_in_one_round_trip(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis
) -> None:
    dispatcher = make_dispatcher()
    assert dispatcher.deliver((), job("gen-warm")).kind == "delivered"  # scripts loaded
    stale, replayed = job("gen-stale"), job("gen-replayed")
    # Parked since as generation 1 (3) of replay 0: what schedule.lua records.
    redis_client.set(generation_key(stale["job_id"]), "0:1")
    redis_client.set(generation_key(replayed["job_id"]), "0:3")
    CountingConnection.sent.clear()

    assert dispatcher.deliver((), stale).kind == "duplicate"

    assert CountingConnection.sent == ["EVALSHA(throttle_acquire)"]  # no extra round trip
    assert requests_to(sandbox) == 1
    # The parked message itself, and any later replay, are live copies.
    assert dispatcher.deliver((), {**stale, "generation": 1}).kind == "delivered"
    assert dispatcher.deliver((), {**replayed, "replay_count": 1}).kind == "delivered"
    assert requests_to(sandbox) == 3


def test_parking_records_the_generation_and_a_stale_twin_parks_nothing(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis
) -> None:
    sandbox.configure(fail_first=1)
    dispatcher = make_dispatcher()
    kwargs = job("parks")
    job_id = kwargs["job_id"]

    assert dispatcher.deliver((), kwargs).kind == "retried"

    parked = decode_message(redis_client.hget(SCHEDULED_MESSAGES, job_id)).kwargs
    assert (parked["generation"], parked["attempts"], parked["replay_count"]) == (1, 1, 0)
    assert redis_client.get(generation_key(job_id)) == b"0:1"
    marker_ttl = Settings().delivered_marker_ttl_seconds  # kept as long as the marker
    assert marker_ttl - 5 < redis_client.ttl(generation_key(job_id)) <= marker_ttl
    # The same message again (kombu restored it: its worker died before the ack).
    assert dispatcher.deliver((), kwargs).kind == "duplicate"
    # A twin that passed its check before the parking cannot park a second copy either.
    assert (
        dispatcher.delayed.schedule(
            {**kwargs, "generation": 1}, delay_seconds=60, generation_ttl_seconds=60
        )
        is None
    )
    assert decode_message(redis_client.hget(SCHEDULED_MESSAGES, job_id)).kwargs == parked
    assert requests_to(sandbox) == 1


# -- errors nothing classifies ---------------------------------------------------------------


class LeakyScalev(ScalevClient):
    """A client with a bug that quotes the key in its exception (a third-party library
    might: a header value in a message)."""

    def send(self, store_id: str, api_key: str, payload: dict[str, Any]) -> Any:
        raise RuntimeError(f"bad header value {api_key!r} for {store_id}")


def parked_kwargs(client: redis.Redis, job_id: str) -> dict[str, Any]:
    return dict(decode_message(client.hget(SCHEDULED_MESSAGES, job_id)).kwargs)


def test_an_internal_error_is_retried_with_backoff_then_dead_lettered_without_the_key(
    counting_client: redis.Redis, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        scalev_api_base_url=sandbox.base_url,
        storefront_api_keys={STORE: STORE_KEY},
        retry_base_seconds=1.0,
    )
    scalev = LeakyScalev(sandbox.base_url, connect_timeout_seconds=3, read_timeout_seconds=10)
    dispatcher = Dispatcher(settings, counting_client, scalev)
    kwargs = job("leaky")
    job_id = kwargs["job_id"]

    with caplog.at_level(logging.INFO):
        first = dispatcher.deliver((), kwargs)
        second = dispatcher.deliver((), parked_kwargs(counting_client, job_id))
        assert first.kind == second.kind == "retried"
        assert first.due_at is not None and second.due_at is not None
        with pytest.raises(DeadLettered) as info:
            dispatcher.deliver((), parked_kwargs(counting_client, job_id))

    assert info.value.reason == "internal_error"
    assert info.value.__context__ is None and info.value.__cause__ is None  # nothing chained
    assert STORE_KEY not in str(info.value)
    entry = dispatcher.dead_letters.get(entry_id(job_id, 0))
    assert entry is not None and entry.reason == "internal_error"
    assert entry.error == (
        "3 runs ended in an internal error; the last: "
        "RuntimeError: bad header value '**********' for store_abc"
    )
    assert entry.attempts == 0  # no request reached Scalev: no delivery attempt spent
    assert entry.payload == kwargs["payload"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert STORE_KEY not in logged and "bad header value '**********'" in logged
    assert logged.count("reason=internal_error") == 3  # retried, retried, dead_lettered
    assert requests_to(sandbox) == 0


def test_the_internal_error_count_and_the_generation_travel_with_the_parked_job(
    counting_client: redis.Redis, sandbox: Sandbox
) -> None:
    settings = Settings(scalev_api_base_url=sandbox.base_url, storefront_api_keys={STORE: "k"})
    scalev = LeakyScalev(sandbox.base_url, connect_timeout_seconds=3, read_timeout_seconds=10)
    dispatcher = Dispatcher(settings, counting_client, scalev)
    kwargs = job("counted", attempts=4)

    dispatcher.deliver((), kwargs)
    once = parked_kwargs(counting_client, kwargs["job_id"])
    dispatcher.deliver((), once)
    twice = parked_kwargs(counting_client, kwargs["job_id"])

    assert (once["internal_errors"], once["generation"], once["attempts"]) == (1, 1, 4)
    assert (twice["internal_errors"], twice["generation"], twice["attempts"]) == (2, 2, 4)
    assert counting_client.get(generation_key(kwargs["job_id"])) == b"0:2"


def test_a_deterministic_error_recording_a_2xx_ends_delivered_and_is_not_sent_again(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    # A delivered-marker TTL beyond what Redis accepts ("invalid expire time"): the
    # same ResponseError on every run. It used to be requeued and posted again for ever.
    # Settings refuse such a max age now; the copy skips validation to make the error.
    dispatcher = make_dispatcher()
    dispatcher.settings = dispatcher.settings.model_copy(update={"max_age_seconds": 1e17})
    kwargs = job("unmarked")

    with caplog.at_level(logging.INFO, logger="snackvideo.delivery"):
        outcome = dispatcher.deliver((), kwargs)

    assert outcome.kind == "delivered"
    assert requests_to(sandbox) == 1
    (line,) = [r.getMessage() for r in caplog.records if "recording it failed" in r.getMessage()]
    assert line.startswith(f"job_id={kwargs['job_id']} was delivered (status=204)")
    assert "ResponseError" in line
    assert dispatcher.delayed.depth() == 0 and len(dispatcher.dead_letters) == 0


def test_a_payload_json_cannot_encode_is_dead_lettered_with_its_text(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox
) -> None:
    deep: dict[str, Any] = {}
    for _ in range(5_000):  # far beyond json.dumps' (and asdict's) recursion
        deep = {"a": deep}
    kwargs = job("too-deep")
    kwargs["payload"]["deep"] = deep

    assert dead_letter(make_dispatcher(), kwargs).reason == "invalid_job"

    (entry,) = make_dispatcher().dead_letters.find_entries()
    assert "nested deeper than 32 levels" in entry.error
    raw, size = entry.payload["raw"], entry.payload["raw_chars"]
    assert raw.startswith('{"click_id":"too-deep"') and len(raw) == Settings().dlq_error_max_chars
    assert size > 5_000 * len('{"a":}')
    assert requests_to(sandbox) == 0


def test_a_redelivered_message_past_the_bound_is_dead_lettered_without_a_request(
    make_dispatcher: MakeDispatcher, sandbox: Sandbox, redis_client: redis.Redis
) -> None:
    dispatcher = make_dispatcher(max_redeliveries=2)
    looping, fresh = job("looping"), job("fresh-run")
    # Two earlier redelivered runs of this message died before any outcome.
    redis_client.set(redeliveries_key(looping["job_id"], 0, 0), 2)

    dead = dead_letter(dispatcher, looping, redelivered=True)
    assert dispatcher.deliver((), fresh).kind == "delivered"

    assert dead.reason == "internal_error"
    entry = dispatcher.dead_letters.get(entry_id(looping["job_id"], 0))
    assert entry is not None
    assert entry.error.startswith("redelivered 3 times without an outcome")
    assert 86_000 < redis_client.ttl(redeliveries_key(looping["job_id"], 0, 0)) <= 86_400
    # Only messages kombu flags redelivered are counted: the common path pays nothing.
    assert not redis_client.exists(redeliveries_key(fresh["job_id"], 0, 0))
    assert requests_to(sandbox) == 1
