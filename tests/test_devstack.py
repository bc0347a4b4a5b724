"""``make run`` as a newcomer meets it: the real ``make run`` (and devstack) on free ports in a
state dir of its own, stopped the ways a terminal, ``kill``, ``timeout`` and an IDE stop it.

After each stop, no process of that stack may be left (its state dir is in the environment
of every process it starts; redis-server, which writes its title over its environment, is
found by its address in its command line) and every port it used must be free again: the
next ``make run`` starts on the same ports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from scripts.dev_redis import describe_reused_redis, export_line
from tests.conftest import PYTHON, ROOT, RedisServer, free_port, wait_until
from tests.queue_helpers import event
from tests.sockets import listening_addresses, port_is_free

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

MAKE = shutil.which("make")
SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
#: -o: never reinstall the virtualenv from a test, whatever the stamp's age.
MAKE_RUN = ("--no-print-directory", "-o", ".venv/.installed", "run")
START_SECONDS = 120.0
STOP_SECONDS = 60.0
#: honcho's prefix, then Celery's "celery@host ready." line of the worker's main process.
WORKER_READY = re.compile(r"^\S+ worker\.1 +\| .* ready\.$", re.MULTILINE)


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that would configure the stack (or
    make: a jobserver of an outer make must not leak into this one)."""
    prefixes = ("SNACKVIDEO_", "SCALEV_", "CELERY_", "FLOWER_", "SANDBOX_", "PROMETHEUS_")
    dropped = {"REDIS_URL", "WORKER_CONCURRENCY", "WORKER_POOL", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(prefixes) and key not in dropped
    }


