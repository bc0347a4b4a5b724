"""Property-based tests of the pure boundaries: for any input, the result is a value or the
project's own error, never another exception.

- the payload models (``validate_payload``, ``validate_job``): arbitrary JSON-like values,
  deep nesting, long strings, lone surrogates, control characters, non-string keys;
- ``parse_rate_limit_headers``: arbitrary header maps and values, every number bounded;
- the idempotency key encoding: injective over (store, key) pairs;
- dead-letter entries: ``DeadLetter.from_json(to_json())`` gives the entry back, and the
  CLI's table row and ``show`` text never raise and never print a control character.

Examples per test: ``SNACKVIDEO_HYPOTHESIS_EXAMPLES`` (default 100, which keeps the file
to seconds on a loaded 2-core machine); raise it for a deeper search.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from producers import InvalidEvent
from producers.keys import IDEMPOTENCY_PREFIX, idempotency_key
from producers.models import (
    JobMessage,
    _json_problems,
    _plain_body,
    may_nest_deeper_than,
    nested_deeper_than,
    request_body,
    validate_job,
    validate_payload,
)
from worker.bounded_json import kept_raw
from worker.cli.dlq import list_row, show_text
from worker.deadletter.store import DEFAULT_RAW_MAX_CHARS, MAX_STORED_DEPTH, DeadLetter
from worker.escaping import log_field
from worker.throttle.headers import MAX_COUNT, MAX_RESET_SECONDS, parse_rate_limit_headers

EXAMPLES = int(os.environ.get("SNACKVIDEO_HYPOTHESIS_EXAMPLES", "100"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a loaded machine: no per-example timing
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any code point: controls, format characters, lone surrogates, astral planes.
any_text = st.text(st.characters(), max_size=40)
long_text = st.integers(0, 3_000).map(lambda n: "é" * n)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | any_text
)
any_key = any_text | st.integers() | st.none() | st.booleans()


def json_like(
    keys: st.SearchStrategy[Any] = any_key, leaves: st.SearchStrategy[Any] = scalars
) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=4),
        max_leaves=25,
    )


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value} if depth % 2 else [value]
    return value


deep_values = st.builds(nested, st.integers(0, 3_000), scalars)
events = st.lists(
    st.fixed_dictionaries(
        {"event_name": any_text | scalars},
        optional={"properties": json_like() | st.dictionaries(any_text, scalars, max_size=4)},
    ),
    max_size=3,
)
near_payloads = st.fixed_dictionaries(
    {"click_id": any_text | scalars | long_text, "events": events | json_like()},
    optional={
        "event_source_url": any_text | st.just("https://shop.example/p?q=1"),
        "variants": json_like(),
        "extra": json_like() | deep_values | long_text,
    },
)
payloads = near_payloads | json_like() | deep_values


@PROPERTY
@given(payload=payloads, max_bytes=st.integers(1, 4_000))
def test_validate_payload_returns_the_payload_or_raises_invalid_event(
    payload: Any, max_bytes: int
) -> None:
    try:
        result = validate_payload(payload, max_bytes=max_bytes)
    except InvalidEvent as exc:
        assert exc.problems and all(isinstance(f, str) for f in exc.fields)
        return
    assert result is payload
    body = request_body(result)
    assert len(body) <= max_bytes
    assert json.loads(body) == payload  # no NaN, no surrogate, no key that changes


def holds_a_tuple(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            return True
        if isinstance(item, dict | list):
            stack.extend(item.values() if isinstance(item, dict) else item)
    return False


@PROPERTY
@given(payload=near_payloads | st.dictionaries(any_key, json_like() | deep_values, max_size=4))
def test_the_fast_json_check_gives_the_walk_s_verdict(payload: dict[Any, Any]) -> None:
    # _plain_body stands in for the walk (_json_problems) when it returns a body: then the
    # walk finds nothing, and the body is the request body. It steps aside (None) only
    # where the walk finds something, or for a tuple (which the walk accepts).
    body = _plain_body(payload)
    if body is not None:
        assert _json_problems(payload) == []
        assert body == request_body(payload)
    elif not holds_a_tuple(payload):
        assert _json_problems(payload) != []


job_fields = st.fixed_dictionaries(
    {},
    optional={
        "job_id": any_text | scalars,
        "store_id": any_text | scalars | st.just("store_abc"),
        "payload": payloads,
        "enqueued_at": st.floats() | scalars,
        "schema": st.integers(0, 2) | scalars,
        "attempts": st.integers(-2, 3) | scalars,
        "replay_count": st.integers(-2, 3) | scalars,
        "generation": st.integers(-2, 3) | scalars,
        "internal_errors": st.integers(-2, 3) | scalars,
        "junk": json_like(),
    },
)


@PROPERTY
@given(kwargs=job_fields | json_like() | deep_values)
def test_validate_job_returns_a_job_or_raises_invalid_event(kwargs: Any) -> None:
    try:
        job = validate_job(kwargs, max_payload_bytes=2_000)
    except InvalidEvent as exc:
        assert exc.problems
        return
    assert isinstance(job, JobMessage)
    assert len(request_body(job.payload)) <= 2_000


header_names = st.sampled_from(
    ["X-Ratelimit-Limit", "x-ratelimit-remaining", "X-RATELIMIT-RESET", "Retry-After", "Date"]
) | st.text(st.characters(), max_size=10)
numberish = st.one_of(
    st.floats().map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "25, 100;w=60", "", " 7 "]),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    st.text(st.characters(), max_size=30),
)


@PROPERTY
@given(
    headers=st.dictionaries(header_names, numberish, max_size=6),
    now=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
)
def test_rate_limit_headers_never_raise_and_every_number_is_bounded(
    headers: dict[str, str], now: float
) -> None:
    parsed = parse_rate_limit_headers(headers, now)
    for count in (parsed.limit, parsed.remaining):
        assert count is None or 0 <= count <= MAX_COUNT
    for seconds in (parsed.reset_in_seconds, parsed.retry_after_seconds):
        assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= MAX_RESET_SECONDS)


@PROPERTY
@given(first=st.tuples(any_text, any_text), second=st.tuples(any_text, any_text))
def test_idempotency_keys_of_different_pairs_differ(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    assume(first != second)
    assert idempotency_key(*first) != idempotency_key(*second)


@PROPERTY
@given(store=st.text(st.sampled_from(":%3Aa25") | st.characters(), max_size=20), key=any_text)
def test_the_store_part_of_an_idempotency_key_holds_no_separator(store: str, key: str) -> None:
    encoded = idempotency_key(store, key).removeprefix(IDEMPOTENCY_PREFIX)
    assert encoded.split(":", 1)[0].replace("%3A", ":").replace("%25", "%") == store


finite = st.floats(allow_nan=False)
# What JSON gives back as it was: string keys, no NaN (NaN is not equal to itself).
plain_scalars = st.none() | st.booleans() | st.integers() | finite | any_text
storable_payloads = json_like(keys=any_text, leaves=plain_scalars) | st.builds(
    nested, st.integers(0, 3_000), plain_scalars
)
entries = st.builds(
    DeadLetter,
    job_id=any_text,
    store_id=any_text,
    payload=storable_payloads,
    reason=any_text,
    status_code=st.none() | st.integers(-1000, 10**6),
    error=any_text | long_text,
    attempts=st.integers(0, 10**6),
    enqueued_at=st.none() | finite,
    dead_lettered_at=finite,
    replay_count=st.integers(0, 10**6),
    id=any_text,
    location=st.none() | any_text,
)


def _comparable(value: Any) -> Any:
    """What JSON gives back: tuples as lists."""
    return json.loads(json.dumps(value))


@PROPERTY
@given(entry=entries)
def test_a_dead_letter_entry_survives_its_json_round_trip(entry: DeadLetter) -> None:
    loaded = DeadLetter.from_json(entry.to_json())
    expected = entry.to_dict()
    if nested_deeper_than(entry.payload, MAX_STORED_DEPTH):
        expected["payload"] = kept_raw(entry.payload, DEFAULT_RAW_MAX_CHARS)
    assert _comparable(loaded.to_dict()) == _comparable(expected)


any_entries = st.builds(
    DeadLetter,
    job_id=any_text,
    store_id=any_text,
    payload=payloads,
    reason=any_text,
    status_code=st.none() | st.integers(),
    error=any_text,
    attempts=st.integers(),
    enqueued_at=st.none() | st.floats(),
    dead_lettered_at=st.floats(),
    replay_count=st.integers(),
    id=any_text,
    location=st.none() | any_text,
)


@PROPERTY
@given(entry=any_entries)
def test_the_dlq_table_and_show_text_never_raise_nor_print_a_control_character(
    entry: DeadLetter,
) -> None:
    row = list_row(entry)
    assert row.isprintable(), repr(row)
    text = show_text(entry)
    # Line feeds separate the rows; tabs stay inside the indented error and payload blocks.
    assert all(ch.isprintable() or ch in "\n\t" for ch in text), repr(text)


@PROPERTY
@given(value=any_text | scalars)
def test_a_log_field_is_one_printable_token_that_gives_the_value_back(value: Any) -> None:
    field = log_field(value)
    text = value if isinstance(value, str) else str(value)
    assert field.isprintable() and field
    assert json.loads(field) == text if field.startswith('"') else field == text
    assert " " not in field or field.startswith('"')


@PROPERTY
@given(
    body=st.lists(json_like(keys=any_text) | deep_values, max_size=3),
    limit=st.integers(0, 80),
    as_bytes=st.booleans(),
)
def test_the_bracket_count_never_lets_a_deeper_body_skip_the_walk(
    body: list[Any], limit: int, as_bytes: bool
) -> None:
    # body_guard and _plain_body skip the nesting walk when the text opens no more than
    # `limit` brackets; that must never hide a value the walk would refuse.
    try:
        text = json.dumps(body)
    except (ValueError, RecursionError):
        return  # not a body a producer could have written
    if not may_nest_deeper_than(text.encode() if as_bytes else text, limit):
        assert not nested_deeper_than(body, limit)
