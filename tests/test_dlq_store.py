"""The dead-letter store against a real Redis: entries, counts, retention, atomic take.

Plus, with a real worker, the "never in both places" rule of dead-lettering: a message
redelivered after its entry was written is acknowledged without a second attempt.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from producers.message import build_message
from producers.models import JOB_SCHEMA_VERSION
from tests.conftest import Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event, queued
from worker.deadletter.store import SCAN_CHUNK, DeadLetter, DeadLetterStore, Trimmed
from worker.keys import DELIVERY_QUEUE, DLQ_REASONS, DLQ_STORES, DLQ_TRIMMED, entry_id


def letter(
    n: int,
    *,
    reason: str = "http_404",
    store_id: str = "store_a",
    at: float | None = None,
    replay_count: int = 0,
) -> DeadLetter:
    dead_lettered_at = at if at is not None else 1_000.0 + n
    return DeadLetter(
        job_id=f"job-{n:05d}",
        store_id=store_id,
        payload=event(f"clk-{n}"),
        reason=reason,
        status_code=int(reason[5:]) if reason.startswith("http_") else None,
        error='{"error":"not_found"}' if reason.startswith("http_") else "",
        attempts=1,
        enqueued_at=dead_lettered_at - 5,
        dead_lettered_at=dead_lettered_at,
        replay_count=replay_count,
    )


# -- the entry itself (pure) ---------------------------------------------------------


def test_entry_id_names_job_and_replay() -> None:
    assert entry_id("abc", 0) == "abc-r0"
    assert letter(1, replay_count=2).id == "job-00001-r2"


def test_entry_round_trips_with_every_field_of_the_design() -> None:
    entry = letter(7)
    again = DeadLetter.from_json(entry.to_json())
    assert again == entry
    assert list(entry.to_dict()) == [
        "id", "job_id", "store_id", "payload", "reason", "status_code", "error",
        "attempts", "enqueued_at", "dead_lettered_at", "replay_count",
    ]  # fmt: skip
    assert entry.click_id == "clk-7"


def test_replay_kwargs_keep_enqueued_at_reset_attempts_and_count_the_replay() -> None:
    kwargs = letter(3, replay_count=1).replay_kwargs()
    assert kwargs["enqueued_at"] == 1_003.0 - 5
    assert kwargs["attempts"] == 0
    assert kwargs["replay_count"] == 2
    assert kwargs["schema"] == JOB_SCHEMA_VERSION


# -- adding, reading, counting ----------------------------------------------------------


def test_add_is_idempotent_and_keeps_counts_by_reason_and_store(
    redis_client: redis.Redis,
) -> None:
    store = DeadLetterStore(redis_client)
    assert store.add(letter(1), now=2_000) == (True, [])
    assert store.add(letter(1), now=2_000) == (False, [])  # a redelivered message
    store.add(letter(2, reason="no_api_key", store_id="store_b"), now=2_000)
    store.add(letter(3, reason="no_api_key", store_id="store_b"), now=2_000)

    assert len(store) == 3
    assert store.counts_by_reason() == {"http_404": 1, "no_api_key": 2}
    assert store.counts_by_store() == {"store_a": 1, "store_b": 2}
    assert store.get("job-00001-r0") == letter(1)
    assert store.get("nope-r0") is None
    assert store.oldest() == letter(1)


def test_list_filters_by_reason_store_time_and_limit(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    for n in range(10):
        store.add(
            letter(n, reason="http_404" if n % 2 else "http_400", store_id=f"s{n % 3}"), now=2_000
        )
    ids = [e.job_id for e in store.find_entries()]
    assert ids == [f"job-{n:05d}" for n in reversed(range(10))]  # newest first
    oldest_two = store.find_entries(newest_first=False, limit=2)
    assert [e.job_id for e in oldest_two] == ["job-00000", "job-00001"]
    evens = {f"job-{n:05d}" for n in (0, 2, 4, 6, 8)}
    assert {e.job_id for e in store.find_entries(reason="http_400")} == evens
    in_s1 = {"job-00001", "job-00004", "job-00007"}
    assert {e.job_id for e in store.find_entries(store_id="s1")} == in_s1
    assert {e.job_id for e in store.find_entries(reason="http_404", store_id="s1")} == {
        "job-00001",
        "job-00007",
    }
    assert {e.job_id for e in store.find_entries(since=1_008)} == {"job-00008", "job-00009"}
    assert {e.job_id for e in store.find_entries(older_than=1_002)} == {"job-00000", "job-00001"}


@pytest.mark.parametrize("newest_first", [True, False])
def test_iteration_over_many_chunks_with_ties_sees_each_entry_once(
    redis_client: redis.Redis, newest_first: bool
) -> None:
    store = DeadLetterStore(redis_client)
    # Three chunks' worth, and a tie on one score that spans a chunk boundary.
    total = 3 * SCAN_CHUNK + 7
    for n in range(total):
        at = 5_000.0 if SCAN_CHUNK - 20 <= n < SCAN_CHUNK + 40 else 1_000.0 + n
        store.add(letter(n, at=at), now=at)
    seen = [entry.id for entry in store.iter_entries(newest_first=newest_first)]
    assert len(seen) == total
    assert len(set(seen)) == total
    scores = [store.get(i).dead_lettered_at for i in seen]  # type: ignore[union-attr]
    assert scores == sorted(scores, reverse=newest_first)


# -- retention --------------------------------------------------------------------------


def test_past_the_entry_cap_the_oldest_go_first_logged_and_counted(
    redis_client: redis.Redis,
) -> None:
    store = DeadLetterStore(redis_client, max_entries=3)
    trimmed: list[Trimmed] = []
    for n in range(3):
        trimmed += store.add(letter(n), now=2_000)[1]
    assert trimmed == []
    # Added out of time order: retention goes by dead_lettered_at, not by insertion.
    trimmed += store.add(letter(3, at=999.0), now=2_000)[1]
    assert trimmed == [Trimmed("job-00003-r0", "http_404")]
    trimmed += store.add(letter(4, reason="no_api_key", store_id="store_b"), now=2_000)[1]
    trimmed += store.add(letter(5, reason="no_api_key", store_id="store_b"), now=2_000)[1]

    assert [t.entry_id for t in trimmed] == ["job-00003-r0", "job-00000-r0", "job-00001-r0"]
    assert {e.job_id for e in store.find_entries()} == {"job-00002", "job-00004", "job-00005"}
    assert store.trimmed_by_reason() == {"http_404": 3}
    assert store.counts_by_reason() == {"http_404": 1, "no_api_key": 2}
    assert store.counts_by_store() == {"store_a": 1, "store_b": 2}


def test_entries_past_the_age_limit_are_trimmed_on_add_and_by_trim(
    redis_client: redis.Redis,
) -> None:
    store = DeadLetterStore(redis_client, max_age_seconds=100)
    store.add(letter(1, at=1_000.0), now=1_000)
    store.add(letter(2, at=1_050.0), now=1_050)
    # The next add, 101 s after the first entry, trims it.
    _, trimmed = store.add(letter(3, at=1_101.0), now=1_101)
    assert trimmed == [Trimmed("job-00001-r0", "http_404")]
    # Without any add, trim() applies the same rule (redrive calls it every run).
    assert store.trim(now=1_151) == [Trimmed("job-00002-r0", "http_404")]
    assert store.trim(now=1_151) == []
    assert [e.id for e in store.find_entries()] == ["job-00003-r0"]
    assert store.trimmed_by_reason() == {"http_404": 2}


def test_counts_drop_to_nothing_rather_than_zero_fields(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    store.add(letter(1), now=2_000)
    store.purge(["job-00001-r0"])
    assert redis_client.hgetall(DLQ_REASONS) == {}
    assert redis_client.hgetall(DLQ_STORES) == {}
    assert redis_client.hgetall(DLQ_TRIMMED) == {}


# -- replay and purge ------------------------------------------------------------------


def test_replay_moves_the_job_to_the_queue_and_removes_the_entry(
    redis_client: redis.Redis,
) -> None:
    store = DeadLetterStore(redis_client)
    entry = letter(1, replay_count=1)
    store.add(entry, now=2_000)
    assert store.replay([entry]) == [entry.id]
    assert store.get(entry.id) is None
    assert store.counts_by_reason() == {}
    [message] = queued(redis_client)
    assert message.headers["task"] == "snackvideo.deliver"
    assert message.headers["id"] == entry.job_id
    assert message.envelope["properties"]["delivery_info"] == {
        "exchange": "",
        "routing_key": DELIVERY_QUEUE,
    }
    assert message.kwargs == {
        "job_id": entry.job_id,
        "store_id": "store_a",
        "payload": entry.payload,
        "enqueued_at": entry.enqueued_at,
        "schema": JOB_SCHEMA_VERSION,
        "attempts": 0,
        "replay_count": 2,
    }
    # Already taken: a second replay pushes nothing, and the entry is gone.
    assert store.replay([entry]) == []
    assert store.get(entry.id) is None
    assert len(queued(redis_client)) == 1


def test_concurrent_replays_push_each_entry_once(redis_url: str) -> None:
    setup = redis.Redis.from_url(redis_url)
    store = DeadLetterStore(setup)
    entries = [letter(n) for n in range(300)]
    for entry in entries:
        store.add(entry, now=2_000)
    barrier = threading.Barrier(4)
    results: list[list[str]] = []

    def replay_all() -> None:
        client = redis.Redis.from_url(redis_url)
        mine = DeadLetterStore(client)
        barrier.wait()
        # Each thread walks the entries in its own order to interleave the takes.
        results.append(mine.replay(entries[:: 1 if len(results) % 2 else -1]))
        client.close()

    threads = [threading.Thread(target=replay_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    taken = Counter(entry_id_ for result in results for entry_id_ in result)
    assert len(results) == 4
    assert set(taken.values()) == {1} and len(taken) == 300
    pushed = Counter(m.kwargs["job_id"] for m in queued(setup))
    assert set(pushed.values()) == {1} and len(pushed) == 300
    assert len(store) == 0
    setup.close()


def test_purge_deletes_only_what_is_there(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    for n in range(3):
        store.add(letter(n), now=2_000)
    assert store.purge(["job-00000-r0", "job-00002-r0", "missing-r0"]) == [
        "job-00000-r0",
        "job-00002-r0",
    ]
    assert [e.id for e in store.find_entries()] == ["job-00001-r0"]
    assert redis_client.llen(DELIVERY_QUEUE) == 0  # purge never pushes


# -- dead-lettering and the ack, with a real worker ----------------------------------------


@pytest.mark.integration
def test_a_redelivered_message_finds_its_entry_and_is_not_processed_again(
    redis_client: redis.Redis,
    redis_url: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    """The crash window: entry written, message not yet acknowledged, message comes back."""
    store = DeadLetterStore(redis_client)
    entry = DeadLetter(
        job_id="job-crash",
        store_id="store_unknown_to_sandbox",
        payload=event("clk-crash"),
        reason="http_404",
        status_code=404,
        error="{}",
        attempts=1,
        enqueued_at=time.time(),
    )
    store.add(entry)
    kwargs = {
        "job_id": entry.job_id,
        "store_id": entry.store_id,
        "payload": entry.payload,
        "enqueued_at": entry.enqueued_at,
        "schema": JOB_SCHEMA_VERSION,
    }
    redis_client.lpush(DELIVERY_QUEUE, build_message(kwargs, task_id=entry.job_id))
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS='{"store_unknown_to_sandbox": "pk_x"}',
    )
    worker = start_worker(env, concurrency=1)
    wait_until(
        lambda: "outcome=duplicate job_id=job-crash" in worker.log(), 60, what="duplicate outcome"
    )
    assert sandbox.stats()["requests"] == 0
    assert [e.id for e in store.find_entries()] == ["job-crash-r0"]
    assert redis_client.llen(DELIVERY_QUEUE) == 0
