"""Reading a filter or ids from a request (worker.flower_pages.query), against any JSON a
script or a form may send: a value is taken, or refused with an error naming its field;
never another exception."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_properties import PROPERTY
from worker.deadletter.selection import EntryFilter
from worker.flower_pages.query import FieldError, read_count, read_filter, read_ids

NOW = 1_800_000_000.0
FIELDS = ("reason", "store", "since", "since_at", "before")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
texts = st.sampled_from(["", " ", "http_404", "no_api_key", "2h", "1h30m", "0s", "7d", "x"])


@PROPERTY
@given(st.dictionaries(st.sampled_from(FIELDS), json_values | texts))
def test_any_filter_is_read_or_refused_naming_its_field(values: dict[str, Any]) -> None:
    try:
        where = read_filter(values, now=NOW, prefix="filter.")
    except FieldError as exc:
        assert exc.field in {f"filter.{name}" for name in FIELDS}
        assert str(exc).startswith(f"{exc.field}: ")
        return
    assert isinstance(where, EntryFilter)
    for bound in (where.since, where.before):
        assert bound is None or (isinstance(bound, float) and math.isfinite(bound))
    assert where.reason is None or isinstance(where.reason, str)


@PROPERTY
@given(json_values)
def test_any_ids_value_is_a_tuple_of_ids_or_refused(value: Any) -> None:
    try:
        ids = read_ids(value)
    except FieldError as exc:
        assert exc.field == "ids"
        return
    assert all(isinstance(wanted, str) and wanted == wanted.strip() and wanted for wanted in ids)
    assert len(set(ids)) == len(ids)


@PROPERTY
@given(json_values | st.text(max_size=8))
def test_any_count_is_in_range_or_refused(value: Any) -> None:
    try:
        count = read_count({"limit": value}, "limit", 50, low=1, high=1000)
    except FieldError as exc:
        assert exc.field == "limit"
        return
    assert 1 <= count <= 1000


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reason": "http_4o4"}, "reason: unknown reason 'http_4o4'"),
        ({"store": "  "}, "store: store must not be empty"),
        ({"since": "yesterday"}, "since: invalid duration 'yesterday'"),
        ({"before": "soon"}, "before: must be epoch seconds"),
        ({"reason": ["http_404"]}, "reason: must be a string, not list"),
    ],
)
def test_a_bad_field_is_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(FieldError) as refused:
        read_filter(values, now=NOW)
    assert str(refused.value).startswith(message)


def test_since_is_counted_back_from_now_and_blank_fields_are_absent() -> None:
    where = read_filter({"since": "2h", "reason": "", "store": None}, now=NOW)
    assert where == EntryFilter(since=NOW - 7200)
