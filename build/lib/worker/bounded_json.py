"""JSON text of any value, cut at a length, without recursion.

``json.dumps`` (and ``repr``, ``dataclasses.asdict``, pickle) recurse once per nesting
level and raise ``RecursionError`` near 1,000 levels. A dead-letter entry must still be
stored for a payload nested deeper than that, so its text is produced here with an
explicit stack instead, and only the first ``limit`` characters are kept.
"""

from __future__ import annotations

import json
from typing import Any


def kept_raw(raw: Any, limit: int) -> dict[str, Any]:
    """What a dead-letter entry keeps of a message or value it cannot store as it is:
    ``{"raw": the first limit characters of its text, "raw_chars": the full length}``.

    The one cut for every unreadable message, whichever guard parked it (the transport,
    Celery's strategy, the consumer's hooks, the task), and for a payload too large or too
    deep to store. Bytes are decoded as UTF-8 (undecodable bytes replaced), text is kept
    as it is, anything else is written as JSON (``bounded_json``).
    """
    if isinstance(raw, bytes | bytearray):
        text = bytes(raw).decode("utf-8", errors="replace")
    elif isinstance(raw, str):
        text = raw
    else:
        text, total = bounded_json(raw, limit)
        return {"raw": text, "raw_chars": total}
    return {"raw": text[:limit], "raw_chars": len(text)}


def bounded_json(value: Any, limit: int) -> tuple[str, int]:
    """(the first ``limit`` characters of ``value`` as compact JSON, the full length).

    Values JSON has no form for are written as their ``repr`` in a string, as
    ``json.dumps(..., default=repr)`` would (a ``repr`` that recurses itself is replaced by
    the type name). A container met again inside itself (a cycle, which only Python code
    can build) is written as ``"<cycle>"``.
    """
    kept: list[str] = []
    kept_chars = 0
    total = 0
    pending: list[Any] = [value]  # values to write, and _Token strings to emit as they are
    open_ids: set[int] = set()  # the containers being written: a cycle meets one again
    while pending:
        item = pending.pop()
        if isinstance(item, _Token):
            text = str(item)
            if isinstance(item, _Close):
                open_ids.discard(item.ident)
        elif isinstance(item, dict | list | tuple) and id(item) in open_ids:
            text = '"<cycle>"'
        elif isinstance(item, dict):
            open_ids.add(id(item))
            pending.append(_Close("}", id(item)))
            entries = list(item.items())
            for index in range(len(entries) - 1, -1, -1):
                key, member = entries[index]
                pending.append(member)
                pending.append(_Token(_scalar(key if isinstance(key, str) else str(key)) + ":"))
                if index:
                    pending.append(_Token(","))
            text = "{"
        elif isinstance(item, list | tuple):
            open_ids.add(id(item))
            pending.append(_Close("]", id(item)))
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


class _Close(_Token):
    """The end of a container: written, and the container is no longer open."""

    ident: int

    def __new__(cls, text: str, ident: int) -> _Close:
        token = super().__new__(cls, text)
        token.ident = ident
        return token


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, str | int | float | bool):
        return json.dumps(value, ensure_ascii=False)
    try:
        return json.dumps(repr(value), ensure_ascii=False)
    except RecursionError:
        return json.dumps(f"<{type(value).__name__}>")
