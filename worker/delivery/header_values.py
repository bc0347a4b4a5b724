"""Whether a storefront key can travel as an HTTP header value.

requests refuses some (CR, LF, a leading space) with ``InvalidHeader``, whose message
quotes the whole value; http.client refuses text that is not latin-1 with a
``UnicodeEncodeError`` that holds it; others it sends, and a server then trims or rejects
them. So a key is checked once, at start (``worker.settings`` reads it from here), where
the refusal can name the store instead of the key.
"""

from __future__ import annotations

import unicodedata


def header_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid HTTP header value, or None. Never quotes it."""
    if not value:
        return "empty"
    if any(unicodedata.category(char) == "Cc" for char in value):
        # C0 controls (CR, LF, TAB, NUL, ...), DEL and the C1 controls.
        return "control character"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "not latin-1"
    if value[0].isspace() or value[-1].isspace():
        # A server strips it (RFC 9110 field values have no surrounding whitespace):
        # the key it compares would not be the key configured.
        return "leading or trailing space"
    return None
