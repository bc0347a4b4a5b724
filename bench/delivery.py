"""Unthrottled delivery throughput, end to end, against two baselines at the same concurrency.

For each concurrency C, N events go from a full queue to the sandbox (no rate limit):

- **A, the ceiling**: C threads in one process, each looping ``requests.Session().post``;
  nothing else happens (no queue, no bookkeeping).
- **ours**: ``celery -A worker worker`` (the real app and task) with the prefork pool and
  with the threads pool (and gevent, when it is installed), ``--concurrency C``.
- **B, naive Celery**: ``celery -A bench.naive_worker worker -c C`` with default settings,
  a task doing ``requests.post`` per event.

Throughput is N divided by the time between the first and the last event the sandbox
accepted (its own clock), so worker start-up and queue filling are not counted. The queue
is filled before the worker starts. Worker CPU per event is the CPU time of the worker's
processes (main + pool children) divided by the events delivered while it was measured.

    python -m bench.delivery [--n 5000] [--concurrency 1,4,8,16] [--pools prefork,threads]
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import requests
from celery import Celery

from bench.common import (
    DEFAULT_N,
    STORE,
    STORE_KEY,
    BenchError,
    RedisServer,
    Section,
    Worker,
    cpu_seconds,
    doc_parser,
    env_int,
    events_url,
    payload,
    start_sandbox,
    table,
    wait_for_accepted,
    worker_env,
)
from bench.naive_worker import NAIVE_TASK
from producers.enqueue import Producer

DEFAULT_CONCURRENCY = (1, 4, 8, 16)
FILL_BATCH = 500
TARGET_RATIO_OF_A = 0.5


@dataclass
class Result:
    runner: str
    concurrency: int
    n: int
    accepted: int
    seconds: float
    worker_cpu_ms_per_event: float | None
    sandbox_cpu_share: float  # sandbox CPU seconds / wall seconds (1.0 = one core)
    requests_sent: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


def run_timeout(n: int) -> float:
    # Bounded: even a slow machine moves 20 events/s; past that something is broken.
    return max(120.0, n / 20)


class Stack:
    """The private Redis and the sandbox that every run of this module shares."""

    def __init__(self) -> None:
        self.redis = RedisServer(appendonly=True).start()
        self.sandbox = start_sandbox()

    def clean(self) -> None:
        self.redis.flush()
        self.sandbox.reset()

    def close(self) -> None:
        self.sandbox.stop()
        self.redis.remove()


def fill_ours(redis_url: str, n: int, run: str, batch_size: int = FILL_BATCH) -> None:
    producer = Producer(redis_url)
    try:
        for start in range(0, n, batch_size):
            batch = [payload(i, run) for i in range(start, min(n, start + batch_size))]
            producer.enqueue_many(STORE, batch)
    finally:
        producer.close()


def fill_naive(redis_url: str, base_url: str, n: int, run: str) -> None:
    app = Celery("bench-fill", broker=redis_url)
    url = events_url(base_url)
    try:
        with app.producer_or_acquire() as producer:
            for i in range(n):
                app.send_task(NAIVE_TASK, args=(url, payload(i, run)), producer=producer)
    finally:
        app.close()


def measure_worker(
    stack: Stack, worker: Worker, runner: str, concurrency: int, n: int, timeout: float
) -> Result:
    """Start a worker on a full queue, wait for all N to be accepted, then stop it."""
    sandbox = stack.sandbox
    note = ""
    try:
        worker.start()
        # CPU is measured from "ready" (imports and forks excluded) per event delivered since.
        cpu_start, done_start = worker.cpu_seconds(), sandbox.accepted()
        sandbox_cpu_start, wall_start = cpu_seconds(sandbox.pid), time.monotonic()
        try:
            wait_for_accepted(sandbox, n, timeout, f"{runner} -c {concurrency}")
        except BenchError as exc:
            note = str(exc)
        cpu_end, done_end = worker.cpu_seconds(), sandbox.accepted()
        sandbox_share = (cpu_seconds(sandbox.pid) - sandbox_cpu_start) / (
            time.monotonic() - wall_start
        )
        note = "; ".join(filter(None, [note, log_findings(worker.log())]))
    finally:
        worker.cleanup()
    first, last, accepted = sandbox.received_span()
    delivered = done_end - done_start
    return Result(
        runner,
        concurrency,
        n,
        accepted,
        last - first,
        (cpu_end - cpu_start) * 1000 / delivered if delivered > 0 else None,
        sandbox_share,
        int(sandbox.stats()["requests"]),
        note,
    )


def log_findings(log: str) -> str:
    """What in a worker's log explains a slow run: errors, urllib3 dropping connections."""
    findings = []
    full = log.count("Connection pool is full")
    if full:
        findings.append(f"urllib3 'connection pool is full' ×{full} (connections discarded)")
    errors = sum(1 for line in log.splitlines() if ": ERROR/" in line or ": CRITICAL/" in line)
    if errors:
        findings.append(f"{errors} ERROR lines in the worker log")
    return "; ".join(findings)


