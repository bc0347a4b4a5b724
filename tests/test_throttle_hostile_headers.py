"""Rate-limit headers that lie cannot stop delivery for longer than they announce.

The Lua tests drive the clock by hand (``now=``) so every wait is exact: for each hostile
answer, the time until the throttle lets a request through again is at most what that
answer announced (its reset, its Retry-After) plus one window. The end-to-end test runs a
real worker against the sandbox announcing ``X-Ratelimit-Limit: 0`` for its first answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from producers import Producer
from tests.conftest import STORE, Sandbox, wait_until, worker_env
from tests.queue_helpers import event
from worker.keys import throttle_key
from worker.throttle.budget import FALLBACK_WINDOW_SECONDS, Throttle

SCOPE = "https://api.example.test"
T0 = 1_750_000_000.0
#: The window of every truthful answer below: 10 requests per second.
WINDOW = 1.0
#: What acquire adds to a wait so that processes told the same wait do not wake at once.
JITTER = 0.003


def headers(**values: Any) -> dict[str, str]:
    names = {"limit": "x-ratelimit-limit", "remaining": "x-ratelimit-remaining",
             "reset": "x-ratelimit-reset", "retry_after": "retry-after"}  # fmt: skip
    return {names[key]: str(value) for key, value in values.items() if value is not None}


@pytest.fixture
def throttle(redis_client: redis.Redis) -> Iterator[Throttle]:
    yield Throttle(redis_client, default_rate_per_second=10.0)


def next_slot(throttle: Throttle, start: float, horizon: float = 10.0) -> float:
    """The first time from ``start`` at which ``acquire`` takes a slot (the slot is taken)."""
    now = start
    while now < start + horizon:
        wait = throttle.acquire(SCOPE, now=now)
        if wait == 0.0:
            return now
        now += wait
    pytest.fail(f"no slot within {horizon} s of {start}")


def answer(throttle: Throttle, at: float, status: int = 204, **values: Any) -> None:
    """Take a slot at ``at`` (it must be free) and record this answer to it."""
    assert throttle.acquire(SCOPE, now=at) == 0.0
    throttle.record(SCOPE, status, headers(**values), now=at + 0.01)


# -- X-Ratelimit-Limit: 0 ---------------------------------------------------------------------


def test_a_limit_of_zero_is_probed_once_after_each_reset(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    answer(throttle, T0, limit=10, remaining=9, reset=1)
    answer(throttle, T0 + 0.2, limit=0, remaining=0, reset=2)  # the lie
    # Nothing until the announced reset (T0 + 2.21)...
    probe = next_slot(throttle, T0 + 0.3)
    assert T0 + 2.21 <= probe <= T0 + 2.22
    # ...then one request, no more: it is the probe that learns the limit again.
    assert throttle.acquire(SCOPE, now=probe + 0.001) > 0
    throttle.record(SCOPE, 204, headers(limit=0, remaining=0, reset=1), now=probe + 0.01)
    second = next_slot(throttle, probe + 0.02)
    assert second <= probe + 0.01 + 1 + JITTER  # the probe answer's own reset
    # The truth again: the budget is back at once, paced over its window.
    throttle.record(SCOPE, 204, headers(limit=10, remaining=9, reset=1), now=second + 0.01)
    assert redis_client.hget(throttle_key(SCOPE), "remaining") == b"9"
    taken = sum(
        throttle.acquire(SCOPE, now=second + 0.02 + step * 0.12) == 0.0 for step in range(8)
    )
    assert taken == 8


def test_a_state_frozen_by_an_older_version_thaws_at_its_reset(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    # What the scripts used to leave behind: limit 0, refilled to 0 at every reset, and a
    # spread paced over a day-long guess of the window.
    redis_client.hset(
        throttle_key(SCOPE),
        mapping={"limit": 0, "remaining": 0, "reset_at": f"{T0 + 1:.6f}", "window_s": "1",
                 "next_slot_at": f"{T0 + 86_400:.6f}"},
    )  # fmt: skip
    assert T0 + 1 <= next_slot(throttle, T0) <= T0 + 1 + JITTER


# -- no answer stops delivery for longer than it announced, plus one window -------------------

HOSTILE: list[tuple[str, dict[str, Any], int, float]] = [
    # (name, headers, status, what the answer announced: seconds to wait)
    ("limit 0", {"limit": 0}, 204, 0.0),
    ("limit 0, remaining 0, reset 1", {"limit": 0, "remaining": 0, "reset": 1}, 204, 1.0),
    ("limit 0 for an hour", {"limit": 0, "remaining": 0, "reset": 3600}, 204, 3600.0),
    ("limit 0, no reset", {"limit": 0, "remaining": 0}, 204, 0.0),
    ("remaining 0, garbage reset", {"remaining": 0, "reset": "soon"}, 204, 0.0),
    ("reset beyond a day", {"limit": 10, "remaining": 0, "reset": 10**7}, 204, 0.0),
    ("reset of zero", {"limit": 10, "remaining": 0, "reset": 0}, 204, 0.0),
    ("limit of 10**30", {"limit": 10**30, "remaining": 10**30}, 204, 0.0),
    ("negative limit", {"limit": -1, "remaining": -1, "reset": -5}, 204, 0.0),
    ("429 with retry-after 10**9", {"retry_after": 10**9}, 429, 0.0),
    ("429 with reset 0", {"limit": 0, "remaining": 0, "reset": 0}, 429, 0.0),
    ("429 for a day", {"remaining": 0, "reset": 86_400, "retry_after": 86_400}, 429, 86_400.0),
    # 9 requests spread over a day: one every 2.7 hours is the server's word.
    ("a fresh window of a day", {"limit": 10, "remaining": 9, "reset": 86_400}, 204, 86_400.0),
]


@pytest.mark.parametrize(
    ("hostile", "status", "announced"),
    [pytest.param(h, s, a, id=name) for name, h, s, a in HOSTILE],
)
def test_no_answer_stops_delivery_longer_than_it_announced_plus_one_window(
    throttle: Throttle, hostile: dict[str, Any], status: int, announced: float
) -> None:
    answer(throttle, T0, limit=10, remaining=9, reset=1)  # a known, healthy state first
    at = T0 + 0.1
    answer(throttle, at, status, **hostile)
    received = at + 0.01
    # Every window length the throttle can hold is at most the longest reset it believes.
    bound = announced + max(WINDOW, FALLBACK_WINDOW_SECONDS) + 0.01
    slot = next_slot(throttle, received, horizon=2 * bound)
    assert slot - received <= bound, (slot - received, bound)
    # The next truthful answer puts it back on the server's budget, whatever came before.
    throttle.record(SCOPE, 204, headers(limit=10, remaining=9, reset=1), now=slot + 0.01)
    resumed = next_slot(throttle, slot + 0.02)
    assert resumed - (slot + 0.02) <= WINDOW / 9 + 0.01


def test_a_pace_set_on_a_day_long_window_does_not_outlive_that_window(
    throttle: Throttle,
) -> None:
    # One answer says the window lasts a day (9 requests left over it): that pace stands
    # only until the server's next answer ends the window sooner.
    answer(throttle, T0, limit=10, remaining=9, reset=86_400)
    assert throttle.acquire(SCOPE, now=T0 + 1) == 0.0
    assert throttle.acquire(SCOPE, now=T0 + 2) > 3600  # paced over the day: its word
    throttle.record(SCOPE, 204, headers(limit=10, remaining=8, reset=1), now=T0 + 2.01)
    # The tracked window now ends a second after that answer: so does the pace set on it.
    after = next_slot(throttle, T0 + 2.02)
    assert after <= T0 + 3.01 + 0.001
    # The refill's provisional window is a day long (the longest fresh window seen), so
    # its pace is slow for that one window; the opening answer teaches the real length.
    throttle.record(SCOPE, 204, headers(limit=10, remaining=9, reset=1), now=after + 0.01)
    again = next_slot(throttle, after + 0.02)
    assert again <= after + 1.01 + 0.001
    throttle.record(SCOPE, 204, headers(limit=10, remaining=9, reset=1), now=again + 0.01)
    assert next_slot(throttle, again + 0.02) - (again + 0.02) <= 0.12  # 9 over a second


# -- end to end: a real worker against a sandbox that announces Limit: 0 ----------------------

#: The sandbox's 20/1 limit with "seconds" resets: every lying answer says Reset: 1.
ANNOUNCED_RESET = 1.0
#: Scheduling noise of a 2-core machine shared with other test runs.
LOAD_MARGIN = 2.0


@pytest.mark.integration
def test_a_worker_resumes_after_a_limit_of_zero_and_delivers_everything(
    redis_url: str,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    lies, total = 3, 60
    sandbox = start_sandbox(
        "--rate-limit", "20/1", "--announce-limit", "0", "--announce-limit-answers", str(lies)
    )
    start_worker(worker_env(redis_url, sandbox.base_url), concurrency=2)
    producer = Producer(redis_url)
    producer.enqueue_many(STORE, [event(f"zero-{n}") for n in range(total)])
    producer.close()

    wait_until(
        lambda: sandbox.stats()["accepted"] >= total, timeout=120, what="every event delivered"
    )
    stats = sandbox.stats()
    assert stats["announced_limit_answers"] == lies
    assert {e["click_id"] for e in sandbox.events()} == {f"zero-{n}" for n in range(total)}
    assert stats["accepted"] == total
    times = sorted(e["received_at"] for e in sandbox.events())
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # While the sandbox lies, one probe per reset; after it, the real budget.
    resumed = times[lies] - times[lies - 1]
    with capsys.disabled():
        print(
            f"\nLIMIT0: delivered={stats['accepted']}/{total} requests={stats['requests']} "
            f"by_status={stats['by_status']} lies={lies} resumed_after_s={resumed:.3f} "
            f"max_gap_s={max(gaps):.3f} total_s={times[-1] - times[0]:.2f}"
        )
    assert max(gaps) <= ANNOUNCED_RESET + WINDOW + LOAD_MARGIN, gaps
