"""Reading which entries a request means: a filter (``reason``, ``store``, ``since``) or
a list of ids, from a query string, a form or a JSON body. A bad value is an error that
names its field; the checks are ``worker.deadletter.selection``'s, the CLI's own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker.deadletter.selection import (
    EntryFilter,
    SelectionError,
    check_reason,
    check_store,
    parse_duration,
)

#: Most entries one API listing returns.
MAX_LIST_LIMIT = 1_000
#: Most ids one request may name.
MAX_IDS = 10_000


class FieldError(ValueError):
    """Raised when a request's field is malformed; the message starts with the field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Choice:
    """What a replay or purge request chose: ids, or a filter (empty: every entry)."""

    ids: tuple[str, ...]
    where: EntryFilter


def read_filter(values: Mapping[str, object], *, now: float, prefix: str = "") -> EntryFilter:
    """``reason``, ``store``, ``since`` (a duration before ``now``, like ``2h``), or the
    exact bounds a preview handed on: ``since_at`` and ``before`` (epoch seconds)."""
    reason = _text(values, "reason", prefix)
    store = _text(values, "store", prefix)
    since = _text(values, "since", prefix)
    since_at = _number(values, "since_at", prefix)
    before = _number(values, "before", prefix)
    try:
        check_reason(reason)
    except SelectionError as exc:
        raise FieldError(prefix + "reason", str(exc)) from None
    try:
        check_store(store)
    except SelectionError as exc:
        raise FieldError(prefix + "store", str(exc)) from None
    if since is not None:
        try:
            since_at = now - parse_duration(since)
        except SelectionError as exc:
            raise FieldError(prefix + "since", str(exc)) from None
    return EntryFilter(reason=reason, store_id=store, since=since_at, before=before)


def read_ids(values: object, field: str = "ids") -> tuple[str, ...]:
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise FieldError(field, "must be a list of entry ids or job ids (strings)")
    ids = tuple(dict.fromkeys(value.strip() for value in values if value.strip()))
    if len(ids) > MAX_IDS:
        raise FieldError(field, f"at most {MAX_IDS} ids in one request, got {len(ids)}")
    return ids


def read_count(
    values: Mapping[str, object], name: str, default: int, *, low: int, high: int
) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw)) if not isinstance(raw, bool) else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise FieldError(name, f"must be a whole number from {low} to {high}, not {raw!r}")
    return value


def _text(values: Mapping[str, object], name: str, prefix: str) -> str | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FieldError(prefix + name, f"must be a string, not {type(value).__name__}")
    return value


def _number(values: Mapping[str, object], name: str, prefix: str) -> float | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FieldError(prefix + name, "must be epoch seconds (a number)")
    try:
        number = float(value) if isinstance(value, int | float | str) else float("nan")
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        raise FieldError(prefix + name, f"must be epoch seconds (a number), not {value!r}")
    return number
