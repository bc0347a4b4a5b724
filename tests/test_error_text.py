"""Pure functions behind the internal_error outcome: what text of an error is kept (and
what never is), JSON text of values too deep to encode, and the settings that bound it."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from worker.bounded_json import bounded_json
from worker.delivery.internal_errors import REDACTED, configured_keys, describe, scrub
from worker.settings import Settings

KEY = "pk_live_A1b2/C3+d4=="


@pytest.mark.parametrize(
    "value",
    [
        {"click_id": "c", "events": [{"event_name": "purchase", "properties": None}]},
        [1, 2.5, True, None, "x\"y\n", {"é": ["ü"]}],
        {},
        [],
        [[[]], {}],
        "text",
        {1: "non-string key"},
        {"bytes": b"\x00"},
    ],
)
def test_bounded_json_writes_what_json_dumps_writes(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)
    assert bounded_json(value, 10_000) == (expected, len(expected))


def test_bounded_json_cuts_at_the_limit_and_counts_the_whole() -> None:
    text, size = bounded_json({"a": "x" * 100}, 10)
    assert text == '{"a":"xxxx' and size == len('{"a":""}') + 100


def test_bounded_json_writes_values_nested_beyond_the_recursion_limit() -> None:
    deep: Any = 1
    for _ in range(50_000):
        deep = [deep]
    text, size = bounded_json(deep, 20)
    assert text == "[" * 20 and size == 2 * 50_000 + 1


def test_scrub_replaces_every_configured_key_in_every_form() -> None:
    text = f"header {KEY!r}, url ?k={quote(KEY, safe='')}, bytes {KEY.encode()!r}"
    scrubbed = scrub(text, [KEY])
    assert KEY not in scrubbed and quote(KEY, safe="") not in scrubbed
    assert scrubbed.count(REDACTED) == 3


def test_scrub_hides_a_key_that_contains_another_whole() -> None:
    assert scrub("pk_1234_extended", ["pk_1234", "pk_1234_extended"]) == REDACTED


def test_describe_keeps_the_type_and_the_message_and_cuts_it() -> None:
    assert describe(OverflowError("cannot convert float infinity"), []) == (
        "OverflowError: cannot convert float infinity"
    )
    assert describe(RecursionError(), []) == "RecursionError"
    assert describe(ValueError(f"bad {KEY}"), [KEY], limit=14) == "ValueError: ba"


def test_describe_survives_an_exception_whose_str_fails() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe(Broken(), []) == "Broken: (message unavailable)"


def test_configured_keys_are_the_map_and_the_fallback() -> None:
    settings = Settings(storefront_api_keys={"a": "ka", "b": "kb"}, storefront_api_key="kf")
    assert sorted(configured_keys(settings)) == ["ka", "kb", "kf"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SNACKVIDEO_MAX_AGE_SECONDS", "inf"),
        ("SNACKVIDEO_RETRY_MAX_SECONDS", "Infinity"),
        ("SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS", "inf"),
    ],
)
def test_an_infinite_setting_is_refused_by_name(variable: str, value: str) -> None:
    # An infinite max age made every delivery raise OverflowError (int(inf)).
    with pytest.raises(ValueError, match=f"{variable}: must be a number from "):
        Settings.from_env({variable: value})


def test_a_consumer_must_survive_a_missed_heartbeat_or_two() -> None:
    Settings.from_env({"SNACKVIDEO_CONSUMER_DEAD_AFTER_SECONDS": "6"})
    with pytest.raises(ValueError, match="at least 3 times SNACKVIDEO_CONSUMER_HEARTBEAT"):
        Settings.from_env({"SNACKVIDEO_CONSUMER_DEAD_AFTER_SECONDS": "5"})


def test_the_new_bounds_have_their_defaults() -> None:
    settings = Settings()
    assert (settings.max_internal_errors, settings.max_redeliveries) == (3, 5)
    assert (settings.consumer_heartbeat_seconds, settings.consumer_dead_after_seconds) == (2, 10)
