"""Where the worker's /metrics listens: loopback unless ``SNACKVIDEO_METRICS_ADDRESS`` says
otherwise, checked on the listening socket of a real worker; compose opens it to its
network; a bad value stops the process with the variable's name."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import ROOT, Sandbox, free_port, wait_until, worker_env
from tests.sockets import listening_addresses, non_loopback_ipv4
from worker.settings import Settings

pytestmark = pytest.mark.integration


# -- the setting (pure) -------------------------------------------------------------------------


def test_the_default_is_loopback() -> None:
    assert Settings.from_env({}).metrics_address == "127.0.0.1"
    assert Settings.from_env({"SNACKVIDEO_METRICS_ADDRESS": ""}).metrics_address == "127.0.0.1"


@pytest.mark.parametrize(
    ("raw", "kept"),
    [("0.0.0.0", "0.0.0.0"), ("::", "::"), ("::1", "::1"), (" 10.0.0.7 ", "10.0.0.7"),
     ("localhost", "localhost"), ("metrics.internal.example", "metrics.internal.example"),
     ("worker-1", "worker-1")],
)  # fmt: skip
def test_ip_addresses_and_hostnames_are_accepted(raw: str, kept: str) -> None:
    assert Settings.from_env({"SNACKVIDEO_METRICS_ADDRESS": raw}).metrics_address == kept


@pytest.mark.parametrize(
    "raw", ["not a host", "http://0.0.0.0", "[::1]", "0.0.0.0:9808", "a..b", "-worker", "ho$t"]
)
def test_anything_else_is_refused_with_the_variable_name(raw: str) -> None:
    with pytest.raises(ValueError, match="SNACKVIDEO_METRICS_ADDRESS: .*IP address"):
        Settings.from_env({"SNACKVIDEO_METRICS_ADDRESS": raw})


def test_compose_opens_the_worker_metrics_to_its_network() -> None:
    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    assert worker["environment"]["SNACKVIDEO_METRICS_ADDRESS"] == (
        "${SNACKVIDEO_METRICS_ADDRESS:-0.0.0.0}"
    )


# -- a real worker ------------------------------------------------------------------------------


def metrics_worker(
    start_worker: Any, redis_url: str, sandbox: Sandbox, tmp_path: Path, **overrides: str
) -> tuple[int, str]:
    port = free_port()
    env = worker_env(
        redis_url,
        sandbox.base_url,
        SNACKVIDEO_METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"metrics-{port}"),
        **overrides,
    )
    worker = start_worker(env, concurrency=1)
    line = wait_until(
        lambda: next((ln for ln in worker.log().splitlines() if "serving /metrics" in ln), None),
        timeout=30,
        what="the worker to serve /metrics",
    )
    return port, str(line)


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_worker_serves_metrics_on_loopback_only(
    redis_url: str, sandbox: Sandbox, start_worker: Any, tmp_path: Path
) -> None:
    port, line = metrics_worker(start_worker, redis_url, sandbox, tmp_path)
    assert line.endswith(f"metrics: serving /metrics on 127.0.0.1:{port}")
    assert listening_addresses(port) == {"127.0.0.1"}
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200 and "snackvideo_queue_depth" in response.text
    outside = non_loopback_ipv4()
    if outside is not None:  # this host has another address: the port is closed there
        assert refused(outside, port)


def test_metrics_address_opens_it_to_every_interface(
    redis_url: str, sandbox: Sandbox, start_worker: Any, tmp_path: Path
) -> None:
    port, line = metrics_worker(
        start_worker, redis_url, sandbox, tmp_path, SNACKVIDEO_METRICS_ADDRESS="0.0.0.0"
    )
    assert line.endswith(f"metrics: serving /metrics on 0.0.0.0:{port}")
    assert listening_addresses(port) == {"0.0.0.0"}
    outside = non_loopback_ipv4()
    if outside is not None:
        response = requests.get(f"http://{outside}:{port}/metrics", timeout=10)
        assert response.status_code == 200
