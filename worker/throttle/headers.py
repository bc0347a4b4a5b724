"""What a response's rate-limit headers say, parsed without trusting any of them.

Scalev reports its budget in ``X-Ratelimit-Limit``, ``X-Ratelimit-Remaining`` and
``X-Ratelimit-Reset``, and a 429 may add ``Retry-After``. Every value may be missing,
partial or garbage; a value that cannot be read becomes ``None`` and the throttle falls
back to what it already knew. Nothing here raises on input.

``X-Ratelimit-Reset`` comes in three conventions, told apart by magnitude:

    value < 1e9            seconds until the window resets (1e9 s is 31 years)
    1e9  <= value < 1e11   epoch seconds
    1e11 <= value < 1e14   epoch milliseconds

Epoch values are turned into "seconds from now" against the server's clock when the
response carries a ``Date`` header, else against ours. A clock skewed far enough to put
the reset in the past, or a reset further away than ``MAX_RESET_SECONDS``, is not
believed (``None``): trusting it would either burst a window early or stall for hours.

The result is relative (seconds from now), so the throttle can anchor it to the one
clock every worker shares (Redis ``TIME``) instead of each host's own.

Every number is bounded, because each one can stop or flood delivery if believed:

    limit, remaining   integers, 0 <= n <= MAX_COUNT (10**9); a larger one is read as
                       MAX_COUNT, a negative one as unreadable. 0 is believed: the throttle
                       still lets one probe through per window (acquire.lua), so a
                       limit of 0 costs one request per window, not a stopped queue.
    reset, Retry-After 0 <= seconds <= MAX_RESET_SECONDS (one day); beyond, unreadable.
    window lengths     the throttle derives them from resets only (window_s is the reset a
                       fresh window announced; window_bound only narrows a reset, by at most
                       one rounding step), so they inherit the reset's bound, and the spread
                       of requests never reaches past the end of the tracked window.

Why these: a day is the longest quota window an API announces (a daily quota); a longer
reset is garbage or a skewed clock, and believing it would hold every job of the scope
for a large part of its life (``SNACKVIDEO_MAX_AGE_SECONDS`` is 3 days). A billion
requests per window is more than any quota and means "no limit" as well as any larger
number does, while keeping every count an exact integer in Lua's doubles and short in the
state hash. So no header can stop delivery for longer than the reset (or Retry-After) it
announced plus one window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

LIMIT_HEADER = "x-ratelimit-limit"
REMAINING_HEADER = "x-ratelimit-remaining"
RESET_HEADER = "x-ratelimit-reset"
RETRY_AFTER_HEADER = "retry-after"
DATE_HEADER = "date"

#: Longest wait a header is believed to announce (a daily quota); beyond is garbage/skew.
MAX_RESET_SECONDS = 86_400.0
#: Largest limit or remaining count believed; a larger one is read as this (no limit).
MAX_COUNT = 10**9
EPOCH_SECONDS_FROM = 1e9
EPOCH_MILLISECONDS_FROM = 1e11
EPOCH_MILLISECONDS_UNTIL = 1e14
#: Whole-second values are rounded by the server (up, in practice): the true reset lies
#: within one resolution step before the announced one. Millisecond values are exact.
WHOLE_SECOND = 1.0
MILLISECOND = 0.001


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """One response's view of the budget; ``None`` where a header was absent or unreadable."""

    limit: int | None = None
    remaining: int | None = None
    reset_in_seconds: float | None = None
    #: how coarse ``reset_in_seconds`` is: 1.0 for whole seconds, 0.001 for milliseconds
    reset_resolution_seconds: float = WHOLE_SECOND
    retry_after_seconds: float | None = None
    #: ``reset_in_seconds`` was sent as seconds until the reset (the IETF draft's
    #: delta-seconds), not as an epoch: it says when the window ends, never when it began.
    reset_relative: bool = False


def parse_rate_limit_headers(headers: Mapping[str, str], now: float) -> RateLimitHeaders:
    """Read the rate-limit headers of one response; ``now`` is our epoch clock."""
    lowered = {str(name).lower(): value for name, value in headers.items()}
    server_now = _server_now(lowered.get(DATE_HEADER), now)
    raw_reset = lowered.get(RESET_HEADER)
    reset_in, resolution = parse_reset(raw_reset, server_now)
    number = _number(raw_reset)
    return RateLimitHeaders(
        limit=_count(lowered.get(LIMIT_HEADER)),
        remaining=_count(lowered.get(REMAINING_HEADER)),
        reset_in_seconds=reset_in,
        reset_resolution_seconds=resolution,
        retry_after_seconds=parse_retry_after(lowered.get(RETRY_AFTER_HEADER), server_now),
        reset_relative=reset_in is not None and number is not None and number < EPOCH_SECONDS_FROM,
    )


def parse_reset(value: str | None, now: float) -> tuple[float | None, float]:
    """``(seconds until reset or None, resolution)`` for one ``X-Ratelimit-Reset`` value."""
    number = _number(value)
    if number is None or number < 0:
        return None, WHOLE_SECOND
    resolution = WHOLE_SECOND if number == int(number) else MILLISECOND
    if number < EPOCH_SECONDS_FROM:
        seconds = number
    elif number < EPOCH_MILLISECONDS_FROM:
        seconds = number - now
    elif number < EPOCH_MILLISECONDS_UNTIL:
        seconds, resolution = number / 1000 - now, MILLISECOND
    else:
        return None, WHOLE_SECOND
    # A past epoch reset means our clock runs ahead of the server's (or the value is
    # stale): a window that "already ended" would invite a burst into a full one.
    if not 0 <= seconds <= MAX_RESET_SECONDS:
        return None, WHOLE_SECOND
    return seconds, resolution


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``Retry-After`` (delay-seconds or an HTTP date), else None."""
    if value is None:
        return None
    text = value.strip()
    number = _number(text)
    if number is not None:
        seconds = number
    else:
        when = _http_date(text)
        if when is None:
            return None
        # A date already past means "retry now", not garbage: the server did ask for a wait.
        seconds = max(0.0, when - now)
    if not 0 <= seconds <= MAX_RESET_SECONDS:
        return None
    return seconds


def _server_now(date_value: str | None, now: float) -> float:
    """The server's clock from its ``Date`` header when that is sane, else ours."""
    server = _http_date(date_value.strip()) if date_value else None
    # Date has whole-second resolution: within one second of ours, ours is the better
    # reading; further apart, one of the clocks is skewed and the server's is the one that
    # set the reset.
    if server is None or abs(server - now) <= WHOLE_SECOND:
        return now
    return server


def _http_date(text: str) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (ValueError, OverflowError):
        return None


def _number(value: str | None) -> float | None:
    """The first number of a header value ("25", "25.0", "100, 100;w=60"), else None."""
    if value is None:
        return None
    head = str(value).split(",", 1)[0].split(";", 1)[0].strip()
    try:
        number = float(head)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _count(value: str | None) -> int | None:
    number = _number(value)
    if number is None or number < 0:
        return None
    return int(min(number, MAX_COUNT))
