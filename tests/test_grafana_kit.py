"""deploy/grafana/: the dashboard is Grafana's dashboard model, provisioned against the
Prometheus of compose's observability profile, and every metric it queries is on a real
worker's /metrics.

The model check goes through grafana-foundation-sdk, whose types are generated from
Grafana's dashboard schema: the committed JSON is what scripts/grafana_dashboard.py
builds with the SDK's builders, and it decodes into the SDK's models (stat and timeseries
options, Prometheus queries) and encodes back unchanged, so no key is one Grafana ignores.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard, prometheus, stat, timeseries
from prometheus_client.parser import text_string_to_metric_families

from producers import Producer
from scripts.grafana_dashboard import DATASOURCE, dashboard_json
from tests.conftest import ROOT, STORE, STORE_KEY, Sandbox, free_port, wait_until, worker_env
from tests.queue_helpers import event
from worker.deadletter.store import DeadLetterStore

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "snackvideo-dashboard.json"
PROVISIONING = GRAFANA / "provisioning"
METRIC = re.compile(r"\bsnackvideo_[a-z0-9_]+\b")

GONE_STORE = "store_gone"  # a key in the worker's config, unknown to the sandbox: 404
GONE_KEY = "pk_test_gone_6d1e0b"


def committed() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def queried_metrics(board: dict[str, Any]) -> dict[str, set[str]]:
    """Panel title -> the metric (sample) names its queries read."""
    return {
        panel["title"]: {name for t in panel["targets"] for name in METRIC.findall(t["expr"])}
        for panel in panels(board)
    }


def assert_within(ours: Any, theirs: Any, path: str = "") -> None:
    """Every key and value of ``ours`` is in ``theirs``, which may hold more keys."""
    if isinstance(ours, dict):
        assert isinstance(theirs, dict), path
        for key, value in ours.items():
            assert key in theirs, f"{path}/{key}: not in Grafana's model"
            assert_within(value, theirs[key], f"{path}/{key}")
    elif isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs), path
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_within(mine, other, f"{path}[{index}]")
    else:
        assert ours == theirs, path


# -- the model ------------------------------------------------------------------------------


def test_the_committed_json_is_what_the_sdk_builds() -> None:
    assert committed() == dashboard_json(), (
        "rebuild: python -m scripts.grafana_dashboard > deploy/grafana/snackvideo-dashboard.json"
    )


def test_the_json_decodes_into_grafanas_dashboard_model_and_back_unchanged() -> None:
    register_default_plugins()
    board = committed()
    model = dashboard.Dashboard.from_json(board)
    # Decoded and encoded again, nothing is lost (the encoding adds the model's defaults).
    assert_within(board, json.loads(JSONEncoder(sort_keys=True).encode(model)))
    assert model.uid and model.schema_version >= 36
    typed = {"stat": stat.Options, "timeseries": timeseries.Options}
    decoded = [p for p in model.panels or [] if isinstance(p, dashboard.Panel)]
    assert len(decoded) == len(panels(board))
    for panel in decoded:
        assert isinstance(panel.options, typed[panel.type_val]), panel.title
        assert panel.targets and all(isinstance(t, prometheus.Dataquery) for t in panel.targets)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)


def test_the_panels_cover_the_operators_questions() -> None:
    read = set().union(*queried_metrics(committed()).values())
    assert {
        "snackvideo_queue_depth",
        "snackvideo_scheduled_jobs",
        "snackvideo_deliveries_total",  # by outcome and status
        "snackvideo_dead_letters_total",  # by reason
        "snackvideo_rate_limit_remaining",
        "snackvideo_throttle_wait_seconds_sum",
        "snackvideo_rate_limited_responses_total",  # 429s
        "snackvideo_event_age_seconds_bucket",  # p99
        "snackvideo_delivery_seconds_bucket",  # Scalev latency
    } <= read


# -- provisioning ---------------------------------------------------------------------------


def test_the_provisioned_datasource_is_the_one_the_panels_name() -> None:
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = config["datasources"]
    assert (source["type"], source["uid"]) == (DATASOURCE.type_val, DATASOURCE.uid)
    for panel in panels(committed()):
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}


def test_the_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    config = yaml.safe_load((PROVISIONING / "dashboards" / "snackvideo.yml").read_text())
    (provider,) = config["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert (
        f"./deploy/grafana/snackvideo-dashboard.json:{provider['options']['path']}/"
        "snackvideo-dashboard.json:ro" in mounts
    )


# -- every queried metric on a real worker's /metrics ----------------------------------------


def scraped_names(port: int) -> set[str]:
    try:
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    except requests.ConnectionError:
        return set()
    return {
        sample.name
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.mark.integration
def test_every_metric_a_panel_queries_is_on_a_workers_metrics(
    redis_url: str, start_sandbox: Callable[..., Sandbox], start_worker: Any, tmp_path: Path
) -> None:
    # Rate-limit headers on every answer, so the throttle gauges exist.
    sandbox = start_sandbox("--rate-limit", "1000/1")
    port = free_port()
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SCALEV_STOREFRONT_API_KEYS=json.dumps({STORE: STORE_KEY, GONE_STORE: GONE_KEY}),
        SNACKVIDEO_METRICS_PORT=str(port),
        # Its own files: the default directory is named after the node (w0@host), which
        # other test runs on this host use too.
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        # One entry kept: the second dead letter trims the first (the trimmed counter).
        SNACKVIDEO_DLQ_MAX_ENTRIES="1",
    )
    start_worker(env, concurrency=1)
    producer = Producer(redis_url)
    client = redis.Redis.from_url(redis_url)
    # Deliveries, a 404 dead letter, a 429 answered in the run, a refused redirect.
    producer.enqueue_many(STORE, [event("gf-ok-1"), event("gf-ok-2")])
    producer.enqueue(GONE_STORE, event("gf-gone"))
    wait_until(
        lambda: len(sandbox.events()) == 2 and len(DeadLetterStore(client)) == 1,
        timeout=60,
        what="two deliveries and a dead letter",
    )
    sandbox.configure(fail_first=1, fail_status=429)
    producer.enqueue(STORE, event("gf-429"))
    wait_until(lambda: sandbox.events(click_id="gf-429"), timeout=60, what="the 429'd job")
    sandbox.configure(fail_first=1, fail_status=301)
    producer.enqueue(STORE, event("gf-301"))
    wait_until(
        lambda: DeadLetterStore(client).counts_by_reason().get("http_301"),
        timeout=60,
        what="the redirect dead-lettered",
    )
    producer.close()
    client.close()

    wanted = queried_metrics(committed())
    deadline = time.monotonic() + 60
    while True:
        names = scraped_names(port)
        missing = {title: sorted(m - names) for title, m in wanted.items() if m - names}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"panels query metrics the worker does not export: {missing}"