def run_ours(
    stack: Stack, pool: str, concurrency: int, n: int, timeout: float | None = None
) -> Result:
    stack.clean()
    fill_ours(stack.redis.url, n, f"{pool}{concurrency}")
    env = worker_env(stack.redis.url, stack.sandbox.base_url)
    worker = Worker("worker", env, pool=pool, concurrency=concurrency)
    runner = f"ours, {pool}"
    return measure_worker(stack, worker, runner, concurrency, n, timeout or run_timeout(n))


def run_naive(stack: Stack, concurrency: int, n: int) -> Result:
    stack.clean()
    fill_naive(stack.redis.url, stack.sandbox.base_url, n, f"naive{concurrency}")
    env = worker_env(stack.redis.url, stack.sandbox.base_url, SCALEV_STOREFRONT_API_KEY=STORE_KEY)
    worker = Worker("bench.naive_worker", env, pool="prefork", concurrency=concurrency)
    return measure_worker(stack, worker, "B: naive Celery", concurrency, n, run_timeout(n))


def run_plain_loop(stack: Stack, threads: int, n: int) -> Result:
    """Baseline A: ``threads`` threads, each with its own Session, N POSTs in all."""
    stack.clean()
    sandbox = stack.sandbox
    url = events_url(sandbox.base_url)
    failures: list[str] = []
    deadline = time.monotonic() + run_timeout(n)

    def post_share(offset: int) -> None:
        with requests.Session() as session:
            for i in range(offset, n, threads):
                if time.monotonic() > deadline:
                    failures.append("timed out")
                    return
                response = session.post(
                    url,
                    json=payload(i, f"plain{threads}"),
                    headers={"X-Scalev-Storefront-Api-Key": STORE_KEY},
                    timeout=10,
                )
                if response.status_code != 204:
                    failures.append(str(response.status_code))

    sandbox_cpu_start, wall_start = cpu_seconds(sandbox.pid), time.monotonic()
    cpu_start = time.process_time()
    workers = [threading.Thread(target=post_share, args=(t,)) for t in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    client_cpu = time.process_time() - cpu_start
    sandbox_share = (cpu_seconds(sandbox.pid) - sandbox_cpu_start) / (time.monotonic() - wall_start)
    first, last, accepted = sandbox.received_span()
    note = f"{len(failures)} failures ({', '.join(sorted(set(failures)))})" if failures else ""
    return Result(
        "A: requests.Session loop",
        threads,
        n,
        accepted,
        last - first,
        client_cpu * 1000 / max(1, accepted),
        sandbox_share,
        int(sandbox.stats()["requests"]),
        note,
    )


def available_pools(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    pools, skipped = [], []
    for pool in requested:
        if pool in ("gevent", "eventlet") and importlib.util.find_spec(pool) is None:
            skipped.append(pool)
        else:
            pools.append(pool)
    return pools, skipped


PROBE_N = 200
PROBE_TIMEOUT_SECONDS = 30.0


def run(
    n: int = DEFAULT_N,
    concurrencies: Sequence[int] = DEFAULT_CONCURRENCY,
    pools: Sequence[str] = ("prefork", "threads"),
    probe_pools: Sequence[str] = ("gevent",),
) -> tuple[Section, list[Result]]:
    """Every pool in ``pools`` at every concurrency; each of ``probe_pools`` only once, at
    the highest concurrency with a few events and a short time bound (a pool already
    known to be slow here must not take the whole time budget)."""
    section = Section(
        "Delivery without a rate limit",
        __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0] if __doc__ else "",
    )
    usable, skipped = available_pools(pools)
    probes, skipped_probes = available_pools(probe_pools)
    results: list[Result] = []
    stack = Stack()
    try:
        for c in concurrencies:
            batch = [run_plain_loop(stack, c, n)]
            batch += [run_ours(stack, pool, c, n) for pool in usable]
            batch.append(run_naive(stack, c, n))
            if c == max(concurrencies):
                for pool in probes:
                    probe = run_ours(stack, pool, c, min(n, PROBE_N), PROBE_TIMEOUT_SECONDS)
                    probe.note = (
                        f"probe: N = {probe.n}, {PROBE_TIMEOUT_SECONDS:g} s bound; " + probe.note
                    ).rstrip("; ")
                    batch.append(probe)
            for result in batch:
                print(f"  {result.runner} -c {c}: {result.rate:,.0f} events/s", flush=True)
            results += batch
    finally:
        stack.close()
    section.add(results_table(results))
    if skipped or skipped_probes:
        section.add(f"Pools not installed, skipped: {', '.join(skipped + skipped_probes)}.")
    section.add(verdicts(results))
    return section, results


def results_table(results: Sequence[Result]) -> str:
    ceilings = {r.concurrency: r.rate for r in results if r.runner.startswith("A:")}
    rows = []
    for r in results:
        ceiling = ceilings.get(r.concurrency, 0.0)
        cpu = f"{r.worker_cpu_ms_per_event:.2f}" if r.worker_cpu_ms_per_event else "-"
        extra = r.requests_sent - r.accepted
        notes = [r.note] if r.note else []
        if r.accepted < r.n:
            notes.append(f"only {r.accepted:,} of {r.n:,} accepted")
        if extra:
            notes.append(f"{extra} requests beyond the accepted events")
        rows.append(
            [
                r.concurrency,
                r.runner,
                f"{r.accepted:,}",
                f"{r.seconds:.2f}",
                f"{r.rate:,.0f}",
                f"{r.rate / ceiling:.2f}" if ceiling else "-",
                cpu,
                f"{r.sandbox_cpu_share * 100:.0f}%",
                "; ".join(notes),
            ]
        )
    return table(
        ["C", "runner", "accepted", "seconds", "events/s", "÷ A", "CPU ms/event",
         "sandbox CPU", "notes"],
        rows,
    )  # fmt: skip


def verdicts(results: Sequence[Result]) -> str:
    lines = []
    by_key = {(r.runner, r.concurrency): r for r in results}
    for c in sorted({r.concurrency for r in results}):
        ceiling = by_key.get(("A: requests.Session loop", c))
        naive = by_key.get(("B: naive Celery", c))
        ours = [r for r in results if r.concurrency == c and r.runner.startswith("ours")]
        if not (ceiling and naive and ours):
            continue
        best = max(ours, key=lambda r: r.rate)
        ratio = best.rate / ceiling.rate if ceiling.rate else 0.0
        met = ratio >= TARGET_RATIO_OF_A and best.rate > naive.rate
        lines.append(
            f"- C={c}: best of ours is {best.runner} at {best.rate:,.0f} events/s = "
            f"{ratio:.0%} of A ({ceiling.rate:,.0f}), {best.rate / naive.rate:.2f}× B "
            f"({naive.rate:,.0f}): target (≥ {TARGET_RATIO_OF_A:.0%} of A and ahead of B) "
            f"**{'met' if met else 'NOT met'}**"
        )
    return "\n".join(lines)


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in split(text)]


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.delivery", __doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_N", DEFAULT_N))
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)))
    parser.add_argument("--pools", default="prefork,threads")
    parser.add_argument(
        "--probe-pools",
        default="gevent",
        help="pools tried once, briefly, at the highest concurrency",
    )
    args = parser.parse_args(argv)
    run(args.n, parse_ints(args.concurrency), split(args.pools), split(args.probe_pools))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
