"""The ingest service's settings: the producer's, plus where it listens and whom it serves.

``SNACKVIDEO_INGEST_TOKENS`` is a JSON object: a token's name to its secret, or to
``{"secret": ..., "stores": [...]}`` to limit it to those stores. A refusal names the
variable and the token's name, never a secret. These tokens are not storefront keys: the
ingest service never reads ``SCALEV_*`` variables (it extends ``ProducerSettings``, not the
worker's settings).
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator
from pydantic_settings import NoDecode

from producers.enqueue import MAX_BATCH_PAYLOADS
from producers.models import validate_store_id
from producers.settings import ProducerSettings, env_field

DEFAULT_INGEST_PORT = 8088
DEFAULT_INGEST_ADDRESS = "127.0.0.1"


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def workers_for(cpus: int) -> int:
    """One uvicorn worker per two CPUs, at least one."""
    return max(1, cpus // 2)


#: ``workers_for`` the usable CPUs. The service shares its host with Redis
#: (and, under ``make run`` or compose, the Celery workers): on 2 cores a second worker
#: competed with them for CPU, and uvicorn's workers share one listening socket, so a burst
#: of new keep-alive connections all went to whichever woke first. Measured on 2 cores
#: (docs/benchmarks.md, issue 15): p99 at half the best rate met 10 ms in 6 of 8 runs with
#: one worker, 2 of 8 with two, whose best events/s was only 1.2x one worker's.
DEFAULT_INGEST_WORKERS = workers_for(usable_cpus())
#: Largest batch request body. 1,000 real events of ~1 KB are 1 MB; the default leaves
#: room for larger ones and still bounds what one request may make a process hold.
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
#: A secret is compared as sent in a header: visible ASCII, long enough not to be guessed.
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 1_000
#: A token's name is printed in log lines: short, visible, no spaces.
MAX_TOKEN_NAME_CHARS = 100


class IngestToken(BaseModel):
    """One bearer token: its name (safe to log), its secret (never shown), its stores."""

    model_config = ConfigDict(frozen=True)

    name: str
    secret: SecretStr
    #: The stores it may enqueue for; None: every store.
    stores: frozenset[str] | None = None

    def may_use(self, store_id: str) -> bool:
        return self.stores is None or store_id in self.stores


def _visible_ascii(text: str) -> bool:
    return all("!" <= ch <= "~" for ch in text)


def _token(name: str, value: object, where: str) -> IngestToken:
    secret: object
    stores: object = None
    if isinstance(value, str):
        secret = value
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {"secret", "stores"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; it takes secret and stores")
        secret, stores = value.get("secret"), value.get("stores")
    else:
        raise ValueError(f'{where}: must be a secret string or {{"secret": ..., "stores": [...]}}')
    if not isinstance(secret, str):
        raise ValueError(f"{where}: its secret must be a string")
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS or not _visible_ascii(secret):
        raise ValueError(
            f"{where}: its secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} visible "
            "ASCII characters (no spaces)"
        )
    if stores is None:
        return IngestToken(name=name, secret=SecretStr(secret))
    if not isinstance(stores, list) or not stores:
        raise ValueError(f"{where}: stores must be a non-empty list of store ids")
    for store in stores:
        try:
            validate_store_id(store)
        except ValueError:
            raise ValueError(f"{where}: stores must hold valid store ids") from None
    return IngestToken(name=name, secret=SecretStr(secret), stores=frozenset(stores))


def parse_tokens(raw: object) -> dict[str, IngestToken]:
    """The tokens of ``SNACKVIDEO_INGEST_TOKENS`` (its JSON text or the decoded object)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError("must be a JSON object (name to secret)") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object (name to secret)")
    tokens: dict[str, IngestToken] = {}
    owners: dict[str, str] = {}
    for number, (name, value) in enumerate(raw.items(), start=1):
        # Named by position, not by name: a name and a secret written the wrong way
        # round would put the secret into the message.
        where = f"token {number} (in order)"
        if isinstance(value, IngestToken):
            tokens[name] = value
            continue
        if not name or len(name) > MAX_TOKEN_NAME_CHARS or not _visible_ascii(name):
            raise ValueError(
                f"{where}: its name must be 1 to {MAX_TOKEN_NAME_CHARS} visible ASCII characters"
            )
        token = _token(name, value, where)
        secret = token.secret.get_secret_value()
        if secret in owners:
            # Which name a request came from would depend on the order of comparison.
            raise ValueError(f"{owners[secret]} and {where} share one secret")
        owners[secret] = where
        tokens[name] = token
    return tokens


class IngestSettings(ProducerSettings):
    """What ``snackvideo ingest`` reads."""

    ingest_port: int = env_field(DEFAULT_INGEST_PORT, "SNACKVIDEO_INGEST_PORT", ge=1, le=65535)
    ingest_address: str = env_field(DEFAULT_INGEST_ADDRESS, "SNACKVIDEO_INGEST_ADDRESS")
    # uvicorn worker processes. Each holds its own Redis connections and event loop.
    ingest_workers: int = env_field(
        DEFAULT_INGEST_WORKERS, "SNACKVIDEO_INGEST_WORKERS", ge=1, le=64
    )
    ingest_tokens: Annotated[dict[str, IngestToken], NoDecode] = env_field(
        {}, "SNACKVIDEO_INGEST_TOKENS"
    )
    # At most what one enqueue_many call takes: a batch request is one atomic round trip.
    ingest_max_batch: int = env_field(
        MAX_BATCH_PAYLOADS, "SNACKVIDEO_INGEST_MAX_BATCH", ge=1, le=MAX_BATCH_PAYLOADS
    )
    ingest_max_batch_bytes: int = env_field(
        DEFAULT_MAX_BATCH_BYTES, "SNACKVIDEO_INGEST_MAX_BATCH_BYTES", ge=1024, le=256 * 1024 * 1024
    )

    @field_validator("ingest_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> dict[str, IngestToken]:
        return parse_tokens(value)

    @field_validator("ingest_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not value or not _visible_ascii(value) or "/" in value:
            raise ValueError("must be an IP address or a host name (127.0.0.1, 0.0.0.0, ::)")
        return value
