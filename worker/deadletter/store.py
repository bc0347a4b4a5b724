"""The dead-letter store: a registry of jobs that could not be delivered.

Layout (see ``worker.keys``): a sorted set of entry ids scored by ``dead_lettered_at``
(the index by time), a hash of entry JSON, and live counts by reason and by store that
the Lua scripts keep in step with the entries. Entry ids are ``{job_id}-r{replay_count}``:
a redelivered message finds the entry it already wrote instead of writing a twin, and a
replayed job that fails again gets a new entry with the next replay count. A message the
worker cannot read is parked as ``{job_id}-r{replay_count}-invalid`` (deterministic too,
so its redelivered copy finds it): garbage that carries a real job's id must not look like
that job's own entry, which tells the dispatcher the job is parked (the done-check in
``worker.keys``, where both ids are made).

Retention is bounded by entry count and age. It is applied, oldest first, each time an
entry is added (and by ``trim``, which redrive calls every run), and never silently: the
Lua counts every trimmed entry by reason in ``snackvideo:dlq:trimmed`` (shown by
``snackvideo dlq stats``) and returns it, and the store logs each one.

Why a job is never in neither place nor in both:

* Dead-lettering. The dispatcher writes the entry *before* Celery acknowledges the
  message (late acks), so until the ack the job is at least in the entry. If the worker
  dies between the write and the ack, the message comes back; the dispatcher then finds
  the entry (``HEXISTS entries {job_id}-r{replay_count}``) and acknowledges it without
  sending or parking it again. The message in flight is a leftover on its way out, never
  a second live copy: at any moment exactly one of the two will ever be acted upon.
* Replay and purge. ``take.lua`` deletes the entry and pushes the job's message onto
  the delivery queue in one script, which Redis runs atomically: no reader ever sees the
  job in both places or in neither, and of two concurrent replays of one entry only the
  first finds it, so the job is pushed once. The same script leaves a tombstone
  (``snackvideo:dlq:taken:{entry id}``, TTL ``taken_ttl_seconds``): the leftover message
  above, if it comes back only after the replay, finds the tombstone instead of the entry
  and is still not acted upon.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import redis

from producers.message import build_message
from producers.models import JOB_SCHEMA_VERSION, MAX_PAYLOAD_DEPTH, nested_deeper_than
from worker.bounded_json import kept_raw
from worker.connections import reply_text
from worker.escaping import log_field
from worker.keys import (
    DELIVERY_QUEUE,
    DLQ_ENTRIES,
    DLQ_INDEX,
    DLQ_REASONS,
    DLQ_STORES,
    DLQ_TRIMMED,
    dlq_taken_key,
    entry_id,
)
from worker.lua_scripts import lua_source

if TYPE_CHECKING:
    from worker.settings import Settings

log = logging.getLogger("snackvideo.deadletter")

SCAN_CHUNK = 500
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_AGE_SECONDS = 30 * 86_400.0
#: Tombstone lifetime with the default settings (``Settings.dlq_taken_ttl_seconds``).
DEFAULT_TAKEN_TTL_SECONDS = 600.0
#: Text kept of a payload JSON cannot hold (``Settings.dlq_error_max_chars``).
DEFAULT_RAW_MAX_CHARS = 2_000
#: Deepest payload an entry stores as a value; a deeper one is stored as its cut text
#: (``kept_raw``). Nothing deeper comes through the task (``worker.celery_ext.body_guard``
#: parks bodies nested deeper than this), and so every entry can be decoded and printed by
#: any JSON tool, ``dlq show`` included, without meeting a recursion limit.
MAX_STORED_DEPTH = MAX_PAYLOAD_DEPTH + 32


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
    # A 3xx answer's Location (never followed). Only a redirect's entry has the key, so
    # every other entry keeps the design's fields; entries written before it load with None.
    location: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            self.id = entry_id(self.job_id, self.replay_count)

    @property
    def click_id(self) -> str | None:
        value = self.payload.get("click_id") if isinstance(self.payload, dict) else None
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        """The entry's fields in their documented order, ``id`` first (``dlq list --json``),
        then ``location`` for a redirect."""
        data = self._fields()
        return {"id": data.pop("id"), **data}

    def to_json(self, *, raw_max_chars: int = DEFAULT_RAW_MAX_CHARS) -> str:
        data = self._fields()
        if nested_deeper_than(self.payload, MAX_STORED_DEPTH):
            # Keep its text, cut like an unreadable message's, and its length.
            data["payload"] = kept_raw(self.payload, raw_max_chars)
        try:
            # default=repr: an unreadable job may hold anything; the entry must be stored.
            return json.dumps(data, separators=(",", ":"), default=repr)
        except (RecursionError, ValueError):
            # A cycle, or an object whose repr recurses: its text, the same way.
            data["payload"] = kept_raw(self.payload, raw_max_chars)
            return json.dumps(data, separators=(",", ":"), default=repr)

    def _fields(self) -> dict[str, Any]:
        # Shallow on purpose: asdict() would copy the payload level by level. ``location``
        # only on a redirect's entry, so every other entry keeps its shape.
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if data["location"] is None:
            del data["location"]
        return data

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        data = json.loads(raw)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replay_kwargs(self) -> dict[str, Any]:
        """The job as it goes back onto the queue: a fresh attempt budget, one more replay.

        ``enqueued_at`` is the original one, so SNACKVIDEO_MAX_AGE_SECONDS still bounds
        the life of a job however often it is replayed.
        """
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
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        taken_ttl_seconds: float = DEFAULT_TAKEN_TTL_SECONDS,
        raw_max_chars: int = DEFAULT_RAW_MAX_CHARS,
    ) -> None:
        self.client = client
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self.taken_ttl_seconds = taken_ttl_seconds
        self.raw_max_chars = raw_max_chars
        self._add = client.register_script(lua_source("worker.deadletter", "add"))
        self._take = client.register_script(lua_source("worker.deadletter", "take"))

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> DeadLetterStore:
        return cls(
            client,
            max_entries=settings.dlq_max_entries,
            max_age_seconds=settings.dlq_max_age_seconds,
            taken_ttl_seconds=settings.dlq_taken_ttl_seconds,
            raw_max_chars=settings.dlq_error_max_chars,
        )

    # -- writing -----------------------------------------------------------------------

    def add(self, entry: DeadLetter, now: float | None = None) -> tuple[bool, list[Trimmed]]:
        """Store ``entry`` (once per id); returns whether it is new and what retention
        trimmed (logged here)."""
        return self._add_or_trim(entry, now)

    def trim(self, now: float | None = None) -> list[Trimmed]:
        """Apply retention without adding anything; returns what was trimmed (logged here)."""
        return self._add_or_trim(None, now)[1]

    def _add_or_trim(
        self, entry: DeadLetter | None, now: float | None
    ) -> tuple[bool, list[Trimmed]]:
        now = time.time() if now is None else now
        if entry is None:
            entry_args: list[Any] = ["", 0, "", "", ""]
        else:
            entry_args = [
                entry.id,
                entry.dead_lettered_at,
                entry.to_json(raw_max_chars=self.raw_max_chars),
                entry.reason,
                entry.store_id,
            ]
        result = self._add(
            keys=[DLQ_INDEX, DLQ_ENTRIES, DLQ_REASONS, DLQ_TRIMMED, DLQ_STORES],
            args=[*entry_args, self.max_entries, now - self.max_age_seconds],
        )
        added = bool(int(result[0]))
        rest = [reply_text(item) for item in result[1:]]
        trimmed = [Trimmed(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]
        for item in trimmed:  # retention is never silent
            log.warning(
                "dead-letter retention trimmed entry=%s reason=%s",
                log_field(item.entry_id),
                log_field(item.reason),
            )
        return added, trimmed

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
            tombstones = [dlq_taken_key(chunk[i]) for i in range(0, len(chunk), 2)]
            result = self._take(
                keys=[DLQ_INDEX, DLQ_ENTRIES, DLQ_REASONS, DELIVERY_QUEUE, DLQ_STORES, *tombstones],
                args=[int(self.taken_ttl_seconds * 1000), *chunk],
            )
            taken += [reply_text(item) for item in result]
        return taken

    # -- reading -----------------------------------------------------------------------

    def get(self, entry_id_: str) -> DeadLetter | None:
        raw = self.client.hget(DLQ_ENTRIES, entry_id_)
        return DeadLetter.from_json(raw) if raw is not None else None

    def find(self, job_or_entry_id: str) -> DeadLetter | None:
        """The entry with this id, else the latest entry of the job with this id.

        Operators hold the job id ``enqueue`` printed; entries are keyed
        ``{job_id}-r{n}`` and ``{job_id}-r{n}-invalid``. A replay deletes the entry it
        takes, so a job's entry ids have gaps (``-r0`` gone, ``-r2`` there) and ``n``
        cannot be guessed: one HSCAN of the entry hash, which Redis filters by the job
        id's prefix. It passes over every entry in chunks of ``SCAN_CHUNK``: at 100,000
        entries about 200 round trips, 0.12 s measured against a local Redis. Fine for a
        command an operator types, not for a hot path.
        The latest is the highest replay count; of two with the same count (a job's own
        entry and that of an unreadable copy), the one dead-lettered last.
        """
        exact = self.get(job_or_entry_id)
        if exact is not None:
            return exact
        own_id = re.compile(re.escape(job_or_entry_id) + r"-r(\d+)(?:-invalid)?")
        latest: DeadLetter | None = None
        latest_rank = (-1, 0.0)
        matches = self.client.hscan_iter(
            DLQ_ENTRIES, match=_glob_escape(job_or_entry_id) + "-r*", count=SCAN_CHUNK
        )
        for member, raw in matches:
            named = own_id.fullmatch(reply_text(member))
            if named is None:  # another job whose id starts with this one's
                continue
            entry = DeadLetter.from_json(raw)
            rank = (int(named.group(1)), entry.dead_lettered_at)
            if rank > latest_rank:
                latest, latest_rank = entry, rank
        return latest

    def __len__(self) -> int:
        return int(self.client.zcard(DLQ_INDEX))

    def iter_entries(
        self,
        *,
        newest_first: bool = True,
        since: float | None = None,
        before: float | None = None,
    ) -> Iterator[DeadLetter]:
        """Entries dead-lettered in [since, before), in chunks: 100,000 are never loaded at once.

        Chunks are read by score, not by offset, so entries removed meanwhile (a replay
        running at the same time) neither skip nor repeat one.
        """
        low = "-inf" if since is None else repr(float(since))
        high = "+inf" if before is None else f"({float(before)!r}"
        while True:
            page = self._page(low, high, newest_first)
            if not page:
                return
            yield from self._load([member for member, _ in page])
            if len(page) < SCAN_CHUNK:
                return
            # Resume past the last score; ties across a chunk boundary are re-read and
            # filtered below, so none is lost.
            last_score = float(page[-1][1])
            seen = {reply_text(member) for member, score in page if float(score) == last_score}
            yield from self._same_score(last_score, seen)
            if newest_first:
                high = f"({last_score!r}"
            else:
                low = f"({last_score!r}"

    def _page(self, low: str, high: str, newest_first: bool) -> list[tuple[bytes, float]]:
        if newest_first:
            page = self.client.zrevrangebyscore(
                DLQ_INDEX, high, low, start=0, num=SCAN_CHUNK, withscores=True
            )
        else:
            page = self.client.zrangebyscore(
                DLQ_INDEX, low, high, start=0, num=SCAN_CHUNK, withscores=True
            )
        return cast(list[tuple[bytes, float]], page)

    def _same_score(self, score: float, seen: set[str]) -> Iterator[DeadLetter]:
        """Entries sharing ``score`` that the previous chunk did not return."""
        members = cast(list[bytes], self.client.zrangebyscore(DLQ_INDEX, score, score))
        yield from self._load([m for m in members if reply_text(m) not in seen])

    def _load(self, ids: list[bytes]) -> Iterator[DeadLetter]:
        for start in range(0, len(ids), SCAN_CHUNK):
            for raw in self.client.hmget(DLQ_ENTRIES, ids[start : start + SCAN_CHUNK]):
                if raw is not None:  # replayed or purged since the index was read
                    yield DeadLetter.from_json(raw)

    def find_entries(
        self,
        *,
        reason: str | None = None,
        store_id: str | None = None,
        since: float | None = None,
        older_than: float | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[DeadLetter]:
        """Entries matching every filter given; ``since``/``older_than`` are epoch seconds."""
        found: list[DeadLetter] = []
        for entry in self.iter_entries(newest_first=newest_first, since=since, before=older_than):
            if reason is not None and entry.reason != reason:
                continue
            if store_id is not None and entry.store_id != store_id:
                continue
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
        return found

    def oldest(self) -> DeadLetter | None:
        for entry in self.iter_entries(newest_first=False):
            return entry
        return None

    def counts_by_reason(self) -> dict[str, int]:
        return _counts(self.client.hgetall(DLQ_REASONS))

    def counts_by_store(self) -> dict[str, int]:
        return _counts(self.client.hgetall(DLQ_STORES))

    def trimmed_by_reason(self) -> dict[str, int]:
        """Entries retention has removed since the store began, by reason (a counter)."""
        return _counts(self.client.hgetall(DLQ_TRIMMED))


def _counts(raw: dict[Any, Any]) -> dict[str, int]:
    counts = {reply_text(k): int(v) for k, v in raw.items()}
    return {name: n for name, n in sorted(counts.items()) if n > 0}


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
