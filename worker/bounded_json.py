"""JSON text of any value, cut at a length, without recursion.

``json.dumps`` (and ``repr``, ``dataclasses.asdict``, pickle) recurse once per nesting
level and raise ``RecursionError`` near 1,000 levels. A dead-letter entry must still be
stored for a payload nested deeper than that, so its text is produced here with an
explicit stack instead, and only the first ``limit`` characters are kept.
"""

from __future__ import annotations

import json
from typing import Any


def bounded_json(value: Any, limit: int) -> tuple[str, int]:
    """(the first ``limit`` characters of ``value`` as compact JSON, the full length).

    Values JSON has no form for are written as their ``repr`` in a string, as
    ``json.dumps(..., default=repr)`` would (a ``repr`` that recurses itself is replaced by
    the type name).
    """
    kept: list[str] = []
    kept_chars = 0
    total = 0
    pending: list[Any] = [value]  # values to write, and _Token strings to emit as they are
    while pending:
        item = pending.pop()
        if isinstance(item, _Token):
            text = str(item)
        elif isinstance(item, dict):
            pending.append(_Token("}"))
            entries = list(item.items())
            for index in range(len(entries) - 1, -1, -1):
                key, member = entries[index]
                pending.append(member)
                pending.append(_Token(_scalar(key if isinstance(key, str) else str(key)) + ":"))
                if index:
                    pending.append(_Token(","))
            text = "{"
        elif isinstance(item, list | tuple):
            pending.append(_Token("]"))
            for index in range(len(item) - 1, -1, -1):
                pending.append(item[index])
                if index:
                    pending.append(_Token(","))
            text = "["
        else:
            text = _scalar(item)
        total += len(text)
        if kept_chars < limit:
            piece = text[: limit - kept_chars]
            kept.append(piece)
            kept_chars += len(piece)
    return "".join(kept), total


class _Token(str):
    """Punctuation or a ready key: written as it is, never encoded again."""


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, str | int | float | bool):
        return json.dumps(value, ensure_ascii=False)
    try:
        return json.dumps(repr(value), ensure_ascii=False)
    except RecursionError:
        return json.dumps(f"<{type(value).__name__}>")
