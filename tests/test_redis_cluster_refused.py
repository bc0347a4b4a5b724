"""A Redis Cluster node behind a plain redis:// URL is refused at start, in one line that
points to Sentinel. (A cluster URL is refused by the settings:
tests/test_redis_connection_settings.py.)

Real processes: a redis-server with ``--cluster-enabled yes``, ``celery worker`` and
``celery beat``, ``snackvideo status``, and a producer.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from producers import EnqueueError, Producer
from producers.settings import CLUSTER_REFUSAL
from tests.conftest import PYTHON, ROOT, STORE, RedisServer, free_port, worker_env
from tests.fault_helpers import event

pytestmark = pytest.mark.integration

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
REFUSAL = f"error: invalid configuration: REDIS_URL: {CLUSTER_REFUSAL}"


@pytest.fixture
def cluster_node_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(
        tmp_path / "cluster-node",
        extra_args=(
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(tmp_path / "cluster-node" / "nodes.conf"),
            # The bus port defaults to port + 10000, beyond 65535 for a high free port.
            "--cluster-port", str(free_port()),
        ),
    )  # fmt: skip
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.mark.parametrize(
    "command",
    [
        [SNACKVIDEO, "status"],
        [SNACKVIDEO, "dlq", "list"],
        [PYTHON, "-m", "celery", "-A", "worker", "worker", "--pool", "solo"],
        [PYTHON, "-m", "celery", "-A", "worker", "beat"],
    ],
    ids=["status", "dlq", "worker", "beat"],
)
def test_a_cluster_node_stops_each_process_in_one_line(
    command: list[str], cluster_node_url: str, tmp_path: Path
) -> None:
    env = worker_env(cluster_node_url, "http://127.0.0.1:1")
    done = subprocess.run(
        command, env=env, cwd=tmp_path if "beat" in command else ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert REFUSAL in done.stderr.splitlines(), done.stderr
    assert "Traceback" not in done.stderr


def test_the_producer_names_the_cluster(cluster_node_url: str) -> None:
    producer = Producer(cluster_node_url, timeout_seconds=1)
    with pytest.raises(EnqueueError) as refused:
        producer.enqueue(STORE, event("cluster-1"))
    assert str(refused.value) == f"Redis refused the job: {CLUSTER_REFUSAL}"
    producer.close()
