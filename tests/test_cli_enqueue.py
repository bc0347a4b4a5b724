"""``snackvideo enqueue`` run as the real console script, against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import Producer
from producers.keys import idempotency_key
from tests.conftest import ROOT, STORE, free_port
from tests.queue_helpers import event, queued
from worker.cli.enqueue import content_key

pytestmark = pytest.mark.processes

SNACKVIDEO = str(Path(sys.executable).parent / "snackvideo")


def run_enqueue(
    redis_url: str, *args: str, stdin: str | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
    env["REDIS_URL"] = redis_url
    env.update(extra_env)
    return subprocess.run(
        [SNACKVIDEO, "enqueue", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def write_lines(path: Path, lines: list[Any]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def printed_ids(stdout: str) -> list[str]:
    ids = stdout.split()
    for job_id in ids:
        uuid.UUID(job_id)
    return ids


def test_a_good_file_enqueues_every_line(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = [event("clk-cli-1"), event("clk-cli-2", note="é"), event("clk-cli-3")]
    path = write_lines(tmp_path / "events.jsonl", events)

    result = run_enqueue(redis_url, "--store", STORE, str(path))

    assert result.returncode == 0, result.stderr
    ids = printed_ids(result.stdout)
    assert len(ids) == 3
    messages = queued(redis_client)
    assert [m.kwargs["job_id"] for m in messages] == ids
    assert [m.kwargs["payload"] for m in messages] == events
    assert {m.kwargs["store_id"] for m in messages} == {STORE}
    assert "enqueued 3 event(s)" in result.stderr


def test_one_bad_line_names_it_and_enqueues_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bad = event("clk-cli-2")
    bad["events"][0]["properties"]["value"] = "150000"  # a string where an integer belongs
    path = write_lines(tmp_path / "events.jsonl", [event("clk-cli-1"), bad, event("clk-cli-3")])

    result = run_enqueue(redis_url, "--store", STORE, str(path))

    assert result.returncode == 1
    assert result.stdout == ""
    assert "line 2: events.0.properties.value" in result.stderr
    assert "line 1" not in result.stderr and "line 3" not in result.stderr
    assert "nothing enqueued" in result.stderr
    assert redis_client.dbsize() == 0


def test_every_bad_line_is_named(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "events.jsonl",
        [{"events": [{"event_name": "x"}]}, event("clk-ok"), "", event("clk-x", events=[])],
    )
    result = run_enqueue(redis_url, "--store", STORE, str(path))
    assert result.returncode == 1
    assert "line 1: click_id" in result.stderr
    assert "line 4: events" in result.stderr  # blank line 3 still counts
    assert redis_client.dbsize() == 0


def test_an_unreadable_json_line_is_named_by_number(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = write_lines(
        tmp_path / "events.jsonl",
        [event("clk-1"), event("clk-2"), '{"click_id": "clk-3", "events": [', event("clk-4")],
    )
    result = run_enqueue(redis_url, "--store", STORE, str(path))
    assert result.returncode == 1
    assert "line 3: not valid JSON" in result.stderr
    assert redis_client.dbsize() == 0


def test_a_single_object_from_stdin(redis_url: str, redis_client: redis.Redis) -> None:
    # Pretty-printed over several lines: read as one document, not as JSON Lines.
    body = json.dumps(event("clk-stdin"), indent=2)
    result = run_enqueue(redis_url, "--store", STORE, stdin=body)
    assert result.returncode == 0, result.stderr
    (job_id,) = printed_ids(result.stdout)
    (message,) = queued(redis_client)
    assert message.kwargs["job_id"] == job_id
    assert message.kwargs["payload"] == event("clk-stdin")


def test_dash_reads_stdin_too(redis_url: str, redis_client: redis.Redis) -> None:
    lines = "\n".join(json.dumps(event(f"clk-{i}")) for i in range(2))
    result = run_enqueue(redis_url, "--store", STORE, "-", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert len(printed_ids(result.stdout)) == 2
    assert len(queued(redis_client)) == 2


def test_a_bad_store_is_refused(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "events.jsonl", [event("clk-1")])
    result = run_enqueue(redis_url, "--store", "shop/../admin", str(path))
    assert result.returncode == 1
    assert "store_id" in result.stderr
    assert redis_client.dbsize() == 0


def test_empty_input_and_a_missing_file(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    empty = run_enqueue(redis_url, "--store", STORE, stdin="")
    assert empty.returncode == 1
    assert "no events" in empty.stderr
    missing = run_enqueue(redis_url, "--store", STORE, str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr
    assert redis_client.dbsize() == 0


def test_redis_down_is_an_error_not_a_silent_drop(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "events.jsonl", [event("clk-1")])
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    result = run_enqueue(
        nobody, "--store", STORE, str(path), SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS="0.5"
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error:" in result.stderr


# -- idempotency keys per line --------------------------------------------------------------


def test_a_key_field_keys_each_line_and_a_re_run_queues_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = [event(f"clk-{i}", order_id=f"order-{i}") for i in range(3)]
    path = write_lines(tmp_path / "events.jsonl", events)
    args = ("--store", STORE, "--idempotency-key-field", "order_id", str(path))

    first = run_enqueue(redis_url, *args)
    again = run_enqueue(redis_url, *args)

    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    ids = printed_ids(first.stdout)
    assert printed_ids(again.stdout) == ids
    assert [m.kwargs["job_id"] for m in queued(redis_client)] == ids
    for i, job_id in enumerate(ids):
        assert redis_client.get(idempotency_key(STORE, f"order-{i}")) == job_id.encode()
    assert "enqueued 3 event(s)" in first.stderr
    assert f"enqueued 0 event(s) for store {STORE}; 3 already queued" in again.stderr
    # The field is part of the event: it is sent as given.
    assert queued(redis_client)[0].kwargs["payload"]["order_id"] == "order-0"


def test_a_key_field_is_the_key_a_backend_passes_to_enqueue(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    producer = Producer(redis_url)
    backend_id = producer.enqueue(STORE, event("clk-1"), idempotency_key="order-1001-purchase")
    producer.close()
    line = event("clk-1", order_key="order-1001-purchase")
    path = write_lines(tmp_path / "events.jsonl", [line, event("clk-2", order_key="order-2")])

    result = run_enqueue(
        redis_url, "--store", STORE, "--idempotency-key-field", "order_key", str(path)
    )

    assert result.returncode == 0, result.stderr
    assert printed_ids(result.stdout)[0] == backend_id
    assert len(queued(redis_client)) == 2
    assert "enqueued 1 event(s)" in result.stderr and "1 already queued" in result.stderr


def test_a_line_without_a_usable_key_field_is_invalid_and_nothing_is_enqueued(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bad_payload = event("clk-7", order_id="order-7")
    bad_payload["events"] = []
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            event("clk-1", order_id="order-1"),
            event("clk-2"),  # no order_id
            event("clk-3", order_id=""),
            event("clk-4", order_id=4),
            event("clk-5", order_id=None),
            '{"click_id": "clk-6", "events": [{"event_name": "x"}], "order_id": "\\ud800"}',
            bad_payload,  # both problems on one line are named
        ],
    )
    result = run_enqueue(
        redis_url, "--store", STORE, "--idempotency-key-field", "order_id", str(path)
    )
    assert result.returncode == 1
    assert result.stdout == ""
    errors = result.stderr
    assert "line 1" not in errors
    assert "line 2: order_id: missing" in errors
    assert "line 3: order_id: idempotency key must be a non-empty string" in errors
    assert "line 4: order_id: idempotency key must be a non-empty string, not int" in errors
    assert "line 5: order_id: idempotency key must be a non-empty string, not null" in errors
    assert "line 6: order_id: idempotency key must be valid Unicode text" in errors
    assert "line 7: events" in errors and "line 7: order_id" not in errors
    # Line 6 counts twice: the event itself refuses text that is not Unicode, too.
    assert "nothing enqueued: 7 problem(s)" in errors
    assert redis_client.dbsize() == 0


def test_a_content_key_ignores_whitespace_and_key_order(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    one = event("clk-1")
    reordered = json.dumps(dict(reversed(list(one.items()))), indent=None, separators=(", ", ": "))
    first_file = write_lines(tmp_path / "a.jsonl", [one, event("clk-2")])
    second_file = write_lines(tmp_path / "b.jsonl", [reordered, event("clk-3")])

    first = run_enqueue(
        redis_url, "--store", STORE, "--idempotency-key-from-content", str(first_file)
    )
    second = run_enqueue(
        redis_url, "--store", STORE, "--idempotency-key-from-content", str(second_file)
    )

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    first_ids, second_ids = printed_ids(first.stdout), printed_ids(second.stdout)
    assert second_ids[0] == first_ids[0]
    assert [m.kwargs["payload"]["click_id"] for m in queued(redis_client)] == [
        "clk-1",
        "clk-2",
        "clk-3",
    ]
    # The key is per store: the same line for another store is another event.
    other = run_enqueue(
        redis_url, "--store", "store_other", "--idempotency-key-from-content", str(first_file)
    )
    assert other.returncode == 0, other.stderr
    assert set(printed_ids(other.stdout)).isdisjoint(first_ids)
    assert len(queued(redis_client)) == 5


def test_content_key_is_a_hash_of_store_and_canonical_json() -> None:
    a = content_key(STORE, {"b": 1, "a": [1, "é"]})
    assert a == content_key(STORE, {"a": [1, "é"], "b": 1})
    assert a != content_key("store_other", {"b": 1, "a": [1, "é"]})
    assert a != content_key(STORE, {"b": 1, "a": [1, "e"]})
    assert a.startswith("content-sha256:") and len(a) == len("content-sha256:") + 64


def test_the_two_key_options_exclude_each_other(redis_url: str, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "events.jsonl", [event("clk-1", order_id="o-1")])
    result = run_enqueue(
        redis_url, "--store", STORE, "--idempotency-key-field", "order_id",
        "--idempotency-key-from-content", str(path),
    )  # fmt: skip
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_help_explains_the_key_options(redis_url: str) -> None:
    result = run_enqueue(redis_url, "--help")
    assert result.returncode == 0
    for text in ("--idempotency-key-field FIELD", "--idempotency-key-from-content", "re-run"):
        assert text in result.stdout
