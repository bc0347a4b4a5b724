"""REDIS_URL as kombu's Sentinel list: every component finds the master by name.

Real processes: a master, its replica and three Sentinels (``tests/sentinel_helpers``), a
``celery worker``, the ``snackvideo`` CLI and the sandbox. The failover itself is
``tests/test_fault_sentinel_failover.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers import EnqueueError, Producer
from producers.keys import DELIVERY_QUEUE, ENQUEUED_COUNTER
from tests.conftest import PYTHON, ROOT, STORE, Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import Ledger, event
from tests.sentinel_helpers import SentinelGroup, sentinel_group_fixture  # noqa: F401

pytestmark = pytest.mark.integration

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")


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
    one = Producer(group.url, timeout_seconds=2)
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
    assert "1 of 2 replica(s) confirmed it" in message
    assert "same idempotency key" in message
    # The job is stored on the master once, however often the call retried its WAIT.
    master = redis.Redis(port=group.master.port)
    queued = master.lrange(DELIVERY_QUEUE, 0, -1)
    assert sum(b"replicated-2" in item for item in queued) == 1
    master.close()
    two.close()
