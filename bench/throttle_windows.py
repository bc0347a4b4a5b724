"""Window by window: what the throttle believed against what the server counted.

The instrument behind docs/throttle.md's reading of the epoch-second rows. A discrete-event
simulation with a driven clock: K clients (16, as two nodes of ``-c 8``) run the real
throttle scripts in a private Redis against the sandbox's own fixed-window limiter
(``sandbox.ratelimit``: the same windows, headers and Retry-After as the bench's sandbox),
each one request at a time: acquire, the request lands after the connect time plus half
the latency, its answer comes back after all of it, then the next job after a gap. No
machine load, no Celery: it separates what the throttle's window model costs from what a
loaded machine adds.

For each window it prints the requests the server counted against the limit, when the
first one landed after the window's start, the window's true end and the reset the
throttle tracked for it (late: the window's last units spill into the next one, or the
next one opens late), and the learned window bound; then the run's 429s and the limit
used, as ``bench.throttle`` counts it and without the first window.

    python -m bench.throttle_windows [--alignments first-request,clock]
        [--styles seconds,epoch,epoch-ms] [--runs 5] [--latency-max 0.02] [--gap 0.004]
        [--verbose]
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis

from bench.common import RedisServer
from sandbox.ratelimit import FixedWindowLimiter, render_headers, seconds_until_reset
from worker.keys import throttle_in_flight_key, throttle_key
from worker.throttle.budget import Throttle

SCOPE = "https://api.example.test"
T0 = 1_750_000_000.0
LIMIT = 25
WINDOW = 1.0
CLIENTS = 16
EVENTS = 250
CONNECT_SECONDS = 0.002  # Redis and connection overhead before a request leaves


@dataclass
class Trace:
    """By server window: when its first request landed after its start, and what the
    throttle's state said at the last answer before the next window opened."""

    first_landing: dict[int, float] = field(default_factory=dict)
    reset_at: dict[int, float] = field(default_factory=dict)
    window_bound: dict[int, float] = field(default_factory=dict)


@dataclass
class Run:
    windows: list[dict[str, float]]
    refused: int
    accepted: int
    trace: Trace

    def goodput(self, alignment: str, skip: int = 0) -> float:
        """``bench.throttle``'s limit used; ``skip=1`` leaves the first window out."""
        windows = self.windows[skip:]
        accepted = self.accepted - sum(min(int(w["count"]), LIMIT) for w in self.windows[:skip])
        occupied = windows[-1]["start"] - windows[0]["start"]
        occupied += WINDOW * min(1.0, windows[-1]["count"] / LIMIT)
        if alignment == "clock" and skip == 0 and len(windows) > 1:
            occupied -= WINDOW * (1 - min(1.0, windows[0]["count"] / LIMIT))
        return accepted / (LIMIT * occupied / WINDOW)


def simulate(
    client: redis.Redis, alignment: str, style: str, seed: int, latency_max: float, gap: float
) -> Run:
    rng = random.Random(seed)
    client.delete(throttle_key(SCOPE), throttle_in_flight_key(SCOPE))
    limiter = FixedWindowLimiter(LIMIT, WINDOW, alignment=alignment)
    throttles = [
        Throttle(client, default_rate_per_second=10, rng=random.Random(i)) for i in range(CLIENTS)
    ]
    start = T0 + rng.random() * 3
    # (time, client, answer): answer None means "ask for a slot".
    queue: list[tuple[float, int, tuple[int, Mapping[str, str]] | None]] = [
        (start + rng.random() * 0.01, i, None) for i in range(CLIENTS)
    ]
    heapq.heapify(queue)
    trace, refused, left = Trace(), 0, EVENTS
    while queue and left > 0:
        now, i, answer = heapq.heappop(queue)
        throttle = throttles[i]
        if answer is None:
            wait = throttle.acquire(SCOPE, now=now)
            if wait > 0:
                heapq.heappush(queue, (now + wait + CONNECT_SECONDS, i, None))
                continue
            latency = rng.uniform(0.003, latency_max)
            landing = now + CONNECT_SECONDS + latency / 2
            decision = limiter.hit(landing)
            assert decision is not None
            windows = limiter.windows()
            trace.first_landing.setdefault(len(windows) - 1, landing - windows[-1]["start"])
            rendered = dict(render_headers(decision, style))
            if not decision.allowed:
                rendered["Retry-After"] = str(seconds_until_reset(decision))
            reply = (204 if decision.allowed else 429, rendered)
            heapq.heappush(queue, (now + CONNECT_SECONDS + latency, i, reply))
            continue
        status, headers = answer
        throttle.clock = _fixed(now)  # epoch resets are made relative on this clock
        throttle.record(SCOPE, status, headers, now=now)
        refused += status == 429
        left -= status != 429
        state = client.hgetall(throttle_key(SCOPE))
        index = len(limiter.windows()) - 1
        if b"reset_at" in state:
            trace.reset_at[index] = float(state[b"reset_at"])
        if b"window_bound" in state:
            trace.window_bound[index] = float(state[b"window_bound"])
        heapq.heappush(queue, (now + CONNECT_SECONDS + gap * rng.uniform(0.5, 2), i, None))
    return Run(limiter.windows(), refused, EVENTS - left, trace)


def _fixed(at: float) -> Callable[[], float]:
    return lambda: at


def describe(run: Run) -> str:
    lines = []
    for index, window in enumerate(run.windows):
        end = window["start"] + WINDOW
        believed, bound = run.trace.reset_at.get(index), run.trace.window_bound.get(index)
        late = "-" if believed is None else f"{(believed - end) * 1000:+.0f} ms"
        first = run.trace.first_landing.get(index, 0.0) * 1000
        previous_end = run.windows[index - 1]["start"] + WINDOW if index else window["start"]
        opened = (window["start"] - previous_end) * 1000
        lines.append(
            f"  window {index:2d}: {int(window['count']):3d}/{LIMIT}, opened {opened:4.0f} ms "
            f"after the last one ended, its first request {first:4.0f} ms after it opened; "
            f"tracked reset vs its true end {late:>8}; "
            f"window bound {'-' if bound is None else f'{bound:.3f}'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throttle_windows", description=__doc__)
    parser.add_argument("--alignments", default="first-request,clock")
    parser.add_argument("--styles", default="seconds,epoch,epoch-ms")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--latency-max", type=float, default=0.02, help="seconds, uniform from 3 ms"
    )
    parser.add_argument("--gap", type=float, default=0.004, help="a worker's time between jobs")
    parser.add_argument("--verbose", action="store_true", help="every window of every run")
    args = parser.parse_args(argv)
    server = RedisServer().start()
    try:
        assert server.client is not None
        for alignment in args.alignments.split(","):
            for style in args.styles.split(","):
                runs = [
                    simulate(server.client, alignment, style, seed, args.latency_max, args.gap)
                    for seed in range(args.runs)
                ]
                if args.verbose:
                    for run in runs:
                        print(describe(run))
                print(
                    f"{alignment:<13} {style:<8} 429s {[r.refused for r in runs]}  limit used "
                    f"{[round(r.goodput(alignment) * 100, 1) for r in runs]}  after the first "
                    f"window {[round(r.goodput(alignment, skip=1) * 100, 1) for r in runs]}",
                    flush=True,
                )
    finally:
        server.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
