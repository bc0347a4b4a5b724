"""A long backlog against Scalev's limit: the drain rate, the 429s, and memory over time.

``--jobs`` events (100,000 by default) are queued with ``enqueue_many`` before any worker
runs; then ``--nodes`` worker nodes (``celery -A worker worker --pool P -c C``, default
settings: the shared throttle on) drain them into the sandbox, which allows ``--limit``
requests per 1 s fixed window and says so in its ``X-Ratelimit-*`` headers. Every
``--interval`` seconds a sample: events the sandbox accepted, its 429 answers, the
workers' RSS (every process of every node, summed), Redis's ``used_memory`` and the
queue's length. Summary:

- *drain rate*: accepted events ÷ the time from the first to the last one (the sandbox's
  clock), against the limit; also over the middle 80 % of the arrivals;
- *429 share*: 429 answers ÷ all requests to the events route;
- *worker RSS*: first, last and largest sample;
- *Redis*: bytes per queued job (``used_memory`` after the fill minus before, ÷ jobs).
  *Redis − backlog* is ``used_memory`` minus the queued jobs at that rate: what is left
  should be flat but for the delivered-markers (one per delivered job, TTL: max job age
  + 1 day), so it is fitted as a constant plus bytes per delivered job; the residuals of
  that fit are what grew or shrank otherwise. ``MEMORY USAGE`` of one marker checks it.

    python -m bench.backlog [--jobs 100000] [--limit 100] [--nodes 2] [--concurrency 8]
                            [--pool prefork] [--interval 10] [--reset-style seconds]
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.capacity import middle_rate
from bench.common import (
    STORES,
    RedisServer,
    Sandbox,
    Section,
    Worker,
    doc_intro,
    doc_parser,
    load_average,
    percentile,
    rss_kib,
    table,
)
from bench.delivery import fill_ours
from harness.worker import worker_env
from producers.enqueue import MAX_BATCH_PAYLOADS
from producers.keys import DELIVERY_QUEUE
from worker.keys import delivered_key

DEFAULT_JOBS = 100_000
DEFAULT_LIMIT = 100
MAX_TABLE_ROWS = 30
TARGET_SHARE_OF_LIMIT = 0.97


@dataclass
class Sample:
    seconds: float
    accepted: int
    status_429: int
    requests: int
    worker_rss_kib: int
    redis_used: int
    queued: int


@dataclass
class Windows:
    """The sandbox's fixed windows (start -> requests counted), gathered over the samples:
    its stats keep only the latest few hundred."""

    seconds: float = 1.0
    counts: dict[float, int] = field(default_factory=dict)

    def add(self, stats: dict[str, Any]) -> None:
        self.seconds = float(stats["window_seconds"])
        for window in stats["windows"]:
            self.counts[float(window["start"])] = int(window["count"])

    def describe(self, limit: int) -> str:
        """Where a shortfall went: windows not filled, or time between windows (a window
        opens at the first request after the last one ended)."""
        starts = sorted(self.counts)[1:-1]  # the first and the last are partial by nature
        if len(starts) < 2:
            return "too few windows to describe"
        counts = [self.counts[start] for start in starts]
        gaps = [b - a - self.seconds for a, b in zip(starts, starts[1:], strict=False)]
        full = sum(1 for count in counts if count >= limit) / len(counts)
        return (
            f"{len(starts):,} whole windows: requests per window median "
            f"{statistics.median(counts):g} (min {min(counts)}), {full:.0%} full; "
            f"time between a window's end and the next one's first request median "
            f"{statistics.median(gaps) * 1000:.0f} ms, p90 {percentile(gaps, 90) * 1000:.0f} ms"
        )


@dataclass
class Fill:
    jobs: int
    seconds: float
    redis_empty: int
    redis_full: int

    @property
    def bytes_per_job(self) -> float:
        return (self.redis_full - self.redis_empty) / self.jobs


def fill(redis: RedisServer, jobs: int, run: str) -> Fill:
    """Queue ``jobs`` events in ``enqueue_many`` calls of the largest allowed batch."""
    empty = int(redis.client.info("memory")["used_memory"])
    began = time.monotonic()
    fill_ours(redis.url, jobs, run, MAX_BATCH_PAYLOADS)
    seconds = time.monotonic() - began
    return Fill(jobs, seconds, empty, int(redis.client.info("memory")["used_memory"]))


def take_sample(
    began: float,
    sandbox: Sandbox,
    redis: RedisServer,
    workers: Sequence[Worker],
    windows: Windows,
) -> Sample:
    stats = sandbox.stats()
    windows.add(stats)
    return Sample(
        time.monotonic() - began,
        int(stats["accepted"]),
        int(stats["by_status"].get("429", 0)),
        int(stats["requests"]),
        sum(rss_kib(pid) for worker in workers for pid in worker.pids()),
        int(redis.client.info("memory")["used_memory"]),
        int(redis.client.llen(DELIVERY_QUEUE)),
    )


def drain(
    jobs: int,
    limit: int,
    workers: Sequence[Worker],
    sandbox: Sandbox,
    redis: RedisServer,
    interval: float,
    windows: Windows,
) -> tuple[list[Sample], str]:
    """Start the workers, sample until every job was accepted (or time ran out)."""
    for worker in workers:
        worker.start(wait_ready=False)
    for worker in workers:
        worker.wait_ready(timeout=120)
    began = time.monotonic()
    deadline = began + jobs / limit * 1.5 + 120
    samples = [take_sample(began, sandbox, redis, workers, windows)]
    while samples[-1].accepted < jobs:
        if time.monotonic() > deadline:
            return samples, f"timed out with {samples[-1].accepted:,} of {jobs:,} accepted"
        # Short sleeps near the end, so the last sample is taken soon after the last event.
        left = (jobs - samples[-1].accepted) / limit
        time.sleep(max(0.5, min(interval, left)))
        samples.append(take_sample(began, sandbox, redis, workers, windows))
        last = samples[-1]
        print(f"  {last.seconds:6.0f} s  accepted {last.accepted:,}  429 {last.status_429}  "
              f"queued {last.queued:,}", flush=True)  # fmt: skip
    return samples, ""


@dataclass
class RedisFit:
    """Redis memory beside the backlog: ``used − queued × bytes per queued job`` fitted as
    ``base + per_delivered × accepted`` over the samples (least squares)."""

    base: float
    per_delivered: float
    residuals: list[float]

    @classmethod
    def of(cls, samples: Sequence[Sample], fill_: Fill) -> RedisFit:
        beside = [s.redis_used - s.queued * fill_.bytes_per_job for s in samples]
        accepted = [float(s.accepted) for s in samples]
        if len(set(accepted)) < 2:
            return cls(beside[0], 0.0, [0.0] * len(beside))
        slope, base = statistics.linear_regression(accepted, beside)
        residuals = [b - base - slope * a for a, b in zip(accepted, beside, strict=True)]
        return cls(base, slope, residuals)


def one_marker_bytes(redis: RedisServer) -> int | None:
    """``MEMORY USAGE`` of one delivered-marker (without the keyspace's own overhead)."""
    for key in redis.client.scan_iter(match=delivered_key("*"), count=1000):
        return int(redis.client.memory_usage(key) or 0)
    return None


def rate_limited_lines(workers: Sequence[Worker], most: int = 3) -> list[str]:
    """The workers' log lines of 429 answers (``outcome=rate_limited``): when, and the wait
    the throttle had computed, for the next run that finds one."""
    found = [
        line.strip()
        for worker in workers
        for line in worker.log().splitlines()
        if "outcome=rate_limited" in line
    ]
    return found[:most]


def thinned(samples: Sequence[Sample]) -> list[Sample]:
    """At most ``MAX_TABLE_ROWS`` evenly spaced samples, the first and the last included."""
    if len(samples) <= MAX_TABLE_ROWS:
        return list(samples)
    step = (len(samples) - 1) / (MAX_TABLE_ROWS - 1)
    return [samples[round(i * step)] for i in range(MAX_TABLE_ROWS)]


def samples_table(samples: Sequence[Sample], fill_: Fill) -> str:
    fit = RedisFit.of(samples, fill_)
    residual = dict(zip((id(s) for s in samples), fit.residuals, strict=True))
    rows = []
    previous = samples[0]
    for s in thinned(samples):
        window = s.seconds - previous.seconds
        rate = (s.accepted - previous.accepted) / window if window > 0 else 0.0
        beside = s.redis_used - s.queued * fill_.bytes_per_job
        rows.append(
            [f"{s.seconds:.0f}", f"{s.accepted:,}", f"{rate:.1f}" if window > 0 else "-",
             s.status_429, f"{s.worker_rss_kib / 1024:,.0f}", f"{s.redis_used / 2**20:,.1f}",
             f"{s.queued:,}", f"{beside / 2**20:,.2f}", f"{residual[id(s)] / 2**20:+,.2f}"]
        )  # fmt: skip
        previous = s
    return table(
        ["s", "accepted", "events/s since previous row", "429s", "worker RSS MiB",
         "Redis used MiB", "queued", "Redis − backlog MiB", "fit residual MiB"],
        rows,
    )  # fmt: skip


def summary(samples: Sequence[Sample], arrivals: Sequence[float], fill_: Fill, limit: int) -> str:
    last = samples[-1]
    span = max(arrivals) - min(arrivals) if len(arrivals) > 1 else 0.0
    rate = (len(arrivals) - 1) / span if span > 0 else 0.0
    share_429 = last.status_429 / last.requests if last.requests else 0.0
    rss = [s.worker_rss_kib / 1024 for s in samples]
    fit = RedisFit.of(samples, fill_)
    met = rate >= TARGET_SHARE_OF_LIMIT * limit and last.status_429 == 0
    lines = [
        f"- fill: {fill_.jobs:,} jobs in {fill_.seconds:.1f} s "
        f"({fill_.jobs / fill_.seconds:,.0f} jobs/s with `enqueue_many`)",
        f"- drain rate: {rate:.2f} events/s = **{rate / limit:.1%} of the limit** "
        f"({limit}/s) over {span:.0f} s; middle 80 %: {middle_rate(arrivals):.2f} events/s",
        f"- 429s: {last.status_429} of {last.requests:,} requests "
        f"(**{share_429:.3%}**); accepted {len(arrivals):,} of {fill_.jobs:,}",
        f"- worker RSS (all processes): first {rss[0]:,.0f} MiB, last {rss[-1]:,.0f} MiB, "
        f"max {max(rss):,.0f} MiB",
        f"- Redis: {fill_.redis_empty / 2**20:.1f} MiB empty, "
        f"{fill_.redis_full / 2**20:.1f} MiB with the backlog = "
        f"**{fill_.bytes_per_job:,.0f} bytes per queued job**; "
        f"{last.redis_used / 2**20:.1f} MiB at the end. Beside the backlog: "
        f"{fit.base / 2**20:.1f} MiB + {fit.per_delivered:,.0f} bytes per delivered job "
        f"(its marker), largest residual {max(map(abs, fit.residuals)) / 2**20:.2f} MiB",
        f"- target (≥ {TARGET_SHARE_OF_LIMIT:.0%} of the limit, 0 % 429s): "
        f"**{'met' if met else 'NOT met'}**",
    ]
    return "\n".join(lines)


def run(
    jobs: int = DEFAULT_JOBS,
    limit: int = DEFAULT_LIMIT,
    nodes: int = 2,
    concurrency: int = 8,
    pool: str = "prefork",
    interval: float = 10.0,
    reset_style: str = "seconds",
) -> Section:
    intro = doc_intro(__doc__)
    title = f"A backlog of {jobs:,} jobs at {limit}/s ({nodes} nodes × {pool} -c {concurrency})"
    section = Section(title, intro)
    load_start = load_average()
    redis = RedisServer(appendonly=True).start()
    sandbox = Sandbox(
        "--rate-limit", f"{limit}/1", "--reset-style", reset_style, stores=STORES
    ).start()
    env = worker_env(redis.url, sandbox.base_url, stores=STORES)
    workers = [
        Worker("worker", env, pool=pool, concurrency=concurrency,
               hostname=f"backlog{node}-{os.getpid()}@%h")
        for node in range(nodes)
    ]  # fmt: skip
    try:
        filled = fill(redis, jobs, f"backlog-{time.time_ns()}")
        print(f"  filled {jobs:,} jobs in {filled.seconds:.1f} s", flush=True)
        windows = Windows()
        samples, note = drain(jobs, limit, workers, sandbox, redis, interval, windows)
        arrivals = [float(e["received_at"]) for e in sandbox.events()]
        marker = one_marker_bytes(redis)
        limited = rate_limited_lines(workers)
    finally:
        for worker in workers:
            worker.cleanup()
        sandbox.stop()
        redis.remove()
    section.add(samples_table(samples, filled))
    notes = [f"sandbox windows: {windows.describe(limit)}"]
    notes += [f"`MEMORY USAGE` of one delivered-marker: {marker} bytes"] if marker else []
    notes += [f"a worker's log of a 429: `{line}`" for line in limited]
    notes += [note] if note else []
    section.add("\n".join([summary(samples, arrivals, filled, limit), *(f"- {n}" for n in notes)]))
    section.add(
        f"Reset convention `{reset_style}`; load average at start: {load_start}; "
        f"at end: {load_average()}."
    )
    return section


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.backlog", __doc__)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="requests per second")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--reset-style", default="seconds", choices=("seconds", "epoch", "epoch-ms"),
        help="how the sandbox writes X-Ratelimit-Reset",
    )  # fmt: skip
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} cores; load average {load_average()}", flush=True)
    run(args.jobs, args.limit, args.nodes, args.concurrency, args.pool, args.interval,
        args.reset_style)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
