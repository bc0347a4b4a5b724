"""Text from outside (a response body, a payload, an id) made safe to print on a terminal.

A dead-letter entry holds what Scalev answered and what a shop sent, byte for byte. Printed
raw, ``\\x1b]0;...\\x07`` retitles the operator's terminal, ``\\x1b[2J`` clears it, a CR
overwrites the line before it, and U+202E shows the rest of a line reversed. ``visible``
writes every character that is not printable (``str.isprintable``: C0 and C1 controls,
DEL, format characters such as bidi overrides and zero-width spaces, line and paragraph
separators, lone surrogates, non-ASCII spaces) as the escape Python would write for it, so
the operator reads ``\\x1b[2J`` instead of losing the screen.

A backslash already in the text stays as it is: the result is for reading, not for parsing
back; ``--json`` output is the exact form.
"""

from __future__ import annotations

import json

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str, *, multiline: bool = False) -> str:
    """``text`` with each non-printable character escaped (``\\x1b``, ``\\u202e``, ``\\n``).

    ``multiline`` keeps line feeds and tabs as they are, for a block printed over several
    lines (a response body); a table cell or a ``name: value`` row escapes them too.
    """
    if text.isprintable():
        return text
    kept = "\n\t" if multiline else ""
    return "".join(ch if ch.isprintable() or ch in kept else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def log_field(value: object) -> str:
    """``value`` as the value of one ``key=value`` field of a log line (logfmt).

    A plain token (printable, no space, ``=``, ``"`` or backslash: UUIDs, store ids) is
    written as it is. Anything else is written as a JSON string, with every character
    that is not printable as a ``\\uXXXX`` escape: a newline cannot start a forged line,
    an escape sequence cannot act on a terminal, ``click_id=a status=999`` cannot pose as
    two fields, and ``json.loads`` of the field gives the value back exactly.
    """
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not any(ch in text for ch in _QUOTE_FOR):
        return text
    quoted = json.dumps(text, ensure_ascii=False)  # escapes C0 controls, quotes, backslashes
    if quoted.isprintable():
        return quoted
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in quoted)


_QUOTE_FOR = frozenset(' ="\\')


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP: a surrogate pair, as JSON writes it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
