"""Prometheus metrics: the numbers on /metrics of a real prefork worker equal what happened.

A known run (N delivered, M dead-lettered by a 404, K retried once through the sandbox's
``fail_first``) is read over HTTP from the worker's one /metrics endpoint while several
pool processes did the work. Recycled children (``--max-tasks-per-child 1``) and a child
killed with SIGKILL must leave exact totals and no files of dead processes behind.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from producers import Producer
from tests.conftest import STORE, STORE_KEY, Sandbox, free_port, wait_until, worker_env
from tests.queue_helpers import event
from worker.deadletter.store import DeadLetterStore
from worker.metrics.collectors import RedisStateCollector
from worker.metrics.multiprocess import fold_process_files

pytestmark = pytest.mark.integration

GONE_STORE = "store_gone"  # has a key in the worker's config, unknown to the sandbox: 404
GONE_KEY = "pk_test_gone_6d1e0b"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


def metrics_env(redis_url: str, sandbox: Sandbox, port: int, directory: Path) -> dict[str, str]:
    keys = f'{{"{STORE}": "{STORE_KEY}", "{GONE_STORE}": "{GONE_KEY}"}}'
    return worker_env(
        redis_url,
        sandbox.base_url,
        SNACKVIDEO_METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(directory),
        SCALEV_STOREFRONT_API_KEYS=keys,
    )


def run_known_workload(
    redis_url: str, sandbox: Sandbox, *, delivered: int, dead: int, retried: int, tag: str
) -> None:
    """N delivered + M dead-lettered (404) first; then K that fail once (503) and succeed."""
    producer = Producer(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        producer.enqueue_many(STORE, [event(f"{tag}-ok-{i}") for i in range(delivered)])
        producer.enqueue_many(GONE_STORE, [event(f"{tag}-gone-{i}") for i in range(dead)])
        wait_until(
            lambda: (
                len(sandbox.events()) == delivered
                and DeadLetterStore(client).counts_by_reason().get("http_404") == dead
            ),
            timeout=90,
            what="the first phase to be delivered and dead-lettered",
        )
        # fail_first counts attempts per click_id: only the new click ids fail (once).
        sandbox.configure(fail_first=1)
        producer.enqueue_many(STORE, [event(f"{tag}-retry-{i}") for i in range(retried)])
        wait_until(
            lambda: len(sandbox.events()) == delivered + retried,
            timeout=90,
            what="the retried jobs to be delivered",
        )
    finally:
        producer.close()
        client.close()


def expected_counts(delivered: int, dead: int, retried: int) -> dict[str, Any]:
    return {
        "deliveries": {
            frozenset({("outcome", "delivered"), ("status", "204")}): delivered + retried,
            frozenset({("outcome", "retried"), ("status", "503")}): retried,
            frozenset({("outcome", "dead_lettered"), ("status", "404")}): dead,
        },
        "dead_letters": {frozenset({("reason", "http_404")}): dead},
        "http_requests": delivered + dead + 2 * retried,
        "ages": delivered + retried,
        "enqueued": delivered + dead + retried,
    }


def assert_exact(samples: Samples, expected: dict[str, Any]) -> None:
    assert series(samples, "snackvideo_deliveries_total") == expected["deliveries"]
    assert series(samples, "snackvideo_dead_letters_total") == expected["dead_letters"]
    assert value(samples, "snackvideo_delivery_seconds_count") == expected["http_requests"]
    assert value(samples, "snackvideo_event_age_seconds_count") == expected["ages"]
    assert value(samples, "snackvideo_events_enqueued_total") == expected["enqueued"]
    assert value(samples, "snackvideo_rate_limited_responses_total") == 0
    # Throttle waits depend on the shared budget's pacing, not on this run's outcomes: the
    # outcome series above already say no job was parked by the throttle.
    # Cumulative buckets: +Inf holds every observation.
    assert (
        value(samples, "snackvideo_delivery_seconds_bucket", le="+Inf") == expected["http_requests"]
    )
    assert value(samples, "snackvideo_delivery_seconds_sum") > 0


def settled(port: int, expected: dict[str, Any]) -> Callable[[], Samples | None]:
    """The last metric write follows the sandbox's receipt by a moment: wait for it."""

    def check() -> Samples | None:
        samples = scrape(port)
        total = sum(series(samples, "snackvideo_deliveries_total").values())
        return samples if total >= sum(expected["deliveries"].values()) else None

    return check


