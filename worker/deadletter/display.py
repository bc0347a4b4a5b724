"""An entry's values as text, the same in ``dlq show`` and on Flower's entry page.

Each door escapes for its own medium afterwards: ``visible`` for a terminal, the
template's HTML escaping for a browser.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from producers.models import nested_deeper_than
from worker.bounded_json import kept_raw
from worker.deadletter.store import MAX_STORED_DEPTH

#: How much of a payload too deep to indent is shown.
SHOW_DEEP_PAYLOAD_CHARS = 4_000


def payload_text(payload: Any) -> str:
    """The payload as indented JSON; one nested deeper than an entry stores (an entry
    written by something else) as its compact text, cut: never a RecursionError.
    JSON escapes C0 controls in strings; the caller shows the rest (C1, bidi)."""
    if nested_deeper_than(payload, MAX_STORED_DEPTH):
        kept = kept_raw(payload, SHOW_DEEP_PAYLOAD_CHARS)
        return f"{kept['raw']} ... ({kept['raw_chars']} characters, nested too deep to indent)"
    try:
        return json.dumps(payload, indent=2, ensure_ascii=False, default=repr)
    except (RecursionError, ValueError):  # a cycle, a repr that recurses
        return str(kept_raw(payload, SHOW_DEEP_PAYLOAD_CHARS)["raw"])


def utc_time(value: float | None) -> str:
    """``2026-11-27 05:21:50``; ``-`` for None; the value as it is when no calendar holds it."""
    if value is None:
        return "-"
    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)
