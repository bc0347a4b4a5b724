"""Every component against a redis-server started with ``--requirepass``.

``REDIS_URL=redis://:password@host`` (Redis's default user; an ACL user of its own is
tests/test_url_credentials.py, the smallest ACL of each role tests/test_redis_acl.py). A
real worker delivers, retries, parks and dead-letters, its mover moves the parked jobs
back, beat sends the redrive and it runs under its lock, the producer enqueues,
``snackvideo status`` and ``dlq list``/``show`` read, /metrics reads, and Flower shows
the broker. The password then appears in none of their outputs, nor in the errors a
wrong password gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis
import requests

from producers import EnqueueError, Producer
from tests.conftest import (
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
from worker.keys import delivered_key

pytestmark = pytest.mark.integration

PASSWORD = "requirepass-planted-6Vd9"


@pytest.fixture
def password_redis(own_redis: Callable[..., RedisServer]) -> RedisServer:
    server = own_redis(password=PASSWORD, extra_args=("--requirepass", PASSWORD))
    with pytest.raises(redis.AuthenticationError):  # really required
        redis.Redis(port=server.port).ping()
    return server


def test_every_component_works_with_a_redis_password_and_shows_it_nowhere(
    password_redis: RedisServer,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    start_beat: Callable[[dict[str, str]], Beat],
    start_flower: Callable[[dict[str, str]], Flower],  # noqa: F811
) -> None:
    url = password_redis.url
    assert url.startswith(f"redis://:{PASSWORD}@")
    sandbox = start_sandbox("--fail-first", "1")  # every job retried once: parked, moved
    metrics_port = free_port()
    env = worker_env(
        url,
        sandbox.base_url,
        SNACKVIDEO_METRICS_PORT=str(metrics_port),
        SNACKVIDEO_REDRIVE_INTERVAL_SECONDS="1",
    )
    worker = start_worker(env, mingle_and_gossip=True)
    beat = start_beat(env)
    flower = start_flower(env)

    producer = Producer(url)
    jobs = [producer.enqueue(STORE, event("auth-0"), idempotency_key="order-0")]
    jobs += producer.enqueue_many(STORE, [event(f"auth-{n}") for n in (1, 2)])
    producer.enqueue("store_nokey", event("auth-nokey"))
    producer.close()
    client = redis.Redis.from_url(url)
    wait_until(
        lambda: all(client.exists(delivered_key(job)) for job in jobs), 90, what="deliveries"
    )
    wait_until(lambda: "waiting_for_key=1" in worker.log(), 60, what="a redrive run")
    wait_idle(client)

    shown: dict[str, str] = {}
    for args in (["status"], ["status", "--json"], ["dlq", "list", "--json"]):
        done = snackvideo(env, *args)
        assert done.returncode == 0, done.stderr
        shown[" ".join(args)] = done.stdout + done.stderr
    assert json.loads(shown["status --json"])["workers"]
    [entry] = json.loads(shown["dlq list --json"])
    assert entry["reason"] == "no_api_key"
    shown["dlq show"] = snackvideo(env, "dlq", "show", entry["id"]).stdout
    shown["/metrics"] = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'snackvideo_redis_info{address="127.0.0.1:' in shown["/metrics"]
    broker = flower.get("/broker")
    assert broker.status_code == 200
    shown["flower /broker"] = broker.text
    shown["flower /workers"] = flower.get("/workers").text

    # A wrong password: each refuses with an error that does not echo either password.
    wrong = url.replace(PASSWORD, "wrong-pw-3Qa8")
    wrong_env = {**env, "REDIS_URL": wrong}
    for args in (["status"], ["dlq", "list"]):
        done = snackvideo(wrong_env, *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        shown[f"wrong password: {' '.join(args)}"] = done.stdout + done.stderr
    with pytest.raises(EnqueueError) as refused:
        Producer(wrong).enqueue(STORE, event("auth-wrong"))
    shown["wrong password: EnqueueError"] = str(refused.value)
    refusing = start_worker({**wrong_env, "SNACKVIDEO_METRICS_PORT": "0"}, wait_ready=False)
    wait_until(lambda: "Cannot connect" in refusing.log(), 60, what="the refused connection")
    refusing.stop()
    shown["wrong password: worker log"] = refusing.log()

    worker.stop()
    shown["worker log"] = worker.log()
    shown["beat log"] = beat.log()
    flower.stop()
    shown["flower log"] = flower.log_path.read_text(errors="replace")
    assert "redis://:**@127.0.0.1" in shown["worker log"]  # Celery's banner, masked
    for where, text in shown.items():
        assert PASSWORD not in text, where
        assert "wrong-pw-3Qa8" not in text, where
    client.close()
