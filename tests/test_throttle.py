"""The throttle's Lua accounting against a real Redis.

Most tests drive the clock by hand (``now=``) so that every wait is exact. The concurrency
tests use real threads and real processes: in one the clock is still driven, so the
count of slots is exact; in the other the scripts read Redis TIME and the budget is spent
on the sandbox over HTTP, whose own count is the judge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.conftest import PYTHON, ROOT, STORE, STORE_KEY
from worker.keys import throttle_in_flight_key, throttle_key
from worker.throttle.budget import Throttle
from worker.throttle.state import read_states, throttle_status

SCOPE = "https://api.example.test"
T0 = 1_750_000_000.0


def headers(limit: int | None, remaining: int | None, reset: float | None) -> dict[str, str]:
    found = {"x-ratelimit-limit": limit, "x-ratelimit-remaining": remaining,
             "x-ratelimit-reset": reset}  # fmt: skip
    return {name: str(value) for name, value in found.items() if value is not None}


@pytest.fixture
def make_throttle(redis_client: redis.Redis) -> Iterator[Callable[..., Throttle]]:
    def make(**options: Any) -> Throttle:
        options.setdefault("default_rate_per_second", 10.0)
        return Throttle(redis_client, **options)

    yield make


@pytest.fixture
def throttle(make_throttle: Callable[..., Throttle]) -> Throttle:
    return make_throttle()


def instant(when: float) -> Any:
    """``when`` (epoch seconds) to the millisecond: ``pytest.approx``'s relative default
    is ±1,750 s at these magnitudes, which no assertion on a reset could fail."""
    return pytest.approx(when, abs=1e-3)


def field(client: redis.Redis, name: str) -> float | None:
    value = client.hget(throttle_key(SCOPE), name)
    return float(value) if value is not None else None


def in_flight(client: redis.Redis) -> int:
    return int(client.zcard(throttle_in_flight_key(SCOPE)))


def learn(throttle: Throttle, now: float, limit: int, remaining: int, reset: float) -> None:
    """One answered request that tells the throttle the budget."""
    assert throttle.acquire(SCOPE, now=now) == 0.0
    throttle.record(SCOPE, 204, headers(limit, remaining, reset), now=now)


# -- pacing and spreading ------------------------------------------------------------------


def test_default_rate_paces_before_any_header(throttle: Throttle) -> None:
    assert throttle.acquire(SCOPE, now=T0) == 0.0
    wait = throttle.acquire(SCOPE, now=T0 + 0.04)
    assert 0.06 <= wait <= 0.063  # 1 / 10 per second, plus a little jitter
    assert throttle.acquire(SCOPE, now=T0 + 0.1) == 0.0


def test_remaining_budget_is_spread_over_the_window(throttle: Throttle) -> None:
    learn(throttle, T0, limit=100, remaining=10, reset=10)
    assert throttle.acquire(SCOPE, now=T0) == 0.0
    # 10 units over 10 s: one now, the next about a second later, not at once.
    wait = throttle.acquire(SCOPE, now=T0 + 0.001)
    assert 0.99 <= wait <= 1.002


def test_in_flight_requests_count_against_remaining(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    learn(throttle, T0, limit=10, remaining=3, reset=10)
    taken, now = 0, T0
    while now < T0 + 9.9:  # never answered: every slot stays in flight
        wait = throttle.acquire(SCOPE, now=now)
        taken += wait == 0
        now += max(wait, 0.001)
    assert taken == 3
    assert in_flight(redis_client) == 3
    assert throttle.acquire(SCOPE, now=T0 + 9.9) == pytest.approx(0.1, abs=0.003)  # the reset


def test_window_refills_at_the_reset(throttle: Throttle, redis_client: redis.Redis) -> None:
    learn(throttle, T0, limit=5, remaining=0, reset=2)
    assert 1.9 <= throttle.acquire(SCOPE, now=T0 + 0.1) <= 1.91
    assert throttle.acquire(SCOPE, now=T0 + 2.0) == 0.0
    assert field(redis_client, "remaining") == 5  # refilled; the one taken is in flight
    assert in_flight(redis_client) == 1


# -- learning from answers -----------------------------------------------------------------


def test_racing_answers_keep_the_lowest_remaining(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    learn(throttle, T0, limit=10, remaining=9, reset=5)
    for step in (1, 2):
        assert throttle.acquire(SCOPE, now=T0 + step) == 0.0
    # Answered out of order: the later request's answer comes first.
    throttle.record(SCOPE, 204, headers(10, 7, 3), now=T0 + 2.01)
    throttle.record(SCOPE, 204, headers(10, 8, 3), now=T0 + 2.02)
    assert field(redis_client, "remaining") == 7


def test_a_new_server_window_is_taken_at_its_word(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    learn(throttle, T0, limit=10, remaining=1, reset=1)
    assert throttle.acquire(SCOPE, now=T0 + 0.5) == 0.0
    # The server's window rolled over before ours: its count went back up.
    throttle.record(SCOPE, 204, headers(10, 9, 1), now=T0 + 0.51)
    assert field(redis_client, "remaining") == 9
    assert field(redis_client, "reset_at") == instant(T0 + 1.51)


def test_a_late_answer_from_the_old_window_does_not_empty_the_new_one(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    learn(throttle, T0, limit=5, remaining=1, reset=1)
    assert throttle.acquire(SCOPE, now=T0 + 0.5) == 0.0  # A: the old window's last unit
    assert throttle.acquire(SCOPE, now=T0 + 1.01) == 0.0  # B: after the refill
    # A's answer arrives late and speaks of the old window (nothing left).
    throttle.record(SCOPE, 204, headers(5, 0, 1), now=T0 + 1.02)
    assert field(redis_client, "remaining") == 4  # counted, in case it landed in the new one
    assert field(redis_client, "reset_at") == instant(T0 + 2.01)


def test_missing_or_garbage_headers_keep_the_last_known_state(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    learn(throttle, T0, limit=10, remaining=6, reset=8)
    junk_answers = ({}, {"x-ratelimit-limit": "lots", "x-ratelimit-reset": "-1"})
    for now, junk in zip((T0 + 1, T0 + 3), junk_answers, strict=True):
        assert throttle.acquire(SCOPE, now=now) == 0.0
        throttle.record(SCOPE, 204, junk, now=now)
    # Each answer without a count is assumed to have cost one unit.
    assert field(redis_client, "limit") == 10
    assert field(redis_client, "remaining") == 4
    assert field(redis_client, "reset_at") == instant(T0 + 8)


def test_epoch_seconds_and_epoch_milliseconds_resets(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    learn(throttle, T0, limit=10, remaining=9, reset=T0 + 4)  # epoch seconds
    assert field(redis_client, "reset_at") == instant(T0 + 4)
    redis_client.delete(throttle_key(SCOPE))
    learn(throttle, T0, limit=10, remaining=9, reset=int((T0 + 2.5) * 1000))  # epoch ms
    assert field(redis_client, "reset_at") == instant(T0 + 2.5)


def test_no_rate_limit_headers_ever_means_the_default_rate(throttle: Throttle) -> None:
    for step in range(5):
        now = T0 + step * 0.125
        assert throttle.acquire(SCOPE, now=now) == 0.0
        throttle.record(SCOPE, 204, {"content-type": "text/plain"}, now=now + 0.01)
        assert throttle.acquire(SCOPE, now=now + 0.05) > 0


def test_whole_second_resets_are_narrowed_by_the_learned_window(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    """Epoch-second resets on a 1 s window: the announced reset can be ~1 s late."""
    t0 = T0 + 0.3  # the server opens its window at t0 + 0.005; it ends at t0 + 1.005
    assert throttle.acquire(SCOPE, now=t0) == 0.0
    throttle.record(SCOPE, 204, headers(25, 24, int(T0) + 2), now=t0 + 0.01)
    # Announced: T0 + 2, 0.695 s late. Nothing is known of the window yet and the reset is
    # less than two seconds away: it is taken as one second long, which a 1 s window that
    # held our request cannot outlast (it ends by the answer + 1 s).
    assert field(redis_client, "reset_at") == instant(t0 + 1.01)
    for left in range(23, -1, -1):  # the window's other answers
        throttle.record(SCOPE, 204, headers(25, left, int(T0) + 2), now=t0 + 0.5)
    # The tracked reset passed: a refill, and the first request after the true end opens
    # the next window. Its length is at most (answer of the new one) - (send of the old
    # one's first) = 1.03 s: taught at the rollover although the window was the first the
    # state saw, because that is at least a second (a window of a whole number of seconds
    # can have begun at our request; one joined half-way on the server's clock teaches
    # less than a second and is not believed: see the next test).
    assert throttle.acquire(SCOPE, now=t0 + 1.02) == 0.0
    throttle.record(SCOPE, 204, headers(25, 24, int(T0) + 3), now=t0 + 1.03)
    assert field(redis_client, "window_bound") == pytest.approx(1.03)
    # Whole seconds: the 1.03 s bound is a 1 s window plus a round trip. Its end is by the
    # answer + 1 s, not the announced T0 + 3 (0.67 s late) nor the answer + 1.03 s.
    true_reset = t0 + 1.025 + 1
    reset_at = field(redis_client, "reset_at")
    assert reset_at is not None and true_reset <= reset_at == instant(t0 + 2.03)
    # A 429 says the model let a request through too early: forget what was learned.
    throttle.record(SCOPE, 429, headers(25, 0, int(T0) + 3), now=t0 + 1.5)
    assert field(redis_client, "window_bound") is None


def test_an_answer_naming_the_tracked_epoch_reset_is_no_rollover(
    make_throttle: Callable[..., Throttle], redis_client: redis.Redis
) -> None:
    """Latencies of 3-80 ms: the window's second request (23 left) is answered after the
    third and fourth (22, 21), when no other request is in flight. Its count rose by more
    than the answers racing it, but its epoch reset is the tracked window's: the same
    window. Taken as a rollover it taught a window of 0.13 s and cost a 429."""
    clients = [make_throttle() for _ in range(4)]
    assert clients[0].acquire(SCOPE, now=T0 + 0.3) == 0.0
    clients[0].record(SCOPE, 204, headers(25, 24, int(T0) + 2), now=T0 + 0.31)
    for index, client in enumerate(clients[1:]):  # the spread: ~42 ms apart
        assert client.acquire(SCOPE, now=T0 + 0.4 + index * 0.05) == 0.0
    clients[2].record(SCOPE, 204, headers(25, 22, int(T0) + 2), now=T0 + 0.51)
    clients[3].record(SCOPE, 204, headers(25, 21, int(T0) + 2), now=T0 + 0.52)
    reset_at = field(redis_client, "reset_at")
    clients[1].record(SCOPE, 204, headers(25, 23, int(T0) + 2), now=T0 + 0.56)
    assert field(redis_client, "remaining") == 21
    assert field(redis_client, "reset_at") == reset_at
    assert field(redis_client, "window_bound") is None


def test_the_first_window_teaches_no_length_on_a_clock_aligned_server(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    """Windows on whole seconds of the server's clock, epoch-second resets (exact there):
    the backlog arrives 0.6 s into a window. Taking that window's `reset - first send`
    (0.4 s) as its length refilled the next window 0.6 s early: a 429 in every bench run."""
    t0 = T0 + 0.6
    assert throttle.acquire(SCOPE, now=t0) == 0.0
    throttle.record(SCOPE, 204, headers(25, 24, int(T0) + 1), now=t0 + 0.01)
    for left in range(23, -1, -1):
        throttle.record(SCOPE, 204, headers(25, left, int(T0) + 1), now=t0 + 0.3)
    # The next window opens on the server's clock at T0 + 1; ours left at T0 + 1.001.
    assert throttle.acquire(SCOPE, now=T0 + 1.001) == 0.0
    throttle.record(SCOPE, 204, headers(25, 24, int(T0) + 2), now=T0 + 1.011)
    reset_at = field(redis_client, "reset_at")
    assert reset_at is not None and reset_at >= T0 + 2  # the true end, not T0 + 1.41
    # What this window teaches is off by our own lag behind its start at most (1 ms here),
    # not by where in the first window the backlog arrived.
    assert (field(redis_client, "window_bound") or 1.0) >= 0.999


def test_an_answer_sent_before_the_window_began_is_no_rollover(
    make_throttle: Callable[..., Throttle], redis_client: redis.Redis
) -> None:
    """A request sent just before the tracked window began can land first in it (24 left)
    and be answered after later ones (23, 22): latencies differ. Its higher count is no
    new window; taken as one, it taught a window of 0.05 s and the next refill came early."""
    first, late, opener, next_one = (make_throttle() for _ in range(4))
    assert first.acquire(SCOPE, now=T0) == 0.0
    first.record(SCOPE, 204, headers(25, 24, 1), now=T0 + 0.01)
    for left in range(23, 0, -1):
        first.record(SCOPE, 204, headers(25, left, 1), now=T0 + 0.5)
    assert late.acquire(SCOPE, now=T0 + 0.99) == 0.0  # the last unit; it lands after T0 + 1
    assert opener.acquire(SCOPE, now=T0 + 1.02) == 0.0  # the tracked reset passed: refilled
    opener.record(SCOPE, 204, headers(25, 23, 1), now=T0 + 1.03)
    assert next_one.acquire(SCOPE, now=T0 + 1.07) == 0.0
    next_one.record(SCOPE, 204, headers(25, 22, 1), now=T0 + 1.08)
    reset_at = field(redis_client, "reset_at")
    late.record(SCOPE, 204, headers(25, 24, 1), now=T0 + 1.10)
    assert field(redis_client, "window_bound") is None
    assert field(redis_client, "remaining") == 21  # counted against the window, not believed
    assert field(redis_client, "reset_at") == reset_at


# -- 429 -----------------------------------------------------------------------------------


def test_429_blocks_the_scope_for_retry_after(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    assert throttle.acquire(SCOPE, now=T0) == 0.0
    throttle.record(SCOPE, 429, {"retry-after": "3", **headers(10, 0, 2)}, now=T0)
    assert 2.99 <= throttle.acquire(SCOPE, now=T0 + 0.01) <= 3.0
    assert throttle.acquire(SCOPE, now=T0 + 3.0) == 0.0
    assert field(redis_client, "rate_limited") == 1


def test_429_with_a_plain_text_body_and_no_headers_still_blocks(throttle: Throttle) -> None:
    assert throttle.acquire(SCOPE, now=T0) == 0.0
    throttle.record(SCOPE, 429, {"content-type": "text/plain"}, now=T0)
    wait = throttle.acquire(SCOPE, now=T0 + 0.01)
    assert 0.9 <= wait <= 1.0  # the fallback window
    assert throttle.acquire(SCOPE, now=T0 + 1.0) == 0.0


def test_retry_after_as_an_http_date(throttle: Throttle) -> None:
    from email.utils import formatdate

    assert throttle.acquire(SCOPE, now=T0) == 0.0
    throttle.record(SCOPE, 429, {"Retry-After": formatdate(T0 + 10, usegmt=True)}, now=T0)
    assert 9.9 <= throttle.acquire(SCOPE, now=T0 + 0.01) <= 10.0


# -- leases, status, the off switch ----------------------------------------------------------


def test_a_slot_whose_worker_died_is_released_by_its_lease(
    make_throttle: Callable[..., Throttle], redis_client: redis.Redis
) -> None:
    throttle = make_throttle(in_flight_lease_seconds=5.0)
    learn(throttle, T0, limit=2, remaining=2, reset=60)
    assert throttle.acquire(SCOPE, now=T0 + 1) == 0.0  # never answered
    assert throttle.acquire(SCOPE, now=T0 + 2) > 0
    assert in_flight(redis_client) == 1
    throttle.acquire(SCOPE, now=T0 + 6.5)
    assert in_flight(redis_client) == 0  # its lease ended: the unit is back in the budget
    assert throttle.acquire(SCOPE, now=T0 + 40) == 0.0
    assert throttle.acquire(SCOPE, now=T0 + 59) == 0.0  # both units: none leaked


def test_status_shows_limit_remaining_reset_blocked_and_in_flight(
    throttle: Throttle, redis_client: redis.Redis
) -> None:
    assert throttle.acquire(SCOPE) == 0.0
    throttle.record(SCOPE, 429, {"retry-after": "30", **headers(25, 0, 20)})
    assert throttle.acquire(SCOPE) > 0
    (state,) = read_states(redis_client, [SCOPE])
    assert state.limit == 25 and state.remaining == 0 and state.in_flight == 0
    assert state.reset_in_seconds is not None and 25 < state.reset_in_seconds <= 30
    assert state.blocked_until is not None and 25 < state.blocked_for_seconds <= 30
    shown = throttle_status(redis_client)[SCOPE]
    assert {"limit", "remaining", "reset_in_s", "blocked_until", "in_flight"} <= shown.keys()
    assert shown["rate_limited"] == 1


def test_off_switch_only_waits_out_retry_after_in_this_process(
    make_throttle: Callable[..., Throttle], redis_client: redis.Redis
) -> None:
    throttle = make_throttle(enabled=False)
    for _ in range(20):
        assert throttle.acquire(SCOPE, now=T0) == 0.0
    throttle.record(SCOPE, 429, {"retry-after": "2"}, now=T0)
    assert throttle.acquire(SCOPE, now=T0 + 0.5) == pytest.approx(1.5)
    assert throttle.acquire(SCOPE, now=T0 + 2) == 0.0
    assert redis_client.keys("snackvideo:throttle*") == []


# -- concurrency -----------------------------------------------------------------------------

# A child process: acquires with a driven clock that every process reads from Redis
# (INCRBY on a shared counter), never answers, prints how many slots it took.
_CHILD = """
import sys, redis
from worker.throttle.budget import Throttle
url, scope, t0, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
client = redis.Redis.from_url(url)
throttle = Throttle(client, default_rate_per_second=10.0)
taken = 0
for _ in range(rounds):
    now = t0 + client.incrby("test:clock", 1) / 1000.0
    if throttle.acquire(scope, now=now) == 0.0:
        taken += 1
