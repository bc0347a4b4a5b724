"""The project's sandbox server in its own process, driven over its admin API."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

import requests

from harness.errors import HarnessError
from harness.paths import PYTHON, ROOT
from harness.proc import stop_process


class Sandbox:
    """``python -m sandbox`` knowing ``stores`` (store id -> storefront key).

    ``Sandbox("--rate-limit", "25/1", stores={...}).start()``; ``stop`` ends it.
    """

    def __init__(self, *flags: str, stores: Mapping[str, str]) -> None:
        self.flags = flags
        self.stores = dict(stores)
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.http = requests.Session()

    def start(self) -> Sandbox:
        store_flags: list[str] = []
        for store_id, key in self.stores.items():
            store_flags += ["--store", f"{store_id}={key}"]
        self.process = subprocess.Popen(
            [PYTHON, "-m", "sandbox", "--port", "0", *store_flags, *self.flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if "listening on" not in line:
            self.stop()
            raise HarnessError(f"sandbox did not start: {line!r}")
        self.base_url = line.rsplit(" ", 1)[-1]
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def events_url(self, store_id: str) -> str:
        return f"{self.base_url}/v3/stores/{store_id}/public/analytics/snackvideo/events"

    def configure(self, **config: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.base_url}/_sandbox/config", json=config, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def events(self, **filters: str) -> list[dict[str, Any]]:
        """What the sandbox accepted (a benchmark's thousands take a while to send)."""
        response = self.http.get(f"{self.base_url}/_sandbox/events", params=filters, timeout=60)
        response.raise_for_status()
        return list(response.json()["events"])

    def stats(self) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/_sandbox/stats", timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def attempts(self, click_id: str) -> int:
        return int(self.stats().get("attempts_by_click_id", {}).get(click_id, 0))

    def accepted(self) -> int:
        return int(self.stats()["accepted"])

    def received_span(self) -> tuple[float, float, int]:
        """First and last arrival time of accepted events, and how many were accepted."""
        times = [float(e["received_at"]) for e in self.events()]
        if not times:
            return 0.0, 0.0, 0
        return min(times), max(times), len(times)

    def reset(self) -> None:
        self.http.post(f"{self.base_url}/_sandbox/reset", timeout=10).raise_for_status()

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM; SIGKILL if it is still there after ``grace_seconds``."""
        self.http.close()
        stop_process(self.process, grace_seconds=grace_seconds)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
