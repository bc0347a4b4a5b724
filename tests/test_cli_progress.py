"""Progress of long CLI work: on a terminal, ``dlq replay``/``purge`` over thousands of
entries and ``enqueue`` of a large file draw a line on stderr; through pipes, and with
``--json``, they print exactly what they printed before.

The terminal is a real pseudo-terminal (``pty``) the command writes to; the commands are
the installed ``snackvideo`` against a real Redis.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest
import redis

from producers.keys import DELIVERY_QUEUE
from tests.conftest import PYTHON, ROOT, STORE
from tests.queue_helpers import event
from worker.cli.progress import Progress
from worker.deadletter.store import SCAN_CHUNK, DeadLetter, DeadLetterStore

pytestmark = pytest.mark.processes  # the CLI on a pseudo-terminal and through pipes

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
#: More than two chunks of the store's and of enqueue's.
MANY = 2 * SCAN_CHUNK + 200


def cli_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
    env.update({"REDIS_URL": redis_url, "SNACKVIDEO_DLQ_MAX_ENTRIES": str(10 * MANY)})
    return env


def on_terminal(args: list[str], env: dict[str, str], stdout: Path | None = None) -> str:
    """Run with stderr (and stdout, unless a file is given) on a pty; what the pty got."""
    controller, terminal = pty.openpty()
    out = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out if out is not None else terminal,
            stderr=terminal,
            env=env,
            cwd=ROOT,
        )
    finally:
        os.close(terminal)
        if out is not None:
            out.close()
    received = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: every holder of the terminal side has exited
            break
        if not data:
            break
        received += data
    os.close(controller)
    assert process.wait(30) == 0, received.decode(errors="replace")
    return received.decode()


def piped(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def seed(client: redis.Redis, n: int) -> None:
    store = DeadLetterStore(client, max_entries=10 * n)
    now = time.time()
    for i in range(n):
        store.add(
            DeadLetter(
                job_id=f"job-{i}",
                store_id=STORE,
                payload=event(f"clk-{i}"),
                reason="http_404",
                status_code=404,
                error="",
                attempts=1,
                enqueued_at=now - 60,
                dead_lettered_at=now - 30,
            ),
            now=now,
        )


# -- the line itself ----------------------------------------------------------------------


def test_the_line_counts_and_is_erased_and_says_nothing_when_disabled() -> None:
    shown = io.StringIO()
    clock = iter(range(100)).__next__  # a second per call: every advance redraws
    progress = Progress("replaying", 1200, enabled=True, stream=shown, clock=clock)
    progress.start()
    progress.advance(500)
    progress.advance(700)
    progress.clear()
    assert shown.getvalue() == (
        "\rreplaying 0/1200 (0%)\rreplaying 500/1200 (41%)\rreplaying 1200/1200 (100%)\r\x1b[K"
    )
    silent = io.StringIO()
    off = Progress("replaying", 1200, enabled=False, stream=silent)
    off.start()
    off.advance(1200)
    off.clear()
    assert silent.getvalue() == ""


# -- dlq replay and purge ------------------------------------------------------------------


def test_replay_shows_progress_on_a_terminal(redis_url: str, redis_client: redis.Redis) -> None:
    seed(redis_client, MANY)
    shown = on_terminal([SNACKVIDEO, "dlq", "replay", "--all"], cli_env(redis_url))
    assert f"\rreplaying 0/{MANY} (0%)" in shown
    assert "\r\x1b[K" in shown
    after = shown.rpartition("\r\x1b[K")[2]  # what stays on the screen
    assert after.startswith(f"replayed {MANY} entries")
    assert redis_client.llen(DELIVERY_QUEUE) == MANY


def test_replay_through_pipes_prints_no_progress(redis_url: str, redis_client: redis.Redis) -> None:
    seed(redis_client, MANY)
    done = piped([SNACKVIDEO, "dlq", "replay", "--all"], cli_env(redis_url))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "\r" not in done.stdout and "replaying" not in done.stdout
    assert done.stdout.startswith(f"replayed {MANY} entries\n")


def test_json_on_a_terminal_is_json_only(redis_url: str, redis_client: redis.Redis) -> None:
    seed(redis_client, MANY)
    env = cli_env(redis_url)
    would = json.loads(
        on_terminal([SNACKVIDEO, "dlq", "purge", "--all", "--dry-run", "--json"], env)
    )
    assert (would["action"], would["dry_run"], would["count"]) == ("purge", True, MANY)
    shown = on_terminal([SNACKVIDEO, "dlq", "purge", "--all", "--yes", "--json"], env)
    assert "\r" not in shown.replace("\r\n", "\n")
    result = json.loads(shown)
    assert (result["action"], result["dry_run"], result["count"]) == ("purge", False, MANY)
    assert result["by_reason"] == {"http_404": MANY} and result["skipped"] == []
    assert len(DeadLetterStore(redis_client)) == 0


def test_purge_json_needs_yes_rather_than_a_prompt(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seed(redis_client, 3)
    done = piped([SNACKVIDEO, "dlq", "purge", "--all", "--json"], cli_env(redis_url))
    assert done.returncode == 2
    assert "add --yes" in done.stderr and done.stdout == ""
    assert len(DeadLetterStore(redis_client)) == 3


# -- enqueue -------------------------------------------------------------------------------


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event(f"big-{i}")) + "\n" for i in range(MANY)))
    return path


def test_enqueue_of_a_large_file_shows_progress_on_a_terminal(
    redis_url: str, redis_client: redis.Redis, big_file: Path, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.txt"
    args = [SNACKVIDEO, "enqueue", "--store", STORE, str(big_file)]
    shown = on_terminal(args, cli_env(redis_url), stdout=ids_file)
    assert f"\renqueueing 0/{MANY} (0%)" in shown
    assert shown.rpartition("\r\x1b[K")[2].startswith(f"enqueued {MANY} event(s)")
    assert len(ids_file.read_text().split()) == MANY == redis_client.llen(DELIVERY_QUEUE)


def test_enqueue_through_pipes_prints_ids_and_the_summary_only(
    redis_url: str, redis_client: redis.Redis, big_file: Path
) -> None:
    done = piped([SNACKVIDEO, "enqueue", "--store", STORE, str(big_file)], cli_env(redis_url))
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"enqueued {MANY} event(s) for store {STORE}\n"
    assert len(done.stdout.split()) == MANY
