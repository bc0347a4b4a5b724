"""Ours against the naive Celery task (baseline B), prefork, with and without Flower.

Issue 16's comparison: at each concurrency C, ``celery -A worker worker`` (the real app)
and ``celery -A bench.naive_worker worker`` (default settings, ``requests.post`` per
event) deliver N events each to the unthrottled sandbox, under the same task-events
condition:

- **no Flower**: task events off in both (ours by default, ``SNACKVIDEO_TASK_EVENTS``;
  the naive worker runs with Celery's defaults, which send none either);
- **Flower**: a real ``celery flower`` process runs against the same broker (with the
  runner's own app); it switches task events on in every worker (``enable_events``,
  every 5 s), and the run waits for the worker to log that before its clock starts.

The queue is filled first and set aside (its Redis list renamed), so each worker starts,
Flower switches its events on, and only then does the queue appear under its own name:
the timed part is the same in both conditions, and no filling competes for the CPU.
Events/s is N over the sandbox's first to last acceptance; CPU per event is the worker's
processes' CPU from the queue's return to the last event, over N. The ratio columns are
ours ÷ naive: events/s ≥ 1.00 and CPU per event ≤ 1.00 are issue 16's targets.

    python -m bench.versus_naive [--n 3000] [--concurrency 4,8,16] [--rounds 3]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import requests

from bench.common import (
    STORE_KEY,
    BenchError,
    Section,
    Worker,
    doc_parser,
    env_int,
    free_port,
    load_average,
    table,
    wait_for_accepted,
    wait_until,
    worker_env,
)
from bench.delivery import Stack, fill_naive, fill_ours, parse_ints, run_timeout
from producers.keys import DELIVERY_QUEUE

DEFAULT_CONCURRENCY = (4, 8, 16)
NAIVE_QUEUE = "celery"  # Celery's default queue, the naive app's
#: kombu's priority lists are ``<queue><sep><priority>``.
KOMBU_PRIORITY_SEP = "\x06\x16"
PARKED_PREFIX = "bench:parked:"
#: Celery logs this when a remote enable_events (Flower's) reaches a worker.
EVENTS_ENABLED_LINE = "Events of group {task} enabled by remote."
#: Flower broadcasts enable_events every 5 s; a worker ready after one waits for the next.
EVENTS_ENABLED_TIMEOUT_SECONDS = 30.0
CONDITIONS = ("no Flower", "Flower")


class Flower(Worker):
    """``celery -A app flower`` on a free port of 127.0.0.1, in its own process group."""

    port: int = 0

    def arguments(self) -> list[str]:
        return ["flower", "--address=127.0.0.1", f"--port={self.port}"]

    def start_answering(self, timeout: float = 60.0) -> Flower:
        self.port = free_port()
        self.start(wait_ready=False)
        process = self.process
        assert process is not None

        def answers() -> bool:
            if process.poll() is not None:
                raise BenchError(f"flower exited:\n{self.log()[-2000:]}")
            try:
                url = f"http://127.0.0.1:{self.port}/healthcheck"
                return requests.get(url, timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(answers, timeout, interval=0.25, what="flower to answer")
        return self


@dataclass
class Run:
    runner: str  # "ours" | "naive"
    condition: str
    concurrency: int
    n: int
    accepted: int
    seconds: float
    cpu_ms_per_event: float | None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


def queue_lists(client: redis.Redis, queue: str) -> list[bytes]:
    """The queue's Redis lists: its own and kombu's priority ones."""
    names = [queue.encode(), *client.scan_iter(match=f"{queue}{KOMBU_PRIORITY_SEP}*")]
    return [name for name in names if client.type(name) == b"list"]


def park(client: redis.Redis, queue: str) -> list[tuple[bytes, bytes]]:
    moved = [(name, PARKED_PREFIX.encode() + name) for name in queue_lists(client, queue)]
    for name, parked in moved:
        client.rename(name, parked)
    return moved


def unpark(client: redis.Redis, moved: list[tuple[bytes, bytes]]) -> None:
    # RENAME wakes a worker blocked in BRPOP on the name, as a push would.
    for name, parked in moved:
        client.rename(parked, name)


def measure(stack: Stack, runner: str, condition: str, concurrency: int, n: int) -> Run:
    stack.clean()
    client = stack.redis.client
    assert client is not None
    base_url = stack.sandbox.base_url
    if runner == "ours":
        fill_ours(stack.redis.url, n, f"vs{concurrency}")
        app, queue = "worker", DELIVERY_QUEUE
        env = worker_env(stack.redis.url, base_url)
    else:
        fill_naive(stack.redis.url, base_url, n, f"vs{concurrency}")
        app, queue = "bench.naive_worker", NAIVE_QUEUE
        env = worker_env(stack.redis.url, base_url, SCALEV_STOREFRONT_API_KEY=STORE_KEY)
    moved = park(client, queue)
    flower = Flower(app, env) if condition == "Flower" else None
    worker = Worker(app, env, pool="prefork", concurrency=concurrency)
    note = ""
    try:
        if flower is not None:
            flower.start_answering()
        worker.start()
        if flower is not None:
            wait_until(
                lambda: EVENTS_ENABLED_LINE in worker.log(),
                EVENTS_ENABLED_TIMEOUT_SECONDS,
                interval=0.1,
                what="Flower to switch the worker's task events on",
            )
        cpu_start, done_start = worker.cpu_seconds(), stack.sandbox.accepted()
        unpark(client, moved)
        try:
            wait_for_accepted(stack.sandbox, n, run_timeout(n), f"{runner} -c {concurrency}")
        except BenchError as exc:
            note = str(exc)
        cpu, done = worker.cpu_seconds() - cpu_start, stack.sandbox.accepted() - done_start
    finally:
        worker.cleanup()
        if flower is not None:
            flower.cleanup()
    first, last, accepted = stack.sandbox.received_span()
    return Run(
        runner,
        condition,
        concurrency,
        n,
        accepted,
        last - first,
        cpu * 1000 / done if done > 0 else None,
        note,
    )


def run(
    n: int = 3_000,
    concurrencies: Sequence[int] = DEFAULT_CONCURRENCY,
    rounds: int = 3,
    conditions: Sequence[str] = CONDITIONS,
) -> tuple[Section, list[Run]]:
    section = Section(
        "Ours against the naive Celery task (issue 16)",
        __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0] if __doc__ else "",
    )
    runs: list[Run] = []
    load_start = load_average()
    stack = Stack()
    try:
        for _ in range(rounds):
            for c in concurrencies:
                for condition in conditions:
                    for runner in ("ours", "naive"):  # back to back: the same load on both
                        result = measure(stack, runner, condition, c, n)
                        print(
                            f"  {runner} -c {c}, {condition}: {result.rate:,.0f} events/s, "
                            f"{result.cpu_ms_per_event or 0:.2f} ms CPU/event",
                            flush=True,
                        )
                        runs.append(result)
    finally:
        stack.close()
    section.add(comparison_table(runs))
    section.add(
        f"N = {n:,} per run, {rounds} round(s); load average (1/5/15 min) at the start "
        f"{load_start}, at the end {load_average()}. "
        + (
            "Each figure is the median of the rounds; a ratio is the median of the rounds' "
            "ratios (ours ÷ the naive run just after it), with their range."
            if rounds > 1
            else ""
        )
    )
    return section, runs


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _ratios(pairs: Sequence[tuple[float | None, float | None]]) -> str:
    """Median of the per-round ratios (each of two runs back to back), and their range."""
    ratios = sorted(a / b for a, b in pairs if a and b)
    if not ratios:
        return "-"
    median = f"{statistics.median(ratios):.2f}"
    return median if len(ratios) == 1 else f"{median} ({ratios[0]:.2f}–{ratios[-1]:.2f})"


def comparison_table(runs: Sequence[Run]) -> str:
    rows = []
    cells = sorted({(r.concurrency, CONDITIONS.index(r.condition)) for r in runs})
    for c, condition_index in cells:
        condition = CONDITIONS[condition_index]
        cell = [r for r in runs if (r.concurrency, r.condition) == (c, condition)]
        mine = [r for r in cell if r.runner == "ours"]
        naive = [r for r in cell if r.runner == "naive"]
        rate_ours, rate_naive = _median([r.rate for r in mine]), _median([r.rate for r in naive])
        cpu_ours = _median([r.cpu_ms_per_event for r in mine])
        cpu_naive = _median([r.cpu_ms_per_event for r in naive])
        pairs = list(zip(mine, naive, strict=False))  # round by round
        notes = [f"{r.runner}: {r.note}" for r in cell if r.note]
        notes += [f"{r.runner}: {r.accepted:,} of {r.n:,}" for r in cell if r.accepted < r.n]
        rows.append(
            [
                c,
                condition,
                f"{rate_ours or 0:,.0f}",
                f"{rate_naive or 0:,.0f}",
                _ratios([(a.rate, b.rate) for a, b in pairs]),
                f"{cpu_ours:.2f}" if cpu_ours else "-",
                f"{cpu_naive:.2f}" if cpu_naive else "-",
                _ratios([(a.cpu_ms_per_event, b.cpu_ms_per_event) for a, b in pairs]),
                "; ".join(notes),
            ]
        )
    return table(
        ["C", "task events", "ours events/s", "naive events/s", "events/s vs naive",
         "ours CPU ms/event", "naive CPU ms/event", "CPU/event vs naive", "notes"],
        rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m bench.versus_naive", __doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_VERSUS_N", 3_000))
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)))
    parser.add_argument("--rounds", type=int, default=env_int("BENCH_VERSUS_ROUNDS", 3))
    parser.add_argument(
        "--conditions", default=",".join(CONDITIONS), help="no Flower, Flower, or both"
    )
    args = parser.parse_args(argv)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown conditions: {', '.join(sorted(unknown))}")
    run(args.n, parse_ints(args.concurrency), args.rounds, conditions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
