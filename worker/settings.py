"""Typed settings, read from the environment in one place.

Units are in the names. API keys are ``SecretStr`` so that a settings object printed in
a log, a traceback or a debugger shows ``**********`` instead of the key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SCALEV_API_BASE_URL = "https://api.scalev.com"

#: Requests one task run may send: the first, and one more after each 429 answered in the
#: run, up to this many in all (then the job is parked). Part of the visibility bound.
MAX_REQUESTS_PER_RUN = 3
#: A tombstone of a taken dead-letter entry lives at least this long (dlq_taken_ttl_seconds).
MIN_DLQ_TAKEN_TTL_SECONDS = 600.0

#: RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)

# environment variable -> field name
_ENV = {
    "REDIS_URL": "redis_url",
    "SCALEV_API_BASE_URL": "scalev_api_base_url",
    "SCALEV_STOREFRONT_API_KEYS": "storefront_api_keys",
    "SCALEV_STOREFRONT_API_KEY": "storefront_api_key",
    "SNACKVIDEO_MAX_ATTEMPTS": "max_attempts",
    "SNACKVIDEO_RETRY_BASE_SECONDS": "retry_base_seconds",
    "SNACKVIDEO_RETRY_MAX_SECONDS": "retry_max_seconds",
    "SNACKVIDEO_MAX_AGE_SECONDS": "max_age_seconds",
    "SNACKVIDEO_DEFAULT_RATE": "default_rate_per_second",
    "SNACKVIDEO_REDRIVE_INTERVAL_SECONDS": "redrive_interval_seconds",
    "SNACKVIDEO_METRICS_PORT": "metrics_port",
    "SNACKVIDEO_METRICS_ADDRESS": "metrics_address",
    "SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS": "http_connect_timeout_seconds",
    "SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS": "http_read_timeout_seconds",
    "SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS": "visibility_timeout_seconds",
    "SNACKVIDEO_UNACKED_RESTORE_INTERVAL_SECONDS": "unacked_restore_interval_seconds",
    "SNACKVIDEO_MAX_SLEEP_SECONDS": "max_sleep_seconds",
    "SNACKVIDEO_SCHEDULER_POLL_SECONDS": "scheduler_poll_seconds",
    "SNACKVIDEO_DLQ_MAX_ENTRIES": "dlq_max_entries",
    "SNACKVIDEO_DLQ_MAX_AGE_SECONDS": "dlq_max_age_seconds",
    "SNACKVIDEO_DLQ_ERROR_MAX_CHARS": "dlq_error_max_chars",
    "SNACKVIDEO_REDRIVE_MAX_REPLAYS": "redrive_max_replays",
    "SNACKVIDEO_REDRIVE_BATCH_SIZE": "redrive_batch_size",
    "SNACKVIDEO_REDRIVE_REASONS": "redrive_reasons",
    "SNACKVIDEO_THROTTLE_SCOPE": "throttle_scope",
    "SNACKVIDEO_THROTTLE": "throttle_enabled",
    "SNACKVIDEO_CELERY_TASK_LOG": "celery_task_log",
    "SNACKVIDEO_TASK_EVENTS": "task_events",
}


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str = DEFAULT_REDIS_URL
    scalev_api_base_url: str = DEFAULT_SCALEV_API_BASE_URL
    storefront_api_keys: dict[str, SecretStr] = Field(default_factory=dict)
    storefront_api_key: SecretStr | None = None

    max_attempts: int = Field(10, ge=1)
    retry_base_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    max_age_seconds: float = Field(259_200.0, gt=0)
    default_rate_per_second: float = Field(10.0, gt=0)
    redrive_interval_seconds: float = Field(900.0, gt=0)
    metrics_port: int = Field(9808, ge=0, le=65535)
    # Loopback by default: /metrics shows queue depths, dead letters and rate-limit state to
    # whoever reaches it. A Prometheus on another host or container network needs 0.0.0.0.
    metrics_address: str = "127.0.0.1"

    # One POST never takes longer than connect + read, and a run sleeps for throttle slots
    # at most max_sleep in all; the visibility timeout must exceed the longest run
    # (min_visibility_timeout_seconds), or Redis hands the job to a second worker.
    http_connect_timeout_seconds: float = Field(3.05, gt=0)
    http_read_timeout_seconds: float = Field(10.0, gt=0)
    max_sleep_seconds: float = Field(5.0, ge=0)
    visibility_timeout_seconds: float = Field(120.0, gt=0)
    unacked_restore_interval_seconds: float = Field(10.0, gt=0)
    scheduler_poll_seconds: float = Field(0.25, gt=0)

    dlq_max_entries: int = Field(100_000, ge=1)
    dlq_max_age_seconds: float = Field(30 * 86_400.0, gt=0)
    dlq_error_max_chars: int = Field(2_000, ge=0)
    redrive_max_replays: int = Field(3, ge=0)
    redrive_batch_size: int = Field(500, ge=1)
    redrive_reasons: tuple[str, ...] = (
        "http_404",
        "http_401",
        "http_403",
        "no_api_key",
        "retries_exhausted",
    )
    # "base_url" shares one budget per API base URL (Scalev limits per client IP);
    # "store" gives every store its own budget.
    throttle_scope: str = "base_url"
    # "off" turns the shared throttle into a naive client that only waits out each 429's
    # Retry-After (the benchmark's baseline); never meant for production.
    throttle_enabled: bool = True
    # Celery's own "Task ... received" / "Task ... succeeded in" INFO lines, one pair per
    # delivery on top of our outcome= line; off drops just those two (worker.celery_logs).
    celery_task_log: bool = False
    # Celery task events feed Flower. They cost ~1.6 PUBLISH round trips and roughly a
    # fifth of the worker's CPU per delivery (docs/benchmarks.md); a deployment that
    # watches the Prometheus metrics instead may turn them off. A running Flower turns
    # them back on by itself (its --enable_events, on by default).
    task_events: bool = True

    @field_validator("scalev_api_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("metrics_address")
    @classmethod
    def _ip_or_hostname(cls, value: str) -> str:
        value = value.strip()
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
        if not _HOSTNAME.match(value):
            raise ValueError("must be an IP address (127.0.0.1, 0.0.0.0, ::) or a hostname")
        return value

    @field_validator("throttle_scope")
    @classmethod
    def _known_scope(cls, value: str) -> str:
        if value not in ("base_url", "store"):
            raise ValueError("must be 'base_url' or 'store'")
        return value

    @field_validator("redrive_reasons", mode="before")
    @classmethod
    def _split_reasons(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def min_visibility_timeout_seconds(self) -> float:
        """The longest one task run holds its message: every request it may send at its
        full timeouts, plus its throttle waits (capped at max_sleep for the whole run)."""
        per_request = self.http_connect_timeout_seconds + self.http_read_timeout_seconds
        return MAX_REQUESTS_PER_RUN * per_request + self.max_sleep_seconds

    @property
    def delivered_marker_ttl_seconds(self) -> int:
        # As long as a redelivered copy could still be considered, then a day more.
        return int(self.max_age_seconds + 86_400)

    @property
    def dlq_taken_ttl_seconds(self) -> float:
        """How long the tombstone of a replayed or purged entry lives. A stale copy of the
        parked run's message (its worker died before the ack) was taken before the entry
        existed, so kombu restores it at most a visibility timeout plus one restore
        interval after any replay of it; one more visibility timeout (and 10 minutes at
        least) covers its wait in the queue."""
        bound = 2 * self.visibility_timeout_seconds + self.unacked_restore_interval_seconds
        return max(MIN_DLQ_TAKEN_TTL_SECONDS, bound)

    def api_key_for(self, store_id: str) -> str | None:
        key = self.storefront_api_keys.get(store_id) or self.storefront_api_key
        return key.get_secret_value() if key is not None else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for variable, field in _ENV.items():
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            if field == "storefront_api_keys":
                values[field] = _parse_key_map(raw)
            else:
                values[field] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            # Name the environment variable, and never echo an input (it may be a key).
            fields = {field: variable for variable, field in _ENV.items()}
            problems = "; ".join(
                f"{fields.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}"
                for err in exc.errors(include_input=False)
            )
            raise ValueError(f"invalid configuration: {problems}") from None


def _parse_key_map(raw: str) -> dict[str, str]:
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(
            "invalid configuration: SCALEV_STOREFRONT_API_KEYS must be a JSON object"
        ) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ValueError(
            'invalid configuration: SCALEV_STOREFRONT_API_KEYS must be {"<store_id>": "<key>"}'
        )
    return parsed


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings.from_env()
