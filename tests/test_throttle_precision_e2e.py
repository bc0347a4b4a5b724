"""The throttle's adaptive rate and its phase learning end to end: real celery workers, a
real Redis, the sandbox without rate-limit headers or with clock-aligned windows.

Correctness properties only (everything delivered once, no 429 storm, the rate rose
above the default): timing on a shared machine is noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from producers import Producer
from tests.conftest import STORE, wait_until, worker_env
from worker.deadletter.store import DeadLetterStore
from worker.keys import throttle_key

pytestmark = pytest.mark.integration
DEFAULT_RATE = 10


def enqueue(redis_url: str, prefix: str, total: int) -> set[str]:
    producer = Producer(redis_url)
    click_ids = [f"{prefix}-{n}" for n in range(total)]
    producer.enqueue_many(
        STORE, [{"click_id": c, "events": [{"event_name": "purchase"}]} for c in click_ids]
    )
    producer.close()
    return set(click_ids)


def delivered_once(sandbox: Any, click_ids: set[str]) -> None:
    wait_until(
        lambda: sandbox.stats()["accepted"] >= len(click_ids),
        timeout=180,
        what="every event delivered",
    )
    accepted = [event["click_id"] for event in sandbox.events()]
    assert sorted(accepted) == sorted(click_ids)


def adaptive_rate(client: redis.Redis, base_url: str) -> float:
    value = client.hget(throttle_key(base_url), "adaptive_rate")
    return float(value) if value is not None else 0.0


def test_without_headers_the_rate_rises_above_the_default(
    redis_url: str, start_sandbox: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    sandbox = start_sandbox()  # no limit: no X-Ratelimit-* header at all
    env = worker_env(redis_url, sandbox.base_url, SNACKVIDEO_DEFAULT_RATE=str(DEFAULT_RATE))
    start_worker(env, concurrency=4)
    click_ids = enqueue(redis_url, "open", 300)
    delivered_once(sandbox, click_ids)
    stats = sandbox.stats()
    assert stats["by_status"].get("429", 0) == 0
    client = redis.Redis.from_url(redis_url)
    # The shipped default would have held every 1 s window to about 10 requests.
    assert stats["max_in_window"] > DEFAULT_RATE + 1, stats["windows"]
    assert adaptive_rate(client, sandbox.base_url) > DEFAULT_RATE
    client.close()


def test_a_hidden_limit_backs_the_rate_off_without_a_429_storm(
    redis_url: str, start_sandbox: Callable[..., Any], start_worker: Callable[..., Any]
) -> None:
    sandbox = start_sandbox("--rate-limit", "20/1", "--no-rate-limit-headers")
    env = worker_env(redis_url, sandbox.base_url, SNACKVIDEO_DEFAULT_RATE=str(DEFAULT_RATE))
    workers = [start_worker(env, concurrency=2) for _ in range(2)]
    click_ids = enqueue(redis_url, "hidden", 300)
    delivered_once(sandbox, click_ids)
    stats = sandbox.stats()
    rejected = stats["by_status"].get("429", 0)
    client = redis.Redis.from_url(redis_url)
    assert len(DeadLetterStore(client)) == 0
    # The rate climbed past the hidden limit and was cut back: a few 429s, not a storm
    # (four processes bursting into a 20/1 window would see most of their requests refused).
    assert rejected / stats["requests"] < 0.1, stats["by_status"]
    # A 429 sets the ceiling the rate is then held under; a machine too slow to climb past
    # the hidden limit sees no 429 and keeps none.
    ceiling = client.hget(throttle_key(sandbox.base_url), "adaptive_ceiling")
    assert (ceiling is not None) == (rejected > 0), (ceiling, stats["by_status"])
    assert any("outcome=rate_limited" in worker.log() for worker in workers) == (rejected > 0)
    client.close()


@pytest.mark.parametrize("reset_style", ["seconds", "epoch-ms"])
def test_clock_aligned_windows_with_delta_second_resets(
    redis_url: str,
    start_sandbox: Callable[..., Any],
    start_worker: Callable[..., Any],
    reset_style: str,
) -> None:
    """Windows on the server's clock, announced as `Reset: 1` all through: the phase is the
    server's, learned from where Remaining jumps back up."""
    sandbox = start_sandbox(
        "--rate-limit", "10/1", "--window-alignment", "clock", "--reset-style", reset_style
    )
    env = worker_env(redis_url, sandbox.base_url)
    for _ in range(2):
        start_worker(env, concurrency=2)
    click_ids = enqueue(redis_url, f"clock-{reset_style}", 60)
    delivered_once(sandbox, click_ids)
    stats = sandbox.stats()
    assert stats["by_status"].get("429", 0) == 0, stats["windows"]
    assert all(window["count"] <= 10 for window in stats["windows"])
