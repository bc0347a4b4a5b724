"""A Redis master, its replicas (one unless asked) and three Sentinels, real processes on
loopback ports.

Sentinel is redis-server itself in Sentinel mode (``--sentinel``), started from a config
file this module writes (Sentinel rewrites its config, so each gets its own). Failure
detection is short (``down-after-milliseconds`` 1000) so that a failover takes seconds.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer, free_port, terminate, wait_until

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
SENTINELS = 3


class Sentinel:
    """One ``redis-server --sentinel`` process."""

    def __init__(
        self, binary: str, workdir: Path, master_port: int, password: str | None = None
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {workdir}\n"
            f"logfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            # A Sentinel with a password also gives it to the other Sentinels.
            + (f"requirepass {password}\nsentinel sentinel-pass {password}\n" if password else "")
        )
        self.process = subprocess.Popen(
            [binary, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(
            port=self.port, password=password, socket_timeout=1, socket_connect_timeout=1
        )

    def master_port(self) -> int | None:
        try:
            address = self.client.sentinel_get_master_addr_by_name(MASTER_NAME)
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def stop(self) -> None:
        self.client.close()
        terminate(self.process)


class SentinelGroup:
    """Master, replica and Sentinels; ``url`` is the Sentinel list every component uses."""

    def __init__(
        self, workdir: Path, sentinel_password: str | None = None, replicas: int = 1
    ) -> None:
        self.sentinel_password = sentinel_password
        self.master = RedisServer(workdir / "master", appendonly=True)
        self.replicas = [
            RedisServer(
                workdir / f"replica-{n}",
                appendonly=True,
                extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
            )
            for n in range(replicas)
        ]
        self.sentinels: list[Sentinel] = []
        self.workdir = workdir

    def start(self) -> SentinelGroup:
        self.master.start()
        for replica in self.replicas:
            replica.start()
        for n in range(SENTINELS):
            sentinel = Sentinel(
                self.master.binary,
                self.workdir / f"sentinel-{n}",
                self.master.port,
                self.sentinel_password,
            )
            self.sentinels.append(sentinel)
        self.url = ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)
        self.wait_replicating(self.master, len(self.replicas))
        wait_until(
            lambda: (
                all(s.master_port() == self.master.port for s in self.sentinels)
                and self.sentinels_know_each_other()
            ),
            timeout=30,
            what="the Sentinels to agree on the master and see each other",
        )
        return self

    def sentinels_know_each_other(self) -> bool:
        try:
            return all(
                len(s.client.sentinel_sentinels(MASTER_NAME)) >= SENTINELS - 1
                for s in self.sentinels
            )
        except redis.RedisError:
            return False

    @staticmethod
    def wait_replicating(server: RedisServer, replicas: int, timeout: float = 30) -> None:
        client = redis.Redis(port=server.port, socket_timeout=1)

        def synced() -> bool:
            try:
                info = client.info("replication")
            except redis.RedisError:
                return False
            online = [
                value
                for key, value in info.items()
                if key.startswith("slave") and isinstance(value, dict)
            ]
            return sum(1 for r in online if r.get("state") == "online") >= replicas

        try:
            wait_until(synced, timeout=timeout, what=f"{replicas} replica(s) online")
        finally:
            client.close()

    @property
    def replica(self) -> RedisServer:
        return self.replicas[0]

    def master_port(self) -> int | None:
        for sentinel in self.sentinels:
            port = sentinel.master_port()
            if port is not None:
                return port
        return None

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; returns it (its process gone)."""
        old = self.master
        old.stop(signal.SIGKILL)
        return old

    def wait_promoted(self, timeout: float = 60) -> float:
        """Wait until the Sentinels name a replica as master; returns when (monotonic).
        The old master then counts as a replica (stopped until the test restarts it)."""
        ports = {replica.port: replica for replica in self.replicas}
        wait_until(
            lambda: self.master_port() in ports,
            timeout=timeout,
            interval=0.05,
            what="the Sentinels to promote a replica",
        )
        promoted_at = time.monotonic()
        promoted = ports[self.master_port() or 0]
        self.replicas = [r for r in self.replicas if r is not promoted] + [self.master]
        self.master = promoted
        return promoted_at

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.master.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture(name="sentinel_group")
def sentinel_group_fixture(tmp_path: Path) -> Iterator[Callable[..., SentinelGroup]]:
    """Factory: ``sentinel_group(sentinel_password=None, replicas=1)`` starts a master, its
    replicas and three Sentinels."""
    started: list[SentinelGroup] = []

    def start(sentinel_password: str | None = None, replicas: int = 1) -> SentinelGroup:
        directory = tmp_path / f"sentinel-group-{len(started)}"
        group = SentinelGroup(directory, sentinel_password, replicas)
        started.append(group)
        return group.start()

    yield start
    for group in started:
        group.stop()
