"""The adaptive rate (AIMD) of a scope whose answers carry no rate-limit header.

The Lua runs against a real Redis with the clock driven by hand (``now=``), so every rate
is exact; hypothesis drives the arithmetic with any sequence of answers.
"""

from __future__ import annotations

import os

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.keys import throttle_in_flight_key, throttle_key
from worker.throttle.budget import Throttle

SCOPE = "https://api.example.test"
T0 = 1_750_000_000.0
NO_HEADERS = {"content-type": "text/plain"}
PROPERTY = settings(
    max_examples=int(os.environ.get("SNACKVIDEO_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,  # a loaded machine: no per-example timing
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def rate(client: redis.Redis) -> float | None:
    value = client.hget(throttle_key(SCOPE), "adaptive_rate")
    return float(value) if value is not None else None


def answer(throttle: Throttle, now: float, status: int, headers: dict[str, str]) -> None:
    """One request: its slot taken at ``now`` (whatever the pace says) and its answer."""
    throttle._hold(SCOPE, "t", now)  # the pace is not what these tests are about
    throttle.record(SCOPE, status, headers, now=now + 0.001)


def fresh(client: redis.Redis) -> None:
    client.delete(throttle_key(SCOPE), throttle_in_flight_key(SCOPE))


def test_the_rate_starts_at_the_default_and_rises_while_answers_come_back(
    redis_client: redis.Redis,
) -> None:
    throttle = Throttle(redis_client, default_rate_per_second=10.0)
    assert throttle.acquire(SCOPE, now=T0) == 0.0
    assert 0.099 <= throttle.acquire(SCOPE, now=T0) <= 0.102  # 1 / 10 per second
    for step in range(20):
        answer(throttle, T0 + step * 0.05, 204, NO_HEADERS)
    assert rate(redis_client) == pytest.approx(30.0)  # +1/s per answer below any 429
    wait = throttle.acquire(SCOPE, now=T0 + 2.0)
    assert wait == 0.0
    assert 1 / 30 - 0.001 <= throttle.acquire(SCOPE, now=T0 + 2.0) <= 1 / 30 + 0.003


def test_a_429_halves_the_rate_once_per_round(redis_client: redis.Redis) -> None:
    throttle = Throttle(redis_client, default_rate_per_second=10.0)
    for step in range(30):
        answer(throttle, T0 + step * 0.025, 204, NO_HEADERS)
    assert rate(redis_client) == pytest.approx(40.0)
    answer(throttle, T0 + 0.76, 429, {"retry-after": "1"})
    assert rate(redis_client) == pytest.approx(20.0)
    # Sent before the cut, at the old rate: its 429 says nothing new.
    throttle._hold(SCOPE, "late", T0 + 0.755)
    throttle.record(SCOPE, 429, {"retry-after": "1"}, now=T0 + 0.77)
    assert rate(redis_client) == pytest.approx(20.0)
    # Fast back to 0.85 x the rate of the cut (34/s), then additive: +2/s per second.
    for step in range(40):
        answer(throttle, T0 + 3.0 + step / 34, 204, NO_HEADERS)
    assert 34.0 < rate(redis_client) <= 34.0 + 2.0 * 40 / 34 + 1e-6  # type: ignore[operator]


def test_the_cut_starts_from_the_rate_answers_came_back_at(redis_client: redis.Redis) -> None:
    """A pace the workers never reached is no evidence: cut from what was measured."""
    throttle = Throttle(redis_client, default_rate_per_second=10.0)
    for step in range(30):
        answer(throttle, T0 + step * 0.034, 204, NO_HEADERS)  # 30 answers in about 1 s
    answer(throttle, T0 + 1.02, 204, NO_HEADERS)  # closes the first second: ~30/s
    assert rate(redis_client) == pytest.approx(41.0)
    answer(throttle, T0 + 1.1, 429, {"retry-after": "1"})
    assert rate(redis_client) == pytest.approx(30 / 1.02 / 2, rel=1e-3)


def test_a_retry_after_on_another_status_also_cuts(redis_client: redis.Redis) -> None:
    throttle = Throttle(redis_client, default_rate_per_second=10.0)
    answer(throttle, T0, 503, {"retry-after": "2"})
    assert rate(redis_client) == pytest.approx(5.0)


def test_headers_rule_the_adaptive_rate_stays_out(redis_client: redis.Redis) -> None:
    throttle = Throttle(redis_client, default_rate_per_second=10.0)
    budget = {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "99",
              "x-ratelimit-reset": "10"}  # fmt: skip
    answer(throttle, T0, 204, budget)
    for step in range(5):
        answer(throttle, T0 + 0.01 * step, 204, NO_HEADERS)
    assert rate(redis_client) is None
    # The announced budget paces: 99 units over 10 s, not the default 10/s.
    assert throttle.acquire(SCOPE, now=T0 + 0.1) == 0.0


@PROPERTY
@given(
    answers=st.lists(
        st.tuples(
            st.sampled_from([204, 400, 429, 500, 503]),
            st.booleans(),  # a Retry-After
            st.floats(0.002, 0.5),  # time to the next request, after the answer
        ),
        max_size=60,
    ),
    default=st.floats(0.5, 200),
    factor=st.floats(0.05, 0.95),
    step=st.floats(0.01, 50),
    ceiling=st.floats(1, 2000),
)
def test_the_rate_stays_between_its_floor_and_ceiling(
    redis_client: redis.Redis,
    answers: list[tuple[int, bool, float]],
    default: float,
    factor: float,
    step: float,
    ceiling: float,
) -> None:
    fresh(redis_client)
    throttle = Throttle(
        redis_client,
        default_rate_per_second=default,
        adaptive_max_rate=ceiling,
        adaptive_step=step,
        adaptive_factor=factor,
    )
    top = max(ceiling, default)
    floor = min(default, 1.0)
    now = T0
    for status, retry_after, gap in answers:
        before = rate(redis_client) or default
        headers = {"retry-after": "1"} if retry_after else NO_HEADERS
        answer(throttle, now, status, headers)
        after = rate(redis_client)
        assert after is not None
        assert floor - 1e-6 <= after <= top + 1e-6
        cuts = status == 429 or retry_after
        if cuts:
            # Every request here was sent after the previous answer: each cut is a new round.
            assert after <= max(before * factor, floor) + 1e-6
        elif status < 500:
            assert after >= min(before, top) - 1e-6 or after <= 4 * before
        else:
            assert after == pytest.approx(before)  # a 5xx without Retry-After: no news
        now += gap
