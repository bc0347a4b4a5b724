"""Capacity against a distant Scalev: events/s per host and memory per slot at 150 ms.

The sandbox answers every request after ``--latency-ms`` (150: an API across an ocean)
and enforces a rate limit far above any rate reached here (100,000/s), so the workers run
with the shared throttle on, as shipped, and learn a limit from real headers without it
ever being the limit. For each configuration (a pool, its concurrency C per worker, and
how many worker nodes share the host), N events (about ``--seconds`` of work at the ideal
rate) are queued before the workers start; the workers (``celery -A worker worker``,
default settings) drain them. Measured:

- *events/s*: the middle 80 % of the events over the time they took to arrive (the
  sandbox's clock), so start-up ramps and the last few in-flight events are not counted;
- *of ideal*: that rate ÷ (slots ÷ latency), Little's law for slots that do nothing but
  wait; the baseline row per slot count is a lean raw-socket client with that many
  connections against the same sandbox (the sandbox alone holds that many slow requests);
- *CPU ms/event*: CPU time of every worker process from "ready" until the last event,
  per event;
- *PSS per slot*: peak proportional set size (``smaps_rollup``: pages shared after the
  fork count once in all) of the worker processes, divided by the slots; for prefork
  also one child's PSS and the main process's.

    python -m bench.capacity [--latency-ms 150] [--seconds 8]
                             [--configs prefork:8,prefork:16,threads:32,threads:32x2,...]
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    table,
)
from bench.delivery import fill_ours, split
from bench.sandbox_ceiling import run_lean
from harness.proc import pss_kib
from harness.worker import worker_env

DEFAULT_LATENCY_MS = 150.0
DEFAULT_SECONDS = 8.0
DEFAULT_CONFIGS = (
    "prefork:8,prefork:16,prefork:32,prefork:64,"
    "threads:8,threads:16,threads:32,threads:64,threads:32x2"
)
#: Far above every rate reached here: the throttle runs, learns it, and never waits on it.
SANDBOX_LIMIT = "100000/1"
MIDDLE = (10.0, 90.0)  # percentiles of arrival times the rate is measured between
SAMPLE_SECONDS = 1.0
MIN_EVENTS = 400


@dataclass(frozen=True)
class Config:
    pool: str
    concurrency: int
    nodes: int = 1

    @classmethod
    def parse(cls, text: str) -> Config:
        pool, _, rest = text.partition(":")
        concurrency, _, nodes = rest.partition("x")
        return cls(pool, int(concurrency), int(nodes or 1))

    @property
    def slots(self) -> int:
        return self.concurrency * self.nodes

    def label(self) -> str:
        nodes = f" × {self.nodes} nodes" if self.nodes > 1 else ""
        return f"{self.pool} -c {self.concurrency}{nodes}"


@dataclass
class Memory:
    """Peak PSS (KiB) of every worker process seen while the backlog drained."""

    main: dict[int, int] = field(default_factory=dict)
    children: dict[int, int] = field(default_factory=dict)

    def sample(self, workers: Sequence[Worker]) -> None:
        for worker in workers:
            main, *children = worker.pids()
            self.main[main] = max(self.main.get(main, 0), pss_kib(main))
            for pid in children:
                self.children[pid] = max(self.children.get(pid, 0), pss_kib(pid))

    @property
    def total(self) -> int:
        return sum(self.main.values()) + sum(self.children.values())


@dataclass
class Measured:
    label: str
    slots: int
    n: int
    accepted: int
    rate: float
    ideal: float
    cpu_ms_per_event: float | None
    memory: Memory | None
    status_429: int = 0
    note: str = ""


def middle_rate(arrivals: Sequence[float]) -> float:
    """Events per second between the 10th and the 90th percentile of arrival times."""
    if len(arrivals) < 10:
        return 0.0
    ordered = sorted(arrivals)
    low, high = (percentile(ordered, p) for p in MIDDLE)
    between = sum(1 for t in ordered if low <= t <= high) - 1
    return between / (high - low) if high > low else 0.0


def events_for(slots: int, latency_s: float, seconds: float) -> int:
    return max(MIN_EVENTS, round(slots / latency_s * seconds))


def run_config(
    config: Config, redis: RedisServer, sandbox: Sandbox, latency_s: float, seconds: float
) -> Measured:
    redis.flush()
    sandbox.reset()
    n = events_for(config.slots, latency_s, seconds)
    fill_ours(redis.url, n, f"cap-{config.pool}{config.concurrency}x{config.nodes}")
    # The default configuration: no rate or throttle override, metrics off (no port).
    env = worker_env(redis.url, sandbox.base_url, stores=STORES)
    workers = [
        Worker("worker", env, pool=config.pool, concurrency=config.concurrency,
               hostname=f"cap{node}-{os.getpid()}@%h")
        for node in range(config.nodes)
    ]  # fmt: skip
    memory, note = Memory(), ""
    try:
        for worker in workers:  # all start together; each is then awaited
            worker.start(wait_ready=False)
        for worker in workers:
            worker.wait_ready(timeout=120)
        cpu_start = sum(w.cpu_seconds() for w in workers)
        done_start = sandbox.accepted()
        deadline = time.monotonic() + max(120.0, 10 * n * latency_s / config.slots)
        while sandbox.accepted() < n:
            if time.monotonic() > deadline:
                note = f"timed out with {sandbox.accepted():,} of {n:,} accepted"
                break
            memory.sample(workers)
            time.sleep(SAMPLE_SECONDS)
        cpu = sum(w.cpu_seconds() for w in workers) - cpu_start
        delivered = sandbox.accepted() - done_start
    finally:
        for worker in workers:
            worker.cleanup()
    arrivals = [float(e["received_at"]) for e in sandbox.events()]
    stats = sandbox.stats()
    return Measured(
        config.label(),
        config.slots,
        n,
        len(arrivals),
        middle_rate(arrivals),
        config.slots / latency_s,
        cpu * 1000 / delivered if delivered > 0 else None,
        memory,
        int(stats["by_status"].get("429", 0)),
        note,
    )


def run_baseline(sandbox: Sandbox, slots: int, latency_s: float, seconds: float) -> Measured:
    """The sandbox alone: a lean client holding ``slots`` slow requests at once."""
    n = events_for(slots, latency_s, seconds / 2)
    lean = run_lean(sandbox, slots, n)
    arrivals = [float(e["received_at"]) for e in sandbox.events()]
    return Measured(
        "baseline: lean client, sandbox alone", slots, n, len(arrivals),
        middle_rate(arrivals), slots / latency_s, None, None,
        note=lean.note if "failed" in lean.note else "",
    )  # fmt: skip


def memory_cells(result: Measured, pool: str) -> list[str]:
    memory = result.memory
    if memory is None or not memory.main:
        return ["-", "-", "-"]
    per_slot = f"{memory.total / 1024 / result.slots:.1f}"
    if pool == "prefork" and memory.children:
        child = sorted(memory.children.values())[len(memory.children) // 2]
        main = max(memory.main.values())
        return [per_slot, f"{child / 1024:.1f}", f"{main / 1024:.1f}"]
    return [per_slot, "-", f"{max(memory.main.values()) / 1024:.1f}"]


def results_table(results: Sequence[tuple[str, Measured]]) -> str:
    rows = []
    for pool, r in results:
        notes = [r.note] if r.note else []
        if r.accepted < r.n:
            notes.append(f"only {r.accepted:,} of {r.n:,} accepted")
        if r.status_429:
            notes.append(f"{r.status_429} answered 429")
        cpu = f"{r.cpu_ms_per_event:.2f}" if r.cpu_ms_per_event else "-"
        total = f"{r.memory.total / 1024:,.0f}" if r.memory and r.memory.main else "-"
        rows.append(
            [r.slots, r.label, f"{r.n:,}", f"{r.rate:,.1f}", f"{r.ideal:,.1f}",
             f"{r.rate / r.ideal:.0%}", cpu, total, *memory_cells(r, pool), "; ".join(notes)]
        )  # fmt: skip
    return table(
        ["slots", "configuration", "N", "events/s", "ideal (slots ÷ latency)", "of ideal",
         "CPU ms/event", "PSS MiB (all)", "PSS MiB / slot", "PSS MiB / child (median)",
         "PSS MiB main", "notes"],
        rows,
    )  # fmt: skip


def run(
    configs: Sequence[Config] | None = None,
    latency_ms: float = DEFAULT_LATENCY_MS,
    seconds: float = DEFAULT_SECONDS,
) -> Section:
    configs = list(configs or [Config.parse(c) for c in split(DEFAULT_CONFIGS)])
    intro = doc_intro(__doc__)
    section = Section(f"Capacity at {latency_ms:g} ms of Scalev latency", intro)
    latency_s = latency_ms / 1000
    load_start = load_average()
    redis = RedisServer(appendonly=True).start()
    sandbox = Sandbox(
        "--latency-ms", f"{latency_ms:g}", "--rate-limit", SANDBOX_LIMIT, stores=STORES
    ).start()
    results: list[tuple[str, Measured]] = []
    try:
        for slots in sorted({c.slots for c in configs}):
            results.append(("-", run_baseline(sandbox, slots, latency_s, seconds)))
            for config in (c for c in configs if c.slots == slots):
                result = run_config(config, redis, sandbox, latency_s, seconds)
                results.append((config.pool, result))
                print(f"  {result.label}: {result.rate:,.1f} events/s "
                      f"({result.rate / result.ideal:.0%} of ideal)", flush=True)  # fmt: skip
    finally:
        sandbox.stop()
        redis.remove()
    section.add(results_table(results))
    section.add(f"Load average at start: {load_start}; at end: {load_average()}.")
    return section


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.capacity", __doc__)
    parser.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_MS)
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS,
        help="events per run = slots ÷ latency × this (at least %d)" % MIN_EVENTS,
    )  # fmt: skip
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS,
        help="pool:concurrency[xnodes], comma-separated (nodes share the host)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    configs = [Config.parse(c) for c in split(args.configs)]
    print(f"{os.cpu_count()} cores; load average {load_average()}", flush=True)
    run(configs, args.latency_ms, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