print(taken)
"""


@pytest.mark.processes
def test_threads_and_processes_never_take_more_than_the_budget(
    redis_url: str, redis_client: redis.Redis
) -> None:
    budget = 40
    learn(Throttle(redis_client, default_rate_per_second=10.0), T0, 1000, budget, reset=10)
    # `budget` units are left for 10 s of driven clock. 4 processes and 8 threads draw from
    # it at once, each draw one 1 ms tick of the clock, for 9.96 s worth of ticks: far
    # more attempts than units, all inside the window (no refill).
    rounds = 830
    processes = [
        subprocess.Popen(
            [PYTHON, "-c", _CHILD, redis_url, SCOPE, str(T0), str(rounds)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    thread_taken: list[int] = []

    def draw() -> None:
        throttle = Throttle(redis.Redis.from_url(redis_url), default_rate_per_second=10.0)
        taken = 0
        for _ in range(rounds):
            now = T0 + redis_client.incrby("test:clock", 1) / 1000.0
            taken += throttle.acquire(SCOPE, now=now) == 0.0
        thread_taken.append(taken)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    clock_ms = int(redis_client.get("test:clock") or 0)
    assert clock_ms == 12 * rounds  # every draw happened
    assert clock_ms / 1000 < 10  # ...all inside the window: no refill
    total = sum(thread_taken) + sum(int(out) for out in outputs)
    assert total == budget  # all of it, and not one more
    assert in_flight(redis_client) == budget  # none answered; the first one was


# A child process of the end-to-end accounting test: real clock (Redis TIME), real
# requests to the sandbox, several threads; prints {status: count}.
_SENDER = """
import json, sys, threading, time, redis, requests
from worker.throttle.budget import Throttle
url, base, store, key, total, threads = sys.argv[1:7]
total, threads = int(total), int(threads)
client = redis.Redis.from_url(url)
throttle = Throttle(client, default_rate_per_second=10.0)
counts, lock = {}, threading.Lock()
def run():
    session = requests.Session()
    while True:
        n = client.incr("test:sent")
        if n > total:
            return
        deadline = time.monotonic() + 60
        while True:
            wait = throttle.acquire(base)
            if wait == 0 or time.monotonic() > deadline:
                break
            time.sleep(wait)
        body = {"click_id": f"acct-{n}", "events": [{"event_name": "purchase"}]}
        r = session.post(f"{base}/v3/stores/{store}/public/analytics/snackvideo/events",
                         json=body, headers={"X-Scalev-Storefront-Api-Key": key}, timeout=10)
        throttle.record(base, r.status_code, {k.lower(): v for k, v in r.headers.items()})
        with lock:
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
pool = [threading.Thread(target=run) for _ in range(threads)]
[t.start() for t in pool]
[t.join() for t in pool]
print(json.dumps(counts))
"""


@pytest.mark.integration
def test_processes_and_threads_share_one_budget_on_a_real_server(
    redis_url: str, start_sandbox: Callable[..., Any]
) -> None:
    sandbox = start_sandbox("--rate-limit", "20/1", "--reset-style", "epoch-ms")
    total = 60
    processes = [
        subprocess.Popen(
            [PYTHON, "-c", _SENDER, redis_url, sandbox.base_url, STORE, STORE_KEY, str(total), "3"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    counts: dict[str, int] = {}
    for process in processes:
        out, _ = process.communicate(timeout=150)
        assert process.returncode == 0
        for status, n in json.loads(out).items():
            counts[status] = counts.get(status, 0) + n
    stats = sandbox.stats()
    assert stats["accepted"] == total
    # 9 senders on one 20-per-second budget: the server never had to refuse one.
    assert stats["by_status"].get("429", 0) == 0, stats["by_status"]
    assert stats["max_in_window"] <= 20
    assert counts == {"204": total}


def test_lua_scripts_carry_their_signature() -> None:
    for name in ("acquire", "record"):
        first = (ROOT / "worker" / "throttle" / f"{name}.lua").read_text().splitlines()[0]
        assert first.startswith("-- keys=[") and "args=[" in first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
