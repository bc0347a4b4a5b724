"""Bearer tokens: who is calling (401 when nobody we know), and for which stores (403).

Every configured secret is compared, in constant time, whatever matched before: neither
the time nor the order of comparison says which secret, or how much of one, was right.
Secrets are compared as SHA-256 digests so that ``hmac.compare_digest`` sees equal
lengths and the length of a secret does not leak either.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from ingest.errors import ApiError, unauthorized
from ingest.settings import IngestToken


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class Authenticator:
    """Finds the token an ``Authorization`` header presents."""

    def __init__(self, tokens: Iterable[IngestToken]) -> None:
        self._tokens = [
            (_digest(token.secret.get_secret_value().encode("ascii")), token) for token in tokens
        ]

    def authenticate(self, authorization: str | None) -> IngestToken:
        """The token of ``Authorization: Bearer <secret>``; 401 when there is none."""
        if not authorization:
            raise unauthorized("missing Authorization: Bearer <token>")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise unauthorized("the Authorization header must be: Bearer <token>")
        # Headers arrive as latin-1 text; a secret is ASCII, so anything else fails to match.
        presented = _digest(credentials.strip().encode("latin-1"))
        found: IngestToken | None = None
        for digest, token in self._tokens:
            if hmac.compare_digest(presented, digest):
                found = token
        if found is None:
            raise unauthorized("unknown token")
        return found


def authorize(token: IngestToken, store_id: str) -> None:
    """403 when ``token`` is limited to other stores."""
    if not token.may_use(store_id):
        raise ApiError(403, "forbidden", f"token {token.name!r} may not enqueue for this store")
