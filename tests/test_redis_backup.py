"""The backup and restore drill of docs/operations.md, with real processes.

A live redis-server (AOF on) holds queued, parked (the delayed set) and dead-lettered
jobs. Its files are copied the documented way: after BGREWRITEAOF with automatic
rewrites paused (AOF), or after BGSAVE (RDB). The source is then killed, a new
redis-server starts from the copy alone, and a worker pointed at it delivers every queued
and parked job; the dead letters are there, and a replay delivers them too.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from producers import Producer
from tests.conftest import (
    STORE,
    STORE_KEY,
    RedisServer,
    Sandbox,
    Worker,
    snackvideo,
    wait_until,
    worker_env,
)
from tests.queue_helpers import event, wait_idle
from worker.deadletter.store import DeadLetterStore
from worker.delayed.store import DelayedJobs
from worker.keys import DELIVERY_QUEUE, delivered_key

pytestmark = pytest.mark.integration

#: A store the sandbox knows but the first worker has no key for: its jobs dead-letter.
LATE_STORE, LATE_KEY = "store_late", "pk_test_late_51c0"


def info(client: redis.Redis, section: str) -> dict[str, object]:
    return dict(client.info(section))


def back_up(client: redis.Redis, source: Path, backup: Path, kind: str) -> None:
    """Copy the files of a live Redis, as docs/operations.md says."""
    backup.mkdir()
    if kind == "rdb":
        before = info(client, "persistence")["rdb_last_save_time"]
        client.bgsave()
        wait_until(
            lambda: (
                info(client, "persistence")["rdb_last_save_time"] != before
                and not info(client, "persistence")["rdb_bgsave_in_progress"]
            ),
            60,
            what="BGSAVE",
        )
        assert info(client, "persistence")["rdb_last_bgsave_status"] == "ok"
        shutil.copy2(source / "dump.rdb", backup / "dump.rdb")
        return
    # AOF: one rewrite, automatic rewrites paused while the directory is copied, so that
    # no rewrite swaps its files mid-copy.
    client.config_set("auto-aof-rewrite-percentage", "0")
    client.bgrewriteaof()
    wait_until(
        lambda: (
            not info(client, "persistence")["aof_rewrite_in_progress"]
            and not info(client, "persistence")["aof_rewrite_scheduled"]
        ),
        60,
        what="BGREWRITEAOF",
    )
    assert info(client, "persistence")["aof_last_bgrewrite_status"] == "ok"
    shutil.copytree(source / "appendonlydir", backup / "appendonlydir")
    client.config_set("auto-aof-rewrite-percentage", "100")


def snapshot(client: redis.Redis) -> dict[str, object]:
    return {
        "queued": client.llen(DELIVERY_QUEUE),
        "parked": DelayedJobs(client).depth(),
        "dead_letters": DeadLetterStore(client).counts_by_reason(),
    }


@pytest.mark.parametrize("kind", ["aof", "rdb"])
def test_a_redis_restored_from_copied_files_delivers_every_job(
    kind: str,
    own_redis: Callable[..., RedisServer],
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    source = own_redis(appendonly=True)
    sandbox = start_sandbox(stores={STORE: STORE_KEY, LATE_STORE: LATE_KEY})
    sandbox.configure(always_fail=["park-"])
    # Retries parked for 10-15 s: still parked when the worker stops, even on a slow host.
    first = start_worker(
        worker_env(
            source.url,
            sandbox.base_url,
            SNACKVIDEO_RETRY_BASE_SECONDS="10",
            SNACKVIDEO_RETRY_MAX_SECONDS="10",
        )
    )
    producer = Producer(source.url)
    parked = [producer.enqueue(STORE, event(f"park-{n}")) for n in range(3)]
    dead = [producer.enqueue(LATE_STORE, event(f"late-{n}")) for n in range(2)]
    client = redis.Redis.from_url(source.url)
    wait_until(
        lambda: DelayedJobs(client).depth() == 3 and len(DeadLetterStore(client)) == 2,
        60,
        what="three jobs parked and two dead-lettered",
    )
    first.stop()
    queued = [producer.enqueue(STORE, event(f"queued-{n}")) for n in range(5)]
    producer.close()
    assert DelayedJobs(client).depth() == 3  # the warm stop left them parked
    # What the backup must hold. The queue may also hold a stale copy of a parked job
    # (taken before the stop, put back by it): the done-check skips it, never sends it.
    held = snapshot(client)
    assert held["queued"] >= 5

    backup = tmp_path / "backup"
    started = time.monotonic()
    back_up(client, source.workdir, backup, kind)
    backup_s = time.monotonic() - started
    client.close()
    source.stop(signal.SIGKILL)  # the original is gone: only the copy is left

    # RDB: start without AOF (it would start empty, ignoring dump.rdb), then turn AOF on.
    restored = own_redis(appendonly=kind == "aof", workdir=backup)
    client = redis.Redis.from_url(restored.url)
    if kind == "rdb":
        client.config_set("appendonly", "yes")
    assert snapshot(client) == held
    assert held["dead_letters"] == {"no_api_key": 2}

    sandbox.configure(always_fail=[])
    keys = json.dumps({STORE: STORE_KEY, LATE_STORE: LATE_KEY})
    env = worker_env(restored.url, sandbox.base_url, SCALEV_STOREFRONT_API_KEYS=keys)
    started = time.monotonic()
    start_worker(env)
    wait_until(
        lambda: all(client.exists(delivered_key(job)) for job in queued + parked),
        90,
        what="every queued and parked job delivered",
    )
    delivered_s = time.monotonic() - started
    replay = snackvideo(env, "dlq", "replay", "--reason", "no_api_key")
    assert replay.returncode == 0, replay.stderr
    wait_until(
        lambda: all(client.exists(delivered_key(job)) for job in dead), 60, what="the replays"
    )
    wait_idle(client)
    accepted = sorted(e["click_id"] for e in sandbox.events())
    expected = [f"late-{n}" for n in range(2)] + [f"park-{n}" for n in range(3)]
    assert accepted == sorted(expected + [f"queued-{n}" for n in range(5)])
    assert len(DeadLetterStore(client)) == 0
    client.close()
    print(
        f"\n{kind}: backup {backup_s:.2f}s; from the worker's start on the restored Redis "
        f"to 5 queued + 3 parked (due 10-15 s after parking) delivered {delivered_s:.1f}s"
    )
