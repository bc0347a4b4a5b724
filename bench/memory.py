"""Worker memory: RSS of the main process and of each pool child, idle and under load.

Each worker starts on an empty queue and idles for a few seconds (idle sample), then N
events are enqueued and RSS is sampled every 0.2 s until the sandbox accepted them all
(peak per process). RSS counts pages a forked child still shares with its parent in
each process, so the table adds PSS (``/proc/PID/smaps_rollup``: shared pages split
between their sharers) for an honest total. Baseline: the naive Celery worker
(``bench.naive_worker``) with the same pool and concurrency.

    python -m bench.memory [--n 2000] [--concurrency 8] [--pools prefork,threads]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from bench.common import (
    STORE_KEY,
    BenchError,
    Section,
    Worker,
    doc_parser,
    env_int,
    rss_kib,
    table,
    worker_env,
)
from bench.delivery import Stack, available_pools, fill_naive, fill_ours, run_timeout
from harness.proc import pss_kib

IDLE_SECONDS = 3.0
SAMPLE_SECONDS = 0.2


@dataclass
class Snapshot:
    main: int = 0
    children: dict[int, int] = field(default_factory=dict)
    pss_total: int = 0

    @classmethod
    def take(cls, worker: Worker) -> Snapshot:
        main, *children = worker.pids()
        return cls(
            rss_kib(main),
            {pid: rss_kib(pid) for pid in children},
            sum(pss_kib(pid) for pid in [main, *children]),
        )

    def peak(self, other: Snapshot) -> Snapshot:
        children = dict(self.children)
        for pid, rss in other.children.items():
            children[pid] = max(rss, children.get(pid, 0))
        return Snapshot(max(self.main, other.main), children, max(self.pss_total, other.pss_total))


@dataclass
class Measured:
    runner: str
    idle: Snapshot
    load: Snapshot
    note: str = ""


def measure(
    stack: Stack, worker: Worker, runner: str, fill: Callable[[], None], n: int
) -> Measured:
    stack.clean()
    note = ""
    try:
        worker.start()
        time.sleep(IDLE_SECONDS)
        idle = Snapshot.take(worker)
        fill()
        peak = Snapshot.take(worker)
        deadline = time.monotonic() + run_timeout(n)
        while stack.sandbox.accepted() < n:
            if time.monotonic() > deadline:
                note = f"timed out with {stack.sandbox.accepted():,} of {n:,} accepted"
                break
            time.sleep(SAMPLE_SECONDS)
            peak = peak.peak(Snapshot.take(worker))
    finally:
        worker.cleanup()
    return Measured(runner, idle, peak, note)


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def children_cell(children: dict[int, int]) -> str:
    if not children:
        return "(no children: one process)"
    values = [children[pid] for pid in sorted(children)]
    each = ", ".join(mib(v) for v in values)
    return f"{each} (median {mib(int(statistics.median(values)))})"


def run(
    n: int = 2_000, concurrency: int = 8, pools: Sequence[str] = ("prefork", "threads")
) -> Section:
    section = Section("Memory: worker RSS, idle and under load", __doc__.split("\n\n")[1])
    usable, skipped = available_pools(pools)
    results: list[Measured] = []
    stack = Stack()
    try:
        for pool in usable:
            env = worker_env(stack.redis.url, stack.sandbox.base_url)
            worker = Worker("worker", env, pool=pool, concurrency=concurrency)
            fill = partial(fill_ours, stack.redis.url, n, "mem")
            results.append(measure(stack, worker, f"ours, {pool}", fill, n))
        env = worker_env(
            stack.redis.url, stack.sandbox.base_url, SCALEV_STOREFRONT_API_KEY=STORE_KEY
        )
        naive = Worker("bench.naive_worker", env, pool="prefork", concurrency=concurrency)
        fill = partial(fill_naive, stack.redis.url, stack.sandbox.base_url, n, "mem")
        results.append(measure(stack, naive, "B: naive Celery, prefork", fill, n))
    except BenchError as exc:
        section.add(f"Stopped early: {exc}")
    finally:
        stack.close()
    rows = []
    for m in results:
        for state, snap in (("idle", m.idle), ("under load (peak)", m.load)):
            rows.append(
                [
                    f"{m.runner} -c {concurrency}",
                    state,
                    mib(snap.main),
                    children_cell(snap.children),
                    mib(snap.main + sum(snap.children.values())),
                    mib(snap.pss_total),
                    m.note if state != "idle" else "",
                ]
            )
    section.add(
        f"N = {n:,} events for the load phase. MiB.\n\n"
        + table(
            ["worker", "state", "main RSS", "each child RSS", "RSS sum", "PSS total", "notes"],
            rows,
        )
    )
    if skipped:
        section.add(f"Pools not installed, skipped: {', '.join(skipped)}.")
    return section


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.memory", __doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_MEMORY_N", 2_000))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pools", default="prefork,threads")
    args = parser.parse_args(argv)
    run(args.n, args.concurrency, [p.strip() for p in args.pools.split(",") if p.strip()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
