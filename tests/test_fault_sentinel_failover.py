"""Fault: the Redis master is SIGKILLed mid-run and Sentinel promotes its replica.

Real processes: a master with AOF, one replica (two in the last case), three Sentinels
(failure seen after 1 s), a ``celery worker`` and the sandbox, all reaching Redis through
the Sentinel list.
A producer thread enqueues one keyed event at a time throughout; the master is killed once
deliveries run, and restarted after the promotion (as a supervisor would), so that it
rejoins as the new master's replica. The summary line adds: ``recovery_s``, seconds from
the kill to the first delivery after the promotion; ``promoted_s``, from the kill to the
Sentinels naming the new master; ``acked_again_s``, from the kill to the first enqueue
the new master acknowledged (with WAIT and one replica: once the old master is its
replica; with two, once the other replica follows the new master); ``lost``,
acknowledged jobs neither delivered nor dead-lettered; ``refused``, enqueue calls that
raised.

What has to hold: the worker follows the new master by itself, and deliveries resume
within seconds of the kill. With ``SNACKVIDEO_ENQUEUE_MIN_REPLICAS=1`` every job that
``enqueue`` acknowledged is delivered or dead-lettered: a replica had it before the
producer was told (with two replicas, Sentinel promotes the one furthest along). Without
it, the jobs acknowledged in the instant before the kill may be missing from the
replica; the figures say how many were (the asynchronous replication of a loopback
replica is fast, so usually none). A refused enqueue (``EnqueueError``, while no master
answered, or too few replicas confirmed) may still have been stored: such jobs are
counted, not owed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from producers import EnqueueError, Producer
from tests.conftest import STORE, Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import (
    RECOVERY_BOUND_SECONDS,
    RECOVERY_ENV,
    SETTLE_SECONDS,
    Ledger,
    event,
    marker_stopped,
    report,
)
from tests.sentinel_helpers import SentinelGroup, sentinel_group_fixture  # noqa: F401

pytestmark = pytest.mark.integration

KILL_AT = 60  # deliveries
CONCURRENCY = 2
#: The producer keeps enqueueing this long after deliveries resumed.
AFTER_RESUME_SECONDS = 3.0


class SteadyProducer(threading.Thread):
    """Enqueues keyed events one by one until stopped; records acknowledged and refused."""

    def __init__(self, producer: Producer, ledger: Ledger) -> None:
        super().__init__(daemon=True)
        self.producer = producer
        self.ledger = ledger
        self.refused: list[str] = []
        self.refusals: list[tuple[float, str]] = []  # (monotonic, the error's text)
        self.latencies: list[float] = []
        self.acked_at: list[float] = []  # monotonic
        self.stopping = threading.Event()

    def acked_since(self, moment: float) -> float | None:
        """When the first enqueue after ``moment`` was acknowledged (monotonic)."""
        later = [at for at in self.acked_at if at > moment]
        return min(later) if later else None

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            click = f"failover-{n:05d}"
            n += 1
            started = time.monotonic()
            try:
                job_id = self.producer.enqueue(STORE, event(click), idempotency_key=click)
            except EnqueueError as exc:
                self.refused.append(click)
                self.refusals.append((started, str(exc)))
                continue
            self.acked_at.append(time.monotonic())
            self.latencies.append(self.acked_at[-1] - started)
            self.ledger.offered[job_id] = click
            time.sleep(0.01)


@pytest.mark.parametrize(
    ("min_replicas", "replicas"),
    [("0", 1), ("1", 1), ("1", 2)],
    ids=["min_replicas_0", "min_replicas_1", "min_replicas_1_two_replicas"],
)
def test_sentinel_failover_mid_run(
    min_replicas: str,
    replicas: int,
    sentinel_group: Callable[[], SentinelGroup],
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = sentinel_group(replicas=replicas)
    # Every click's first attempt gets a 503: each job also passes through the delayed set,
    # so the due-job mover and the worker's bookkeeping client cross the failover too.
    sandbox = start_sandbox("--latency-ms", "10", "--fail-first", "1")
    ledger = Ledger(group.url, sandbox)
    env = worker_env(group.url, sandbox.base_url, **RECOVERY_ENV, SNACKVIDEO_DEFAULT_RATE="1000")
    worker = start_worker(env, concurrency=CONCURRENCY)
    monkeypatch.setenv("SNACKVIDEO_ENQUEUE_MIN_REPLICAS", min_replicas)
    producer = Producer(group.url)
    steady = SteadyProducer(producer, ledger)
    steady.start()
    try:
        ledger.wait_delivered(KILL_AT, timeout=60)
        old_master = group.kill_master()
        acked_before_kill = len(ledger.offered)
        killed_at = time.time()
        killed_mono = time.monotonic()
        promoted_mono = group.wait_promoted()
        promoted_at = time.time()
        old_master.start()  # rejoins as the new master's replica (Sentinel reconfigures it)

        def resumed() -> float | None:
            times = [e["received_at"] for e in sandbox.events() if e["received_at"] > promoted_at]
            return min(times) if times else None

        first_after = wait_until(resumed, timeout=60, interval=0.1, what="deliveries to resume")
        resume_s = first_after - killed_at
        # With WAIT, enqueue acknowledges again once the new master has a replica: the
        # old master, once Sentinel has made it one and it has synced.
        wait_until(
            lambda: steady.acked_since(promoted_mono),
            timeout=90,
            interval=0.1,
            what="an enqueue acknowledged by the new master",
        )
        acked_again_s = steady.acked_since(promoted_mono) - killed_mono
        time.sleep(AFTER_RESUME_SECONDS)
    finally:
        steady.stopping.set()
        steady.join(30)
    refused_at_end = len(steady.refused)
    if min_replicas == "1":
        ledger.wait_all_accounted(SETTLE_SECONDS)
    else:
        settle(ledger)
    summary = ledger.summary()
    delivered_clicks = {e["click_id"] for e in sandbox.events()}
    refused_delivered = sum(1 for click in steady.refused if click in delivered_clicks)
    latencies = sorted(steady.latencies)
    line = summary.line(
        f"sentinel_failover_min_replicas_{min_replicas}_replicas_{replicas}",
        resume_s,
        lost=len(summary.unaccounted),
        refused=refused_at_end,
        refused_but_delivered=refused_delivered,
        promoted_s=f"{promoted_mono - killed_mono:.1f}",
        acked_again_s=f"{acked_again_s:.1f}",
        acked_before_kill=acked_before_kill,
        enqueue_p50_ms=f"{latencies[len(latencies) // 2] * 1000:.2f}",
        marker_stopped=marker_stopped(worker.log()),
        # When each refused call started, from the kill (negative: before it).
        refused_started_s=",".join(f"{at - killed_mono:.1f}" for at, _ in steady.refusals[:5])
        or "-",
    )
    report(line, tmp_path, capsys)
    for _, text in steady.refusals[:3]:
        print(f"refused: {text}")
    producer.close()

    if min_replicas == "1":
        assert not summary.unaccounted, line
    assert resume_s < RECOVERY_BOUND_SECONDS, line
    assert worker.process.poll() is None, worker.log()
    assert "Unrecoverable error" not in worker.log()


def settle(ledger: Ledger) -> None:
    """Without WAIT a few acknowledged jobs may be gone for good: wait for the rest only,
    bounded, and let the summary count what never came."""
    deadline = time.monotonic() + SETTLE_SECONDS
    stable_since, last = time.monotonic(), -1
    while time.monotonic() < deadline:
        missing = len(ledger.unaccounted())
        if missing == 0:
            return
        if missing != last:
            stable_since, last = time.monotonic(), missing
        elif time.monotonic() - stable_since > 30:
            return  # nothing came for 30 s: what is missing is lost
        time.sleep(0.5)
