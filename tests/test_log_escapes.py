"""Values from outside cannot forge worker log lines or act on the terminal that shows them.

A real worker delivers, dead-letters and parks jobs whose click_id, store id and job id
carry a newline followed by a fake ``outcome=delivered`` line, and terminal escape
sequences; its whole log (Celery's lines included) is then read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest
import redis

from producers import Producer
from producers.keys import DELIVERY_QUEUE
from producers.message import build_message
from tests.conftest import STORE, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event
from worker.celery_ext.escaped_logs import EscapeArgs
from worker.cli.status import format_table
from worker.deadletter.store import DeadLetterStore
from worker.escaping import log_field

pytestmark = pytest.mark.integration

FORGED = "\nINFO outcome=delivered job_id=forged store_id=forged click_id=forged"
CLEAR = "\x1b[2J"
NO_KEY_STORE = "store:no-key"  # a ':' too, and no key configured: dead-lettered


def test_log_field_quotes_what_could_pose_as_another_field_and_keeps_it_exact() -> None:
    assert log_field("clk-1") == "clk-1"
    assert log_field("a\nb") == '"a\\nb"'
    assert log_field(CLEAR) == '"\\u001b[2J"'
    assert log_field("x status=999") == '"x status=999"'
    assert log_field('say "hi"') == '"say \\"hi\\""'
    assert log_field("\u202e\x85") == '"\\u202e\\u0085"'
    assert log_field("") == '""'
    for value in (FORGED + CLEAR, "\u202e\x85é\U0001f600", 'a\\"b'):
        assert log_field(value).isprintable() and json.loads(log_field(value)) == value


def test_the_filter_escapes_arguments_but_not_the_format() -> None:
    record = logging.LogRecord("t", logging.INFO, "f", 1, "a=%s\nb=%s", ("x\ny", b"\x1b"), None)
    assert EscapeArgs().filter(record)
    assert record.getMessage() == "a=x\\ny\nb=\\x1b"
    mapped = logging.LogRecord("t", logging.INFO, "f", 1, "%(id)s", None, None)
    mapped.args = {"id": "\r\u202e"}
    EscapeArgs().filter(mapped)
    assert mapped.getMessage() == "\\r\\u202e"


def test_a_worker_log_holds_each_hostile_value_escaped_on_its_own_line(
    redis_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(worker_env(redis_url, sandbox.base_url))
    producer = Producer(redis_url)
    delivered = producer.enqueue(STORE, event(f"ok{FORGED}{CLEAR}"))
    parked = producer.enqueue(NO_KEY_STORE, event(f"nokey{FORGED}{CLEAR}"))
    producer.close()
    # An unreadable job whose own id carries the fake line (it skipped enqueue).
    bad_id = f"bad{FORGED}{CLEAR}"
    kwargs = {"job_id": bad_id, "store_id": STORE, "payload": event("bad"), "schema": 99}
    kwargs["enqueued_at"] = time.time()
    redis_client.lpush(DELIVERY_QUEUE, build_message(kwargs, task_id="bad-task"))

    store = DeadLetterStore(redis_client)
    wait_until(
        lambda: sandbox.events(click_id=f"ok{FORGED}{CLEAR}") and len(store) == 2,
        60,
        what="one delivery and two dead letters",
    )
    wait_until(lambda: worker.log().count("outcome=") >= 3, 30, what="three outcome lines")
    # Celery writes its own failure line after the task returns, after our outcome line.
    wait_until(
        lambda: worker.log().count("raised expected: DeadLettered") >= 2,
        30,
        what="Celery's two failure lines",
    )

    log = worker.log()
    lines = log.splitlines()
    # The sandbox got the click_id byte for byte; only the log shows it escaped.
    assert sandbox.events(click_id=f"ok{FORGED}{CLEAR}")[0]["body"]["click_id"].endswith(CLEAR)
    assert "\x1b" not in log
    # The fake line never starts a line of its own: wherever it shows, it is escaped text.
    assert not any(line.startswith("INFO outcome=") for line in lines)
    escaped = "\\nINFO outcome=delivered job_id=forged"
    assert all(escaped in line for line in lines if "forged" in line)
    ours = [line for line in lines if "] outcome=" in line]
    assert len(ours) == 3, "\n".join(ours)
    assert len([line for line in ours if "] outcome=delivered " in line]) == 1
    ok_line = next(line for line in ours if f"job_id={delivered}" in line)
    assert f"click_id={log_field(f'ok{FORGED}{CLEAR}')} status=204" in ok_line
    nokey_line = next(line for line in ours if f"job_id={parked}" in line)
    assert "outcome=dead_lettered" in nokey_line and "store_id=store:no-key" in nokey_line
    bad_line = next(line for line in ours if "reason=invalid_job" in line)
    assert f"job_id={log_field(bad_id)} store_id={STORE}" in bad_line
    # Celery's own failure lines for the dead-lettered jobs carry the values escaped too.
    celery_lines = [line for line in lines if "raised expected: DeadLettered" in line]
    assert len(celery_lines) == 2


def test_the_status_table_prints_a_hostile_scope_as_text() -> None:
    state = {
        "queue_depth": 0,
        "control_queue_depth": 0,
        "in_flight": 0,
        "scheduled": 0,
        "enqueued_total": 0,
        "dead_letters": 0,
        "dead_letters_by_reason": {},
        "dead_letters_trimmed_by_reason": {},
        "throttle": {f"store:x{CLEAR}\nfake row": {"limit": 5, "remaining": f"{CLEAR}"}},
    }
    table = format_table(state)
    assert "\x1b" not in table
    assert not any(line.startswith("fake row") for line in table.splitlines())
    assert "store:x\\x1b[2J\\nfake row" in table
