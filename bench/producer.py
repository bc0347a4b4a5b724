"""Producer cost on the request path: ``enqueue`` / ``enqueue_many`` against ``send_task``.

Every method publishes the same job (same kwargs, same ~300-byte payload) to a private,
AOF-enabled redis-server on 127.0.0.1. Methods run interleaved in rounds, so background
load on a shared machine falls on all of them alike rather than on whichever ran last.

    python -m bench.producer [--n 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery

from bench.common import (
    DEFAULT_N,
    STORE,
    RedisServer,
    Section,
    env_int,
    payload,
    percentile,
    table,
)
from producers.enqueue import Producer
from producers.keys import DELIVER_TASK, DELIVERY_QUEUE
from producers.models import JOB_SCHEMA_VERSION

BATCH = 100
WARMUP_CALLS = 100
TARGET_P99_MS = 2.0


@dataclass
class Method:
    name: str
    events_per_call: int
    call: Callable[[int], object]  # argument: a running index, for distinct click_ids
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def run(self, calls: int, start: int) -> None:
        began = time.perf_counter()
        for i in range(start, start + calls):
            t0 = time.perf_counter()
            self.call(i)
            self.latencies.append(time.perf_counter() - t0)
        self.seconds += time.perf_counter() - began

    @property
    def events(self) -> int:
        return len(self.latencies) * self.events_per_call


def build_methods(redis_url: str) -> tuple[list[Method], Callable[[], None]]:
    producer = Producer(redis_url)
    celery_app = Celery("bench-producer", broker=redis_url)
    celery_app.conf.update(task_default_queue=DELIVERY_QUEUE, broker_connection_retry=False)

    def send_task(i: int) -> None:
        job_id = str(uuid.uuid4())
        kwargs = {
            "job_id": job_id,
            "store_id": STORE,
            "payload": payload(i, "celery"),
            "enqueued_at": time.time(),
            "schema": JOB_SCHEMA_VERSION,
        }
        celery_app.send_task(DELIVER_TASK, kwargs=kwargs, task_id=job_id)

    methods = [
        Method("Celery `send_task` (baseline)", 1, send_task),
        Method("`enqueue`", 1, lambda i: producer.enqueue(STORE, payload(i, "one"))),
        Method(
            "`enqueue` + idempotency_key",
            1,
            lambda i: producer.enqueue(STORE, payload(i, "idem"), idempotency_key=f"order-{i}"),
        ),
        Method(
            f"`enqueue_many` ({BATCH} per call)",
            BATCH,
            lambda i: producer.enqueue_many(
                STORE, [payload(i * BATCH + k, "many") for k in range(BATCH)]
            ),
        ),
    ]

    def close() -> None:
        producer.close()
        celery_app.close()

    return methods, close


def run(n: int = DEFAULT_N, rounds: int = 5) -> Section:
    section = Section(
        "Producer: latency on the request path",
        f"{n:,} events per method against a private redis-server (AOF on, fsync every "
        f"second) on 127.0.0.1, one thread, in {rounds} interleaved rounds after "
        f"{WARMUP_CALLS} warm-up calls each. Latency is per call (a call to `enqueue_many` "
        f"carries {BATCH} events). Every method includes building the message; ours also "
        "validates the payload with pydantic, which `send_task` does not.",
    )
    server = RedisServer(appendonly=True).start()
    methods, close = build_methods(server.url)
    try:
        for method in methods:
            for i in range(WARMUP_CALLS // method.events_per_call or 1):
                method.call(10_000_000 + i)
            method.latencies.clear()
            method.seconds = 0.0
        server.flush()
        for r in range(rounds):
            for method in methods:
                calls = max(1, n // rounds // method.events_per_call)
                method.run(calls, start=r * calls)
            server.flush()  # keep the list short: memory, not length, would differ by round
    finally:
        close()
        server.remove()

    baseline = methods[0]
    baseline_rate = baseline.events / baseline.seconds
    rows = []
    for method in methods:
        lat = method.latencies
        rate = method.events / method.seconds
        rows.append(
            [
                method.name,
                f"{len(lat):,}",
                f"{method.events:,}",
                f"{percentile(lat, 50) * 1000:.3f}",
                f"{percentile(lat, 99) * 1000:.3f}",
                f"{max(lat) * 1000:.2f}",
                f"{rate:,.0f}",
                f"{rate / baseline_rate:.2f}×",
            ]
        )
    section.add(
        table(
            [
                "method",
                "calls",
                "events",
                "p50 ms",
                "p99 ms",
                "max ms",
                "events/s",
                "events/s vs send_task",
            ],
            rows,
        )  # fmt: skip
    )
    single_p99 = percentile(methods[1].latencies, 99) * 1000
    verdict = "met" if single_p99 <= TARGET_P99_MS else "NOT met"
    section.add(
        f"Target `enqueue` p99 ≤ {TARGET_P99_MS:g} ms on a local Redis: **{verdict}** "
        f"({single_p99:.3f} ms)."
    )
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.producer", description=__doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_N", DEFAULT_N))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.n, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
