"""REDIS_URL as kombu's Sentinel list: every component finds the master by name.

Real processes: a master, its replica and three Sentinels (``tests/sentinel_helpers``), a
``celery worker``, the ``snackvideo`` CLI and the sandbox. The failover itself is
``tests/test_fault_sentinel_failover.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import requests

from producers import EnqueueError, Producer
from producers.keys import DELIVERY_QUEUE, ENQUEUED_COUNTER
from tests.conftest import (
    PYTHON,
    ROOT,
    STORE,
    Sandbox,
    Worker,
    free_port,
    wait_until,
    worker_env,
)
from tests.fault_helpers import Ledger, event
from tests.sentinel_helpers import SentinelGroup, sentinel_group_fixture  # noqa: F401
from tests.test_flower import Flower, start_flower

# Flower's fixture, under a name of its own (a fixture is known by its module attribute).
start_flower_here = start_flower

pytestmark = pytest.mark.integration

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
SENTINEL_PASSWORD = "sentinel-pw-PLANTED-4k"
MASTER_USER = "dispatch"
MASTER_PASSWORD = "master-pw-PLANTED-8z"


def test_producer_worker_and_cli_reach_the_master_through_sentinel(
    sentinel_group: Callable[[], SentinelGroup],
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = sentinel_group()
    env = worker_env(group.url, sandbox.base_url)
    worker = start_worker(env, concurrency=1)
    monkeypatch.setenv("REDIS_URL", group.url)
    producer = Producer(group.url)
    ledger = Ledger(group.url, sandbox)
    ledger.offer("via-sentinel", 5, producer)
    wait_until(lambda: len(ledger.accepted()) == 5, timeout=60, what="5 deliveries")
    # The jobs went to the master the Sentinels name.
    master = redis.Redis(port=group.master.port)
    assert int(master.get(ENQUEUED_COUNTER) or 0) == 5
    master.close()
    status = subprocess.run(
        [SNACKVIDEO, "status"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in worker.log()
    producer.close()


def test_min_replicas_waits_for_the_replica_and_refuses_when_too_few(
    sentinel_group: Callable[[], SentinelGroup], monkeypatch: pytest.MonkeyPatch
) -> None:
    group = sentinel_group()
    monkeypatch.setenv("SNACKVIDEO_ENQUEUE_MIN_REPLICAS", "1")
    one = Producer(group.url, timeout_seconds=5)
    [job_id] = one.enqueue_many(STORE, [event("replicated-1")])
    replica = redis.Redis(port=group.replica.port)
    # WAIT returned: the replica already holds the job, no polling needed.
    assert any(job_id.encode() in item for item in replica.lrange(DELIVERY_QUEUE, 0, -1))
    replica.close()
    one.close()

    monkeypatch.setenv("SNACKVIDEO_ENQUEUE_MIN_REPLICAS", "2")
    two = Producer(group.url, timeout_seconds=2)
    with pytest.raises(EnqueueError) as refused:
        two.enqueue(STORE, event("replicated-2"), idempotency_key="order-2")
    message = str(refused.value)
    # 1 on a quiet machine; 0 when the one replica lagged past WAIT's timeout under load.
    assert re.search(r"[01] of 2 replica\(s\) confirmed it", message), message
    assert "same idempotency key" in message
    # The job is stored on the master once, however often the call retried its WAIT.
    master = redis.Redis(port=group.master.port)
    queued = master.lrange(DELIVERY_QUEUE, 0, -1)
    assert sum(b"replicated-2" in item for item in queued) == 1
    master.close()
    two.close()


#: Run in a process of its own: an event loop in this one would share the main thread
#: with pytest-playwright's greenlets (an asyncio.run there broke the session's end).
ASYNC_ENQUEUE = """
import asyncio, json, sys
from producers import EnqueueError
from producers.aio import AsyncProducer

async def main(url, one_body, two_body):
    one = AsyncProducer(url, timeout_seconds=5)
    two = AsyncProducer(url, timeout_seconds=2, min_replicas=2)
    try:
        first = await one.enqueue("%s", one_body)
        try:
            await two.enqueue("%s", two_body, "async-order-2")
            refused = None
        except EnqueueError as exc:
            refused = str(exc)
        return {"job_id": first.job_id, "refused": refused}
    finally:
        await one.aclose()
        await two.aclose()

