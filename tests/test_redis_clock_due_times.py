"""Due times, job ages and dead-letter times on the Redis clock, against a real Redis.

A host whose clock is off is played in this process by a ``RedisClock`` reading a shifted
local clock, or by shifting ``time.time`` itself (nothing of ours may read it for a due
time). The real-process version of this is tests/test_clock_skew_e2e.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from producers.models import JOB_SCHEMA_VERSION
from tests.conftest import STORE, STORE_KEY, Sandbox
from tests.queue_helpers import event
from worker.clock import RedisClock
from worker.clock_skew import ClockSkewWatch
from worker.delayed.store import DelayedJobs
from worker.delivery.dispatcher import Dispatcher
from worker.delivery.scalev import ScalevClient
from worker.errors import DeadLettered
from worker.keys import DELIVERY_QUEUE, SCHEDULED
from worker.metrics.collectors import ClockSkewCollector
from worker.settings import Settings

AHEAD = 300.0


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def job(click_id: str, **changes: Any) -> dict[str, Any]:
    kwargs = {
        "job_id": f"job-{click_id}",
        "store_id": STORE,
        "payload": event(click_id),
        "enqueued_at": time.time(),
        "schema": JOB_SCHEMA_VERSION,
    }
    return {**kwargs, **changes}


@pytest.fixture
def host_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's wall clock 300 s ahead, as on a host without NTP."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + AHEAD)
    yield


# -- the delayed set ---------------------------------------------------------------------------


def test_a_parked_job_is_due_its_delay_after_redis_time(
    redis_client: redis.Redis, host_ahead: None
) -> None:
    before = redis_now(redis_client)
    due_at = DelayedJobs(redis_client).schedule(job("later"), delay_seconds=5.0)
    after = redis_now(redis_client)
    assert before + 5.0 <= due_at <= after + 5.0
    assert redis_client.zscore(SCHEDULED, "job-later") == pytest.approx(due_at, abs=1e-6)


def test_a_negative_delay_is_due_now_and_an_infinite_one_is_refused(
    redis_client: redis.Redis,
) -> None:
    jobs = DelayedJobs(redis_client)
    before = redis_now(redis_client)
    assert before <= jobs.schedule(job("now"), delay_seconds=-3.0) <= redis_now(redis_client)
    with pytest.raises(ValueError):
        jobs.schedule(job("never"), delay_seconds=float("inf"))
    assert redis_client.zscore(SCHEDULED, "job-never") is None


def test_due_jobs_move_on_redis_time_not_on_the_local_clock(
    redis_client: redis.Redis, host_ahead: None
) -> None:
    jobs = DelayedJobs(redis_client)
    jobs.schedule(job("soon"), delay_seconds=0.5)
    # The local clock says the job has been due for five minutes; Redis says it is not.
    assert jobs.move_due() == 0
    assert redis_client.llen(DELIVERY_QUEUE) == 0
    time.sleep(0.6)
    assert jobs.move_due() == 1
    assert redis_client.llen(DELIVERY_QUEUE) == 1
    assert redis_client.zcard(SCHEDULED) == 0


def test_move_due_still_takes_a_driven_clock(redis_client: redis.Redis) -> None:
    jobs = DelayedJobs(redis_client)
    due_at = jobs.schedule(job("driven"), delay_seconds=60.0)
    assert jobs.move_due(now=due_at - 0.001) == 0
    assert jobs.move_due(now=due_at) == 1


# -- the dispatcher on a RedisClock ----------------------------------------------------------


def dispatcher(client: redis.Redis, base_url: str, local_offset: float, **settings: Any) -> Any:
    options: dict[str, Any] = {
        "scalev_api_base_url": base_url,
        "storefront_api_keys": {STORE: STORE_KEY},
        "retry_base_seconds": 1.0,
        "retry_max_seconds": 4.0,
        **settings,
    }
    scalev = ScalevClient(base_url, connect_timeout_seconds=1, read_timeout_seconds=5)
    clock = RedisClock(client, local=lambda: time.time() + local_offset)
    return Dispatcher(Settings(**options), client, scalev, clock=clock.now)


def test_a_job_is_aged_and_dead_lettered_on_the_redis_clock(redis_client: redis.Redis) -> None:
    # A host 300 s behind would call this job 350 s old, under the 600 s max age.
    behind = dispatcher(redis_client, "http://127.0.0.1:9", -AHEAD, max_age_seconds=600)
    kwargs = job("old", enqueued_at=redis_now(redis_client) - 650)
    with pytest.raises(DeadLettered) as raised:
        behind.deliver((), kwargs)
    assert raised.value.reason == "expired"
    (entry,) = behind.dead_letters.find_entries()
    assert abs(entry.dead_lettered_at - redis_now(redis_client)) < 1.0


def test_a_retry_is_parked_a_backoff_after_redis_time(
    redis_client: redis.Redis, start_sandbox: Any
) -> None:
    sandbox: Sandbox = start_sandbox("--always-fail", "down-")
    ahead = dispatcher(redis_client, sandbox.base_url, AHEAD)
    before = redis_now(redis_client)
    outcome = ahead.deliver((), job("down-1"))
    after = redis_now(redis_client)
    assert outcome.kind == "retried" and outcome.due_at is not None
    # The first backoff: 1 s to 1.5 s after the failure, on the clock every host reads.
    assert before + 1.0 <= outcome.due_at <= after + 1.5
    assert redis_client.zscore(SCHEDULED, "job-down-1") == pytest.approx(outcome.due_at, abs=1e-6)


# -- the skew watch and its gauge --------------------------------------------------------------


class DrivenLocal:
    """A local clock that is the real one plus an offset the test sets."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_the_skew_is_local_minus_redis_and_warned_about_once_per_crossing(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    local = DrivenLocal()
    watch = ClockSkewWatch(RedisClock(redis_client, local=local))
    caplog.set_level(logging.INFO, logger="snackvideo.clock")

    def warnings() -> int:
        return sum(r.levelno == logging.WARNING for r in caplog.records)

    assert abs(watch.check() or 0.0) < 0.5 and warnings() == 0
    local.offset = 5.0
    skew = watch.check()
    assert skew is not None and 4.5 < skew < 5.5 and watch.skew_seconds == skew
    assert warnings() == 1
    watch.check()
    watch.check()
    assert warnings() == 1  # still off: not warned again
    local.offset = 0.2
    watch.check()
    assert any("back within" in r.getMessage() for r in caplog.records)
    local.offset = -3.0
    skew = watch.check()
    assert skew is not None and -3.5 < skew < -2.5
    assert warnings() == 2  # a new crossing, the other way
    assert "-3.0" in caplog.records[-1].getMessage()


def test_an_unreachable_redis_keeps_the_last_skew(redis_client: redis.Redis) -> None:
    local = DrivenLocal()
    local.offset = 2.0
    watch = ClockSkewWatch(RedisClock(redis_client, local=local))
    measured = watch.check()
    watch.clock.client = redis.Redis(port=1, retry=Retry(NoBackoff(), 0))  # refused at once
    assert watch.check() is None
    assert watch.skew_seconds == measured


def test_the_gauge_shows_the_last_measured_skew() -> None:
    (family,) = ClockSkewCollector(lambda: 300.25).collect()
    assert family.name == "snackvideo_clock_skew_seconds"
    assert [sample.value for sample in family.samples] == [300.25]
    (unmeasured,) = ClockSkewCollector(lambda: None).collect()
    assert unmeasured.samples == []
