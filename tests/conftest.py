"""Fixtures that start real parts: a redis-server, the sandbox, celery worker processes.

The parts themselves live in ``harness`` (the benchmarks start the same); this file makes
fixtures of them and turns what the harness raises into pytest's words: a part that does
not start or a wait that times out fails the test; no Redis at all skips it locally and
fails it in CI. Every fixture closes what it starts.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis
import requests

from harness import redis_server as _redis_server
from harness import waiting as _waiting
from harness import worker as _worker
from harness.errors import HarnessError, NoRedisServer
from harness.paths import PYTHON, ROOT
from harness.ports import free_port
from harness.proc import stop_process
from harness.sandbox import Sandbox as _Sandbox

__all__ = [
    "PYTHON", "ROOT", "SNACKVIDEO", "STORE", "STORE_KEY", "Beat", "IngestProcess",
    "RedisServer", "Sandbox", "Worker", "free_port", "snackvideo", "terminate", "wait_until",
    "worker_env",
]  # fmt: skip

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
STORE = "store_abc"
STORE_KEY = "pk_test_3f9a2c71e5b84d06"

#: How long a part gets to exit on SIGTERM at teardown before SIGKILL.
TEARDOWN_GRACE_SECONDS = 2.0

Sandbox = _Sandbox
Worker = _worker.Worker
Beat = _worker.Beat


#: Fixtures that start a celery worker: a test that asks for one is an integration test,
#: whatever its module says (make test-fast leaves integration tests out).
WORKER_FIXTURES = frozenset({"start_worker"})
#: Fixtures that run the project's other commands as processes (make test-fast leaves
#: their tests out, as it does tests marked ``processes``).
COMMAND_FIXTURES = frozenset({"start_beat", "start_ingest"})


#: Under ``--dist loadgroup`` (make test) the fault tests run one after another on one xdist
#: worker: each kills workers or stops Redis and then waits on real recovery times, which
#: the other fault tests' CPU bursts would stretch. The rest of the suite runs beside them.
FAULT_GROUP = "faults"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if WORKER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)
        if COMMAND_FIXTURES & fixtures:
            item.add_marker(pytest.mark.processes)
        if item.path.name.startswith("test_fault_"):
            item.add_marker(pytest.mark.xdist_group(FAULT_GROUP))


def terminate(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing when it is gone already."""
    stop_process(process, grace_seconds=timeout)


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

    def __init__(
        self,
        workdir: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        try:
            super().__init__(
                workdir, appendonly=appendonly, password=password, extra_args=extra_args
            )
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


def snackvideo(
    env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The installed ``snackvideo`` command, run as an operator runs it."""
    return subprocess.run(
        [SNACKVIDEO, *args], input=stdin, cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


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
        worker = Worker(
            "worker",
            # Its own temporary folder: two xdist workers may each run a "w0" at once, and a
            # worker's default metrics folder is named after its node name.
            {"TMPDIR": str(tmp_path), **env},
            pool=pool,
            concurrency=concurrency,
            hostname=f"{name}@%h",
            # Off unless asked for (as the Procfile runs it): they only slow a start.
            extra_args=(
                *(() if mingle_and_gossip else ("--without-mingle", "--without-gossip")),
                *extra_args,
            ),
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


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Beat]]:
    """Factory for real ``celery -A worker beat`` processes, each with its own schedule file."""
    started: list[Beat] = []

    def start(env: dict[str, str]) -> Beat:
        name = f"beat{len(started)}"
        beat = Beat(
            "worker",
            env,
            log_path=tmp_path / f"{name}.log",
            schedule_path=tmp_path / f"{name}-schedule",
        )
        started.append(beat)
        try:
            beat.start(wait_ready=False)
        except HarnessError as exc:
            pytest.fail(str(exc))
        return beat

    yield start
    for beat in started:
        beat.stop()


class IngestProcess:
    """``snackvideo ingest`` in its own process, as the Procfile starts it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.process, timeout=20)


@pytest.fixture
def start_ingest(tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    """Factory: ``start_ingest(redis_url, workers=2, SNACKVIDEO_INGEST_TOKENS=...)``; waits
    until it answers HTTP."""
    started: list[IngestProcess] = []

    def start(redis_url: str, *, workers: int = 1, **variables: str) -> IngestProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNACKVIDEO_", "SCALEV_"))}
        env.update({"REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
        env.update(variables)
        log_path = tmp_path / f"ingest-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [PYTHON, "-m", "worker.cli", "ingest", "--port", str(port),
                 "--workers", str(workers)],
                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        service = IngestProcess(process, port, log_path)
        started.append(service)

        def listening() -> bool:
            if process.poll() is not None:
                pytest.fail(f"snackvideo ingest exited with {process.returncode}:\n{service.log()}")
            try:
                requests.get(f"{service.url}/openapi.json", timeout=2)
                return True
            except requests.RequestException:
                return False

        wait_until(listening, timeout=60, what="snackvideo ingest to listen")
        return service

    yield start
    for service in started:
        service.stop()
