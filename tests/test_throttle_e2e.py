"""The throttle end to end: real celery workers, a real Redis, the rate-limited sandbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests

from harness.events import event
from producers import Producer
from tests.conftest import STORE, STORE_KEY, wait_until, worker_env
from worker.deadletter.store import DeadLetterStore
from worker.keys import DELIVERY_QUEUE, SCHEDULED, UNACKED, delivered_key

pytestmark = pytest.mark.integration


def spend_the_window(base_url: str) -> None:
    """Another client of the same budget: one request that leaves nothing for us."""
    response = requests.post(
        f"{base_url}/v3/stores/{STORE}/public/analytics/snackvideo/events",
        json=event("someone-else"),
        headers={"X-Scalev-Storefront-Api-Key": STORE_KEY},
        timeout=5,
    )
    assert response.status_code == 204
    assert response.headers["X-Ratelimit-Remaining"] == "0"


def test_two_workers_share_one_budget(
    redis_url: str, start_sandbox: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    sandbox = start_sandbox("--rate-limit", "20/1")
    env = worker_env(redis_url, sandbox.base_url)
    workers = [start_worker(env, concurrency=2) for _ in range(2)]
    total = 60
    producer = Producer(redis_url)
    producer.enqueue_many(STORE, [event(f"e2e-{n}") for n in range(total)])
    producer.close()
    wait_until(
        lambda: sandbox.stats()["accepted"] >= total, timeout=120, what="every event delivered"
    )
    stats = sandbox.stats()
    rejected = stats["by_status"].get("429", 0)
    assert stats["accepted"] == total
    assert {event["click_id"] for event in sandbox.events()} == {f"e2e-{n}" for n in range(total)}
    # Four processes on two nodes, one budget: 429s are rare (typically none at all).
    assert rejected / stats["requests"] < 0.05, stats["by_status"]
    assert stats["max_in_window"] <= 20 or rejected > 0
    assert all("outcome=delivered" in worker.log() for worker in workers)


def test_a_429_does_not_spend_an_attempt(
    redis_url: str, start_sandbox: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    sandbox = start_sandbox("--rate-limit", "1/3")
    spend_the_window(sandbox.base_url)
    # One attempt only: were the 429 counted as one, the job would be dead-lettered.
    env = worker_env(redis_url, sandbox.base_url, SNACKVIDEO_MAX_ATTEMPTS="1")
    worker = start_worker(env, concurrency=1)
    producer = Producer(redis_url)
    job_id = producer.enqueue(STORE, event("limited-once"))
    producer.close()
    client = redis.Redis.from_url(redis_url)
    wait_until(lambda: client.exists(delivered_key(job_id)), timeout=60, what="delivery")
    assert sandbox.stats()["by_status"].get("429", 0) >= 1
    assert len(DeadLetterStore(client)) == 0
    assert "outcome=rate_limited" in worker.log()
    client.close()


def test_a_long_wait_parks_the_job_in_redis_not_in_a_worker(
    redis_url: str, start_sandbox: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    sandbox = start_sandbox("--rate-limit", "1/30")
    worker = start_worker(worker_env(redis_url, sandbox.base_url), concurrency=1)
    client = redis.Redis.from_url(redis_url)
    producer = Producer(redis_url)
    first = producer.enqueue(STORE, event("long-1"))
    wait_until(lambda: client.exists(delivered_key(first)), timeout=60, what="first job")
    second = producer.enqueue(STORE, event("long-2"))
    producer.close()
    # The budget is spent for ~30 s: far beyond a short sleep, so the job goes back to
    # Redis (the delayed set) and the worker acknowledges its message.
    wait_until(lambda: client.zscore(SCHEDULED, second), timeout=60, what="the parked job")
    due_at = client.zscore(SCHEDULED, second)
    assert due_at is not None and due_at - client.time()[0] > 10
    wait_until(lambda: client.hlen(UNACKED) == 0, timeout=30, what="the message acked")
    assert client.llen(DELIVERY_QUEUE) == 0
    assert sandbox.stats()["requests"] == 1  # the second was never sent into a spent window
    assert "outcome=throttled" in worker.log()
    client.close()
