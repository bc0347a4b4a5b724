"""``snackvideo status`` and /metrics name the Redis server and its replication role.

A real master (with a password) and a real replica of it: the status row, ``--json`` and
the gauges say which server is read and whether it is the master, and show neither the
password of the URL nor the replica's ``masterauth``. A user refused INFO still gets
the rest of the state, with the role ``unknown``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
import redis

from tests.conftest import RedisServer, snackvideo, wait_until, worker_env
from tests.test_status import table_rows
from worker.cli.status import format_table
from worker.cluster_state import read_cluster_state
from worker.metrics.collectors import RedisStateCollector

pytestmark = pytest.mark.integration

PASSWORD = "role-planted-pw-8Kc5"


def status(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return snackvideo(worker_env(url, "http://127.0.0.1:1"), "status", "--timeout", "1", *args)


def samples(client: redis.Redis) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in RedisStateCollector(client).collect():
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


@pytest.fixture
def master_and_replica(
    own_redis: Callable[..., RedisServer],
) -> tuple[RedisServer, RedisServer]:
    auth = ("--requirepass", PASSWORD)
    master = own_redis(password=PASSWORD, extra_args=auth)
    replica = own_redis(
        password=PASSWORD,
        extra_args=(*auth, "--replicaof", "127.0.0.1", str(master.port), "--masterauth", PASSWORD),
    )
    client = redis.Redis.from_url(replica.url)
    wait_until(
        lambda: client.info("replication").get("master_link_status") == "up",
        30,
        what="the replica to sync",
    )
    client.close()
    return master, replica


def test_status_and_metrics_show_the_master_and_its_replica(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_and_replica
    done = status(master.url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["redis"] == {
        "address": f"127.0.0.1:{master.port}",
        "role": "master",
        "connected_replicas": 1,
        "master_address": None,
        "master_link": None,
    }
    table = status(master.url)
    assert table.returncode == 0, table.stderr
    assert table_rows(table.stdout)["redis"] == f"127.0.0.1:{master.port} role=master replicas=1"
    client = redis.Redis.from_url(master.url)
    found = samples(client)
    assert found["snackvideo_redis_info"] == [
        ({"address": f"127.0.0.1:{master.port}", "role": "master", "master_address": ""}, 1.0)
    ]
    assert found["snackvideo_redis_connected_replicas"] == [({}, 1.0)]
    client.close()

    # Pointed at the replica by mistake (or a stale address after a failover): it says so.
    client = redis.Redis.from_url(replica.url)
    state = read_cluster_state(client)
    assert state["redis"] == {
        "address": f"127.0.0.1:{replica.port}",
        "role": "replica",
        "connected_replicas": None,
        "master_address": f"127.0.0.1:{master.port}",
        "master_link": "up",
    }
    row = f"127.0.0.1:{replica.port} role=replica master=127.0.0.1:{master.port} link=up"
    assert table_rows(format_table(state))["redis"] == row
    # The CLI's worker ping needs a writable server: the state is shown all the same.
    on_replica = status(replica.url)
    assert on_replica.returncode == 1
    assert table_rows(on_replica.stdout)["redis"] == row
    assert on_replica.stderr.startswith("error: cannot ping the workers: ")
    found = samples(client)
    [(labels, _)] = found["snackvideo_redis_info"]
    assert labels["role"] == "replica" and labels["master_address"] == f"127.0.0.1:{master.port}"
    assert "snackvideo_redis_connected_replicas" not in found  # no sample on a replica
    client.close()

    for text in (done.stdout, table.stdout, on_replica.stdout, json.dumps(state), str(found)):
        assert PASSWORD not in text


def test_a_user_refused_info_still_reads_the_state(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis()
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "no-info", enabled=True, passwords=["+pw-no-info"], keys=["*"], channels=["*"],
        commands=["+@all", "-info"],
    )  # fmt: skip
    client = redis.Redis.from_url(f"redis://no-info:pw-no-info@127.0.0.1:{server.port}/0")
    state = read_cluster_state(client)
    assert state["redis"]["role"] == "unknown"
    assert state["redis"]["address"] == f"127.0.0.1:{server.port}"
    assert state["queue_depth"] == 0
    assert "role=unknown" in format_table(state)
    client.close()
    admin.close()