url, one_body, two_body = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps(asyncio.run(main(url, one_body, two_body))))
""" % (STORE, STORE)


def test_the_asyncio_producer_finds_the_master_and_waits_for_replicas(
    sentinel_group: Callable[[], SentinelGroup],
) -> None:
    """What the ingest service publishes with: the same Sentinel lookup and WAIT rule."""
    group = sentinel_group()
    bodies = [json.dumps(event("async-replicated-1")), json.dumps(event("async-replicated-2"))]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SNACKVIDEO_")},
        "SNACKVIDEO_ENQUEUE_MIN_REPLICAS": "1",
    }
    done = subprocess.run(
        [PYTHON, "-c", ASYNC_ENQUEUE, group.url, *bodies],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    replica = redis.Redis(port=group.replica.port)
    assert any(result["job_id"].encode() in item for item in replica.lrange(DELIVERY_QUEUE, 0, -1))
    replica.close()
    # 1 on a quiet machine; 0 when the one replica lagged past WAIT's timeout under load.
    assert re.search(r"[01] of 2 replica\(s\) confirmed it", result["refused"] or ""), result
    master = redis.Redis(port=group.master.port)
    assert sum(b"async-replicated-2" in item for item in master.lrange(DELIVERY_QUEUE, 0, -1)) == 1
    master.close()


def test_beat_flower_and_cli_with_sentinel_and_master_passwords(
    sentinel_group: Callable[..., SentinelGroup],
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    start_flower_here: Callable[[dict[str, str]], Flower],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = sentinel_group(sentinel_password=SENTINEL_PASSWORD)
    for server in (group.master, group.replica):  # ACL users are not replicated
        client = redis.Redis(port=server.port)
        client.acl_setuser(
            MASTER_USER, enabled=True, passwords=[f"+{MASTER_PASSWORD}"], keys=["*"],
            channels=["*"], commands=["+@all"],
        )  # fmt: skip
        client.close()
    first, *others = group.sentinels
    with pytest.raises(redis.AuthenticationError):  # the Sentinels do ask for it
        redis.Redis(port=first.port).ping()
    # kombu reads the master's credentials from the first URL only.
    url = ";".join(
        [f"sentinel://{MASTER_USER}:{MASTER_PASSWORD}@127.0.0.1:{first.port}"]
        + [f"sentinel://127.0.0.1:{sentinel.port}" for sentinel in others]
    )
    env = worker_env(
        url,
        sandbox.base_url,
        SNACKVIDEO_REDIS_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
        SNACKVIDEO_REDRIVE_INTERVAL_SECONDS="1",
    )
    metrics_port = free_port()
    worker = start_worker({**env, "SNACKVIDEO_METRICS_PORT": str(metrics_port)}, concurrency=1)
    beat_log = tmp_path / "beat.log"
    with open(beat_log, "wb") as log_file:
        beat = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO",
             "--schedule", str(tmp_path / "celerybeat-schedule")],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        # Beat publishes through the Sentinel transport; the worker runs what it sent.
        wait_until(lambda: "redrive " in worker.log(), 60, what="a redrive beat scheduled")
        flower = start_flower_here(env)
        broker_page = flower.get("/broker")
        assert broker_page.status_code == 200, broker_page.text[:500]

        for name, value in {
            "REDIS_URL": url,
            "SNACKVIDEO_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }.items():
            monkeypatch.setenv(name, value)
        producer = Producer()
        ledger = Ledger(
            url, sandbox, redis_env={"SNACKVIDEO_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
        )
        ledger.offer("with-passwords", 3, producer)
        wait_until(lambda: len(ledger.accepted()) == 3, timeout=60, what="3 deliveries")
        producer.close()
        for command in (["status"], ["dlq", "list"]):
            done = subprocess.run(
                [SNACKVIDEO, *command], env=env, cwd=ROOT, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert MASTER_PASSWORD not in done.stdout + done.stderr

        # The metrics collectors read the master through the Sentinels too.
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "snackvideo_redis_up 1.0" in metrics

        # Every connection to the master authenticated as the URL's user.
        master = redis.Redis(port=group.master.port)
        users = {
            entry["user"]
            for entry in master.client_list()
            if entry["id"] != str(master.client_id())
        }
        master.close()
        assert MASTER_USER in users

        shown = [
            worker.log(),
            beat_log.read_text(),
            flower.log_path.read_text(),
            broker_page.text,
            metrics,
        ]
        for text in shown:
            assert SENTINEL_PASSWORD not in text
            assert MASTER_PASSWORD not in text
    finally:
        if beat.poll() is None:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(20)
