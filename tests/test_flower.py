"""Flower, as the Procfile runs it, watching a real worker: dead letters under failed tasks.

Flower reads its own FLOWER_* variables (FLOWER_PORT, FLOWER_BASIC_AUTH, FLOWER_PERSISTENT,
FLOWER_DB); the test sets them the way an operator would and reads Flower's HTTP API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from tests.conftest import (
    PYTHON,
    ROOT,
    Sandbox,
    Worker,
    free_port,
    wait_until,
    worker_env,
)
from tests.queue_helpers import event

pytestmark = pytest.mark.integration

AUTH = ("ops", "flower-test-pass")
GONE_KEY = "pk_store_gone_7f3e91"


#: What the Procfile's flower: line passes: the file that adds the dead-letter pages.
FLOWER_CONF = "--conf=worker/flower_pages/flowerconfig.py"


class Flower:
    def __init__(
        self, process: subprocess.Popen[bytes], port: int, log_path: Path, url_prefix: str = ""
    ) -> None:
        self.process = process
        self.origin = f"http://127.0.0.1:{port}"
        self.base_url = self.origin + (f"/{url_prefix}" if url_prefix else "")
        self.log_path = log_path

    def get(self, path: str, auth: tuple[str, str] | None = AUTH) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", auth=auth, timeout=10)

    def tasks(self) -> dict[str, dict[str, Any]]:
        response = self.get("/api/tasks")
        response.raise_for_status()
        return dict(response.json())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # Flower saves its state on SIGTERM
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def start_flower(tmp_path: Path) -> Iterator[Callable[..., Flower]]:
    """Factory: ``start_flower(env, *flower_args, url_prefix="", login=True)``, as the
    Procfile runs it; ``login=False`` leaves FLOWER_BASIC_AUTH unset."""
    started: list[Flower] = []

    def start(env: dict[str, str], *args: str, url_prefix: str = "", login: bool = True) -> Flower:
        port = free_port()
        log_path = tmp_path / f"flower-{len(started)}.log"
        flower_env = dict(
            env,
            FLOWER_PORT=str(port),
            FLOWER_BASIC_AUTH=f"{AUTH[0]}:{AUTH[1]}",
            FLOWER_PERSISTENT="True",
            FLOWER_DB=str(tmp_path / "flower.db"),
        )
        if not login:
            del flower_env["FLOWER_BASIC_AUTH"]
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "worker", "flower", FLOWER_CONF, *args]
                + ([f"--url_prefix={url_prefix}"] if url_prefix else []),
                cwd=ROOT,
                env=flower_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        flower = Flower(process, port, log_path, url_prefix)
        started.append(flower)

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"flower exited:\n{log_path.read_text(errors='replace')}")
            try:
                # Without a login Flower's API answers 401 to everyone: its health check.
                return flower.get("/api/tasks" if login else "/healthcheck").status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(answers, 60, interval=0.25, what="flower to answer")
        return flower

    yield start
    for flower in started:
        flower.stop()


def failed_task_with(flower: Flower, click_id: str) -> dict[str, Any] | None:
    for task in flower.tasks().values():
        if task.get("state") == "FAILURE" and click_id in (task.get("exception") or ""):
            return dict(task)
    return None


def test_a_dead_letter_is_a_failed_task_in_flower_with_reason_status_and_click_id(
    redis_url: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    start_flower: Callable[..., Flower],
) -> None:
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS=json.dumps({"store_gone": GONE_KEY}),
    )
    start_worker(env, concurrency=1)
    flower = start_flower(env)
    producer = Producer(redis_url)

    # The worker runs with task events at their default, off: every task Flower shows
    # below is there because Flower's own enable_events broadcast switched them on.
    # Flower only sees the events sent after its receiver connected: send no-key events
    # until one shows up, rather than guess how long that takes. A probe whose first
    # events (received, with the task's name) went out before Flower connected shows up
    # without a name: that one only says Flower is connecting now, so send the next.
    probes = count()

    def seen_a_probe() -> dict[str, Any] | None:
        click_id = f"clk-probe-{next(probes)}"
        producer.enqueue("store_nokey", event(click_id))
        found: dict[str, Any] | None = wait_until_quietly(
            lambda: failed_task_with(flower, click_id), 3.0
        )
        return found if found and found.get("name") else None

    probe = wait_until(seen_a_probe, SETTLE_SECONDS, interval=0, what="flower to see a task")
    assert probe["name"] == "snackvideo.deliver"
    assert "reason=no_api_key" in probe["exception"]
    assert "store_nokey" in probe["kwargs"]

    job_id = producer.enqueue("store_gone", event("clk-gone-404"))  # unknown to the sandbox
    producer.close()
    task = wait_until(
        lambda: failed_task_with(flower, "clk-gone-404"), SETTLE_SECONDS, what="the 404 failure"
    )
    assert task["uuid"] == job_id
    assert "DeadLettered" in task["exception"]
    assert "reason=http_404 status=404 click_id=clk-gone-404" in task["exception"]
    assert "'click_id': 'clk-gone-404'" in task["kwargs"]
    assert GONE_KEY not in json.dumps(flower.tasks())
    # The failure leads to its dead-letter entry, served by the same Flower.
    path = f"/dead-letters/{job_id}-r0"
    assert task["exception"].endswith(f"entry={path}')")
    page = flower.get(path)
    assert page.status_code == 200 and "clk-gone-404" in page.text
    # Flower's task view links there.
    task_view = flower.get(f"/task/{job_id}").text
    assert f'<a id="dead-letter-entry" href="{path}">' in task_view

    # Basic auth set: anonymous and wrong credentials are refused.
    assert flower.get("/api/tasks", auth=None).status_code == 401
    assert flower.get("/api/tasks", auth=("ops", "wrong")).status_code == 401
    assert flower.get("/", auth=None).status_code == 401

    # Flower keeps what it saw across a restart (FLOWER_PERSISTENT + FLOWER_DB).
    flower.stop()
    restarted = start_flower(env)
    kept = restarted.tasks().get(job_id)
    assert kept is not None and kept["state"] == "FAILURE"
    assert "click_id=clk-gone-404" in kept["exception"]


def wait_until_quietly(predicate: Callable[[], Any], timeout: float) -> Any:
    """Like wait_until, but a timeout returns None instead of failing the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return None
