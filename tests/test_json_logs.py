"""``SNACKVIDEO_LOG_FORMAT=json``: a real worker writes one JSON object per line, and each
outcome line carries the fields of the text ``outcome=`` line, typed; no key anywhere.

The worker runs at DEBUG (the chattiest it gets) through a delivery, a retry, a 429 and a
dead letter, with a click_id that tries to forge a second line.
"""

from __future__ import annotations

import json
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
FORGING_CLICK = 'js-forge\n{"outcome": "delivered"}'


def json_lines(log: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(log.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        records.append(record)
    return records


def test_every_line_is_a_json_object_with_the_outcome_fields(
    redis_url: str, sandbox: Sandbox, start_worker: Any
) -> None:
    keys = json.dumps({STORE: STORE_KEY, GONE_STORE: GONE_KEY})
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS=keys,
        SNACKVIDEO_LOG_FORMAT="json",
    )
    worker = start_worker(env, concurrency=2, extra_args=("--loglevel", "DEBUG"))
    producer = Producer(redis_url)
    client = redis.Redis.from_url(redis_url)
    ok_id = producer.enqueue(STORE, event("js-ok"))
    gone_id = producer.enqueue(GONE_STORE, event("js-gone"))
    forged_id = producer.enqueue(STORE, event(FORGING_CLICK))
    wait_until(
        lambda: len(sandbox.events()) == 2 and len(DeadLetterStore(client)) == 1,
        timeout=60,
        what="two deliveries and one dead letter",
    )
    # Each new click_id's first attempt: a 503 (retried), then a 429 (answered in the run).
    sandbox.configure(fail_first=1)
    producer.enqueue(STORE, event("js-retry"))
    wait_until(lambda: sandbox.events(click_id="js-retry"), timeout=60, what="the retry")
    sandbox.configure(fail_first=1, fail_status=429)
    producer.enqueue(STORE, event("js-429"))
    wait_until(lambda: sandbox.events(click_id="js-429"), timeout=60, what="the 429'd job")
    producer.close()
    client.close()

    def delivered_lines() -> int:
        return sum(1 for r in json_lines(worker.log()) if r.get("outcome") == "delivered")

    # The worker logs its outcome line after the sandbox has the event: wait for it.
    wait_until(lambda: delivered_lines() == 4, timeout=60, what="four delivered lines")
    log = worker.log()
    records = json_lines(log)
    assert any(r["message"].endswith(" ready.") for r in records)
    assert all({"timestamp", "level", "logger", "process", "message"} <= set(r) for r in records)
    outcomes = [r for r in records if "outcome" in r]
    by_click = {(r["click_id"], r["outcome"]): r for r in outcomes}

    delivered = by_click[("js-ok", "delivered")]
    assert delivered["job_id"] == ok_id and delivered["store_id"] == STORE
    assert delivered["status"] == 204 and delivered["attempt"] == 1
    assert delivered["level"] == "INFO" and delivered["logger"] == "snackvideo.delivery"
    assert isinstance(delivered["seconds"], float) and isinstance(delivered["wait"], float)
    assert delivered["message"].startswith("outcome=delivered job_id=")

    dead = by_click[("js-gone", "dead_lettered")]
    assert (dead["job_id"], dead["store_id"]) == (gone_id, GONE_STORE)
    assert (dead["status"], dead["reason"], dead["level"]) == (404, "http_404", "WARNING")

    assert by_click[("js-retry", "retried")]["status"] == 503
    assert by_click[("js-retry", "delivered")]["attempt"] == 2
    assert by_click[("js-429", "rate_limited")]["status"] == 429
    # The forging click_id is one field of one line, exactly as sent.
    assert by_click[(FORGING_CLICK, "delivered")]["job_id"] == forged_id
    assert sum(1 for r in outcomes if r["outcome"] == "delivered") == 4

    assert STORE_KEY not in log and GONE_KEY not in log


def test_text_stays_the_default(redis_url: str, sandbox: Sandbox, start_worker: Any) -> None:
    worker = start_worker(worker_env(redis_url, sandbox.base_url), concurrency=1)
    producer = Producer(redis_url)
    producer.enqueue(STORE, event("txt-ok"))
    producer.close()
    wait_until(lambda: "outcome=delivered" in worker.log(), timeout=60, what="a delivery")
    log = worker.log()
    assert " celery@" in log or "-------------- " in log  # Celery's banner
    line = next(x for x in log.splitlines() if "outcome=delivered" in x)
    assert line.startswith("[") and "click_id=txt-ok status=204" in line
