"""What every benchmark starts and measures: a private redis-server, the sandbox, workers.

The parts come from ``harness`` (the same the tests start); this module adds what only
the benchmarks need: their store, an unthrottled worker environment, payloads, tables.
Everything runs on 127.0.0.1; nothing talks to a shared Redis or to the network.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.events import PURCHASE, event
from harness.paths import PYTHON, ROOT
from harness.ports import free_port
from harness.proc import child_pids, cpu_seconds, load_average, rss_kib
from harness.redis_server import RedisServer, redis_server_binary
from harness.sandbox import Sandbox
from harness.waiting import wait_until
from harness.worker import Worker
from harness.worker import worker_env as harness_worker_env

__all__ = [
    "PYTHON", "ROOT", "RedisServer", "Sandbox", "Worker", "child_pids", "cpu_seconds",
    "free_port", "load_average", "redis_server_binary", "rss_kib", "wait_until",
]  # fmt: skip

STORE = "store_bench"
# A sandbox-only key: it lives in the worker's environment and the sandbox's flags only.
STORE_KEY = "pk_bench_8c1f0e2d94b7"
STORES = {STORE: STORE_KEY}
DEFAULT_N = 5_000

#: What a benchmark raises when a part did not start or a run did not finish in time; the
#: harness raises the same.
BenchError = HarnessError


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def doc_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring as the help."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def doc_intro(doc: str | None) -> str:
    """A module docstring without its first line and its usage line: a section's intro."""
    return doc.split("\n\n", 1)[1].rsplit("\n\n", 1)[0] if doc else ""


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"snackvideo-bench-{prefix}-"))


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
    return event(
        f"bench-{run}-{index:07d}",
        properties={**PURCHASE, "content_id": f"sku-{index % 97}"},
        event_source_url="https://shop.example.test/checkout/thank-you",
    )


def events_url(base_url: str, store_id: str = STORE) -> str:
    return f"{base_url}/v3/stores/{store_id}/public/analytics/snackvideo/events"


# -- the parts (harness) with the benchmark's store -----------------------------------------


def start_sandbox(*flags: str) -> Sandbox:
    """The sandbox knowing the benchmark's store."""
    return Sandbox(*flags, stores=STORES).start()


def worker_env(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    """The worker's environment: the sandbox as Scalev, no throttle cap, no metrics port."""
    # Unthrottled runs: the sandbox sends no rate-limit headers, so the budget would
    # otherwise stay at the 10/s used before any header is seen.
    # A caller's own SNACKVIDEO_DEFAULT_RATE (bench.throttle: the shipped 10/s) wins;
    # passing both as keywords was a TypeError.
    return harness_worker_env(
        redis_url, base_url, stores=STORES, **{"SNACKVIDEO_DEFAULT_RATE": "1000000", **overrides}
    )


def wait_for_accepted(sandbox: Sandbox, n: int, timeout: float, what: str) -> None:
    """Wait until the sandbox accepted ``n`` events; polls slowly to leave it the CPU."""
    wait_until(lambda: sandbox.accepted() >= n, timeout, interval=0.25, what=what)
