"""Typed settings, read from the environment in one place.

Units are in the names. API keys are ``SecretStr`` so that a settings object printed in
a log, a traceback or a debugger shows ``**********`` instead of the key.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SCALEV_API_BASE_URL = "https://api.scalev.com"

#: Requests one task run may send: the first, and one more after each 429 answered in the
#: run, up to this many in all (then the job is parked). Part of the visibility bound.
MAX_REQUESTS_PER_RUN = 3
#: A tombstone of a taken dead-letter entry lives at least this long (dlq_taken_ttl_seconds).
MIN_DLQ_TAKEN_TTL_SECONDS = 600.0
#: How late after its deadline a cut request has ended: the watchdog's wake-up and the
#: socket teardown (measured in milliseconds; a second is the bound the tests hold it to).
REQUEST_DEADLINE_SLACK_SECONDS = 1.0
#: The Redis calls of one run, should Redis be slow: two of the worker's 5 s socket
#: timeouts (worker.connections). A run slower than that is cut by the soft limit.
REDIS_CALLS_ALLOWANCE_SECONDS = 10.0
#: The default soft time limit is this far above the longest legitimate run.
SOFT_TIME_LIMIT_MARGIN_SECONDS = 5.0
#: The default hard time limit is this far above the soft one: time for the run to park
#: its job after the soft limit (one Redis write, at most a socket timeout, and margin).
HARD_TIME_LIMIT_GRACE_SECONDS = 15.0
#: Base URL hosts that may be plain http: the key never leaves this machine.
LOOPBACK_NAMES = frozenset({"localhost"})

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
    "SNACKVIDEO_MAX_PAYLOAD_BYTES": "max_payload_bytes",
    "SNACKVIDEO_REDRIVE_MAX_REPLAYS": "redrive_max_replays",
    "SNACKVIDEO_REDRIVE_BATCH_SIZE": "redrive_batch_size",
    "SNACKVIDEO_REDRIVE_REASONS": "redrive_reasons",
    "SNACKVIDEO_THROTTLE_SCOPE": "throttle_scope",
    "SNACKVIDEO_THROTTLE": "throttle_enabled",
    "SNACKVIDEO_CELERY_TASK_LOG": "celery_task_log",
    "SNACKVIDEO_TASK_EVENTS": "task_events",
    "SNACKVIDEO_ALLOW_INSECURE_HTTP": "allow_insecure_http",
    "SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS": "task_soft_time_limit_seconds",
    "SNACKVIDEO_TASK_TIME_LIMIT_SECONDS": "task_time_limit_seconds",
    "SNACKVIDEO_MAX_INTERNAL_ERRORS": "max_internal_errors",
    "SNACKVIDEO_MAX_REDELIVERIES": "max_redeliveries",
    "SNACKVIDEO_CONSUMER_HEARTBEAT_SECONDS": "consumer_heartbeat_seconds",
    "SNACKVIDEO_CONSUMER_DEAD_AFTER_SECONDS": "consumer_dead_after_seconds",
}


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str = DEFAULT_REDIS_URL
    # Declared before the base URL, whose validator reads it. http:// to a host other
    # than this machine sends the storefront key in clear: refused unless this is on.
    allow_insecure_http: bool = False
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

    # One request is cut at connect + read (request_deadline_seconds), and a run sleeps
    # for throttle slots at most max_sleep in all. Celery's soft time limit sits above the
    # longest legitimate run, the hard limit above that, and the visibility timeout above
    # the hard limit (min_visibility_timeout_seconds), or Redis hands a running job to a
    # second worker. Unset time limits are derived from the timeouts.
    http_connect_timeout_seconds: float = Field(3.05, gt=0)
    http_read_timeout_seconds: float = Field(10.0, gt=0)
    task_soft_time_limit_seconds: float | None = Field(None, gt=0)
    task_time_limit_seconds: float | None = Field(None, gt=0)
    max_sleep_seconds: float = Field(5.0, ge=0)
    visibility_timeout_seconds: float = Field(120.0, gt=0)
    unacked_restore_interval_seconds: float = Field(10.0, gt=0)
    scheduler_poll_seconds: float = Field(0.25, gt=0)

    # An error the dispatcher does not classify (a bug, a deterministic Redis error) is
    # retried this many times with backoff, then dead-lettered as internal_error.
    max_internal_errors: int = Field(3, ge=1)
    # A message kombu restored this many times without any run reaching an outcome (its
    # run kills the pool child, or hits the hard time limit, every time) is
    # dead-lettered as internal_error on its next redelivery.
    max_redeliveries: int = Field(5, ge=1)
    # Each worker consumer refreshes its heartbeat this often and, as often, looks for
    # consumers whose heartbeat is older than dead_after: the jobs those took go back to
    # the queue at once (worker.ownership), long before the visibility timeout.
    consumer_heartbeat_seconds: float = Field(2.0, gt=0)
    consumer_dead_after_seconds: float = Field(10.0, gt=0)

    dlq_max_entries: int = Field(100_000, ge=1)
    dlq_max_age_seconds: float = Field(30 * 86_400.0, gt=0)
    dlq_error_max_chars: int = Field(2_000, ge=0)
    max_payload_bytes: int = Field(524_288, ge=1)  # producers.models.MAX_PAYLOAD_BYTES
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
    def _safe_base_url(cls, value: str, info: ValidationInfo) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if (
            parts.scheme == "http"
            and not _is_loopback(parts.hostname)
            and not info.data.get("allow_insecure_http", False)
        ):
            raise ValueError(
                "http:// would send the storefront API key in clear to "
                f"{parts.hostname}; use https://, or set SNACKVIDEO_ALLOW_INSECURE_HTTP=1 "
                "for a trusted private network (loopback hosts need neither)"
            )
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

    @model_validator(mode="after")
    def _finite_numbers(self) -> Settings:
        # pydantic accepts "inf" and "nan" for a float; every duration and rate here must
        # be a number (an infinite max age made each delivery raise OverflowError).
        fields = {field: variable for variable, field in _ENV.items()}
        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{fields.get(name, name)} must be a finite number")
        return self

    @model_validator(mode="after")
    def _heartbeats_before_death(self) -> Settings:
        # A live consumer must be able to miss a heartbeat or two (a busy host, a slow
        # Redis call) without being declared dead and having its jobs handed out again.
        if self.consumer_dead_after_seconds < 3 * self.consumer_heartbeat_seconds:
            raise ValueError(
                "SNACKVIDEO_CONSUMER_DEAD_AFTER_SECONDS must be at least 3 times "
                "SNACKVIDEO_CONSUMER_HEARTBEAT_SECONDS"
            )
        return self

    @property
    def request_deadline_seconds(self) -> float:
        """When the watchdog cuts one request, name resolution to the last body byte."""
        return self.http_connect_timeout_seconds + self.http_read_timeout_seconds

    @property
    def longest_run_seconds(self) -> float:
        """The longest one task run legitimately takes: every request it may send cut at
        its deadline, its throttle waits (capped at max_sleep for the whole run), and its
        Redis calls at their socket timeouts."""
        per_request = self.request_deadline_seconds + REQUEST_DEADLINE_SLACK_SECONDS
        run = MAX_REQUESTS_PER_RUN * per_request + self.max_sleep_seconds
        return round(run + REDIS_CALLS_ALLOWANCE_SECONDS, 3)

    @property
    def soft_time_limit_seconds(self) -> float:
        """Celery's soft limit of one delivery run: the run is stopped and parks its job."""
        if self.task_soft_time_limit_seconds is not None:
            return self.task_soft_time_limit_seconds
        return round(self.longest_run_seconds + SOFT_TIME_LIMIT_MARGIN_SECONDS, 3)

    @property
    def hard_time_limit_seconds(self) -> float:
        """Celery's hard limit: the pool child is killed and the message requeued."""
        if self.task_time_limit_seconds is not None:
            return self.task_time_limit_seconds
        return round(self.soft_time_limit_seconds + HARD_TIME_LIMIT_GRACE_SECONDS, 3)

    @property
    def min_visibility_timeout_seconds(self) -> float:
        """The longest one task run can hold its message: the hard time limit. (The threads
        pool enforces no time limit; there a run is bounded by ``longest_run_seconds``,
        which the derived limits stay above.)"""
        return self.hard_time_limit_seconds

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
                if err["loc"]
                # A check across fields names its variables itself.
                else str(err["msg"]).removeprefix("Value error, ")
                for err in exc.errors(include_input=False)
            )
            raise ValueError(f"invalid configuration: {problems}") from None


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
