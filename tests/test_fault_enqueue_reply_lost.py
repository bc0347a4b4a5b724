"""Fault at enqueue time: Redis ran the enqueue, but its reply came late or never.

The producer retries a timeout and a dropped connection; before the call token, the
retry pushed the batch a second time. What has to hold: each call returns its job ids
once they are in Redis, each event is on the queue once, and a worker delivers each
once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers.enqueue import Producer
from producers.keys import DELIVERY_QUEUE, ENQUEUED_COUNTER
from tests.conftest import STORE, RedisServer, Sandbox, Worker, worker_env
from tests.fault_helpers import FAULT_ENV, SETTLE_SECONDS, Ledger, event, report
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 5.0  # the default: socket timeout 2 s
HOLD_SECONDS = 2.6
BATCH = 50


def test_late_and_lost_enqueue_replies_queue_and_deliver_each_event_once(
    own_redis: Callable[..., RedisServer],
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = own_redis(appendonly=True)
    sandbox = start_sandbox()
    ledger = Ledger(server.url, sandbox)
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        producer = Producer(proxy.url, timeout_seconds=TIMEOUT_SECONDS)
        ledger.offer("plain", 20, producer)  # also loads the script: no NOSCRIPT below
        faulted_calls: list[tuple[str, float]] = []

        def call(fault: str, click: str, *, batch: int = 0, key: bool = False) -> None:
            if fault == "late":
                proxy.delay_reply_after(b"EVALSHA", HOLD_SECONDS)
            else:
                proxy.drop_after(b"EVALSHA")
            started = time.monotonic()
            if batch:
                clicks = [f"{click}-{i:02d}" for i in range(batch)]
                keys = clicks if key else None
                ids = producer.enqueue_many(
                    STORE, [event(c) for c in clicks], idempotency_keys=keys
                )
            else:
                clicks = [click]
                ids = [producer.enqueue(STORE, event(click), click if key else None)]
            faulted_calls.append((fault, time.monotonic() - started))
            ledger.offered.update(zip(ids, clicks, strict=True))

        for fault in ("late", "dropped"):
            call(fault, f"{fault}-single")
            call(fault, f"{fault}-single-keyed", key=True)
            call(fault, f"{fault}-batch", batch=BATCH)
            call(fault, f"{fault}-batch-keyed", batch=BATCH, key=True)
        evalsha_runs = proxy.count(b"EVALSHA")
        producer.close()

    client = redis.Redis.from_url(server.url)
    queued_before_worker = int(client.llen(DELIVERY_QUEUE))
    pushed = int(client.get(ENQUEUED_COUNTER) or 0)
    client.close()
    offered = 20 + 2 * (2 + 2 * BATCH)
    assert len(ledger.offered) == offered
    assert evalsha_runs == 2 * 8  # each faulted call ran twice on Redis
    assert queued_before_worker == pushed == offered

    start_worker(worker_env(server.url, sandbox.base_url, **FAULT_ENV), concurrency=2)
    ledger.wait_all_accounted(SETTLE_SECONDS)
    summary = ledger.summary()
    late = [seconds for fault, seconds in faulted_calls if fault == "late"]
    dropped = [seconds for fault, seconds in faulted_calls if fault == "dropped"]
    line = summary.line(
        "enqueue_reply_lost",
        max(seconds for _, seconds in faulted_calls),
        faulted_calls=len(faulted_calls),
        late_call_s=f"{min(late):.2f}-{max(late):.2f}",
        dropped_call_s=f"{min(dropped):.3f}-{max(dropped):.3f}",
        queued=queued_before_worker,
    )
    report(line, tmp_path, capsys)

    assert not summary.unaccounted
    assert summary.delivered == summary.offered == offered
    assert summary.duplicated == 0, summary.duplicated_clicks
