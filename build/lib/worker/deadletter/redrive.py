"""Scheduled reprocessing of the dead-letter queue: what the beat task ``snackvideo.redrive``
(``worker.tasks.redrive``) runs.

Every SNACKVIDEO_REDRIVE_INTERVAL_SECONDS Celery beat sends ``snackvideo.redrive`` to the
control queue (``snackvideo.control``), so it never waits behind queued deliveries, with
an expiry of one interval, so runs held up by a busy worker are dropped instead of piling
up. A run replays, oldest first and at most ``redrive_batch_size`` of them, the entries

* whose reason may heal with time or configuration (``redrive_reasons``: by default
  http_404, http_401, http_403, no_api_key, retries_exhausted; never http_400,
  invalid_job or expired unless configured), and
* that have been replayed fewer than ``redrive_max_replays`` times; the others stay in
  the queue for an operator (``snackvideo dlq replay`` has no cap).

A ``no_api_key`` entry waits, without spending a replay, while the store still has no key
in this process's configuration (the workers share it): replaying it would only fail
again at once and use up the cap before anyone had time to add the key.

Two beats (a failover pair, or one left running by mistake) must not replay an entry twice.
Two guards: a run holds ``snackvideo:redrive:lock`` (SET NX PX, released by compare-and-
delete so a run that outlived the TTL cannot free a later run's lock), and the replay
itself is the atomic take of ``take.lua``, which pushes an entry only if it is still
there. The lock keeps runs from doing the same work twice; the take would be enough for
correctness on its own.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from worker.clock import RedisClock
from worker.deadletter.store import DeadLetter, DeadLetterStore, Trimmed
from worker.escaping import log_field
from worker.keys import REDRIVE_LOCK
from worker.settings import Settings

log = logging.getLogger("snackvideo.redrive")

#: Longest a run may hold the lock. A run takes seconds; if its process dies, the next
#: run may start after this long.
LOCK_TTL_SECONDS = 300.0


class RedriveLock:
    """The run lock: redis-py's ``Lock`` (an owner token, released by compare-and-delete,
    so a run that outlived the TTL cannot free a later run's lock), taken without
    blocking: a second run skips instead of queueing behind the first."""

    def __init__(self, client: redis.Redis, ttl_seconds: float = LOCK_TTL_SECONDS) -> None:
        self._lock = client.lock(REDRIVE_LOCK, timeout=ttl_seconds, blocking=False)

    def acquire(self) -> bool:
        return bool(self._lock.acquire())

    def release(self) -> bool:
        try:
            self._lock.release()
        except redis.exceptions.LockError:  # not ours (expired, or never taken)
            return False
        return True


@dataclass
class RedriveReport:
    locked_out: bool = False
    replayed: list[DeadLetter] = field(default_factory=list)
    at_cap: int = 0  # healable entries left for an operator (seen while filling the batch)
    waiting: int = 0  # no_api_key entries whose store still has no key configured
    trimmed: list[Trimmed] = field(default_factory=list)

    def __str__(self) -> str:
        if self.locked_out:
            return "skipped: another redrive run holds the lock"
        by_reason = Counter(entry.reason for entry in self.replayed)
        reasons = ",".join(f"{k}:{v}" for k, v in sorted(by_reason.items())) or "-"
        return (
            f"replayed={len(self.replayed)} by_reason={reasons} at_cap={self.at_cap} "
            f"waiting_for_key={self.waiting} trimmed={len(self.trimmed)}"
        )


class Redriver:
    def __init__(
        self,
        store: DeadLetterStore,
        *,
        reasons: Sequence[str],
        max_replays: int,
        batch_size: int,
        lock: RedriveLock | None = None,
        has_api_key: Callable[[str], bool] = lambda _store_id: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.reasons = frozenset(reasons)
        self.max_replays = max_replays
        self.batch_size = batch_size
        self.lock = lock
        self.has_api_key = has_api_key
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> Redriver:
        return cls(
            DeadLetterStore.from_settings(client, settings),
            reasons=settings.redrive_reasons,
            max_replays=settings.redrive_max_replays,
            batch_size=settings.redrive_batch_size,
            lock=RedriveLock(client),
            has_api_key=lambda store_id: settings.api_key_for(store_id) is not None,
            clock=RedisClock(client).now,  # retention by age on the clock entries were stamped on
        )

    def run(self) -> RedriveReport:
        """One scheduled run: under the lock when there is one, else straight through."""
        if self.lock is None:
            return self._run_unlocked()
        if not self.lock.acquire():
            return RedriveReport(locked_out=True)
        try:
            return self._run_unlocked()
        finally:
            self.lock.release()

    def _run_unlocked(self) -> RedriveReport:
        report = RedriveReport()
        # Retention runs here too, so a quiet queue is trimmed by age without new failures.
        report.trimmed = self.store.trim(now=self.clock())
        candidates, report.at_cap, report.waiting = self.select()
        taken = set(self.store.replay(candidates))
        report.replayed = [entry for entry in candidates if entry.id in taken]
        for entry in report.replayed:
            log.info(
                "redrive replayed entry=%s reason=%s store_id=%s click_id=%s replay=%d",
                log_field(entry.id),
                log_field(entry.reason),
                log_field(entry.store_id or "-"),
                log_field(entry.click_id or "-"),
                entry.replay_count + 1,
            )
        return report

    def select(self) -> tuple[list[DeadLetter], int, int]:
        """Up to one batch of healable entries below the cap, oldest first; and how many
        healable entries were passed over, at the cap and waiting for a key."""
        live = self.store.counts_by_reason()
        if not any(live.get(reason) for reason in self.reasons):
            return [], 0, 0  # nothing healable: skip reading the whole queue
        chosen: list[DeadLetter] = []
        at_cap = waiting = 0
        for entry in self.store.iter_entries(newest_first=False):
            if entry.reason not in self.reasons:
                continue
            if entry.replay_count >= self.max_replays:
                at_cap += 1
                continue
            if entry.reason == "no_api_key" and not self.has_api_key(entry.store_id):
                waiting += 1
                continue
            chosen.append(entry)
            if len(chosen) >= self.batch_size:
                break
        return chosen, at_cap, waiting
