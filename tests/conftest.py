"""Fixtures that start real parts: a redis-server, the sandbox, celery worker processes.

The parts themselves live in ``harness`` (the benchmarks start the same); this file makes
fixtures of them and turns what the harness raises into pytest's words: a part that does
not start or a wait that times out fails the test; no Redis at all skips it locally and
fails it in CI. Every fixture closes what it starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis

from harness import redis_server as _redis_server
from harness import waiting as _waiting
from harness import worker as _worker
from harness.errors import HarnessError, NoRedisServer
from harness.paths import PYTHON, ROOT
from harness.ports import free_port
from harness.sandbox import Sandbox as _Sandbox

__all__ = [
    "PYTHON", "ROOT", "STORE", "STORE_KEY", "RedisServer", "Sandbox", "Worker", "free_port",
    "wait_until", "worker_env",
]  # fmt: skip

STORE = "store_abc"
STORE_KEY = "pk_test_3f9a2c71e5b84d06"

#: How long a part gets to exit on SIGTERM at teardown before SIGKILL.
TEARDOWN_GRACE_SECONDS = 2.0

Sandbox = _Sandbox
Worker = _worker.Worker


#: Fixtures that start a celery worker: a test that asks for one is an integration test,
#: whatever its module says (make test-fast leaves integration tests out).
WORKER_FIXTURES = frozenset({"start_worker"})


#: Under ``--dist loadgroup`` (make test) the fault tests run one after another on one xdist
#: worker: each kills workers or stops Redis and then waits on real recovery times, which
#: the other fault tests' CPU bursts would stretch. The rest of the suite runs beside them.
FAULT_GROUP = "faults"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if WORKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if item.path.name.startswith("test_fault_"):
            item.add_marker(pytest.mark.xdist_group(FAULT_GROUP))


def _no_redis(exc: NoRedisServer) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{exc}: CI must run Redis tests")
    pytest.skip(str(exc))


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    try:
        return _waiting.wait_until(predicate, timeout, interval, what)
    except HarnessError as exc:
        pytest.fail(str(exc))


class RedisServer(_redis_server.RedisServer):
    """A redis-server process the test owns: it may stop and restart it at will."""

    def __init__(self, workdir: Path, *, appendonly: bool = False) -> None:
        try:
            super().__init__(workdir, appendonly=appendonly)
        except NoRedisServer as exc:
            _no_redis(exc)

    def start(self) -> RedisServer:
        try:
            super().start()
        except HarnessError as exc:
            pytest.fail(str(exc))
        return self


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per session; under pytest-xdist each xdist worker has its own."""
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
    """Factory for a private redis-server (for tests that stop or restart it)."""
    started: list[RedisServer] = []

    def start(*, appendonly: bool = True) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", appendonly=appendonly).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Factory: ``start_sandbox("--rate-limit", "25/1")``; stores default to STORE/STORE_KEY."""
    started: list[Sandbox] = []

    def start(*flags: str, stores: dict[str, str] | None = None) -> Sandbox:
        sandbox = Sandbox(*flags, stores=stores if stores is not None else {STORE: STORE_KEY})
        try:
            sandbox.start()
        except HarnessError as exc:
            pytest.fail(str(exc))
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop(grace_seconds=TEARDOWN_GRACE_SECONDS)


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return start_sandbox()


def worker_env(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a worker under test: fast retries, the sandbox as Scalev."""
    fast_retries = {
        "SNACKVIDEO_RETRY_BASE_SECONDS": "0.05",
        "SNACKVIDEO_RETRY_MAX_SECONDS": "1",
        "SNACKVIDEO_SCHEDULER_POLL_SECONDS": "0.05",
    }
    return _worker.worker_env(
        redis_url, base_url, stores={STORE: STORE_KEY}, **{**fast_retries, **overrides}
    )


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
    ) -> Worker:
        name = f"w{len(started)}"
        worker = Worker(
            "worker",
            # Its own temporary folder: two xdist workers may each run a "w0" at once, and a
            # worker's default metrics folder is named after its node name.
            {"TMPDIR": str(tmp_path), **env},
            pool=pool,
            concurrency=concurrency,
            hostname=f"{name}@%h",
            extra_args=("--without-mingle", "--without-gossip", *extra_args),
            log_path=tmp_path / f"worker-{name}.log",
        )
        started.append(worker)
        try:
            worker.start(wait_ready=wait_ready)
        except HarnessError as exc:
            pytest.fail(str(exc))
        return worker

    yield start
    # The test is over: nothing is asserted about how these end, so no warm shutdown (about
    # 2 s each). A test about shutting down signals its worker itself.
    for worker in started:
        worker.kill()
