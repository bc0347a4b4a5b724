"""A Redis password in REDIS_URL reaches Redis and nothing else.

A real worker whose REDIS_URL holds an ACL user's password (the storefront key in its
header, as always) delivers through the sandbox; then its log, ``snackvideo status`` and
``--json``, its /metrics and every Redis key name and value are scanned for the password.
(A base URL with credentials is refused at start: tests/test_config_refusals.py.)
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import requests

from producers import Producer
from tests.conftest import PYTHON, ROOT, STORE, Sandbox, Worker, free_port, wait_until, worker_env
from tests.queue_helpers import event, wait_idle
from tests.test_secrets import redis_contents
from worker.keys import delivered_key

pytestmark = pytest.mark.integration

USER = "dispatch"
PASSWORD = "rEdis-pw-7Kq2-planted"
SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")


@pytest.fixture
def password_url(redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    """REDIS_URL of an ACL user with a password on the test's Redis (the default user,
    which the test itself uses, keeps no password)."""
    redis_client.acl_setuser(
        USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    parts = urlsplit(redis_url)
    yield f"redis://{USER}:{PASSWORD}@{parts.hostname}:{parts.port}{parts.path}"
    redis_client.acl_deluser(USER)


def test_a_worker_with_a_redis_password_delivers_and_shows_it_nowhere(
    password_url: str,
    redis_client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
) -> None:
    metrics_port = free_port()
    env = worker_env(password_url, sandbox.base_url, SNACKVIDEO_METRICS_PORT=str(metrics_port))
    worker = start_worker(env)
    producer = Producer(password_url)
    jobs = [producer.enqueue(STORE, event(f"clk-pw-{n}")) for n in range(3)]
    missing = producer.enqueue("store_nokey", event("clk-pw-nokey"))
    producer.close()
    wait_until(
        lambda: all(redis_client.exists(delivered_key(job)) for job in jobs),
        60,
        what="the deliveries",
    )
    wait_idle(redis_client)
    assert len(sandbox.events()) == 3
    assert missing  # dead-lettered (no key): the dead-letter store is written too

    # The user really is the one the worker logs in as: its password is not a default.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(password_url.replace(PASSWORD, "wrong")).ping()

    shown: dict[str, str] = {}
    for args in (["status"], ["status", "--json"]):
        done = subprocess.run(
            [SNACKVIDEO, *args, "--timeout", "2"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        shown[" ".join(args)] = done.stdout + done.stderr
    assert sandbox.base_url in shown["status --json"]  # the throttle scope is listed
    metrics_text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert "snackvideo_" in metrics_text
    shown["/metrics"] = metrics_text
    worker.stop()
    shown["worker log"] = worker.log()
    assert "outcome=delivered" in shown["worker log"]
    # Celery's banner names the broker with the password masked.
    assert f"redis://{USER}:**@" in shown["worker log"]

    for where, text in shown.items():
        assert PASSWORD not in text, where
    for key, value in redis_contents(redis_client):
        assert PASSWORD.encode() not in key + value, key
