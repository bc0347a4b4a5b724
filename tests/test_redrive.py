"""Scheduled reprocessing: which entries, how many, once each, and the beat that runs it.

Selection, caps and the lock run against a real Redis; the schedule runs as real
``celery beat`` and ``celery worker`` processes. The last test is the issue's "done when":
an event for a store without a key is delivered by the schedule alone once the key is set.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from producers.message import build_message
from tests.conftest import STORE, Beat, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import decode_message, event, queued
from worker.deadletter.redrive import RedriveLock, Redriver
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.keys import CONTROL_QUEUE, DELIVERY_QUEUE, REDRIVE_LOCK, REDRIVE_TASK
from worker.settings import Settings

HEALABLE = ("http_404", "http_401", "http_403", "no_api_key", "retries_exhausted")
NEVER = ("http_400", "invalid_job", "expired")
#: Dead-lettered a day ago, well inside the 30-day retention.
T0 = time.time() - 86_400


def letter(n: int, reason: str, *, replay_count: int = 0, store_id: str = "store_a") -> DeadLetter:
    return DeadLetter(
        job_id=f"job-{n:04d}",
        store_id=store_id,
        payload=event(f"clk-{n}"),
        reason=reason,
        dead_lettered_at=T0 + n,  # n orders them by age
        enqueued_at=time.time(),
        replay_count=replay_count,
    )


def redriver(
    client: redis.Redis, settings: Settings | None = None, **overrides: object
) -> Redriver:
    settings = settings or Settings.from_env({})
    options: dict[str, object] = {
        "reasons": settings.redrive_reasons,
        "max_replays": settings.redrive_max_replays,
        "batch_size": settings.redrive_batch_size,
        "lock": RedriveLock(client),
    }
    options.update(overrides)
    return Redriver(DeadLetterStore(client), **options)  # type: ignore[arg-type]


def pushed_jobs(client: redis.Redis) -> list[str]:
    return [message.kwargs["job_id"] for message in queued(client)]


# -- what is picked ------------------------------------------------------------------------


def test_defaults_are_the_healable_reasons_cap_3_batch_500() -> None:
    settings = Settings.from_env({})
    assert set(settings.redrive_reasons) == set(HEALABLE)
    assert (settings.redrive_max_replays, settings.redrive_batch_size) == (3, 500)
    configured = Settings.from_env({"SNACKVIDEO_REDRIVE_REASONS": "http_404, expired"})
    assert configured.redrive_reasons == ("http_404", "expired")


def test_only_healable_reasons_below_the_cap_oldest_first(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    reasons = [*HEALABLE, *NEVER]
    for n, reason in enumerate(reasons):
        store.add(letter(n, reason))
    store.add(letter(20, "http_404", replay_count=2))  # one replay left
    store.add(letter(21, "http_404", replay_count=3))  # at the cap: stays for an operator
    store.add(letter(22, "no_api_key", replay_count=5))  # replayed by hand past the cap

    report = redriver(redis_client).run()

    expected = [f"job-{n:04d}" for n in range(len(HEALABLE))] + ["job-0020"]
    assert [entry.job_id for entry in report.replayed] == expected
    assert pushed_jobs(redis_client) == expected  # oldest first onto the queue
    assert report.at_cap == 2
    left = {(e.reason, e.replay_count) for e in store.find_entries()}
    assert left == {(r, 0) for r in NEVER} | {("http_404", 3), ("no_api_key", 5)}
    assert [m.kwargs["replay_count"] for m in queued(redis_client)] == [1, 1, 1, 1, 1, 3]


def test_reasons_are_configurable(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    store.add(letter(1, "expired"))
    store.add(letter(2, "http_404"))
    settings = Settings.from_env({"SNACKVIDEO_REDRIVE_REASONS": "expired"})
    report = redriver(redis_client, settings).run()
    assert [e.job_id for e in report.replayed] == ["job-0001"]
    assert [e.reason for e in store.find_entries()] == ["http_404"]


def test_batch_cap_per_run_and_replay_cap_per_entry(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    for n in range(7):
        store.add(letter(n, "retries_exhausted"))
    settings = Settings.from_env(
        {"SNACKVIDEO_REDRIVE_BATCH_SIZE": "3", "SNACKVIDEO_REDRIVE_MAX_REPLAYS": "1"}
    )
    runs = [redriver(redis_client, settings).run() for _ in range(4)]
    assert [len(run.replayed) for run in runs] == [3, 3, 1, 0]
    assert pushed_jobs(redis_client) == [f"job-{n:04d}" for n in range(7)]
    # Each failed again: back as replay 1, which is the cap of 1 -> never picked again.
    for n in range(7):
        store.add(letter(100 + n, "retries_exhausted", replay_count=1))
    again = redriver(redis_client, settings).run()
    assert again.replayed == [] and again.at_cap == 7


def test_no_api_key_waits_for_a_key_without_spending_a_replay(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    store.add(letter(1, "no_api_key", store_id="store_without_key"))
    store.add(letter(2, "no_api_key", store_id="store_with_key"))
    has_key = {"store_with_key"}
    report = redriver(redis_client, has_api_key=lambda store_id: store_id in has_key).run()
    assert [e.job_id for e in report.replayed] == ["job-0002"]
    assert report.waiting == 1
    assert [(e.job_id, e.replay_count) for e in store.find_entries()] == [("job-0001", 0)]


def test_a_run_also_applies_retention(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client, max_age_seconds=500)
    store.add(letter(1, "http_400"), now=T0 + 1)
    run = Redriver(store, reasons=HEALABLE, max_replays=3, batch_size=10, clock=lambda: T0 + 600)
    report = run.run()
    assert [t.entry_id for t in report.trimmed] == ["job-0001-r0"]
    assert store.trimmed_by_reason() == {"http_400": 1}


# -- once each, under the lock and without it ---------------------------------------------


def test_the_lock_keeps_a_second_run_out_and_only_its_owner_frees_it(
    redis_client: redis.Redis,
) -> None:
    DeadLetterStore(redis_client).add(letter(1, "http_404"))
    holder = RedriveLock(redis_client)
    assert holder.acquire()
    assert redis_client.pttl(REDRIVE_LOCK) > 0  # a crashed holder cannot block forever
    report = redriver(redis_client).run()
    assert report.locked_out and report.replayed == []
    assert not RedriveLock(redis_client).release()  # not its lock: left alone
    assert redis_client.exists(REDRIVE_LOCK)
    assert holder.release()
    assert [e.job_id for e in redriver(redis_client).run().replayed] == ["job-0001"]
    assert not redis_client.exists(REDRIVE_LOCK)


@pytest.mark.parametrize("locked", [True, False])
def test_concurrent_runs_replay_each_entry_once(redis_url: str, locked: bool) -> None:
    setup = redis.Redis.from_url(redis_url)
    store = DeadLetterStore(setup)
    for n in range(400):
        store.add(letter(n, HEALABLE[n % len(HEALABLE)]))
    barrier = threading.Barrier(4)
    replayed: list[str] = []
    lock = threading.Lock()

    def one_run() -> None:
        client = redis.Redis.from_url(redis_url)
        run = redriver(client, batch_size=150, lock=RedriveLock(client) if locked else None)
        barrier.wait()
        # Runs that find the lock taken skip, so a fixed number of tries may end before
        # the queue is empty: keep running until it is (bounded), as beat would.
        deadline = time.monotonic() + 30
        while len(store) and time.monotonic() < deadline:
            report = run.run()
            with lock:
                replayed.extend(entry.id for entry in report.replayed)
        client.close()

    threads = [threading.Thread(target=one_run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert Counter(replayed).most_common(1)[0][1] == 1
    assert len(replayed) == 400
    jobs = Counter(pushed_jobs(setup))
    assert len(jobs) == 400 and set(jobs.values()) == {1}
    assert len(store) == 0
    setup.close()


# -- the schedule, with real processes ----------------------------------------------------


@pytest.mark.integration
def test_beat_sends_redrive_to_the_control_queue_with_an_expiry(
    redis_client: redis.Redis, redis_url: str, start_beat: Callable[[dict[str, str]], Beat]
) -> None:
    env = worker_env(redis_url, "http://127.0.0.1:9", SNACKVIDEO_REDRIVE_INTERVAL_SECONDS="2")
    beat = start_beat(env)
    raw = wait_until(
        lambda: redis_client.lindex(CONTROL_QUEUE, -1), SETTLE_SECONDS, what=f"{beat.log()}"
    )
    message = decode_message(raw)
    assert message.headers["task"] == REDRIVE_TASK
    # A run held up past its expiry is dropped by the worker, not piled up.
    assert re.match(r"\d{4}-\d\d-\d\dT", message.headers["expires"])
    assert redis_client.llen(DELIVERY_QUEUE) == 0


@pytest.mark.integration
def test_redrive_does_not_wait_behind_a_delivery_backlog(
    redis_client: redis.Redis,
    redis_url: str,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
) -> None:
    sandbox = start_sandbox("--latency-ms", "20")
    producer = Producer(redis_url)
    for start in range(0, 3_000, 500):
        producer.enqueue_many(STORE, [event(f"backlog-{n}") for n in range(start, start + 500)])
    producer.close()
    DeadLetterStore(redis_client).add(letter(1, "http_404", store_id="store_gone"))
    redis_client.lpush(
        CONTROL_QUEUE,
        build_message({}, task_id="redrive-now", task_name=REDRIVE_TASK, queue=CONTROL_QUEUE),
    )
    worker = start_worker(worker_env(redis_url, sandbox.base_url), concurrency=1)
    wait_until(lambda: "redrive replayed=1" in worker.log(), SETTLE_SECONDS, what="the redrive run")
    # The run came before the backlog: thousands of deliveries are still queued.
    assert redis_client.llen(DELIVERY_QUEUE) > 2_000


@pytest.mark.integration
def test_two_beats_replay_each_entry_once(
    redis_client: redis.Redis,
    redis_url: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    start_beat: Callable[[dict[str, str]], Beat],
) -> None:
    # store_gone has a key but the sandbox does not know it: every replay fails again (404)
    # and comes back with replay_count + 1, until the cap of 3 leaves it for an operator.
    store = DeadLetterStore(redis_client)
    for n in range(40):
        store.add(letter(n, "http_404", store_id="store_gone"))
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS=json.dumps({"store_gone": "pk_gone_0001"}),
        SNACKVIDEO_REDRIVE_INTERVAL_SECONDS="1",
    )
    worker = start_worker(env, concurrency=2)
    start_beat(env)
    start_beat(env)

    def all_at_cap() -> bool:
        entries = store.find_entries(limit=100)
        return len(entries) == 40 and all(e.replay_count == 3 for e in entries)

    wait_until(all_at_cap, SETTLE_SECONDS, what="every entry replayed up to the cap")
    replays = Counter(re.findall(r"redrive replayed entry=(\S+)", worker.log()))
    assert len(replays) == 40 * 3  # r0, r1, r2 of each job
    assert set(replays.values()) == {1}
    # Each job reached Scalev once per replay (plus nothing else: it never got a first try).
    assert sandbox.stats()["by_status"] == {"404": 120}


@pytest.mark.integration
def test_done_when_a_store_without_key_is_delivered_by_the_schedule_alone(
    redis_client: redis.Redis,
    redis_url: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    start_beat: Callable[[dict[str, str]], Beat],
) -> None:
    sandbox.configure(stores={"store_late": "pk_late_0001"})
    no_key = worker_env(redis_url, sandbox.base_url, SNACKVIDEO_REDRIVE_INTERVAL_SECONDS="1")
    worker = start_worker(no_key, concurrency=1)
    start_beat(no_key)
    producer = Producer(redis_url)
    job_id = producer.enqueue("store_late", event("clk-late"))
    producer.close()
    store = DeadLetterStore(redis_client)
    entry = wait_until(lambda: store.get(f"{job_id}-r0"), SETTLE_SECONDS, what="dead letter")
    assert entry.reason == "no_api_key"
    # The schedule keeps running meanwhile, and leaves the entry alone: no key yet.
    wait_until(
        lambda: worker.log().count("waiting_for_key=1") >= 2, SETTLE_SECONDS, what="redrive runs"
    )
    assert [e.id for e in store.find_entries()] == [entry.id]
    assert sandbox.events(click_id="clk-late") == []

    # The operator adds the key and restarts the workers (keys come from configuration).
    worker.stop()
    with_key = dict(
        no_key,
        SCALEV_STOREFRONT_API_KEYS=json.dumps({STORE: "unused", "store_late": "pk_late_0001"}),
    )
    start_worker(with_key, concurrency=1)

    wait_until(
        lambda: sandbox.events(click_id="clk-late"), SETTLE_SECONDS, what="delivery by redrive"
    )
    wait_until(lambda: len(store) == 0, SETTLE_SECONDS, what="an empty dead-letter queue")
    assert sandbox.attempts("clk-late") == 1
