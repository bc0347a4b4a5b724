"""``snackvideo status``: the table and ``--json``, before and while a real worker runs."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import redis

from producers import Producer
from tests.conftest import PYTHON, ROOT, STORE, STORE_KEY, Sandbox, wait_until, worker_env
from tests.queue_helpers import event
from worker.deadletter.store import DeadLetterStore
from worker.delayed.store import DelayedJobs

pytestmark = pytest.mark.integration

GONE_STORE = "store_gone"


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "worker.cli", "status", "--timeout", "2", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def status_json(env: dict[str, str]) -> dict[str, Any]:
    done = status(env, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def table_rows(text: str) -> dict[str, str]:
    """``label   value`` lines as a dict (indented rows keep their indent)."""
    rows = {}
    for line in text.splitlines():
        label, _, rest = line.rstrip().rpartition("  ")
        rows[label.rstrip()] = rest.strip()
    return rows


def test_status_before_and_with_a_worker(
    redis_url: str, sandbox: Sandbox, start_worker: Any
) -> None:
    keys = f'{{"{STORE}": "{STORE_KEY}", "{GONE_STORE}": "pk_test_gone_6d1e0b"}}'
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS=keys,
        # A retry parks long enough for status to see it scheduled.
        SNACKVIDEO_RETRY_BASE_SECONDS="120",
        SNACKVIDEO_RETRY_MAX_SECONDS="300",
    )
    producer = Producer(redis_url)
    producer.enqueue_many(STORE, [event(f"st-ok-{i}") for i in range(3)])
    producer.enqueue_many(GONE_STORE, [event(f"st-gone-{i}") for i in range(2)])
    producer.enqueue(STORE, event("st-slow-1"))
    producer.close()

    # No worker yet: everything waits in the queue and nobody answers the ping.
    before = status_json(env)
    assert before["queue_depth"] == 6
    assert before["enqueued_total"] == 6
    assert before["workers"] == []
    assert before["dead_letters"] == 0

    sandbox.configure(always_fail=["st-slow-"])
    start_worker(env, concurrency=2)
    client = redis.Redis.from_url(redis_url)
    wait_until(
        lambda: (
            len(sandbox.events()) == 3
            and DeadLetterStore(client).counts_by_reason().get("http_404") == 2
            and DelayedJobs(client).depth() == 1
        ),
        timeout=60,
        what="the jobs to be delivered, dead-lettered and scheduled",
    )
    client.close()

    state = status_json(env)
    assert state["queue_depth"] == 0
    assert state["scheduled"] == 1
    assert state["enqueued_total"] == 6
    assert state["dead_letters"] == 2
    assert state["dead_letters_by_reason"] == {"http_404": 2}
    assert len(state["workers"]) >= 1
    assert all(name.startswith("w0@") for name in state["workers"])

    done = status(env)
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert rows["queue depth"] == "0"
    assert rows["scheduled retries"] == "1"
    assert rows["events enqueued"] == "6"
    assert rows["dead letters"] == "2"
    assert rows["  http_404"] == "2"
    assert int(rows["workers seen"]) >= 1
    assert "\n  w0@" in done.stdout


def test_status_without_redis_fails_cleanly() -> None:
    env = worker_env("redis://127.0.0.1:1/0", "http://127.0.0.1:1")
    done = status(env, "--json")
    assert done.returncode == 1
    assert "cannot read Redis" in done.stderr
    assert "Traceback" not in done.stderr
