"""With ``SNACKVIDEO_THROTTLE_SCOPE=store``, producers choose the throttle scopes: one per
store id. The scope index keeps only the most recent ``TRACKED_SCOPES_MAX`` of them, so
/metrics and ``snackvideo status`` stay bounded however many stores there are.

A real worker delivers one event for each of 5,000 stores through the sandbox; /metrics
is then scraped over HTTP, and the status read counted round trip by round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from producers import Producer
from tests.conftest import Sandbox, Worker, free_port, wait_until, worker_env
from tests.queue_helpers import event, wait_idle
from worker.cluster_state import read_cluster_state
from worker.keys import THROTTLE_SCOPES
from worker.throttle.budget import TRACKED_SCOPES_MAX

pytestmark = pytest.mark.integration

STORES = 5_000
KEY = "pk_test_many_stores_0001"
SCOPE_GAUGES = (
    "snackvideo_rate_limit_remaining",
    "snackvideo_rate_limit_limit",
    "snackvideo_rate_limit_in_flight",
)


class CountingConnection(redis.Connection):
    """A real connection that counts what it sends: one send is one round trip."""

    round_trips = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counting_client(redis_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()
    pool.disconnect()


def scope_labels(port: int) -> dict[str, set[str]]:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    response.raise_for_status()
    labels: dict[str, set[str]] = {name: set() for name in SCOPE_GAUGES}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in labels:
                labels[sample.name].add(sample.labels["scope"])
    return labels


def commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_5000_store_scopes_leave_metrics_and_status_bounded(
    redis_url: str,
    redis_client: redis.Redis,
    counting_client: redis.Redis,
    start_sandbox: Callable[..., Sandbox],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    stores = [f"shop-{i:04d}" for i in range(STORES)]
    stores_file = tmp_path / "stores.json"
    stores_file.write_text(json.dumps({store: KEY for store in stores}))
    sandbox = start_sandbox("--stores", str(stores_file), stores={})
    port = free_port()
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SNACKVIDEO_THROTTLE_SCOPE="store",
        SCALEV_STOREFRONT_API_KEY=KEY,
        SNACKVIDEO_METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    start_worker(env, concurrency=4)
    producer = Producer(redis_url)
    started = time.monotonic()
    for store in stores:
        producer.enqueue(store, event(f"click-{store}"))
    producer.close()

    wait_idle(redis_client, timeout=300)
    delivered = {e["store_id"] for e in sandbox.events()}
    took = time.monotonic() - started
    assert delivered == set(stores)

    # The index holds the most recent scopes only.
    assert redis_client.zcard(THROTTLE_SCOPES) == TRACKED_SCOPES_MAX
    recent = {m.decode() for m in redis_client.zrange(THROTTLE_SCOPES, 0, -1)}
    assert all(scope.startswith("store:shop-") for scope in recent)

    # /metrics labels those and no others, and a scrape reads them, not 5,000 scopes.
    wait_until(lambda: scope_labels(port)["snackvideo_rate_limit_in_flight"], 30, what="metrics")
    before = commands(redis_client)
    scraped_at = time.monotonic()
    labels = scope_labels(port)
    scrape_s = time.monotonic() - scraped_at
    after = commands(redis_client)
    for name in SCOPE_GAUGES:
        assert labels[name] <= recent, name
    assert len(labels["snackvideo_rate_limit_in_flight"]) == TRACKED_SCOPES_MAX
    per_scope = {cmd: after.get(cmd, 0) - before.get(cmd, 0) for cmd in ("hgetall", "zcount")}
    # Per scope one HGETALL and one ZCOUNT; two more HGETALLs are the dead-letter counts.
    assert per_scope == {"hgetall": TRACKED_SCOPES_MAX + 2, "zcount": TRACKED_SCOPES_MAX}
    assert after.get("exists", 0) == before.get("exists", 0)

    # The status read: one fixed set of round trips, whatever the number of stores (the
    # first read also pays the connection's handshake).
    read_cluster_state(counting_client)
    CountingConnection.round_trips = 0
    state = read_cluster_state(counting_client)
    round_trips = CountingConnection.round_trips
    assert set(state["throttle"]) == recent
    assert round_trips <= 12, round_trips
    print(
        f"\n{STORES} stores delivered in {took:.1f}s; scrape {scrape_s:.3f}s; "
        f"status read {round_trips} round trips; scope labels "
        f"{len(labels['snackvideo_rate_limit_in_flight'])}"
    )
