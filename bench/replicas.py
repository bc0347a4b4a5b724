"""What ``SNACKVIDEO_ENQUEUE_MIN_REPLICAS=1`` costs on the request path.

A master and one replica (both AOF on, fsync every second) on 127.0.0.1. The same
producer call runs with ``min_replicas=0`` (the master's reply is the acknowledgement)
and ``min_replicas=1`` (the enqueue script and ``WAIT 1`` in one round trip: the reply
comes once the replica has the job), in interleaved rounds.

    python -m bench.replicas [--n 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import redis

from bench.common import (
    DEFAULT_N,
    STORE,
    RedisServer,
    Section,
    env_int,
    payload,
    percentile,
    table,
    wait_until,
)
from producers.enqueue import Producer

WARMUP_CALLS = 100


def replica_online(master: RedisServer) -> bool:
    assert master.client is not None
    try:
        info = master.client.info("replication")
    except redis.RedisError:
        return False
    return any(
        isinstance(value, dict) and value.get("state") == "online"
        for key, value in info.items()
        if key.startswith("slave")
    )


def run(n: int = DEFAULT_N, rounds: int = 5) -> Section:
    section = Section(
        "Producer: the cost of waiting for a replica (WAIT)",
        f"{n:,} `enqueue` calls (with an idempotency key) per setting against a private "
        "master and its replica (AOF on, fsync every second) on 127.0.0.1, one thread, in "
        f"{rounds} interleaved rounds after {WARMUP_CALLS} warm-up calls each.",
    )
    master = RedisServer(appendonly=True).start()
    replica = RedisServer(
        appendonly=True, extra_args=("--replicaof", "127.0.0.1", str(master.port))
    ).start()
    producers = {
        "0 (default)": Producer(master.url, min_replicas=0),
        "1": Producer(master.url, min_replicas=1),
    }
    latencies: dict[str, list[float]] = {name: [] for name in producers}
    try:
        wait_until(lambda: replica_online(master), 30, what="the replica to sync")
        for name, producer in producers.items():
            for i in range(WARMUP_CALLS):
                producer.enqueue(STORE, payload(i, "warm"), idempotency_key=f"w-{name}-{i}")
        for r in range(rounds):
            for name, producer in producers.items():
                for i in range(n // rounds):
                    index = r * n + i
                    t0 = time.perf_counter()
                    producer.enqueue(
                        STORE, payload(index, name[0]), idempotency_key=f"{name}-{index}"
                    )
                    latencies[name].append(time.perf_counter() - t0)
            master.flush()
    finally:
        for producer in producers.values():
            producer.close()
        replica.remove()
        master.remove()
    rows = [
        [
            name,
            f"{len(lat):,}",
            f"{percentile(lat, 50) * 1000:.3f}",
            f"{percentile(lat, 99) * 1000:.3f}",
            f"{max(lat) * 1000:.2f}",
        ]
        for name, lat in latencies.items()
    ]
    section.add(
        table(["SNACKVIDEO_ENQUEUE_MIN_REPLICAS", "calls", "p50 ms", "p99 ms", "max ms"], rows)
    )
    base, waited = (percentile(lat, 50) for lat in latencies.values())
    section.add(f"`WAIT 1` adds {(waited - base) * 1000:.3f} ms at the median on loopback.")
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_N", DEFAULT_N))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.n, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
