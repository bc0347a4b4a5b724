"""What the fault tests share: an environment with short timeouts, a ledger of the jobs
offered, and the one-line summary each test prints.

The ledger answers the question every fault test asks: is each job that ``enqueue``
accepted now delivered (the sandbox accepted its click_id) or dead-lettered, and how
many were delivered more than once? Click ids are unique per job, so a click_id the
sandbox accepted twice is a duplicate delivery.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

# Re-exported (``as``): the fault tests import them from here.
from harness.events import event as event
from harness.waiting import SETTLE_SECONDS as SETTLE_SECONDS
from producers.connections import redis_client
from producers.enqueue import Producer
from producers.settings import ProducerSettings
from tests.conftest import STORE, Sandbox, wait_until
from worker.deadletter.store import DeadLetterStore
from worker.keys import UNACKED

#: Short enough that a killed worker's jobs come back within a test, long enough to hold
#: (the app refuses a visibility timeout not above the hard time limit of a task run).
#: The derived limits (3 requests cut at connect + read, the max sleep, Redis allowance)
#: would be above 20 s; the sandbox answers in milliseconds, so explicit ones fit here.
FAULT_ENV = {
    "SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS": "20",
    "SNACKVIDEO_UNACKED_RESTORE_INTERVAL_SECONDS": "2",
    "SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS": "1",
    "SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS": "5",
    "SNACKVIDEO_MAX_SLEEP_SECONDS": "1",
    "SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS": "14",
    "SNACKVIDEO_TASK_TIME_LIMIT_SECONDS": "17",
}
VISIBILITY_TIMEOUT_SECONDS = float(FAULT_ENV["SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS"])

#: For the crash-recovery tests: the visibility timeout at its production length, so that
#: only the consumer heartbeat sweep (worker.celery_ext.ownership) can explain a fast recovery.
RECOVERY_ENV = {**FAULT_ENV, "SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS": "120"}
#: What the project promises after a worker is killed or Redis comes back (seconds).
RECOVERY_BOUND_SECONDS = 30.0

#: ``tests/recovery_seam``: kills a worker's process at a chosen moment (its docstring).
RECOVERY_SEAM_PATH = str(Path(__file__).parent / "recovery_seam")


def seam_env(env: dict[str, str], seam: str) -> dict[str, str]:
    """``env`` with the recovery seam on the path and ``seam`` chosen."""
    return {
        **env,
        "SNACKVIDEO_TEST_SEAM": seam,
        "PYTHONPATH": ":".join(p for p in (RECOVERY_SEAM_PATH, env.get("PYTHONPATH", "")) if p),
    }


@dataclass
class Ledger:
    """The jobs a test offered, and what became of them."""

    redis_url: str
    sandbox: Sandbox
    offered: dict[str, str] = field(default_factory=dict)  # job_id -> click_id
    #: More connection variables (a Sentinel password) for the ledger's own reads.
    redis_env: dict[str, str] = field(default_factory=dict)

    def offer(self, prefix: str, count: int, producer: Producer | None = None) -> list[str]:
        """Enqueue ``count`` jobs in one batch; returns their ids."""
        producer = producer or Producer(self.redis_url)
        clicks = [f"{prefix}-{i:04d}" for i in range(count)]
        job_ids = producer.enqueue_many(STORE, [event(click) for click in clicks])
        self.offered.update(zip(job_ids, clicks, strict=True))
        return job_ids

    def accepted(self) -> Counter[str]:
        """How often the sandbox accepted each offered click_id."""
        ours = set(self.offered.values())
        return Counter(e["click_id"] for e in self.sandbox.events() if e["click_id"] in ours)

    def dead_lettered(self) -> set[str]:
        # The factory every component uses: redis_url may be a Sentinel list.
        environ = {**self.redis_env, "REDIS_URL": self.redis_url}
        client = redis_client(ProducerSettings.from_env(environ))
        try:
            return {entry.job_id for entry in DeadLetterStore(client).iter_entries()}
        finally:
            client.close()

    def unaccounted(self, accepted: Counter[str] | None = None) -> list[str]:
        """Offered jobs neither delivered nor dead-lettered."""
        accepted = self.accepted() if accepted is None else accepted
        dead = self.dead_lettered()
        offered = self.offered.items()
        return [job for job, click in offered if not accepted[click] and job not in dead]

    def wait_all_accounted(self, timeout: float = SETTLE_SECONDS) -> None:
        def done() -> bool:
            try:
                return not self.unaccounted()
            except redis.RedisError:
                return False

        wait_until(done, timeout, interval=0.25, what="every job delivered or dead-lettered")

    def wait_delivered(self, count: int, timeout: float = SETTLE_SECONDS) -> None:
        wait_until(
            lambda: sum(1 for n in self.accepted().values() if n) >= count,
            timeout,
            interval=0.02,
            what=f"{count} deliveries",
        )

    def summary(self) -> Summary:
        accepted = self.accepted()
        dead = self.dead_lettered()
        return Summary(
            offered=len(self.offered),
            delivered=sum(1 for n in accepted.values() if n),
            dead_lettered=sum(1 for job in self.offered if job in dead),
            duplicated=sum(n - 1 for n in accepted.values() if n > 1),
            duplicated_clicks=sorted(click for click, n in accepted.items() if n > 1),
            unaccounted=self.unaccounted(accepted),
        )


@dataclass(frozen=True)
class Summary:
    offered: int
    delivered: int
    dead_lettered: int
    duplicated: int
    duplicated_clicks: Sequence[str]
    unaccounted: Sequence[str]

    def line(self, name: str, recovery_s: float, **extra: Any) -> str:
        more = "".join(f" {key}={value}" for key, value in extra.items())
        return (
            f"FAULT {name}: offered={self.offered} delivered={self.delivered} "
            f"dead_lettered={self.dead_lettered} duplicated={self.duplicated} "
            f"recovery_s={recovery_s:.1f}{more}"
        )


def report(line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Show the summary line whatever the capture mode, and keep it in files.

    ``tmp_path/fault-summary.txt`` always; ``$SNACKVIDEO_FAULT_REPORT`` (appended) when
    set, to collect the lines of a whole run.
    """
    (tmp_path / "fault-summary.txt").write_text(line + "\n")
    collected = os.environ.get("SNACKVIDEO_FAULT_REPORT")
    if collected:
        with open(collected, "a") as out:
            out.write(line + "\n")
    with capsys.disabled():
        print(f"\n{line}")


def unacked_job_ids(client: redis.Redis) -> set[str]:
    """Task ids of the messages kombu holds as in flight (its ``unacked`` hash)."""
    import json

    ids = set()
    for raw in client.hvals(UNACKED):
        message = json.loads(raw)[0]
        ids.add(message["headers"]["id"])
    return ids


def marker_stopped(*logs: str) -> int:
    """Redeliveries the delivered-marker kept from being sent again (``outcome=duplicate``)."""
    return sum(log.count("outcome=duplicate ") for log in logs)
