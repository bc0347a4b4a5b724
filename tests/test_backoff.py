"""``worker.delivery.backoff.backoff``: a pure function, tested without sleeping."""

from __future__ import annotations

import random

import pytest

from worker.delivery.backoff import backoff


class Fixed(random.Random):
    """A random source whose ``uniform`` always lands on one end of the range."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


@pytest.mark.parametrize("seed", range(20))
def test_each_wait_is_longer_than_the_previous_until_the_cap(seed: int) -> None:
    rng = random.Random(seed)
    base, cap = 0.05, 1000.0
    waits = [backoff(attempt, base, cap, rng) for attempt in range(1, 30)]
    below_cap = [wait for wait in waits if wait < cap]
    assert len(below_cap) >= 10  # the property is checked on a long enough run
    assert all(later > earlier for earlier, later in zip(below_cap, below_cap[1:], strict=False))
    # Once the cap is reached it stays there: never shorter again.
    first_capped = waits.index(cap)
    assert waits[first_capped:] == [cap] * (len(waits) - first_capped)


def test_worst_case_jitter_still_grows() -> None:
    # The highest wait of attempt n (1.5x) is still below the lowest of attempt n+1 (2x).
    for attempt in range(1, 40):
        high = backoff(attempt, 1.0, float("inf"), Fixed("high"))
        low_next = backoff(attempt + 1, 1.0, float("inf"), Fixed("low"))
        assert low_next > high


@pytest.mark.parametrize("seed", range(10))
def test_never_above_the_cap(seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(1, 200):
        assert backoff(attempt, 2.0, 600.0, rng) <= 600.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff(10_000, 2.0, 600.0, random.Random(1)) == 600.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 7])
def test_jitter_stays_within_one_to_one_and_a_half_of_the_raw_wait(attempt: int) -> None:
    base = 0.5
    raw = base * 2 ** (attempt - 1)
    rng = random.Random(attempt)
    samples = [backoff(attempt, base, 10_000.0, rng) for _ in range(500)]
    assert all(raw <= wait <= raw * 1.5 for wait in samples)
    assert backoff(attempt, base, 10_000.0, Fixed("low")) == raw
    assert backoff(attempt, base, 10_000.0, Fixed("high")) == raw * 1.5
    # Jitter actually spreads the waits (workers retrying together do not stampede).
    assert max(samples) - min(samples) > raw * 0.25


def test_first_wait_is_the_base() -> None:
    assert backoff(1, 2.0, 600.0, Fixed("low")) == 2.0


def test_same_seed_same_waits() -> None:
    first = [backoff(n, 2.0, 600.0, random.Random(42)) for n in range(1, 12)]
    second = [backoff(n, 2.0, 600.0, random.Random(42)) for n in range(1, 12)]
    assert first == second
    other = [backoff(n, 2.0, 600.0, random.Random(43)) for n in range(1, 12)]
    assert first != other


def test_works_without_an_rng() -> None:
    assert 2.0 <= backoff(1, 2.0, 600.0) <= 3.0


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_attempt_below_one_is_refused(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff(attempt, 2.0, 600.0, random.Random(0))
