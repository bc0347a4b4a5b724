"""The shared throttle against a rate-limited sandbox, and a baseline without it.

Two worker nodes (``celery -A worker worker -c 8``, distinct hostnames, 16 processes in
all) share one private Redis and drain a backlog of N events into the sandbox, which
limits the storefront route to a fixed window ("25/1": 25 requests per 1 s window,
"100/10") and writes ``X-Ratelimit-Reset`` in one of three conventions (seconds until
the reset, epoch seconds, epoch milliseconds). For every limit and convention:

- **throttle**: the project as shipped (``SNACKVIDEO_THROTTLE=on``);
- **baseline**: ``SNACKVIDEO_THROTTLE=off``, a client that only retries on 429, waiting
  out each 429's ``Retry-After`` in the process that got it.

Measured on the sandbox's own clock and counters:

- *429 share*: requests answered 429 / all requests to the events route;
- *goodput*: events accepted / (advertised limit × windows' worth of time the backlog
  occupied the budget): from the opening of the first window to the opening of the last
  one, plus the share of the last window's budget the backlog still needed (it ran out
  there). A client that fills every window and opens the next one the moment the
  previous ends scores 100 %; time lost waiting past a reset, or budget left unused,
  lowers it. (Not "events / (last − first arrival)": that would credit a client that
  bursts each window at its start with more than the limit.) Windows count every
  request, 429s included, as the sandbox does.

Targets (the throttle issue): <= 0.5 % of requests answered 429, >= 95 % of the limit used.

    python -m bench.throttle [--limits 25/1,100/10] [--styles seconds,epoch,epoch-ms]
                             [--windows 12,3] [--modes throttle,baseline] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    ROOT,
    STORE,
    BenchError,
    RedisServer,
    Sandbox,
    Section,
    Worker,
    load_average,
    payload,
    table,
    wait_until,
    worker_env,
)
from producers.enqueue import Producer
from sandbox.ratelimit import parse_rate_limit

DEFAULT_LIMITS = ("25/1", "100/10")
DEFAULT_STYLES = ("seconds", "epoch", "epoch-ms")
# Windows' worth of backlog per limit: 12 × 25 = 300 events, 3 × 100 = 300 events.
DEFAULT_WINDOWS = (12, 3)
NODES = 2
CONCURRENCY = 8
TARGET_429_SHARE = 0.005
TARGET_GOODPUT = 0.95
DOCS = ROOT / "docs" / "throttle.md"


@dataclass
class Result:
    mode: str
    limit: str
    style: str
    n: int
    accepted: int
    requests: int
    rejected: int
    goodput: float
    seconds: float

    @property
    def share_429(self) -> float:
        return self.rejected / self.requests if self.requests else 0.0


def clear_throttle_state(redis: RedisServer) -> None:
    client = redis.client
    assert client is not None
    for key in list(client.scan_iter(match="snackvideo:throttle*", count=1000)):
        client.delete(key)


def measure(
    redis: RedisServer,
    sandbox: Sandbox,
    mode: str,
    limit_spec: str,
    style: str,
    n: int,
    alignment: str = "first-request",
) -> Result:
    limit, window = parse_rate_limit(limit_spec)
    clear_throttle_state(redis)
    sandbox.configure(rate_limit=limit_spec, reset_style=style, window_alignment=alignment)
    sandbox.reset()
    producer = Producer(redis.url)
    run = f"{mode}-{limit_spec.replace('/', 'per')}-{style}"
    try:
        producer.enqueue_many(STORE, [payload(i, run) for i in range(n)])
    finally:
        producer.close()
    started = time.monotonic()
    # Generous bound: a tenth of the advertised rate, plus start-up slack.
    timeout = n / (limit / window) * 10 + 60
    wait_until(lambda: sandbox.accepted() >= n, timeout, f"{run}: {n} events", interval=0.25)
    seconds = time.monotonic() - started
    stats = sandbox.stats()
    windows = stats["windows"]
    if not windows:
        raise BenchError(f"{run}: the sandbox saw no window")
    accepted = int(stats["accepted"])
    # Whole windows up to the last one, which counts for the share of its budget the
    # backlog still needed: the backlog ran out there, whatever the client.
    last_share = min(1.0, windows[-1]["count"] / limit)
    occupied = windows[-1]["start"] - windows[0]["start"] + window * last_share
    if alignment == "clock" and len(windows) > 1:
        # The first window opened on the server's clock, before the backlog arrived: like
        # the last one, it counts for the share of its budget the backlog could use.
        occupied -= window * (1 - min(1.0, windows[0]["count"] / limit))
    return Result(
        mode=mode,
        limit=limit_spec,
        style=style,
        n=n,
        accepted=accepted,
        requests=int(stats["requests"]),
        rejected=int(stats["by_status"].get("429", 0)),
        goodput=accepted / (limit * occupied / window),
        seconds=seconds,
    )


def start_nodes(redis: RedisServer, sandbox: Sandbox, mode: str) -> list[Worker]:
    env = worker_env(
        redis.url,
        sandbox.base_url,
        SNACKVIDEO_THROTTLE="on" if mode == "throttle" else "off",
        SNACKVIDEO_DEFAULT_RATE="10",  # the shipped default, before any header is seen
        SNACKVIDEO_SCHEDULER_POLL_SECONDS="0.1",
    )
    nodes = []
    try:
        for index in range(NODES):
            hostname = f"{mode}-{'ab'[index]}-{os.getpid()}@%h"
            worker = Worker(
                "worker", env, concurrency=CONCURRENCY, extra_args=("--hostname", hostname)
            )
            nodes.append(worker.start())
    except BaseException:
        for worker in nodes:
            worker.cleanup()
        raise
    return nodes


def run(
    limits: Sequence[str] = DEFAULT_LIMITS,
    styles: Sequence[str] = DEFAULT_STYLES,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    modes: Sequence[str] = ("throttle", "baseline"),
) -> Section:
    section = Section(
        "Throttle: 429s and goodput against a rate-limited sandbox",
        intro=(
            f"{NODES} worker nodes × `-c {CONCURRENCY}` (prefork) on one private Redis; "
            "backlog enqueued at once; figures from the sandbox's own counters. "
            f"Load average before: {load_average()} on {os.cpu_count()} CPUs."
        ),
    )
    results: list[Result] = []
    redis = RedisServer().start()
    sandbox = Sandbox().start()
    try:
        for mode in modes:
            nodes = start_nodes(redis, sandbox, mode)
            try:
                for limit_spec, count in zip(limits, windows, strict=True):
                    limit, _ = parse_rate_limit(limit_spec)
                    for style in styles:
                        result = measure(redis, sandbox, mode, limit_spec, style, limit * count)
                        results.append(result)
                        print(row_text(result), flush=True)
            finally:
                for worker in nodes:
                    worker.cleanup()
    finally:
        sandbox.stop()
        redis.stop()
    section.add(results_table(results))
    section.add(f"Load average after: {load_average()}.")
    section.add(verdict(results))
    return section


def row_text(result: Result) -> str:
    return (
        f"{result.mode:<9} {result.limit:>6} {result.style:<8} delivered {result.accepted}/"
        f"{result.n}  requests {result.requests}  429 {result.share_429:6.2%}  "
        f"goodput {result.goodput:6.1%}  ({result.seconds:.1f} s)"
    )


def results_table(results: Sequence[Result]) -> str:
    return table(
        ["limit", "Reset", "client", "delivered", "requests", "429 share", "goodput", "seconds"],
        [
            [
                r.limit,
                r.style,
                r.mode,
                f"{r.accepted}/{r.n}",
                r.requests,
                f"{r.share_429:.2%}",
                f"{r.goodput:.1%}",
                f"{r.seconds:.1f}",
            ]
            for r in results
        ],
    )


def verdict(results: Sequence[Result]) -> str:
    ours = [r for r in results if r.mode == "throttle"]
    if not ours:
        return "No throttle runs."
    worst_429 = max(ours, key=lambda r: r.share_429)
    worst_goodput = min(ours, key=lambda r: r.goodput)
    met_429 = worst_429.share_429 <= TARGET_429_SHARE
    met_goodput = worst_goodput.goodput >= TARGET_GOODPUT
    return (
        f"Throttle, worst case over limits and conventions: 429 share "
        f"{worst_429.share_429:.2%} ({worst_429.limit} {worst_429.style}; target ≤ "
        f"{TARGET_429_SHARE:.1%}: {'met' if met_429 else 'NOT met'}), goodput "
        f"{worst_goodput.goodput:.1%} ({worst_goodput.limit} {worst_goodput.style}; target ≥ "
        f"{TARGET_GOODPUT:.0%}: {'met' if met_goodput else 'NOT met'})."
    )


def write_docs(section: Section, path: Path = DOCS) -> None:
    """Replace the generated block of docs/throttle.md, keeping the prose around it."""
    begin, end = "<!-- bench:throttle:begin -->", "<!-- bench:throttle:end -->"
    block = f"{begin}\n{section.markdown()}{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throttle", description=__doc__)
    parser.add_argument("--limits", default=",".join(DEFAULT_LIMITS))
    parser.add_argument("--styles", default=",".join(DEFAULT_STYLES))
    parser.add_argument(
        "--windows", default=",".join(map(str, DEFAULT_WINDOWS)),
        help="backlog per limit, in windows' worth of events",
    )  # fmt: skip
    parser.add_argument("--modes", default="throttle,baseline")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/throttle.md")
    args = parser.parse_args(argv)
    section = run(
        _csv(args.limits), _csv(args.styles), [int(w) for w in _csv(args.windows)],
        _csv(args.modes),
    )  # fmt: skip
    if not args.no_docs:
        write_docs(section)
        print(f"wrote {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
