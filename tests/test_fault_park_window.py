"""Fault: a worker dies between parking a job (``delayed.schedule()``) and the ack.

Two copies of the job are then live: the parked one (a new message, due after its
backoff) and the old one, which kombu restores from ``unacked``. Before the job
generations both passed the done-check and both were posted. Now the parked message
carries generation g + 1 and ``schedule.lua`` records it in the same step; the restored
copy (generation g) finds it in the done-check and stands down (``outcome=duplicate``)
without a request, and the parked copy delivers the job once.

The kill is real and comes at that exact moment: ``tests/recovery_seam`` makes the pool
process ``os._exit`` (or SIGKILL its whole worker) right after ``schedule()`` returned.
The sandbox fails each click's first attempt, so each job is parked exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers import Producer
from tests.conftest import Sandbox, Worker, wait_until, worker_env
from tests.fault_helpers import RECOVERY_ENV, SETTLE_SECONDS, event, report, seam_env
from tests.queue_helpers import decode_message, log_lines, queued, wait_idle
from worker.keys import SCHEDULED_MESSAGES, UNACKED, generation_key

pytestmark = pytest.mark.integration

JOBS = 4


def parked_generation(client: redis.Redis, job_id: str) -> int:
    raw = client.hget(SCHEDULED_MESSAGES, job_id)
    return int(decode_message(raw).kwargs["generation"]) if raw else -1


def test_a_pool_process_dying_after_parking_leaves_one_live_copy(
    redis_url: str,
    redis_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox = start_sandbox("--fail-first", "1")
    # The parked copy is due 10-15 s after its park; the restored copy (reject on worker
    # lost) is back within a second or two (a new pool process has to start, on a busy
    # machine more): it runs while the parked one still waits.
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SNACKVIDEO_RETRY_BASE_SECONDS="10",
        SNACKVIDEO_RETRY_MAX_SECONDS="15",
    )
    worker = start_worker(seam_env(env, "exit_after_park"), concurrency=2)
    producer = Producer(redis_url)
    jobs = {producer.enqueue("store_abc", event(f"park-{i}")): f"park-{i}" for i in range(JOBS)}
    producer.close()

    started = time.monotonic()
    # Every restored copy stood down, before its parked copy was even due.
    attempts_when_stood_down = {}
    for job_id, click in jobs.items():
        wait_until(
            lambda job_id=job_id: log_lines(worker, "outcome=duplicate", f"job_id={job_id}"),
            SETTLE_SECONDS,
            what=f"the restored copy of {job_id} to stand down",
        )
        attempts_when_stood_down[click] = sandbox.attempts(click)
    stood_down_s = time.monotonic() - started
    generations = {job_id: parked_generation(redis_client, job_id) for job_id in jobs}
    recorded = {job_id: redis_client.get(generation_key(job_id)) for job_id in jobs}
    wait_until(
        lambda: all(sandbox.attempts(click) == 2 for click in jobs.values()),
        SETTLE_SECONDS,
        what="the parked copies to deliver",
    )
    wait_idle(redis_client)

    accepted = {click: sandbox.attempts(click) for click in jobs.values()}
    events = [e["click_id"] for e in sandbox.events()]
    line = (
        f"FAULT park_window_child_exit: jobs={JOBS} "
        f"deaths={worker.log().count('SEAM: parked')} "
        f"stood_down={sum(len(log_lines(worker, 'outcome=duplicate', j)) for j in jobs)} "
        f"accepted={len(events)} stood_down_s={stood_down_s:.1f}"
    )
    report(line, tmp_path, capsys)

    assert worker.log().count("SEAM: parked") == JOBS  # a real death after each parking
    # The restored copies sent nothing: only the 503 of the first run had reached Scalev.
    assert attempts_when_stood_down == dict.fromkeys(jobs.values(), 1), attempts_when_stood_down
    # Parked as generation 1, recorded in the same step, with the replay count (0).
    assert all(g in (1, -1) for g in generations.values()), generations  # -1: moved already
    assert all(r == b"0:1" for r in recorded.values()), recorded
    # Each job posted twice (the 503, then the parked copy's 204), accepted once, by the
    # parked copy: a fresh message, not a redelivered one.
    assert accepted == dict.fromkeys(jobs.values(), 2), accepted
    assert sorted(events) == sorted(jobs.values())
    for job_id in jobs:
        (delivered,) = log_lines(worker, "outcome=delivered", f"job_id={job_id}")
        assert "redelivered=1" not in delivered, delivered
        assert len(log_lines(worker, "outcome=duplicate", f"job_id={job_id}")) == 1
    assert worker.process.poll() is None


def test_a_worker_killed_after_parking_leaves_one_live_copy(
    redis_url: str,
    redis_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox = start_sandbox("--fail-first", "1")
    # The parked copy is due 25-30 s after its park; the old copy comes back when the new
    # worker's sweep finds the dead worker's heartbeat gone (about 10 s after the kill).
    env = worker_env(
        redis_url,
        sandbox.base_url,
        **RECOVERY_ENV,
        SNACKVIDEO_RETRY_BASE_SECONDS="25",
        SNACKVIDEO_RETRY_MAX_SECONDS="30",
    )
    doomed = start_worker(seam_env(env, "kill_after_park"), concurrency=1)
    producer = Producer(redis_url)
    job_id = producer.enqueue("store_abc", event("killed-park"))
    producer.close()

    wait_until(lambda: doomed.process.poll() is not None, SETTLE_SECONDS, what="the kill")
    killed = time.monotonic()
    assert "SEAM: parked" in doomed.log()
    # Two copies: the parked one (generation 1) and the one the dead worker held.
    assert parked_generation(redis_client, job_id) == 1
    assert redis_client.hlen(UNACKED) == 1
    assert redis_client.get(generation_key(job_id)) == b"0:1"

    worker = start_worker(env, concurrency=1)
    wait_until(
        lambda: log_lines(worker, "outcome=duplicate", f"job_id={job_id}"),
        SETTLE_SECONDS,
        what="the restored copy to stand down",
    )
    stood_down_s = time.monotonic() - killed
    attempts_when_stood_down = sandbox.attempts("killed-park")
    assert not [m for m in queued(redis_client) if m.headers["id"] == job_id]
    wait_until(lambda: sandbox.attempts("killed-park") == 2, SETTLE_SECONDS, what="delivery")
    wait_idle(redis_client)

    report(
        f"FAULT park_window_worker_kill: stood_down_s={stood_down_s:.1f} "
        f"accepted={len(sandbox.events())} attempts={sandbox.attempts('killed-park')}",
        tmp_path,
        capsys,
    )
    assert "restored 1 message(s) held by consumer" in worker.log()
    assert len(log_lines(worker, "outcome=duplicate", f"job_id={job_id}")) == 1
    assert attempts_when_stood_down == 1  # the restored copy sent nothing
    assert [e["click_id"] for e in sandbox.events()] == ["killed-park"]  # posted once
    (delivered,) = log_lines(worker, "outcome=delivered", f"job_id={job_id}")
    assert "redelivered=1" not in delivered  # by the parked copy
