"""``snackvideo enqueue`` run as the real console script, against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis

from tests.conftest import ROOT, STORE, free_port
from tests.queue_helpers import event, queued

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
