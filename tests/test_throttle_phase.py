"""The window's phase, learned from the rollover: no refill before the server's window ends.

A simulated fixed-window server (a window opens at the first request after the last one,
or on multiples of the window on the server's clock) answers a client that drives the real
throttle scripts in a real Redis with a driven clock. The server writes
``X-Ratelimit-Reset`` as whole delta seconds (the IETF draft: ``1`` all through a 1 s
window), epoch seconds or epoch milliseconds. Whatever the phase, the latencies and the
convention, the throttle must never let a request into a window that is full: that is
what a 429 is. hypothesis chooses the phase, the latencies and where the run starts.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.keys import throttle_in_flight_key, throttle_key
from worker.throttle.budget import Throttle

SCOPE = "https://api.example.test"
T0 = 1_750_000_000.0
LIMIT = 5
PROPERTY = settings(
    max_examples=int(os.environ.get("SNACKVIDEO_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,  # a loaded machine: no per-example timing
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Server:
    """Counts requests per fixed window and renders the headers as the sandbox does."""

    alignment: str
    style: str
    phase: float
    window: float = 1.0
    start: float = -math.inf
    count: int = 0
    refused: int = 0
    accepted: int = 0
    windows: list[int] = field(default_factory=list)

    def hit(self, at: float) -> tuple[int, dict[str, str]]:
        if at >= self.start + self.window:
            if self.count:
                self.windows.append(self.count)
            if self.alignment == "clock":
                self.start = math.floor((at - self.phase) / self.window) * self.window
                self.start += self.phase
            else:
                self.start = at
            self.count = 0
        self.count += 1
        end = self.start + self.window
        if self.style == "seconds":
            reset = str(max(1, math.ceil(end - at)))
        elif self.style == "epoch":
            reset = str(math.ceil(end))
        else:
            reset = str(math.ceil(end * 1000))
        headers = {
            "x-ratelimit-limit": str(LIMIT),
            "x-ratelimit-remaining": str(max(0, LIMIT - self.count)),
            "x-ratelimit-reset": reset,
        }
        if self.count > LIMIT:
            self.refused += 1
            return 429, {**headers, "retry-after": str(max(1, math.ceil(end - at)))}
        self.accepted += 1
        return 204, headers


def drive(client: redis.Redis, server: Server, start: float, latencies: list[float]) -> None:
    """One request at a time: acquire, the request lands after half the latency, the
    answer after all of it; then ask again at once (a backlog that never runs dry)."""
    client.delete(throttle_key(SCOPE), throttle_in_flight_key(SCOPE))
    throttle = Throttle(client, default_rate_per_second=LIMIT, rng=random.Random(0))
    now = start
    for latency in latencies:
        wait = throttle.acquire(SCOPE, now=now)
        if wait > 0:
            now += wait
            continue
        status, headers = server.hit(now + latency / 2)
        # Our clock is the server's here; epoch resets are turned relative with it.
        throttle.clock = lambda at=now + latency: at
        throttle.record(SCOPE, status, headers, now=now + latency)
        now += latency


def assert_refused_at_most(
    client: redis.Redis, server: Server, start: float, latencies: list[float], allowed: int
) -> None:
    """Drive a run against ``server`` and check it refused no more than ``allowed``."""
    drive(client, server, T0 + start, latencies)
    assert server.refused <= allowed, (server.windows, server.count)
    assert server.accepted > 0


@PROPERTY
@given(
    alignment=st.sampled_from(["first-request", "clock"]),
    style=st.sampled_from(["seconds", "epoch", "epoch-ms"]),
    phase=st.floats(0.0, 0.999),
    start=st.floats(0.0, 5.0),
    latencies=st.lists(st.floats(0.001, 0.03), min_size=40, max_size=120),
)
def test_no_request_enters_a_full_window(
    redis_client: redis.Redis,
    alignment: str,
    style: str,
    phase: float,
    start: float,
    latencies: list[float],
) -> None:
    # Epoch seconds on a clock the server aligns elsewhere than whole seconds is the one
    # case that may cost a 429: it teaches the throttle that the windows are not ours.
    allowed = 1 if style == "epoch" and alignment == "clock" else 0
    assert_refused_at_most(redis_client, Server(alignment, style, phase), start, latencies, allowed)


@PROPERTY
@given(
    start=st.floats(0.0, 5.0),
    latencies=st.lists(st.floats(0.001, 0.03), min_size=40, max_size=120),
)
def test_whole_second_clock_windows_with_epoch_second_resets_cost_no_429(
    redis_client: redis.Redis, start: float, latencies: list[float]
) -> None:
    """Windows on whole seconds of the server's clock (a key per ``floor(now)``, the
    sandbox's ``clock`` alignment): the epoch-second reset is exact there, and the backlog
    arrives anywhere in a window. The first window a state sees teaches no length; a
    later one could, wrongly: hypothesis found a run (start 0.89 s into a window,
    latencies 16-30 ms) where the answer that opened a window from our side landed 21 ms
    after the server's whole second and taught a window of 0.9993 s: the refill came 1 ms
    early, a 429. A bound that close under a whole second is now taken as the whole
    second (rounding a bound up is safe), and no run draws a 429."""
    assert_refused_at_most(redis_client, Server("clock", "epoch", phase=0.0), start, latencies, 0)


@PROPERTY
@given(
    window=st.sampled_from([0.5, 1.5, 2.0, 3.0]),
    alignment=st.sampled_from(["first-request", "clock"]),
    style=st.sampled_from(["seconds", "epoch", "epoch-ms"]),
    phase=st.floats(0.0, 2.999),
    start=st.floats(0.0, 5.0),
    latencies=st.lists(st.floats(0.001, 0.03), min_size=40, max_size=160),
)
def test_windows_other_than_a_second_cost_at_most_the_one_429_of_a_wrong_guess(
    redis_client: redis.Redis,
    window: float,
    alignment: str,
    style: str,
    phase: float,
    start: float,
    latencies: list[float],
) -> None:
    """With epoch-second resets the throttle guesses that windows last whole seconds, and
    that a window it knows nothing of lasts one (docs/throttle.md): a 1.5 s window, or a
    2 s window joined in its first second, refills early once, and that 429 ends the
    guessing for the state. Delta seconds and epoch milliseconds guess nothing."""
    server = Server(alignment, style, phase % window, window=window)
    assert_refused_at_most(redis_client, server, start, latencies, 1 if style == "epoch" else 0)
