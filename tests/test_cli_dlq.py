"""``snackvideo dlq ...`` as an operator runs it: the real command against a real Redis.

The filter matrix runs on entries written straight into the store; the end-to-end test
gets its 400 and 404 entries from a real worker and the sandbox, fixes the sandbox, and
replays them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.waiting import SETTLE_SECONDS
from producers import Producer
from producers.keys import DELIVERY_QUEUE
from tests.conftest import PYTHON, ROOT, STORE, STORE_KEY, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event, queued
from worker.cli.dlq import UsageError, parse_duration
from worker.deadletter.store import DeadLetter, DeadLetterStore

pytestmark = pytest.mark.processes

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")


def run(
    redis_url: str, *args: str, stdin: str = "", **env_overrides: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
    env.update({"REDIS_URL": redis_url, **env_overrides})
    return subprocess.run(
        [SNACKVIDEO, "dlq", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def listed(redis_url: str, *args: str) -> list[dict[str, Any]]:
    done = run(redis_url, "list", "--json", "--limit", "1000", *args)
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout)
    return entries


def count(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def ids(entries: list[dict[str, Any]]) -> set[str]:
    return {entry["id"] for entry in entries}


def seed(client: redis.Redis) -> DeadLetterStore:
    """Six entries over two stores and four reasons, 10 min to 3 days old."""
    store = DeadLetterStore(client)
    now = time.time()
    rows = [
        ("a", "http_404", "store_a", 3 * 86_400),
        ("b", "http_404", "store_b", 2 * 3_600),
        ("c", "no_api_key", "store_b", 3_600),
        ("d", "http_400", "store_a", 1_800),
        ("e", "retries_exhausted", "store_a", 900),
        ("f", "expired", "store_b", 600),
    ]
    for job, reason, store_id, age in rows:
        status = int(reason[5:]) if reason.startswith("http_") else None
        store.add(
            DeadLetter(
                job_id=f"job-{job}",
                store_id=store_id,
                payload=event(f"clk-{job}"),
                reason=reason,
                status_code=status,
                error=f'{{"status": {status}}}' if status else "",
                attempts=1,
                enqueued_at=now - age - 1,
                dead_lettered_at=now - age,
            )
        )
    return store


# -- DURATION (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7_200), ("7d", 604_800), ("1w", 604_800),
     ("1h30m", 5_400), ("1.5h", 5_400), (" 2H ", 7_200)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "h", "2x", "-5m", "5m-", "0s", "1h 2", "seven days"])
def test_bad_durations_are_refused_with_the_format(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


# -- reading ------------------------------------------------------------------------------


def test_list_filters_and_json_shape(redis_client: redis.Redis, redis_url: str) -> None:
    seed(redis_client)
    everything = listed(redis_url)
    assert [e["id"] for e in everything] == [f"job-{j}-r0" for j in "fedcba"]  # newest first
    assert list(everything[0]) == [
        "id", "job_id", "store_id", "payload", "reason", "status_code", "error",
        "attempts", "enqueued_at", "dead_lettered_at", "replay_count",
    ]  # fmt: skip
    assert ids(listed(redis_url, "--reason", "http_404")) == {"job-a-r0", "job-b-r0"}
    assert ids(listed(redis_url, "--store", "store_b")) == {"job-b-r0", "job-c-r0", "job-f-r0"}
    assert ids(listed(redis_url, "--reason", "http_404", "--store", "store_b")) == {"job-b-r0"}
    assert ids(listed(redis_url, "--since", "45m")) == {"job-d-r0", "job-e-r0", "job-f-r0"}
    assert ids(listed(redis_url, "--since", "1d", "--store", "store_a")) == {
        "job-d-r0",
        "job-e-r0",
    }
    assert [e["id"] for e in listed(redis_url, "--limit", "2")] == ["job-f-r0", "job-e-r0"]

    table = run(redis_url, "list")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["ID", "REASON", "STATUS", "STORE"]
    assert len(rows) == 6
    assert rows[-1].split()[:5] == ["job-a-r0", "http_404", "404", "store_a", "clk-a"]


def test_show_prints_reason_status_body_and_payload(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed(redis_client)
    shown = run(redis_url, "show", "job-a-r0")
    assert shown.returncode == 0, shown.stderr
    assert "reason:            http_404" in shown.stdout
    assert "status_code:       404" in shown.stdout
    assert '{"status": 404}' in shown.stdout
    assert '"click_id": "clk-a"' in shown.stdout
    as_json = json.loads(run(redis_url, "show", "job-a-r0", "--json").stdout)
    assert as_json["id"] == "job-a-r0" and as_json["status_code"] == 404

    missing = run(redis_url, "show", "job-zzz-r0")
    assert missing.returncode == 1
    assert "no dead-letter entry 'job-zzz-r0'" in missing.stderr


def test_stats_counts_by_reason_and_store_oldest_and_trims(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed(redis_client)
    # One more entry into a store capped at 6 trims the oldest (job-a): counted.
    DeadLetterStore(redis_client, max_entries=6).add(
        DeadLetter(job_id="job-g", store_id="store_a", payload=event("clk-g"), reason="http_401")
    )
    done = run(redis_url, "stats", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["entries"] == 6
    assert stats["by_reason"] == {
        "expired": 1,
        "http_400": 1,
        "http_401": 1,
        "http_404": 1,
        "no_api_key": 1,
        "retries_exhausted": 1,
    }
    assert stats["by_store"] == {"store_a": 3, "store_b": 3}
    assert stats["oldest"]["id"] == "job-b-r0"
    assert stats["trimmed_by_reason"] == {"http_404": 1}

    text = run(redis_url, "stats").stdout
    assert "oldest       job-b-r0 http_404" in text
    assert "trimmed by retention  1" in text
    assert "  store_a" in text and "  no_api_key" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--reason", "http_4o4"], "unknown reason 'http_4o4'"),
        (["list", "--since", "yesterday"], "invalid duration 'yesterday'"),
        (["list", "--store", " "], "--store must not be empty"),
        (["list", "--limit", "0"], "must be at least 1"),
        (["replay"], "say which entries"),
        (["replay", "--all", "--reason", "http_404"], "--all selects every entry"),
        (["replay", "job-a-r0", "--store", "store_a"], "not several of them"),
        (["purge", "--older-than", "3 parsecs", "--yes"], "invalid duration"),
        (["purge", "--reason", "nope", "--yes"], "unknown reason 'nope'"),
    ],
)
def test_bad_filters_exit_2_with_a_clear_message(
    redis_client: redis.Redis, redis_url: str, args: list[str], message: str
) -> None:
    store = seed(redis_client)
    done = run(redis_url, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(store) == 6 and redis_client.llen(DELIVERY_QUEUE) == 0


# -- replay -------------------------------------------------------------------------------


def test_replay_dry_run_says_how_many_which_by_reason_and_store(
    redis_client: redis.Redis, redis_url: str
) -> None:
    store = seed(redis_client)
    done = run(redis_url, "replay", "--store", "store_b", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "would replay 3 entries"
    assert lines[1] == "  by reason: expired 1, http_404 1, no_api_key 1"
    assert lines[2] == "  by store:  store_b 3"
    assert [line.split()[0] for line in lines[3:]] == ["job-b-r0", "job-c-r0", "job-f-r0"]
    assert len(store) == 6 and redis_client.llen(DELIVERY_QUEUE) == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["job-a-r0", "job-d-r0"], {"job-a", "job-d"}),
        (["--all"], {f"job-{j}" for j in "abcdef"}),
        (["--reason", "http_404"], {"job-a", "job-b"}),
        (["--store", "store_a"], {"job-a", "job-d", "job-e"}),
        (["--reason", "http_404", "--store", "store_a"], {"job-a"}),
    ],
)
def test_replay_selects_by_id_all_reason_and_store(
    redis_client: redis.Redis, redis_url: str, args: list[str], expected: set[str]
) -> None:
    store = seed(redis_client)
    done = run(redis_url, "replay", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"replayed {count(len(expected))}"
    pushed = [m.kwargs for m in queued(redis_client)]
    assert {kwargs["job_id"] for kwargs in pushed} == expected
    assert all(kwargs["replay_count"] == 1 and kwargs["attempts"] == 0 for kwargs in pushed)
    assert {e.job_id for e in store.find_entries()} == {f"job-{j}" for j in "abcdef"} - expected


def test_replay_of_an_unknown_id_replays_nothing_and_fails(
    redis_client: redis.Redis, redis_url: str
) -> None:
    store = seed(redis_client)
    done = run(redis_url, "replay", "job-a-r0", "job-nope-r0")
    assert done.returncode == 1
    assert "no dead-letter entry 'job-nope-r0'" in done.stderr
    assert "nothing replayed" in done.stderr
    assert len(store) == 6 and redis_client.llen(DELIVERY_QUEUE) == 0


# -- purge --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["job-b-r0", "job-c-r0"], {"job-b", "job-c"}),
        (["--all"], {f"job-{j}" for j in "abcdef"}),
        (["--reason", "http_404"], {"job-a", "job-b"}),
        (["--store", "store_b"], {"job-b", "job-c", "job-f"}),
        (["--older-than", "50m"], {"job-a", "job-b", "job-c"}),
        (["--older-than", "1d", "--reason", "http_404"], {"job-a"}),
    ],
)
def test_purge_with_yes_selects_by_id_all_reason_store_and_age(
    redis_client: redis.Redis, redis_url: str, args: list[str], expected: set[str]
) -> None:
    store = seed(redis_client)
    done = run(redis_url, "purge", "--yes", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"purged {count(len(expected))}"
    assert {e.job_id for e in store.find_entries()} == {f"job-{j}" for j in "abcdef"} - expected
    assert redis_client.llen(DELIVERY_QUEUE) == 0


def test_purge_asks_first_and_a_no_keeps_everything(
    redis_client: redis.Redis, redis_url: str
) -> None:
    store = seed(redis_client)
    declined = run(redis_url, "purge", "--reason", "http_404", stdin="n\n")
    assert declined.returncode == 1
    assert "about to purge 2 entries" in declined.stdout
    assert "Delete 2 entries for good? [y/N]" in declined.stdout
    assert "nothing purged" in declined.stderr
    no_terminal = run(redis_url, "purge", "--all")  # end of input counts as a no
    assert no_terminal.returncode == 1
    assert len(store) == 6

    confirmed = run(redis_url, "purge", "--reason", "http_404", stdin="y\n")
    assert confirmed.returncode == 0
    assert "purged 2 entries" in confirmed.stdout
    assert len(store) == 4


def test_purge_dry_run_and_unknown_ids(redis_client: redis.Redis, redis_url: str) -> None:
    store = seed(redis_client)
    dry = run(redis_url, "purge", "--older-than", "1d", "--dry-run")
    assert dry.returncode == 0
    assert dry.stdout.splitlines()[:3] == [
        "would purge 1 entry",
        "  by reason: http_404 1",
        "  by store:  store_a 1",
    ]
    unknown = run(redis_url, "purge", "--yes", "job-a-r0", "job-zz-r0")
    assert unknown.returncode == 1
    assert "no dead-letter entry 'job-zz-r0'" in unknown.stderr
    assert len(store) == 6


# -- end to end: real failures, fixed, replayed ---------------------------------------------


@pytest.mark.integration
def test_400_and_404_entries_carry_status_and_body_and_replay_delivers_once_fixed(
    redis_client: redis.Redis,
    redis_url: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    sandbox.configure(always_fail=["bad-"], fail_status=400)
    keys = {STORE: STORE_KEY, "store_new": "pk_new_0001", "store_gone": "pk_gone_0001"}
    env = worker_env(redis_url, sandbox.base_url, SCALEV_STOREFRONT_API_KEYS=json.dumps(keys))
    start_worker(env, concurrency=2)
    producer = Producer(redis_url)
    job_400 = producer.enqueue(STORE, event("bad-400"))
    job_404 = producer.enqueue("store_new", event("clk-404"))  # the sandbox has no such store
    job_gone = producer.enqueue("store_gone", event("clk-gone"))
    producer.close()
    store = DeadLetterStore(redis_client)
    wait_until(lambda: len(store) == 3, SETTLE_SECONDS, what="three dead letters")

    entry_400 = store.get(f"{job_400}-r0")
    entry_404 = store.get(f"{job_404}-r0")
    assert entry_400 is not None and entry_404 is not None
    assert (entry_400.reason, entry_400.status_code, entry_400.attempts) == ("http_400", 400, 1)
    assert entry_400.error  # the sandbox's response body
    assert (entry_404.reason, entry_404.status_code) == ("http_404", 404)
    assert "store_not_found" in entry_404.error
    shown = run(redis_url, "show", entry_404.id).stdout
    assert "store_not_found" in shown and "clk-404" in shown
    assert STORE_KEY not in json.dumps([e.to_dict() for e in store.find_entries()])

    # The operator fixes the cause (the store exists now, the payload is accepted)...
    sandbox.configure(always_fail=[], stores={"store_new": "pk_new_0001"})
    replayed = run(redis_url, "replay", "--reason", "http_400")
    assert replayed.returncode == 0 and "replayed 1 entry" in replayed.stdout
    replayed = run(redis_url, "replay", entry_404.id, f"{job_gone}-r0")
    assert replayed.returncode == 0 and "replayed 2 entries" in replayed.stdout

    # ... and the fixed ones are delivered; the one still bad is back with replay_count 1.
    wait_until(lambda: sandbox.events(click_id="bad-400"), SETTLE_SECONDS, what="bad-400")
    wait_until(lambda: sandbox.events(click_id="clk-404"), SETTLE_SECONDS, what="clk-404")
    again = wait_until(
        lambda: store.get(f"{job_gone}-r1"), SETTLE_SECONDS, what="store_gone back in the DLQ"
    )
    assert (again.reason, again.status_code, again.replay_count) == ("http_404", 404, 1)
    assert [e.id for e in store.find_entries()] == [again.id]
    assert sandbox.attempts("bad-400") == 2 and sandbox.attempts("clk-404") == 1
    assert listed(redis_url)[0]["replay_count"] == 1
