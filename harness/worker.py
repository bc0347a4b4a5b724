"""A real ``celery -A APP worker`` process group, and the environment it runs in."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import PYTHON, ROOT
from harness.proc import child_pids, cpu_seconds
from harness.waiting import wait_until

#: Variables a run sets itself: none leaks in from the shell that started it.
OWN_PREFIXES = ("SNACKVIDEO_", "SCALEV_", "CELERY_", "BENCH_")


def worker_env(
    redis_url: str, base_url: str, *, stores: Mapping[str, str], **overrides: str
) -> dict[str, str]:
    """This process's environment without our variables, plus a worker's essentials:
    ``redis_url``, the sandbox at ``base_url`` as Scalev, the keys of ``stores``, no
    metrics port; then ``overrides``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(OWN_PREFIXES)}
    env.update(
        {
            "REDIS_URL": redis_url,
            "SCALEV_API_BASE_URL": base_url,
            "SCALEV_STOREFRONT_API_KEYS": json.dumps(dict(stores)),
            "SNACKVIDEO_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def _scratch_log() -> Path:
    return Path(tempfile.mkdtemp(prefix="snackvideo-worker-")) / "worker.log"


@dataclass
class Worker:
    """``celery -A app worker`` in its own process group; its log goes to ``log_path``.

    Without a ``log_path`` the log goes to a scratch folder that ``cleanup`` removes.
    Another celery command (beat, flower) is a subclass with its own ``arguments``.
    """

    app: str
    env: dict[str, str]
    pool: str = "prefork"
    concurrency: int = 2
    hostname: str = field(default_factory=lambda: f"w-{os.getpid()}@%h")
    extra_args: tuple[str, ...] = ()
    loglevel: str = "INFO"
    log_path: Path = field(default_factory=_scratch_log)
    process: subprocess.Popen[bytes] | None = None

    def arguments(self) -> list[str]:
        """The command line after ``python -m celery -A app``."""
        return [
            "worker", "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--hostname", self.hostname, "--loglevel", self.loglevel, *self.extra_args,
        ]  # fmt: skip

    def start(self, wait_ready: bool = True, ready_timeout: float = 60.0) -> Worker:
        """Start it; with ``wait_ready``, return once it logged `` ready.``."""
        args = [PYTHON, "-m", "celery", "-A", self.app, *self.arguments()]
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill the pool children too
            )
        if wait_ready:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        process = self.process
        assert process is not None
        wait_until(
            lambda: " ready." in self.log() or process.poll() is not None,
            timeout,
            interval=0.1,
            what=f"worker {self.hostname} ({self.pool} -c {self.concurrency}) to be ready",
        )
        if process.poll() is not None:
            raise HarnessError(f"worker exited with {process.returncode}:\n{self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        """The main process first, then its pool children (none for threads/gevent)."""
        return [self.pid, *child_pids(self.pid)]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Signal the whole process group (the pool children too)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """A warm shutdown (SIGTERM); SIGKILL if it takes longer than ``timeout``."""
        process = self.process
        if process is not None and process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                process.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def cleanup(self) -> None:
        """Stop it and remove its scratch log folder."""
        self.stop()
        if self.log_path.parent.name.startswith("snackvideo-worker-"):
            shutil.rmtree(self.log_path.parent, ignore_errors=True)


@dataclass
class Beat(Worker):
    """``celery -A app beat`` in its own process group, with its own schedule file."""

    schedule_path: Path = field(default_factory=lambda: _scratch_log().with_name("schedule"))

    def arguments(self) -> list[str]:
        return ["beat", "--loglevel", self.loglevel, "--schedule", str(self.schedule_path)]
