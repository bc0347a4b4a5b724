"""A worker whose clock runs 300 s ahead, during a Scalev outage, beside one that is on time.

The ahead worker is a real ``celery worker`` whose ``time.time`` is shifted before anything
imports it (tests/clock_offset/sitecustomize.py). Both workers deliver and both run the
due-job mover. Were due times on each host's own clock, the ahead worker would park its
retries five minutes late and move the on-time worker's retries at once: a job's attempts
would go in seconds. On the Redis clock they go at the backoff pace, which the sandbox's
count of attempts per event is held to.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import requests

from producers import Producer
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
from tests.queue_helpers import event
from worker.keys import SCHEDULED

pytestmark = pytest.mark.integration

SEAM = ROOT / "tests" / "clock_offset"
AHEAD_SECONDS = 300.0
BASE_SECONDS, CAP_SECONDS = 1.0, 4.0
WATCH_SECONDS = 12.0
JOBS = 4


def most_attempts_on_time(elapsed: float) -> int:
    """The most attempts one job can make in ``elapsed`` seconds at the backoff pace: the
    wait after failure n is at least min(cap, base * 2**(n-1)) (jitter only stretches it)."""
    attempts, spent = 1, 0.0
    while True:
        spent += min(CAP_SECONDS, BASE_SECONDS * 2 ** (attempts - 1))
        if spent > elapsed:
            return attempts
        attempts += 1


def fewest_attempts_on_time(elapsed: float) -> int:
    """The fewest, were every wait its longest (1.5 x) and nothing else slow."""
    attempts, spent = 1, 0.0
    while True:
        spent += min(CAP_SECONDS, 1.5 * BASE_SECONDS * 2 ** (attempts - 1))
        if spent > elapsed:
            return attempts
        attempts += 1


def skew_gauge(port: int) -> float | None:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(r"^snackvideo_clock_skew_seconds ([-0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_a_worker_300_s_ahead_spends_its_attempts_at_the_backoff_pace(
    redis_url: str,
    redis_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox = start_sandbox("--always-fail", "outage-")  # every attempt answered 503
    common = {
        "SNACKVIDEO_RETRY_BASE_SECONDS": str(BASE_SECONDS),
        "SNACKVIDEO_RETRY_MAX_SECONDS": str(CAP_SECONDS),
        "SNACKVIDEO_MAX_ATTEMPTS": "50",  # none runs out within the watch
        # kombu scores in-flight messages by each host's clock: the ahead worker's restore
        # sweep would take the on-time worker's running jobs for lost ones. That is the
        # transport's part, not this test's: no sweep after the start.
        "SNACKVIDEO_UNACKED_RESTORE_INTERVAL_SECONDS": "3600",
    }
    port = free_port()
    ahead = start_worker(
        worker_env(
            redis_url,
            sandbox.base_url,
            **common,
            PYTHONPATH=str(SEAM),
            SNACKVIDEO_TEST_CLOCK_OFFSET_SECONDS=str(AHEAD_SECONDS),
            SNACKVIDEO_METRICS_PORT=str(port),
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        ),
        concurrency=1,
    )
    on_time = start_worker(worker_env(redis_url, sandbox.base_url, **common), concurrency=1)

    clicks = [f"outage-{n}" for n in range(JOBS)]
    producer = Producer(redis_url)
    started = time.monotonic()
    producer.enqueue_many(STORE, [event(click) for click in clicks])
    producer.close()
    # How far ahead of Redis TIME every parked retry is due: never more than the cap.
    furthest = 0.0
    while time.monotonic() - started < WATCH_SECONDS:
        seconds, micros = redis_client.time()
        now = seconds + micros / 1e6
        for _, due_at in redis_client.zrange(SCHEDULED, 0, -1, withscores=True):
            furthest = max(furthest, due_at - now)
        time.sleep(0.1)
    attempts = {click: sandbox.attempts(click) for click in clicks}
    elapsed = time.monotonic() - started
    most, fewest = most_attempts_on_time(elapsed), fewest_attempts_on_time(elapsed)
    skew = wait_until(lambda: skew_gauge(port), timeout=30, what="the skew gauge")
    retried_by = {
        name: worker.log().count("outcome=retried")
        for name, worker in (("ahead", ahead), ("on_time", on_time))
    }

    with capsys.disabled():
        print(
            f"\nSKEW: ahead={AHEAD_SECONDS:g}s over {elapsed:.1f}s attempts={attempts} "
            f"on-time schedule allows {fewest}..{most} per job (base {BASE_SECONDS:g}s, "
            f"cap {CAP_SECONDS:g}s) retried_by={retried_by} furthest_due_s={furthest:.2f} "
            f"gauge={skew:.3f}"
        )
    assert all(n <= most for n in attempts.values()), attempts
    assert all(n >= 2 for n in attempts.values()), attempts  # not parked for five minutes
    assert furthest <= CAP_SECONDS + 0.1, furthest
    assert all(retried_by.values()), retried_by  # both workers did their share
    assert AHEAD_SECONDS - 1 < skew < AHEAD_SECONDS + 1
    warned = [line for line in ahead.log().splitlines() if "clock skew:" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], warned
    logged = re.search(r"clock is ([-+][0-9.]+) s off", warned[0])
    assert logged is not None and abs(float(logged.group(1)) - AHEAD_SECONDS) < 1, warned
    assert "clock skew:" not in on_time.log()


def test_the_seam_shifts_the_wall_clock_of_a_child_process() -> None:
    code = "import time; from kombu.transport import redis as r; print(time.time(), r.time())"
    env = {"PYTHONPATH": str(SEAM), "SNACKVIDEO_TEST_CLOCK_OFFSET_SECONDS": "300"}
    before = time.time()
    out = subprocess.run(
        [PYTHON, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    shifted, kombus = (float(value) for value in out.stdout.split())
    assert before + 299 < shifted < time.time() + 301
    assert abs(kombus - shifted) < 1  # kombu's `from time import time` got the shifted one
