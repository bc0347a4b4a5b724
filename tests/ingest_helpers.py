"""What the ingest tests share: tokens, settings, and the service as a real process."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from ingest.settings import IngestSettings
from tests.conftest import PYTHON, ROOT, STORE, free_port, wait_until

SECRET = "ingest-test-secret-5b0c2e91"
LIMITED_SECRET = "ingest-limited-secret-77d3a4f0"
OTHER_STORE = "store_other"
#: A token for every store ("ci") and one limited to STORE ("shop").
TOKENS = json.dumps({"ci": SECRET, "shop": {"secret": LIMITED_SECRET, "stores": [STORE]}})
AUTH = {"Authorization": f"Bearer {SECRET}"}
LIMITED_AUTH = {"Authorization": f"Bearer {LIMITED_SECRET}"}


def ingest_settings(redis_url: str, **variables: str) -> IngestSettings:
    return IngestSettings.from_env(
        {"REDIS_URL": redis_url, "SNACKVIDEO_INGEST_TOKENS": TOKENS, **variables}
    )


class IngestProcess:
    """``snackvideo ingest`` in its own process, as the Procfile starts it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_ingest(tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    """Factory: ``start_ingest(redis_url, workers=2, **variables)``; waits for /healthz."""
    started: list[IngestProcess] = []

    def start(redis_url: str, *, workers: int = 1, **variables: str) -> IngestProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
        env.update(
            {"REDIS_URL": redis_url, "SNACKVIDEO_INGEST_TOKENS": TOKENS, "PYTHONUNBUFFERED": "1"}
        )
        env.update(variables)
        log_path = tmp_path / f"ingest-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [PYTHON, "-m", "worker.cli", "ingest", "--port", str(port),
                 "--workers", str(workers)],
                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        service = IngestProcess(process, port, log_path)
        started.append(service)

        def listening() -> bool:
            if process.poll() is not None:
                pytest.fail(f"snackvideo ingest exited with {process.returncode}:\n{service.log()}")
            try:
                requests.get(f"{service.url}/openapi.json", timeout=2)
                return True
            except requests.RequestException:
                return False

        wait_until(listening, timeout=60, what="snackvideo ingest to listen")
        return service

    yield start
    for service in started:
        service.stop()


__all__ = ["AUTH", "LIMITED_AUTH", "OTHER_STORE", "SECRET", "STORE", "TOKENS", "start_ingest"]
