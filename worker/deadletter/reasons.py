"""The reasons a dead-letter entry can have: what ``dlq`` filters and redrive replays name."""

from __future__ import annotations

import re

#: Reasons the dispatcher writes; ``http_<code>`` covers every refused status.
KNOWN_REASONS = ("no_api_key", "retries_exhausted", "expired", "invalid_job", "internal_error")
REASON_PATTERN = re.compile(r"^(http_[1-5]\d\d|" + "|".join(KNOWN_REASONS) + r")$")


def is_reason(text: str) -> bool:
    return REASON_PATTERN.match(text) is not None
