"""Which entries an operator means, and what replaying or purging them did.

The CLI (``snackvideo dlq``) and the pages Flower serves (``worker.flower_pages``) are two
doors to the same steps: they read a filter or a list of ids with the checks below, pick
the entries with ``select``, and take them with ``replay`` or ``purge``, which call the
store's atomic take. Only the wording of their errors and reports differs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from worker.deadletter.reasons import KNOWN_REASONS, is_reason
from worker.deadletter.store import SCAN_CHUNK, DeadLetter, DeadLetterStore

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 7 * 86_400}

#: Why an entry selected a moment ago was not taken.
TAKEN_MEANWHILE = "taken meanwhile by another replay or purge"


class SelectionError(ValueError):
    """Raised when a filter value is malformed; the message says what is wrong with it."""


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``2h``, ``7d``, ``1w`` or a sum like ``1h30m`` -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise SelectionError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w "
            "(e.g. 30s, 15m, 2h, 7d)"
        )
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if seconds <= 0:
        raise SelectionError(f"invalid duration {text!r}: must be longer than zero")
    return seconds


def check_reason(reason: str | None) -> str | None:
    if reason is not None and not is_reason(reason):
        raise SelectionError(
            f"unknown reason {reason!r}: expected http_<status> or one of "
            + ", ".join(KNOWN_REASONS)
        )
    return reason


def check_store(store: str | None, *, name: str = "store") -> str | None:
    """``name``: how the caller's user spells the field (``--store`` on the command line)."""
    if store is not None and not store.strip():
        raise SelectionError(f"{name} must not be empty")
    return store


@dataclass(frozen=True)
class EntryFilter:
    """Entries matching every field given; times are epoch seconds, ``before`` exclusive."""

    reason: str | None = None
    store_id: str | None = None
    since: float | None = None
    before: float | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in (self.reason, self.store_id, self.since, self.before))


def select(
    store: DeadLetterStore,
    *,
    ids: Sequence[str] = (),
    where: EntryFilter | None = None,
    newest_first: bool = False,
) -> tuple[list[DeadLetter], list[str]]:
    """The entries ``ids`` name (job ids or entry ids, each entry once, in the order
    given), else those ``where`` matches (every entry when it is None); and the ids not
    found."""
    if ids:
        found: dict[str, DeadLetter] = {}  # each entry once (a job id and its entry id)
        missing: list[str] = []
        for wanted in dict.fromkeys(ids):
            entry = store.find(wanted)
            if entry is None:
                missing.append(wanted)
            else:
                found.setdefault(entry.id, entry)
        return list(found.values()), missing
    where = where or EntryFilter()
    entries = store.find_entries(
        reason=where.reason,
        store_id=where.store_id,
        since=where.since,
        older_than=where.before,
        newest_first=newest_first,
    )
    return entries, []


@dataclass(frozen=True)
class Breakdown:
    """How many entries, by reason and by store: what a preview and a report show."""

    total: int
    by_reason: dict[str, int]
    by_store: dict[str, int]

    @classmethod
    def of(cls, entries: Iterable[DeadLetter]) -> Breakdown:
        listed = list(entries)
        by_reason = Counter(entry.reason for entry in listed)
        by_store = Counter(entry.store_id or "-" for entry in listed)
        return cls(len(listed), dict(sorted(by_reason.items())), dict(sorted(by_store.items())))


@dataclass
class TakeResult:
    """What a replay or purge did: the entries taken, and those skipped with why."""

    taken: list[DeadLetter] = field(default_factory=list)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)


def replay(
    store: DeadLetterStore,
    entries: Sequence[DeadLetter],
    on_chunk: Callable[[int], None] | None = None,
) -> TakeResult:
    """Back to the delivery queue, atomically per entry (``DeadLetterStore.replay``)."""
    return _take_in_chunks(store.replay, entries, on_chunk)


def purge(
    store: DeadLetterStore,
    entries: Sequence[DeadLetter],
    on_chunk: Callable[[int], None] | None = None,
) -> TakeResult:
    """Deleted for good, atomically per entry (``DeadLetterStore.purge``)."""
    return _take_in_chunks(
        lambda chunk: store.purge(entry.id for entry in chunk), entries, on_chunk
    )


def _take_in_chunks(
    take: Callable[[Sequence[DeadLetter]], list[str]],
    entries: Sequence[DeadLetter],
    on_chunk: Callable[[int], None] | None,
) -> TakeResult:
    """``take`` chunk by chunk: one Redis call stays bounded whatever the selection's size,
    and ``on_chunk`` (a progress line, say) hears how many each chunk held."""
    taken: set[str] = set()
    for start in range(0, len(entries), SCAN_CHUNK):
        chunk = entries[start : start + SCAN_CHUNK]
        taken.update(take(chunk))
        if on_chunk is not None:
            on_chunk(len(chunk))
    return _split(entries, taken)


def _split(entries: Sequence[DeadLetter], taken_ids: set[str]) -> TakeResult:
    result = TakeResult()
    for entry in entries:
        if entry.id in taken_ids:
            result.taken.append(entry)
        else:
            result.skipped.append((entry, TAKEN_MEANWHILE))
    return result
