"""The HTTP ingest service against direct ``enqueue()``: events/s, latency, batches.

One private redis-server (AOF on); the real ``snackvideo ingest`` process with its uvicorn
workers; the load comes from this process over keep-alive connections (asyncio, raw
HTTP/1.1, requests encoded before the clock starts, so the client spends little CPU).
Direct ``enqueue()`` runs in the same run against the same Redis, one thread, as a web
app's request handler calls it.

- single-event POSTs, closed loop, at concurrency 1, 8 and 32;
- batch POSTs of 100 events at concurrency 4 (4x the events of a single-event method);
- p99 at half rate: open loop, requests scheduled at half the best single-event rate over
  16 connections; latency is counted from each request's scheduled time, so a stall
  delays the requests behind it and shows in the percentiles (no coordinated omission).

Goals (issue 15): single-event ingest >= 50 % of direct enqueue events/s, p99 <= 10 ms
at half that rate, batch ingest >= 5x single-event ingest.

    python -m bench.ingest [--n 5000] [--workers N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import requests
import uvloop

from bench.common import (
    DEFAULT_N,
    PYTHON,
    ROOT,
    STORE,
    BenchError,
    RedisServer,
    Section,
    child_pids,
    cpu_seconds,
    env_int,
    free_port,
    payload,
    percentile,
    table,
    wait_until,
)
from harness.proc import stop_process
from ingest.settings import DEFAULT_INGEST_WORKERS
from producers.enqueue import Producer
from producers.keys import DELIVERY_QUEUE

TOKEN_SECRET = "bench-ingest-secret-0f3a9c"
CONCURRENCIES = (1, 8, 32)
BATCH = 100
BATCH_CONCURRENCY = 4
OPEN_LOOP_CONNECTIONS = 16
GOAL_SHARE = 0.50
GOAL_P99_MS = 10.0
GOAL_BATCH_FACTOR = 5.0


class CpuMeter:
    """CPU seconds used so far by each side: the service's processes, Redis, this process
    (the load generator, or the backend calling ``enqueue()`` directly). Unlike events/s,
    CPU per event hardly moves when other programs load the machine."""

    def __init__(self, service_pid: int, redis_pid: int) -> None:
        self.service_pids = [service_pid, *child_pids(service_pid)]
        self.redis_pid = redis_pid

    def read(self) -> tuple[float, float, float]:
        service = sum(cpu_seconds(pid) for pid in self.service_pids)
        return service, cpu_seconds(self.redis_pid), time.process_time()


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    latencies: list[float]
    #: CPU seconds of (the service, Redis, this process) while it ran.
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Open loop only: how late the load generator sent each request (``OpenLoop``).
    lateness: list[float] = field(default_factory=list)

    def add(
        self, meter: CpuMeter, events: int, measured: Callable[..., list[float]], *args: Any
    ) -> None:
        """Time ``measured(*args)``, which returns the latency of each of its requests."""
        cpu_before = meter.read()
        began = time.perf_counter()
        self.latencies += measured(*args)
        self.seconds += time.perf_counter() - began
        used = [after - before for after, before in zip(meter.read(), cpu_before, strict=True)]
        self.cpu = (self.cpu[0] + used[0], self.cpu[1] + used[1], self.cpu[2] + used[2])
        self.events += events

    def cpu_ms_per_event(self) -> list[str]:
        return [f"{1000 * seconds / self.events:.3f}" for seconds in (*self.cpu, sum(self.cpu))]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def row(self, baseline: float) -> list[object]:
        return [
            self.name,
            f"{self.rate:,.0f}",
            f"{100 * self.rate / baseline:.0f} %",
            f"{1000 * percentile(self.latencies, 50):.2f}",
            f"{1000 * percentile(self.latencies, 99):.2f}",
            *self.cpu_ms_per_event(),
        ]


class IngestService:
    """``snackvideo ingest`` as a process of its own."""

    def __init__(self, redis_url: str, workers: int) -> None:
        self.port = free_port()
        self.workers = workers
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SNACKVIDEO_")},
            "REDIS_URL": redis_url,
            "SNACKVIDEO_INGEST_TOKENS": json.dumps({"bench": TOKEN_SECRET}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestService:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "worker.cli", "ingest", "--port", str(self.port),
             "--workers", str(self.workers)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{self.port}/healthz"

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"snackvideo ingest exited with {self.process.returncode}")
            try:
                return requests.get(url, timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 30, what="snackvideo ingest to answer")
        return self

    def stop(self) -> None:
        stop_process(self.process)


def encode_post(port: int, path: str, body: object) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN_SECRET}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    """Send one request on a kept-alive connection and read its whole response."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    if status != b"202":
        raise BenchError(f"ingest answered {head.decode(errors='replace')!r}")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)