class Stack:
    """One ``make run`` at a time in ``tmp_path/state``, always on the same free ports."""

    def __init__(self, tmp_path: Path, reused_redis: RedisServer | None = None) -> None:
        self.state_dir = tmp_path / "state"
        self.log_path = tmp_path / "make-run.log"
        self.ports = {
            name: free_port() for name in ("redis", "sandbox", "flower", "metrics", "ingest")
        }
        # Without a Redis answering on REDIS_URL, devstack starts one there.
        self.reused_redis = reused_redis
        if reused_redis is not None:
            self.ports["redis"] = reused_redis.port
        self.env = {
            **clean_environment(),
            "SNACKVIDEO_STATE_DIR": str(self.state_dir),
            "REDIS_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "SANDBOX_PORT": str(self.ports["sandbox"]),
            "FLOWER_PORT": str(self.ports["flower"]),
            "SNACKVIDEO_METRICS_PORT": str(self.ports["metrics"]),
            "SNACKVIDEO_INGEST_PORT": str(self.ports["ingest"]),
            "SNACKVIDEO_INGEST_WORKERS": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "WORKER_CONCURRENCY": "2",
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # as a terminal runs a job: its own process group
            )
        return self.process

    def output(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def wait_ready(self) -> str:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"make run exited with {self.process.returncode}:\n{self.output()}")
            text = self.output()
            return "devstack: ready." in text and WORKER_READY.search(text) is not None

        wait_until(ready, timeout=START_SECONDS, interval=0.2, what="make run to be ready")
        return self.output()

    def devstack_pid(self) -> int:
        found = [pid for pid, command in self.processes().items() if "scripts.devstack" in command]
        assert len(found) == 1, found
        return found[0]

    def processes(self) -> dict[int, str]:
        """pid -> command line of every running process of this stack."""
        marker = f"SNACKVIDEO_STATE_DIR={self.state_dir}".encode()
        # Only the embedded one: a reused Redis is not the stack's.
        redis_title = None if self.reused_redis else f"127.0.0.1:{self.ports['redis']}"
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
                raw_command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if state == "Z":
                continue
            command = raw_command.decode(errors="replace").strip()
            embedded = redis_title is not None and command.endswith(f"redis-server {redis_title}")
            if marker in environment or embedded:
                found[int(entry.name)] = command
        return found

    def assert_all_stopped(self) -> None:
        left = self.processes()
        assert not left, "left running:\n" + "\n".join(f"{p} {c}" for p, c in left.items())
        for name, port in self.ports.items():
            if not (name == "redis" and self.reused_redis):
                assert port_is_free(port), f"{name} port {port} still taken"

    def kill_leftovers(self) -> None:
        """After a failed test: end what this stack left, by pid."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def stacks(tmp_path: Path) -> Any:
    made: list[Stack] = []

    def make(reused_redis: RedisServer | None = None) -> Stack:
        stack = Stack(tmp_path / f"stack-{len(made)}", reused_redis)
        stack.state_dir.parent.mkdir(parents=True, exist_ok=True)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        if stack.process is not None and stack.process.poll() is None:
            os.killpg(stack.process.pid, signal.SIGTERM)
            try:
                stack.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        stack.kill_leftovers()


def needs_make() -> str:
    if MAKE is None:
        pytest.skip("no make on PATH")
    return MAKE


def stopped(process: subprocess.Popen[bytes]) -> int:
    return process.wait(STOP_SECONDS)


# -- the whole stack ----------------------------------------------------------------------------


def test_sigterm_to_make_run_stops_everything_and_the_next_run_starts(
    stacks: Callable[..., Stack],
) -> None:
    make = needs_make()
    stack = stacks()
    ports = stack.ports
    run = stack.start(make, *MAKE_RUN)
    out = stack.wait_ready()

    # What listens where, each on loopback only.
    assert f"\n    export REDIS_URL=redis://127.0.0.1:{ports['redis']}/0\n" in out
    assert f"devstack: Flower   http://127.0.0.1:{ports['flower']}\n" in out
    assert f"devstack: metrics  http://127.0.0.1:{ports['metrics']}/metrics\n" in out
    assert f"devstack: sandbox  http://127.0.0.1:{ports['sandbox']}\n" in out
    assert f"devstack: ingest   http://127.0.0.1:{ports['ingest']}\n" in out
    assert "started an embedded redis-server" in out
    for name, port in ports.items():
        assert listening_addresses(port) == {"127.0.0.1"}, name

    # The printed line is all a second terminal needs: an event enqueued with it arrives.
    exported = re.search(r"^    export REDIS_URL=(\S+)$", out, re.MULTILINE)
    assert exported is not None
    second_terminal = {**clean_environment(), "REDIS_URL": exported.group(1)}
    enqueued = subprocess.run(
        [SNACKVIDEO, "enqueue", "--store", "demo_store"],
        input=json.dumps(event("make-run-1")),
        capture_output=True,
        text=True,
        env=second_terminal,
        timeout=60,
    )
    assert enqueued.returncode == 0, enqueued.stderr
    sandbox = f"http://127.0.0.1:{ports['sandbox']}/_sandbox/events"
    wait_until(
        lambda: requests.get(sandbox, params={"click_id": "make-run-1"}, timeout=5).json()[
            "events"
        ],
        timeout=60,
        what="the event enqueued from a second terminal to reach the sandbox",
    )
    # The ingest service, with the dev token devstack made and printed the path of.
    token_file = stack.state_dir / "ingest-token"
    assert f"Authorization: Bearer $(cat {token_file})" in out
    assert token_file.read_text() not in out
    posted = requests.post(
        f"http://127.0.0.1:{ports['ingest']}/v1/stores/demo_store/events",
        json=event("make-run-ingest"),
        headers={"Authorization": f"Bearer {token_file.read_text()}"},
        timeout=30,
    )
    assert posted.status_code == 202, posted.text
    wait_until(
        lambda: requests.get(sandbox, params={"click_id": "make-run-ingest"}, timeout=5).json()[
            "events"
        ],
        timeout=60,
        what="the event posted to the ingest service to reach the sandbox",
    )

    started = stack.processes()
    commands = "\n".join(started.values())
    for part in ("make", "scripts.devstack", "redis-server", "honcho", "worker", "beat",
                 "flower", "sandbox", "ingest"):  # fmt: skip
        assert part in commands, part
    assert len(started) >= 12, commands  # with the worker's two pool children

    # An IDE's stop button, kill, timeout: SIGTERM to make, which passes it to devstack.
    os.kill(run.pid, signal.SIGTERM)
    assert stopped(run) == -signal.SIGTERM
    stack.assert_all_stopped()
    out = stack.output()
    assert "devstack: SIGTERM received: stopping everything" in out
    assert "devstack: everything devstack started has stopped" in out

    # The next make run starts on the same ports; a SIGHUP to devstack stops it all too.
    run = stack.start(make, *MAKE_RUN)
    stack.wait_ready()
    os.kill(stack.devstack_pid(), signal.SIGHUP)
    assert stopped(run) == 2  # make: the recipe failed (devstack exits 128 + SIGHUP)
    stack.assert_all_stopped()
    assert "devstack: SIGHUP received: stopping everything" in stack.output()
    assert f"Error {128 + signal.SIGHUP}" in stack.output()


def test_ctrl_c_stops_everything_but_a_reused_redis(
    stacks: Callable[..., Stack], own_redis: Callable[..., RedisServer]
) -> None:
    make = needs_make()
    server = own_redis(appendonly=False)
    stack = stacks(reused_redis=server)
    run = stack.start(make, *MAKE_RUN)
    out = stack.wait_ready()
    assert (
        f"devstack: using the Redis already running at 127.0.0.1:{server.port} (REDIS_URL); "
        "devstack did not start it and leaves it running\n"
    ) in out
    assert "devstack: its appendonly is no, its maxmemory-policy is noeviction\n" in out
    assert "devstack: warning: appendonly is not yes" in out
    assert "started an embedded redis-server" not in out

    # Ctrl-C: the terminal sends SIGINT to its foreground process group (make, devstack).
    os.killpg(run.pid, signal.SIGINT)
    stopped(run)
    stack.assert_all_stopped()
    assert "devstack: SIGINT received: stopping everything" in stack.output()
    assert server.process is not None and server.process.poll() is None
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()


@pytest.mark.parametrize("victim", ["make", "devstack"])
def test_killed_outright_it_still_takes_its_processes_down(
    stacks: Callable[..., Stack], victim: str
) -> None:
    """SIGKILL runs no handler. An IDE that gives up waiting kills make: the kernel sends
    devstack SIGTERM (make run passes --stop-with-parent). devstack itself killed: honcho
    and the embedded Redis get SIGTERM (PR_SET_PDEATHSIG), and honcho stops the Procfile's
    processes as on any stop."""
    stack = stacks()
    run = stack.start(needs_make(), *MAKE_RUN)
    stack.wait_ready()
    os.kill(run.pid if victim == "make" else stack.devstack_pid(), signal.SIGKILL)
    wait_until(
        lambda: not stack.processes(),
        timeout=STOP_SECONDS,
        what=f"every process of the stack to stop after SIGKILL to {victim}",
    )
    stack.assert_all_stopped()
    run.wait(STOP_SECONDS)


def test_when_honcho_dies_the_processes_it_leaves_are_swept(
    stacks: Callable[..., Stack],
) -> None:
    """honcho killed outright cannot stop its processes; they are re-parented to devstack
    (a child subreaper), which kills them, stops Redis and exits."""
    stack = stacks()
    run = stack.start(needs_make(), *MAKE_RUN)
    stack.wait_ready()
    devstack = stack.devstack_pid()
    [honcho] = [pid for pid, command in stack.processes().items()
                if "-m honcho" in command and parent(pid) == devstack]  # fmt: skip
    os.kill(honcho, signal.SIGKILL)
    assert stopped(run) == 2  # make: the recipe failed
    stack.assert_all_stopped()
    out = stack.output()
    assert "devstack: honcho exited (status -9): stopping the rest" in out
    assert re.search(r"devstack: killed \d+ process\(es\) still running after the stop:", out)
    assert f"Error {128 + signal.SIGKILL}" in out


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_a_port_still_taken_is_named_before_anything_starts(
    stacks: Callable[..., Stack],
) -> None:
    stack = stacks()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.ports["flower"]))
        squatter.listen()
        run = stack.start(PYTHON, "-m", "scripts.devstack")
        assert run.wait(STOP_SECONDS) == 1
    out = stack.output()
    assert (
        f"devstack: error: Flower cannot listen on 127.0.0.1:{stack.ports['flower']} "
        "(Address already in use). Is an earlier make run still running? Stop it, or set "
        "FLOWER_PORT to a free port."
    ) in out
    stack.assert_all_stopped()


# -- the Redis devstack did not start (real redis-servers) ---------------------------------------


def test_a_reused_redis_with_queue_settings_gets_no_warning(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(appendonly=True)
    assert describe_reused_redis(server.url) == [
        "its appendonly is yes, its maxmemory-policy is noeviction"
    ]


def test_a_reused_redis_that_evicts_is_warned_about(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(appendonly=True)
    with redis.Redis.from_url(server.url) as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    lines = describe_reused_redis(server.url)
    assert lines[0] == "its appendonly is yes, its maxmemory-policy is allkeys-lru"
    assert lines[1:] == [
        "warning: maxmemory-policy is not noeviction: a full Redis evicts queued jobs "
        "instead of refusing new ones"
    ]


def test_a_redis_that_refuses_config_is_unknown_and_its_password_never_printed(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis(appendonly=True)
    with redis.Redis.from_url(server.url) as admin:
        admin.acl_setuser(
            "shop", enabled=True, passwords=["+s3cret-pw"], keys=["*"], channels=["*"],
            commands=["+@all", "-config"],
        )  # fmt: skip
    url = f"redis://shop:s3cret-pw@127.0.0.1:{server.port}/0"
    [line] = describe_reused_redis(url)
    assert line.startswith(
        "its appendonly and maxmemory-policy are unknown: CONFIG GET was refused "
        "(this user has no permissions to run the 'config|get' command)"
    )
    assert line.endswith("for queues they must be yes and noeviction")
    assert export_line(url) == (
        f"export REDIS_URL='redis://shop:<password>@127.0.0.1:{server.port}/0'"
    )
    assert "s3cret" not in line + export_line(url)


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("redis://127.0.0.1:6390/0", "export REDIS_URL=redis://127.0.0.1:6390/0"),
        ("redis://localhost/2?socket_timeout=5&health_check_interval=10",
         "export REDIS_URL='redis://localhost/2?socket_timeout=5&health_check_interval=10'"),
        ("redis://:pw@10.0.0.5:6379/0", "export REDIS_URL='redis://:<password>@10.0.0.5:6379/0'"),
    ],
)  # fmt: skip
def test_the_export_line_pastes_into_a_shell(url: str, line: str) -> None:
    assert export_line(url) == line
