"""URLs as they may be shown: in a log line, a status row, a metric label, a message.

``REDIS_URL`` may carry a password (``redis://user:pass@host``, or redis-py's
``?password=`` query argument). Everything this project prints or stores that was built
from a URL goes through ``without_password``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What a password is shown as.
MASK = "***"
#: Query arguments redis-py reads as credentials.
SECRET_QUERY_ARGUMENTS = frozenset({"password"})


def without_password(url: str, mask: str = MASK) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``mask``.

    Never raises: a URL too broken to take apart is shown as its scheme alone, since any
    part of it could be the password. A Sentinel list (``sentinel://…;sentinel://…``) is
    masked URL by URL.
    """
    if ";" in url and url.startswith("sentinel://"):
        return ";".join(without_password(part, mask) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            # No colon: the one part may be a token used as the user name; hide it all.
            netloc = f"{user}:{mask}@{hostport}" if colon else f"{mask}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(name.lower() in SECRET_QUERY_ARGUMENTS for name, _ in pairs):
                query = urlencode(
                    [
                        (name, mask if name.lower() in SECRET_QUERY_ARGUMENTS else value)
                        for name, value in pairs
                    ],
                    safe="*<>",
                )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        scheme = url.partition("://")[0] if "://" in url else ""
        return f"{scheme}://(unreadable URL)" if scheme.isalnum() else "(unreadable URL)"