async def closed_loop(port: int, requests_: list[bytes], concurrency: int) -> list[float]:
    """Each connection sends its next request as soon as the previous one answered."""
    latencies: list[float] = []

    async def connection(share: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in share:
            t0 = time.perf_counter()
            await exchange(reader, writer, request)
            latencies.append(time.perf_counter() - t0)
        writer.close()

    await asyncio.gather(*(connection(requests_[i::concurrency]) for i in range(concurrency)))
    return latencies


@dataclass
class OpenLoop:
    """Latencies counted from each request's due time, and how late the load generator
    itself sent them (after its connection was free): what of the tail is its own."""

    latencies: list[float]
    lateness: list[float]


async def open_loop(port: int, requests_: list[bytes], rate: float) -> OpenLoop:
    """Request i is due at start + i/rate; its latency counts from when it was due."""
    result = OpenLoop([], [])
    connections = OPEN_LOOP_CONNECTIONS
    start = time.perf_counter() + 0.05

    async def connection(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        free_since = start
        for i in range(first, len(requests_), connections):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Late past max(due, free_since): this loop's own timer or a wait for a CPU.
            # Still counted in the latency (no coordinated omission), and shown apart.
            sent = time.perf_counter()
            result.lateness.append(sent - max(due, free_since))
            await exchange(reader, writer, requests_[i])
            free_since = time.perf_counter()
            result.latencies.append(free_since - due)
        writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    return result


class DirectEnqueue:
    """The baseline: ``Producer.enqueue`` in one thread, as a web app's handler calls it."""

    def __init__(self, redis_url: str) -> None:
        self.producer = Producer(redis_url)
        for i in range(200):  # warm-up: the connection, the script load
            self.producer.enqueue(STORE, payload(i, "warm"))

    def run(self, first: int, n: int) -> list[float]:
        latencies = []
        for i in range(first, first + n):
            t0 = time.perf_counter()
            self.producer.enqueue(STORE, payload(i, "direct"))
            latencies.append(time.perf_counter() - t0)
        return latencies


Result = TypeVar("Result")


def run_loop(coroutine: Coroutine[Any, Any, Result]) -> Result:
    # uvloop, as the service uses: the load generator's own overhead stays small. Its
    # collector is frozen too: a full pass over this process's requests stalled it ~20 ms,
    # which the open loop would have counted as the service's latency.
    gc.collect()
    gc.freeze()
    return uvloop.run(coroutine)


def closed_loop_run(port: int, requests_: list[bytes], concurrency: int) -> list[float]:
    return run_loop(closed_loop(port, requests_, concurrency))


def single_requests(port: int, first: int, n: int, run: str) -> list[bytes]:
    path = f"/v1/stores/{STORE}/events"
    return [encode_post(port, path, payload(i, run)) for i in range(first, first + n)]


def batch_requests(port: int, first: int, batches: int) -> list[bytes]:
    path = f"/v1/stores/{STORE}/events/batch"
    return [
        encode_post(port, path, [payload((first + b) * BATCH + k, "batch") for k in range(BATCH)])
        for b in range(batches)
    ]


def empty_queue(client: redis.Redis) -> None:
    client.delete(DELIVERY_QUEUE)
    client.bgrewriteaof()

    def rewritten() -> bool:
        persistence = client.info("persistence")
        return not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"])

    wait_until(rewritten, 60, what="Redis to rewrite its AOF")


def measure(
    redis_url: str, port: int, meter: CpuMeter, n: int, rounds: int
) -> tuple[Run, list[Run], Run, Run]:
    """Every closed-loop method in ``rounds`` interleaved rounds, so that background load on
    a shared machine falls on all of them alike; then the open-loop run."""
    run_loop(closed_loop(port, single_requests(port, 0, 400, "warm"), 8))
    direct = Run("direct `enqueue()`, 1 thread (baseline)", 0, 0.0, [])
    singles = [Run(f"POST one event, concurrency {c}", 0, 0.0, []) for c in CONCURRENCIES]
    batch = Run(f"POST batches of {BATCH}, concurrency {BATCH_CONCURRENCY}", 0, 0.0, [])
    baseline = DirectEnqueue(redis_url)
    share = n // rounds
    batches = max(1, share * 4 // BATCH)
    for r in range(rounds):
        direct.add(meter, share, baseline.run, r * share, share)
        for run, concurrency in zip(singles, CONCURRENCIES, strict=True):
            requests_ = single_requests(port, r * share, share, f"c{concurrency}")
            run.add(meter, share, closed_loop_run, port, requests_, concurrency)
        bodies = batch_requests(port, r * batches, batches)
        batch.add(meter, batches * BATCH, closed_loop_run, port, bodies, BATCH_CONCURRENCY)
    # No worker takes the jobs here. Left in place, the tens of thousands queued so far
    # (~60 MB) make Redis fork for an AOF rewrite during the open loop, and its tail would
    # measure that fork rather than the service: start it from an empty queue, as a
    # drained production queue is, once the rewrite of the emptied one has finished.
    empty_queue(baseline.producer.client)
    baseline.producer.close()
    half = max(singles, key=lambda run: run.rate).rate / 2
    paced = Run(f"POST one event, open loop at {half:,.0f}/s (half the best)", 0, 0.0, [])
    requests_ = single_requests(port, 0, n, "half")

    def paced_loop() -> list[float]:
        outcome = run_loop(open_loop(port, requests_, half))
        paced.lateness += outcome.lateness
        return outcome.latencies

    paced.add(meter, n, paced_loop)
    return direct, singles, paced, batch


def verdicts(direct: Run, singles: list[Run], paced: Run, batch: Run) -> list[list[object]]:
    best = max(singles, key=lambda run: run.rate)
    share = best.rate / direct.rate
    p99_ms = 1000 * percentile(paced.latencies, 99)
    factor = batch.rate / best.rate
    return [
        ["single-event ingest / direct enqueue (best concurrency)", f"{100 * share:.0f} %",
         f">= {100 * GOAL_SHARE:.0f} %", "met" if share >= GOAL_SHARE else "missed"],
        ["p99 at half the best single-event rate", f"{p99_ms:.2f} ms", f"<= {GOAL_P99_MS:g} ms",
         "met" if p99_ms <= GOAL_P99_MS else "missed"],
        ["batch ingest / best single-event ingest", f"{factor:.1f}x",
         f">= {GOAL_BATCH_FACTOR:g}x", "met" if factor >= GOAL_BATCH_FACTOR else "missed"],
    ]  # fmt: skip


def run(n: int = DEFAULT_N, workers: int = DEFAULT_INGEST_WORKERS, rounds: int = 3) -> Section:
    section = Section(
        "HTTP ingest (`bench/ingest.py`)",
        f"`snackvideo ingest` with {workers} uvicorn worker processes against a private "
        f"redis-server (AOF on) on 127.0.0.1; {n:,} events per single-event method, driven "
        "from one asyncio (uvloop) process over keep-alive connections. The baseline is "
        "direct `Producer.enqueue()` in one thread against the same Redis; the closed-loop "
        f"methods run in {rounds} interleaved rounds. "
        "Latency is per request (a batch request carries "
        f"{BATCH} events); the open-loop row counts each request from when it was due. "
        "CPU ms per event: the ingest service's processes, Redis, and this process (the "
        "load generator; for the baseline, the backend calling `enqueue()`), from /proc: "
        "unlike events/s, hardly moved by other programs on the machine.",
    )
    redis_server = RedisServer(appendonly=True).start()
    service = IngestService(redis_server.url, workers)
    try:
        service.start()
        assert service.process is not None
        meter = CpuMeter(service.process.pid, redis_server.pid)
        direct, singles, paced, batch = measure(redis_server.url, service.port, meter, n, rounds)
    finally:
        service.stop()
        redis_server.remove()
    headers = [
        "method", "events/s", "vs direct", "p50 ms", "p99 ms",
        "CPU ms/event: service", "Redis", "client", "all",
    ]  # fmt: skip
    rows = [run.row(direct.rate) for run in (direct, *singles, paced, batch)]
    section.add(table(headers, rows))
    section.add(table(["goal", "measured", "target", ""], verdicts(direct, singles, paced, batch)))
    section.add(
        "The load generator's own lateness in the open loop (a request sent after its due "
        "time with its connection free: its timer, or a wait for a CPU), counted in the "
        f"latencies above: p50 {1000 * percentile(paced.lateness, 50):.2f} ms, "
        f"p99 {1000 * percentile(paced.lateness, 99):.2f} ms, "
        f"max {1000 * max(paced.lateness):.2f} ms."
    )
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--n", type=int, default=env_int("BENCH_N", DEFAULT_N))
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_INGEST_WORKERS, help="default: the service's"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    run(args.n, args.workers, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
