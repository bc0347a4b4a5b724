"""Choosing the worker pool and concurrency: delivered events per second, measured.

For each configuration, N events are enqueued before the worker starts; the worker (the
real app, ``celery -A worker worker --pool P -c C``) drains them into the sandbox, which
answers after ``latency`` ms (0: loopback, CPU-bound; 50/150: the round trip of a real
API across a region or an ocean). Throughput is N over the span between the first and
the last event the sandbox accepted (its clock), so start-up is not counted. The rows
with ``metrics on`` serve /metrics (multiprocess files) to show what metrics cost.

    python -m bench.pools [--n 1000] [--latency 0,50] [--configs prefork:8,threads:8,...]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from bench.common import (
    STORE,
    RedisServer,
    Worker,
    free_port,
    load_average,
    payload,
    rss_kib,
    start_sandbox,
    table,
    wait_for_accepted,
    worker_env,
)
from producers.enqueue import Producer

DEFAULT_CONFIGS = "prefork:2,prefork:8,prefork:16,threads:8,threads:16,prefork:8:metrics"
FILL_BATCH = 500


@dataclass
class Config:
    pool: str
    concurrency: int
    metrics: bool

    @classmethod
    def parse(cls, text: str) -> Config:
        pool, concurrency, *flags = text.split(":")
        return cls(pool, int(concurrency), "metrics" in flags)

    def label(self) -> str:
        return f"{self.pool} -c {self.concurrency}" + (" (metrics on)" if self.metrics else "")


def run_one(
    config: Config, latency_ms: float, n: int, redis: RedisServer
) -> tuple[float, float, float]:
    """(events/s, worker CPU seconds per 1000 events, worker RSS MiB) for one configuration."""
    redis.flush()
    sandbox = start_sandbox("--latency-ms", str(latency_ms))
    producer = Producer(redis.url)
    tag = f"{config.pool}{config.concurrency}-{latency_ms:g}-{time.time_ns()}"
    for start in range(0, n, FILL_BATCH):
        batch = [payload(i, tag) for i in range(start, min(n, start + FILL_BATCH))]
        producer.enqueue_many(STORE, batch)
    producer.close()
    env = worker_env(redis.url, sandbox.base_url)
    if config.metrics:
        env["SNACKVIDEO_METRICS_PORT"] = str(free_port())
    worker = Worker("worker", env, pool=config.pool, concurrency=config.concurrency)
    try:
        worker.start()
        cpu_before = worker.cpu_seconds()
        wait_for_accepted(sandbox, n, timeout=600, what=f"{n} events ({config.label()})")
        cpu = worker.cpu_seconds() - cpu_before
        rss_mib = sum(rss_kib(pid) for pid in worker.pids()) / 1024
        first, last, count = sandbox.received_span()
        return count / max(last - first, 1e-9), cpu * 1000 / count, rss_mib
    finally:
        worker.cleanup()
        sandbox.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pools", description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency", default="0,50", help="sandbox latencies in ms")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="pool:concurrency[:metrics]")
    args = parser.parse_args(argv)
    configs = [Config.parse(c) for c in args.configs.split(",")]
    latencies = [float(x) for x in args.latency.split(",")]
    print(f"{os.cpu_count()} CPUs; load average before: {load_average()}; n={args.n}", flush=True)
    redis = RedisServer(appendonly=True).start()
    rows = []
    try:
        for latency in latencies:
            for config in configs:
                rate, cpu, rss = run_one(config, latency, args.n, redis)
                rows.append(
                    [f"{latency:g}", config.label(), f"{rate:,.0f}", f"{cpu:.2f}", f"{rss:,.0f}"]
                )
                print(" | ".join(rows[-1]), flush=True)
    finally:
        redis.remove()
    headers = ["latency (ms)", "pool", "delivered/s", "worker CPU s / 1000 events", "RSS MiB"]
    print()
    print(table(headers, rows))
    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
