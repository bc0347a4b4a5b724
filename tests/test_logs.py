"""Worker logs: one line per outcome with the fields an operator greps for, and no key.

A real worker at DEBUG level (the chattiest it gets) delivers, retries, dead-letters and
throttles jobs through the sandbox; its whole log is then read.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from producers import Producer
from tests.conftest import STORE, STORE_KEY, Sandbox, wait_until, worker_env
from tests.queue_helpers import event
from worker.deadletter.store import DeadLetterStore

pytestmark = pytest.mark.integration

GONE_STORE = "store_gone"
GONE_KEY = "pk_test_gone_6d1e0b"

OUTCOME_LINE = re.compile(
    r"outcome=(?P<outcome>\w+) job_id=(?P<job_id>\S+) store_id=(?P<store_id>\S+) "
    r"click_id=(?P<click_id>\S+) status=(?P<status>\S+) attempt=(?P<attempt>\d+) "
    r"wait=(?P<wait>\d+\.\d{3})(?P<rest>.*)$"
)


def outcome_lines(log: str) -> list[dict[str, str]]:
    lines = []
    for line in log.splitlines():
        if "outcome=" not in line:
            continue
        match = OUTCOME_LINE.search(line)
        assert match, f"outcome line without the standard fields: {line!r}"
        lines.append(match.groupdict())
    return lines


def for_click(lines: list[dict[str, str]], click_id: str) -> list[tuple[str, str, str]]:
    return [(x["outcome"], x["status"], x["attempt"]) for x in lines if x["click_id"] == click_id]


def test_one_line_per_outcome_and_no_key_in_the_log(
    redis_url: str, sandbox: Sandbox, start_worker: Any
) -> None:
    keys = f'{{"{STORE}": "{STORE_KEY}", "{GONE_STORE}": "{GONE_KEY}"}}'
    env = worker_env(redis_url, sandbox.base_url, SCALEV_STOREFRONT_API_KEYS=keys)
    worker = start_worker(env, concurrency=2, extra_args=("--loglevel", "DEBUG"))
    producer = Producer(redis_url)
    client = redis.Redis.from_url(redis_url)

    ok_id = producer.enqueue(STORE, event("lg-ok"))
    gone_id = producer.enqueue(GONE_STORE, event("lg-gone"))
    wait_until(
        lambda: sandbox.events(click_id="lg-ok") and len(DeadLetterStore(client)) == 1,
        timeout=60,
        what="one delivery and one dead letter",
    )
    sandbox.configure(fail_first=1)
    retry_id = producer.enqueue(STORE, event("lg-retry"))
    wait_until(lambda: sandbox.events(click_id="lg-retry"), timeout=60, what="the retried job")
    # One request per minute: the second job meets a spent budget and is throttled.
    sandbox.configure(rate_limit="1/60")
    producer.enqueue_many(STORE, [event("lg-thr-1"), event("lg-thr-2")])
    wait_until(lambda: "outcome=throttled" in worker.log(), timeout=60, what="a throttled job")
    producer.close()
    client.close()

    log = worker.log()
    lines = outcome_lines(log)
    assert for_click(lines, "lg-ok") == [("delivered", "204", "1")]
    assert for_click(lines, "lg-gone") == [("dead_lettered", "404", "1")]
    assert for_click(lines, "lg-retry") == [("retried", "503", "1"), ("delivered", "204", "2")]
    assert any(x["outcome"] == "throttled" for x in lines)

    by_job = {x["job_id"]: x for x in lines}
    assert by_job[ok_id]["store_id"] == STORE
    assert by_job[gone_id]["store_id"] == GONE_STORE
    assert "reason=http_404" in by_job[gone_id]["rest"]
    assert float(next(x for x in lines if x["outcome"] == "retried")["wait"]) > 0
    assert retry_id in by_job

    assert STORE_KEY not in log
    assert GONE_KEY not in log
