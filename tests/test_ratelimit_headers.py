"""Parsing of X-Ratelimit-* and Retry-After: every Reset convention, garbage and absence."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from worker.throttle.headers import (
    MAX_COUNT,
    MAX_RESET_SECONDS,
    MILLISECOND,
    WHOLE_SECOND,
    RateLimitHeaders,
    parse_rate_limit_headers,
    parse_reset,
    parse_retry_after,
)

NOW = 1_750_000_000.25  # an epoch in seconds, with a fraction like time.time()


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


def test_full_set_of_headers() -> None:
    parsed = parse_rate_limit_headers(
        {"x-ratelimit-limit": "25", "x-ratelimit-remaining": "7", "x-ratelimit-reset": "1"},
        NOW,
    )
    assert parsed == RateLimitHeaders(
        limit=25, remaining=7, reset_in_seconds=1.0, reset_resolution_seconds=WHOLE_SECOND,
        reset_relative=True,
    )


def test_only_a_delta_seconds_reset_is_relative() -> None:
    """Delta seconds say when a window ends, never when it began (the throttle learns the
    phase from the rollover instead); an epoch reset, however written, is not relative."""
    epoch, epoch_ms = str(int(NOW) + 1), str(int(NOW * 1000) + 5)
    for value, relative in [("1", True), (epoch, False), (epoch_ms, False), ("junk", False)]:
        parsed = parse_rate_limit_headers({"x-ratelimit-reset": value}, NOW)
        assert parsed.reset_relative is relative, value


def test_header_names_are_case_insensitive() -> None:
    parsed = parse_rate_limit_headers(
        {"X-RateLimit-Limit": "100", "X-RATELIMIT-REMAINING": "3", "x-Ratelimit-Reset": "9",
         "RETRY-AFTER": "4"},
        NOW,
    )  # fmt: skip
    assert (parsed.limit, parsed.remaining, parsed.reset_in_seconds) == (100, 3, 9.0)
    assert parsed.retry_after_seconds == 4.0


@pytest.mark.parametrize(
    ("value", "seconds", "resolution"),
    [
        ("0", 0.0, WHOLE_SECOND),  # seconds until reset
        ("1", 1.0, WHOLE_SECOND),
        ("60", 60.0, WHOLE_SECOND),
        ("0.25", 0.25, MILLISECOND),  # fractional seconds until
        (str(int(NOW) + 10), int(NOW) + 10 - NOW, WHOLE_SECOND),  # epoch seconds
        (str(int(NOW * 1000) + 1500), (int(NOW * 1000) + 1500) / 1000 - NOW, MILLISECOND),
        (f"{NOW + 2.5:.3f}", 2.5, MILLISECOND),  # fractional epoch seconds
    ],
)
def test_reset_conventions_by_magnitude(value: str, seconds: float, resolution: float) -> None:
    parsed, parsed_resolution = parse_reset(value, NOW)
    assert parsed == pytest.approx(seconds, abs=1e-6)
    assert parsed_resolution == resolution


def test_epoch_reset_in_the_past_is_not_believed() -> None:
    # Our clock runs ahead of the server's: the reset "already happened". Believing it
    # would refill a window the server still counts as spent.
    assert parse_reset(str(int(NOW) - 30), NOW) == (None, WHOLE_SECOND)
    assert parse_reset(str(int(NOW * 1000) - 5), NOW)[0] is None


def test_epoch_reset_absurdly_far_ahead_is_not_believed() -> None:
    assert parse_reset(str(int(NOW) + 10 * 86_400), NOW)[0] is None
    assert parse_reset(str(int(MAX_RESET_SECONDS) + 1), NOW)[0] is None  # seconds-until, > 1 day


def test_date_header_corrects_a_skewed_local_clock() -> None:
    server_now = NOW - 120  # our clock is two minutes fast
    reset = int(server_now) + 5
    headers = {
        "x-ratelimit-reset": str(reset),
        "date": http_date(int(server_now)),
    }
    parsed = parse_rate_limit_headers(headers, NOW)
    assert parsed.reset_in_seconds == pytest.approx(5, abs=1)
    # Without Date the same value reads as a reset in the past: not believed.
    assert parse_rate_limit_headers({"x-ratelimit-reset": str(reset)}, NOW).reset_in_seconds is None


def test_date_within_a_second_of_ours_keeps_our_finer_clock() -> None:
    headers = {"x-ratelimit-reset": f"{NOW + 0.5:.3f}", "date": http_date(int(NOW))}
    assert parse_rate_limit_headers(headers, NOW).reset_in_seconds == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), ("0", 0.0), (" 2 ", 2.0), ("1.5", 1.5), (http_date(NOW + 30), 29.75),
     (http_date(NOW - 30), 0.0)],
)  # fmt: skip
def test_retry_after_seconds_or_http_date(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(seconds, abs=1)


@pytest.mark.parametrize(
    "value", ["", "soon", "-1", "nan", "inf", "1e400", "Mon, 99 Foo 2024", str(10**7)]
)
def test_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "text/plain"},
        {"x-ratelimit-limit": "", "x-ratelimit-remaining": "", "x-ratelimit-reset": ""},
        {"x-ratelimit-limit": "many", "x-ratelimit-remaining": "some", "x-ratelimit-reset": "x"},
        {"x-ratelimit-limit": "-5", "x-ratelimit-remaining": "-1", "x-ratelimit-reset": "-3"},
        {"x-ratelimit-limit": "nan", "x-ratelimit-remaining": "inf", "x-ratelimit-reset": "1e20"},
        {"x-ratelimit-limit": "\x00\xff", "x-ratelimit-reset": "999999999999999999999"},
    ],
)
def test_garbage_and_absence_never_raise(headers: dict[str, str]) -> None:
    parsed = parse_rate_limit_headers(headers, NOW)
    assert (parsed.limit, parsed.remaining, parsed.reset_in_seconds) == (None, None, None)
    assert parsed.retry_after_seconds is None


def test_partial_headers_keep_what_is_readable() -> None:
    parsed = parse_rate_limit_headers(
        {"x-ratelimit-remaining": "4", "x-ratelimit-reset": "garbage"}, NOW
    )
    assert (parsed.limit, parsed.remaining, parsed.reset_in_seconds) == (None, 4, None)


def test_list_and_policy_forms_take_the_first_number() -> None:
    # e.g. "X-RateLimit-Limit: 100, 100;w=60" from the IETF ratelimit-headers drafts
    parsed = parse_rate_limit_headers(
        {"x-ratelimit-limit": "100, 100;w=60", "x-ratelimit-remaining": "99;w=60"}, NOW
    )
    assert (parsed.limit, parsed.remaining) == (100, 99)


def test_sandbox_headers_for_every_reset_style() -> None:
    """The sandbox renders each convention; the parser reads them all back."""
    from sandbox.ratelimit import Decision, render_headers

    decision = Decision(allowed=True, limit=25, remaining=24, reset_at=NOW + 0.6, now=NOW)
    for style, expected, tolerance in [
        ("seconds", 1.0, 0.0),  # rounded up to whole seconds
        ("epoch", 0.6, 1.0),
        ("epoch-ms", 0.6, 0.001),
    ]:
        parsed = parse_rate_limit_headers(dict(render_headers(decision, style)), NOW)
        assert parsed.limit == 25 and parsed.remaining == 24
        assert parsed.reset_in_seconds is not None
        assert expected - 1e-6 <= parsed.reset_in_seconds <= expected + tolerance + 1e-6, style


# -- the bounds of every header-derived number ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("0", 0),  # believed: the throttle still probes once per window
        ("1", 1),
        ("25.9", 25),
        (str(MAX_COUNT), MAX_COUNT),
        (str(MAX_COUNT + 1), MAX_COUNT),  # more than any quota: "no limit", read as the bound
        ("1e30", MAX_COUNT),
        ("-1", None),
        ("1e400", None),  # not finite
        ("nan", None),
    ],
)
def test_limit_and_remaining_are_bounded(value: str, count: int | None) -> None:
    parsed = parse_rate_limit_headers(
        {"x-ratelimit-limit": value, "x-ratelimit-remaining": value}, NOW
    )
    assert (parsed.limit, parsed.remaining) == (count, count)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        (str(int(MAX_RESET_SECONDS)), MAX_RESET_SECONDS),  # a daily quota: believed
        (str(int(MAX_RESET_SECONDS) + 1), None),
        (str(int(NOW + MAX_RESET_SECONDS - 1)), MAX_RESET_SECONDS - 1.25),  # epoch, a day ahead
        (str(int(NOW + MAX_RESET_SECONDS + 2)), None),
        (str(int((NOW + MAX_RESET_SECONDS + 2) * 1000)), None),  # epoch ms
        ("-1", None),
    ],
)
def test_reset_is_bounded_by_a_day(value: str, seconds: float | None) -> None:
    parsed = parse_rate_limit_headers({"x-ratelimit-reset": value}, NOW).reset_in_seconds
    assert parsed == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        (str(int(MAX_RESET_SECONDS)), MAX_RESET_SECONDS),
        (str(int(MAX_RESET_SECONDS) + 1), None),
        (http_date(NOW + MAX_RESET_SECONDS + 60), None),
        (http_date(NOW + 3600), 3599.75),
    ],
)
def test_retry_after_is_bounded_by_a_day(value: str, seconds: float | None) -> None:
    parsed = parse_rate_limit_headers({"retry-after": value}, NOW).retry_after_seconds
    assert parsed == (pytest.approx(seconds, abs=1) if seconds is not None else None)