def pid_files(directory: Path) -> set[int]:
    return {
        int(m.group(1))
        for name in os.listdir(directory)
        if (m := re.match(r"^(?:counter|histogram)_(\d+)\.db$", name))
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_counter(path: Path, amount: float, outcome: str = "delivered") -> None:
    """A counter file as a process in multiprocess mode writes it."""
    key = mmap_key(
        "snackvideo_deliveries",
        "snackvideo_deliveries_total",
        ["outcome", "status"],
        [outcome, "204"],
        "stale",
    )
    stale = MmapedDict(str(path))
    stale.write_value(key, amount, 0.0)
    stale.close()


# -- real workers ---------------------------------------------------------------------------


def test_metrics_of_a_prefork_worker_equal_what_happened(
    redis_url: str, start_sandbox: Callable[..., Sandbox], start_worker: Any, tmp_path: Path
) -> None:
    n, m, k = 12, 4, 5
    # A budget far above this run: rate-limit headers on every answer, never a 429.
    sandbox = start_sandbox("--rate-limit", "1000/1")
    port = free_port()
    directory = tmp_path / "metrics"
    directory.mkdir()
    # Left over from an earlier run: its counts must not leak into this one.
    write_counter(directory / "counter_999999.db", 1000)
    worker = start_worker(metrics_env(redis_url, sandbox, port, directory), concurrency=3)

    run_known_workload(redis_url, sandbox, delivered=n, dead=m, retried=k, tag="mp")
    expected = expected_counts(n, m, k)
    samples = wait_until(settled(port, expected), timeout=30, what="metrics to settle")
    assert_exact(samples, expected)
    assert value(samples, "snackvideo_queue_depth") == 0
    assert value(samples, "snackvideo_scheduled_jobs") == 0
    assert value(samples, "snackvideo_dead_letter_depth", reason="http_404") == m
    assert value(samples, "snackvideo_redis_up") == 1
    limits = series(samples, "snackvideo_rate_limit_limit")
    assert list(limits.values()) == [1000]
    (scope,) = limits
    assert 0 <= value(samples, "snackvideo_rate_limit_remaining", **dict(scope)) <= 1000
    assert all(sandbox.attempts(f"mp-retry-{i}") == 2 for i in range(k))
    assert not (directory / "counter_999999.db").exists()

    # A pool child killed outright never runs its shutdown hook: the next scrape folds its
    # files into the archive, and the totals do not move.
    children = pid_files(directory)
    assert children, "the pool children wrote no metric files"
    victim = min(children)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not alive(victim), timeout=20, what="the killed child to be reaped")
    samples = scrape(port)
    assert_exact(samples, expected)
    assert victim not in pid_files(directory)
    assert (directory / "counter_archive.db").exists()
    assert "cannot record metrics" not in worker.log()
    assert "could not fold" not in worker.log()


def test_recycled_children_leave_exact_totals_and_no_files(
    redis_url: str, sandbox: Sandbox, start_worker: Any, tmp_path: Path
) -> None:
    n, m, k = 10, 3, 3
    port = free_port()
    directory = tmp_path / "metrics"
    start_worker(
        metrics_env(redis_url, sandbox, port, directory),
        concurrency=3,
        extra_args=("--max-tasks-per-child", "1"),
    )
    run_known_workload(redis_url, sandbox, delivered=n, dead=m, retried=k, tag="rc")
    expected = expected_counts(n, m, k)
    samples = wait_until(settled(port, expected), timeout=30, what="metrics to settle")
    assert_exact(samples, expected)

    # Every child ran one task and exited: each folded its own files on the way out.
    wait_until(
        lambda: all(alive(pid) for pid in pid_files(directory)),
        timeout=30,
        what="files of exited children to be folded",
    )
    assert len(pid_files(directory)) <= 3
    assert_exact(scrape(port), expected)


def test_metrics_of_a_threads_worker_equal_what_happened(
    redis_url: str, sandbox: Sandbox, start_worker: Any, tmp_path: Path
) -> None:
    """The threads pool (docs/operations.md) records from one process, many threads."""
    n, m, k = 8, 2, 2
    port = free_port()
    env = metrics_env(redis_url, sandbox, port, tmp_path / "metrics")
    start_worker(env, concurrency=4, pool="threads")
    run_known_workload(redis_url, sandbox, delivered=n, dead=m, retried=k, tag="th")
    expected = expected_counts(n, m, k)
    assert_exact(wait_until(settled(port, expected), timeout=30, what="metrics"), expected)


def test_metrics_port_zero_serves_nothing_and_writes_no_files(
    redis_url: str, sandbox: Sandbox, start_worker: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    env = worker_env(redis_url, sandbox.base_url, PROMETHEUS_MULTIPROC_DIR=str(directory))
    worker = start_worker(env, concurrency=2)
    Producer(redis_url).enqueue(STORE, event("off-1"))
    wait_until(lambda: sandbox.events(click_id="off-1"), timeout=30, what="delivery")
    assert not directory.exists()
    assert "serving /metrics" not in worker.log()
    assert "cannot record metrics" not in worker.log()


# -- the pieces, without a worker -------------------------------------------------------------


def test_enqueued_total_and_queue_gauges_come_from_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    producer = Producer(redis_url)
    producer.enqueue_many(STORE, [event(f"g-{i}") for i in range(5)])
    producer.enqueue(STORE, event("g-idem"), idempotency_key="order-1")
    producer.enqueue(STORE, event("g-idem"), idempotency_key="order-1")  # nothing pushed
    producer.close()

    registry_samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in RedisStateCollector(client).collect()
        for s in family.samples
    }
    assert value(registry_samples, "snackvideo_events_enqueued_total") == 6
    assert value(registry_samples, "snackvideo_queue_depth") == 6
    assert value(registry_samples, "snackvideo_scheduled_jobs") == 0
    assert value(registry_samples, "snackvideo_redis_up") == 1
    client.close()


def test_an_unreachable_redis_is_a_gauge_not_a_failed_scrape() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    families = list(RedisStateCollector(client).collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("snackvideo_redis_up", 0)]


def test_folding_a_dead_process_keeps_the_totals(tmp_path: Path) -> None:
    write_counter(tmp_path / "counter_101.db", 3)
    write_counter(tmp_path / "counter_102.db", 4)
    write_counter(tmp_path / "counter_103.db", 2, outcome="retried")

    def totals() -> dict[tuple[str, ...], float]:
        collector = MultiProcessCollector(None, str(tmp_path))
        return {
            tuple(sorted(s.labels.values())): s.value
            for family in collector.collect()
            for s in family.samples
        }

    before = totals()
    assert fold_process_files(tmp_path, 101) == 1
    assert fold_process_files(tmp_path, 103) == 1
    assert fold_process_files(tmp_path, 999) == 0
    assert totals() == before == {("204", "delivered"): 7, ("204", "retried"): 2}
    assert sorted(os.listdir(tmp_path)) == ["counter_102.db", "counter_archive.db"]
    # A second fold into an existing archive adds, it does not overwrite.
    fold_process_files(tmp_path, 102)
    assert totals() == before
