"""The dead-letter store: a registry of jobs that could not be delivered.

Layout (see ``worker.keys``): a sorted set of entry ids scored by ``dead_lettered_at``,
a hash of entry JSON, and live counts by reason. Bounded by entry count and age; every
trim is returned to the caller, which logs and counts it. Entry ids are
``{job_id}-r{replay_count}``: a redelivered message re-parks the same entry instead of a
twin, and a replayed job that fails again gets a new entry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from producers.message import build_message
from producers.models import JOB_SCHEMA_VERSION
from worker.keys import DELIVERY_QUEUE, DLQ_ENTRIES, DLQ_INDEX, DLQ_REASONS, DLQ_TRIMMED
from worker.lua import lua_source

SCAN_CHUNK = 500


def entry_id(job_id: str, replay_count: int) -> str:
    return f"{job_id}-r{replay_count}"


@dataclass
class DeadLetter:
    job_id: str
    store_id: str
    payload: Any
    reason: str
    status_code: int | None = None
    error: str = ""
    attempts: int = 0
    enqueued_at: float | None = None
    dead_lettered_at: float = field(default_factory=time.time)
    replay_count: int = 0
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = entry_id(self.job_id, self.replay_count)

    @property
    def click_id(self) -> str | None:
        value = self.payload.get("click_id") if isinstance(self.payload, dict) else None
        return value if isinstance(value, str) else None

    def to_json(self) -> str:
        # default=repr: an unreadable job may hold anything; the entry must still be stored.
        return json.dumps(asdict(self), separators=(",", ":"), default=repr)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        data = json.loads(raw)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replay_kwargs(self) -> dict[str, Any]:
        """The job as it goes back onto the queue: a fresh attempt budget, one more replay."""
        return {
            "job_id": self.job_id,
            "store_id": self.store_id,
            "payload": self.payload,
            "enqueued_at": self.enqueued_at or self.dead_lettered_at,
            "schema": JOB_SCHEMA_VERSION,
            "attempts": 0,
            "replay_count": self.replay_count + 1,
        }


@dataclass(frozen=True)
class Trimmed:
    entry_id: str
    reason: str


class DeadLetterStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        max_entries: int = 100_000,
        max_age_seconds: float = 30 * 86_400.0,
    ) -> None:
        self.client = client
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self._add = client.register_script(lua_source("dlq_add"))
        self._take = client.register_script(lua_source("dlq_take"))

    def add(self, entry: DeadLetter, now: float | None = None) -> tuple[bool, list[Trimmed]]:
        """Store ``entry``; returns whether it is new and what retention trimmed."""
        now = time.time() if now is None else now
        result = self._add(
            keys=[DLQ_INDEX, DLQ_ENTRIES, DLQ_REASONS, DLQ_TRIMMED],
            args=[
                entry.id,
                entry.dead_lettered_at,
                entry.to_json(),
                entry.reason,
                self.max_entries,
                now - self.max_age_seconds,
            ],
        )
        added = bool(int(result[0]))
        rest = [_text(item) for item in result[1:]]
        return added, [Trimmed(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = self.client.hget(DLQ_ENTRIES, entry_id)
        return DeadLetter.from_json(raw) if raw is not None else None

    def exists(self, entry_id: str) -> bool:
        return bool(self.client.hexists(DLQ_ENTRIES, entry_id))

    def __len__(self) -> int:
        return int(self.client.zcard(DLQ_INDEX))

    def iter_entries(
        self, *, newest_first: bool = True, since: float | None = None
    ) -> Iterator[DeadLetter]:
        """Every entry, in chunks, so a 100,000-entry queue is never loaded at once."""
        low = "-inf" if since is None else since
        offset = 0
        while True:
            if newest_first:
                ids = self.client.zrevrangebyscore(
                    DLQ_INDEX, "+inf", low, start=offset, num=SCAN_CHUNK
                )
            else:
                ids = self.client.zrangebyscore(
                    DLQ_INDEX, low, "+inf", start=offset, num=SCAN_CHUNK
                )
            if not ids:
                return
            for raw in self.client.hmget(DLQ_ENTRIES, ids):
                if raw is not None:
                    yield DeadLetter.from_json(raw)
            offset += len(ids)

    def list(
        self,
        *,
        reason: str | None = None,
        store_id: str | None = None,
        since: float | None = None,
        older_than: float | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        for entry in self.iter_entries(newest_first=newest_first, since=since):
            if reason is not None and entry.reason != reason:
                continue
            if store_id is not None and entry.store_id != store_id:
                continue
            if older_than is not None and entry.dead_lettered_at >= older_than:
                continue
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
        return found

    def counts_by_reason(self) -> dict[str, int]:
        raw = self.client.hgetall(DLQ_REASONS)
        counts = {_text(k): int(v) for k, v in raw.items()}
        return {reason: n for reason, n in sorted(counts.items()) if n > 0}

    def trimmed_by_reason(self) -> dict[str, int]:
        raw = self.client.hgetall(DLQ_TRIMMED)
        return {_text(k): int(v) for k, v in sorted(raw.items())}

    def replay(self, entries: Iterable[DeadLetter]) -> list[str]:
        """Move entries back to the delivery queue; returns the ids that were still there."""
        args: list[str] = []
        for entry in entries:
            kwargs = entry.replay_kwargs()
            args += [entry.id, build_message(kwargs, task_id=entry.job_id)]
        return self._run_take(args)

    def purge(self, entry_ids: Iterable[str]) -> list[str]:
        """Delete entries; returns the ids that were still there."""
        args: list[str] = []
        for entry_id_ in entry_ids:
            args += [entry_id_, ""]
        return self._run_take(args)

    def _run_take(self, args: list[str]) -> list[str]:
        taken: list[str] = []
        # Chunked so one call never holds Redis for long.
        for start in range(0, len(args), 2 * SCAN_CHUNK):
            chunk = args[start : start + 2 * SCAN_CHUNK]
            result = self._take(
                keys=[DLQ_INDEX, DLQ_ENTRIES, DLQ_REASONS, DELIVERY_QUEUE], args=chunk
            )
            taken += [_text(item) for item in result]
        return taken


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
