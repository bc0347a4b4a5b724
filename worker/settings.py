"""The worker's typed settings, read from the environment in one place.

``Settings`` extends the producer's (``producers.settings``: the mechanism, REDIS_URL and
the producer's variables) with everything the worker, beat, Flower and the CLI read. Each
field names its variable; each number has a range, and the comment above a field says
why its bounds are where they are. An invalid value raises ``ConfigurationError``: one
line naming the variable and the rule, never the value.

Units are in the names. API keys are ``SecretStr`` so that a settings object printed in
a log, a traceback or a debugger shows ``**********`` instead of the key.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, ClassVar, NoReturn
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from producers.errors import ConfigurationError
from producers.settings import (
    DEFAULT_REDIS_URL,
    MAX_TTL_SECONDS,
    ProducerSettings,
    env_field,
)
from worker.deadletter.reasons import KNOWN_REASONS, is_reason
from worker.delivery.header_values import header_value_problem

__all__ = [
    "DEFAULT_REDIS_URL",
    "DEFAULT_SCALEV_API_BASE_URL",
    "ConfigurationError",
    "Settings",
    "get_settings",
    "refuse",
]

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

#: A key map longer than this is not one (its JSON is read whole, at every start).
_KEY_MAP_MAX_CHARS = 1_000_000

#: SNACKVIDEO_LOG_FORMAT's values.
LOG_FORMATS = ("text", "json")

#: A day and a week, for the bounds below.
DAY = 86_400
WEEK = 7 * DAY


class Settings(ProducerSettings):
    # kombu's broker transport takes redis://, rediss:// and its sentinel:// list
    # (worker.celery_ext.transport), not unix://.
    REDIS_SCHEMES: ClassVar[tuple[str, ...]] = ("redis", "rediss", "sentinel")
    # kombu's URL parser passes the query as keywords beside the ones it reads from the
    # URL itself: ?password=... made every process die in a TypeError traceback.
    REDIS_QUERY_REFUSED: ClassVar[frozenset[str]] = frozenset(
        {"transport", "hostname", "port", "userid", "password", "virtual_host"}
    )

    # Declared before the base URL, whose validator reads it. http:// to a host other
    # than this machine sends the storefront key in clear: refused unless this is on.
    allow_insecure_http: bool = env_field(False, "SNACKVIDEO_ALLOW_INSECURE_HTTP")
    scalev_api_base_url: str = env_field(DEFAULT_SCALEV_API_BASE_URL, "SCALEV_API_BASE_URL")
    # NoDecode: the JSON is read by _key_map below, which can name the store at fault
    # without quoting a key (pydantic-settings' own decoding would chain the text).
    storefront_api_keys: Annotated[dict[str, SecretStr], NoDecode] = env_field(
        {}, "SCALEV_STOREFRONT_API_KEYS"
    )
    storefront_api_key: SecretStr | None = env_field(None, "SCALEV_STOREFRONT_API_KEY")

    # At least one attempt, or nothing is ever sent. At most 1000: a job that failed a
    # thousand times will not heal by itself; the dead-letter queue is where it is seen.
    max_attempts: int = env_field(10, "SNACKVIDEO_MAX_ATTEMPTS", ge=1, le=1000)
    # Backoff waits. At least 10 ms: shorter is a busy loop against a failing Scalev (and
    # below the due-job mover's poll). At most a day: a longer wait outlives most jobs'
    # max age, so the job would expire instead of being retried.
    retry_base_seconds: float = env_field(2.0, "SNACKVIDEO_RETRY_BASE_SECONDS", ge=0.01, le=DAY)
    retry_max_seconds: float = env_field(600.0, "SNACKVIDEO_RETRY_MAX_SECONDS", ge=0.01, le=DAY)
    # At least a second: less expires every job before it is sent. At most a year: the
    # delivered-marker lives max age + 1 day (delivered_marker_ttl_seconds), a key per
    # delivered job, as a TTL Redis must accept (1e16 failed the SET EX after a 2xx).
    max_age_seconds: float = env_field(
        259_200.0, "SNACKVIDEO_MAX_AGE_SECONDS", ge=1, le=MAX_TTL_SECONDS
    )
    # The throttle spaces requests 1/rate apart on Redis's microsecond clock: above a
    # million per second the spacing is below its resolution. Below one request in 1000 s
    # every job waits longer than a worker sleeps and is parked before its first try.
    default_rate_per_second: float = env_field(
        10.0, "SNACKVIDEO_DEFAULT_RATE", ge=0.001, le=1_000_000
    )
    # The adaptive rate, for a scope whose answers carry no X-Ratelimit-* header
    # (docs/throttle.md): it starts at the default rate and never rises above the max;
    # near the rate of its last 429 it rises by `step` per second; a 429 or Retry-After
    # multiplies it by `factor`. A factor of 1 would never back off, one near 0 drops
    # to a crawl on the first 429.
    adaptive_max_rate: float = env_field(
        1000.0, "SNACKVIDEO_ADAPTIVE_RATE_MAX", ge=0.001, le=1_000_000
    )
    adaptive_step: float = env_field(2.0, "SNACKVIDEO_ADAPTIVE_RATE_STEP", ge=0.01, le=10_000)
    adaptive_factor: float = env_field(0.5, "SNACKVIDEO_ADAPTIVE_RATE_FACTOR", ge=0.05, le=0.95)
    # Beat's redrive schedule. At least a second: a run reads up to a batch of entries,
    # and runs closer than that pile up. At most a week: slower, and a redriveable dead
    # letter waits past the default max age, so its replay only expires it.
    redrive_interval_seconds: float = env_field(
        900.0, "SNACKVIDEO_REDRIVE_INTERVAL_SECONDS", ge=1, le=WEEK
    )
    # A TCP port; 0 turns the metrics endpoint off.
    metrics_port: int = env_field(9808, "SNACKVIDEO_METRICS_PORT", ge=0, le=65535)
    # Loopback by default: /metrics shows queue depths, dead letters and rate-limit state to
    # whoever reaches it. A Prometheus on another host or container network needs 0.0.0.0.
    metrics_address: str = env_field("127.0.0.1", "SNACKVIDEO_METRICS_ADDRESS")

    # One request is cut at connect + read (request_deadline_seconds), and a run sleeps
    # for throttle slots at most max_sleep in all. Celery's soft time limit sits above the
    # longest legitimate run, the hard limit above that, and the visibility timeout above
    # the hard limit (min_visibility_timeout_seconds), or Redis hands a running job to a
    # second worker. Unset time limits are derived from the timeouts.
    # Timeouts: at least 10 ms (below that even a loopback connect fails on a busy host);
    # at most 10 minutes, a request that holds a worker that long has failed.
    http_connect_timeout_seconds: float = env_field(
        3.05, "SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS", ge=0.01, le=600
    )
    http_read_timeout_seconds: float = env_field(
        10.0, "SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS", ge=0.01, le=600
    )
    # Celery's timers: at least 0.1 s (a run must be able to start); at most a day, the
    # visibility timeout's bound, which must stay above them.
    task_soft_time_limit_seconds: float | None = env_field(
        None, "SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS", ge=0.1, le=DAY
    )
    task_time_limit_seconds: float | None = env_field(
        None, "SNACKVIDEO_TASK_TIME_LIMIT_SECONDS", ge=0.1, le=DAY
    )
    # A sleeping worker process holds its slot: beyond 5 minutes parking the job in Redis
    # is always the better deal. 0: never sleep, always park.
    max_sleep_seconds: float = env_field(5.0, "SNACKVIDEO_MAX_SLEEP_SECONDS", ge=0, le=300)
    # kombu's backstop for a lost worker's jobs. At least a second; at most a day: a job
    # held by a dead worker (and no live heartbeat sweep) waits that long to come back.
    visibility_timeout_seconds: float = env_field(
        120.0, "SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS", ge=1, le=DAY
    )
    unacked_restore_interval_seconds: float = env_field(
        10.0, "SNACKVIDEO_UNACKED_RESTORE_INTERVAL_SECONDS", ge=0.1, le=DAY
    )
    # The due-job mover's poll (inf used to stop its thread for good). At least 10 ms:
    # shorter is a busy loop on Redis. At most a minute: a due retry waits up to one poll.
    scheduler_poll_seconds: float = env_field(
        0.25, "SNACKVIDEO_SCHEDULER_POLL_SECONDS", ge=0.01, le=60
    )

    # An error the dispatcher does not classify (a bug, a deterministic Redis error) is
    # retried this many times with backoff, then dead-lettered as internal_error. At
    # most 100: a bug does not heal by being run again.
    max_internal_errors: int = env_field(3, "SNACKVIDEO_MAX_INTERNAL_ERRORS", ge=1, le=100)
    # A message kombu restored this many times without any run reaching an outcome (its
    # run kills the pool child, or hits the hard time limit, every time) is
    # dead-lettered as internal_error on its next redelivery. At most 100, as above.
    max_redeliveries: int = env_field(5, "SNACKVIDEO_MAX_REDELIVERIES", ge=1, le=100)
    # Each worker consumer refreshes its heartbeat this often and, as often, looks for
    # consumers whose heartbeat is older than dead_after: the jobs those took go back to
    # the queue at once (worker.celery_ext.ownership), long before the visibility timeout.
    # At least 0.1 s (each beat is a Redis call); at most a minute, or a dead worker's jobs
    # wait minutes; dead_after at most 10 minutes, and 3 beats at least (checked below).
    consumer_heartbeat_seconds: float = env_field(
        2.0, "SNACKVIDEO_CONSUMER_HEARTBEAT_SECONDS", ge=0.1, le=60
    )
    consumer_dead_after_seconds: float = env_field(
        10.0, "SNACKVIDEO_CONSUMER_DEAD_AFTER_SECONDS", ge=0.3, le=600
    )

    # Dead-letter retention. An entry is a few KB of Redis memory: ten million of them is
    # tens of GB. At least an hour of age: an entry must outlive a few redrive runs and be
    # there when an operator looks; at most MAX_TTL_SECONDS.
    dlq_max_entries: int = env_field(100_000, "SNACKVIDEO_DLQ_MAX_ENTRIES", ge=1, le=10_000_000)
    dlq_max_age_seconds: float = env_field(
        30 * DAY, "SNACKVIDEO_DLQ_MAX_AGE_SECONDS", ge=3600, le=MAX_TTL_SECONDS
    )
    # Response body kept per entry; a megabyte is past any useful error text.
    dlq_error_max_chars: int = env_field(
        2_000, "SNACKVIDEO_DLQ_ERROR_MAX_CHARS", ge=0, le=1_000_000
    )
    # 0 turns replays off. At most 100: an entry replayed that often fails for a reason
    # a replay does not change.
    redrive_max_replays: int = env_field(3, "SNACKVIDEO_REDRIVE_MAX_REPLAYS", ge=0, le=100)
    # Entries one redrive run takes in one Lua call, during which Redis serves nobody else.
    redrive_batch_size: int = env_field(500, "SNACKVIDEO_REDRIVE_BATCH_SIZE", ge=1, le=10_000)
    redrive_reasons: Annotated[tuple[str, ...], NoDecode] = env_field(
        (
            "http_404",
            "http_401",
            "http_403",
            "no_api_key",
            "retries_exhausted",
        ),
        "SNACKVIDEO_REDRIVE_REASONS",
    )
    # "base_url" shares one budget per API base URL (Scalev limits per client IP);
    # "store" gives every store its own budget.
    throttle_scope: str = env_field("base_url", "SNACKVIDEO_THROTTLE_SCOPE")
    # "off" turns the shared throttle into a naive client that only waits out each 429's
    # Retry-After (the benchmark's baseline); never meant for production.
    throttle_enabled: bool = env_field(True, "SNACKVIDEO_THROTTLE")
    # Celery's own "Task ... received" / "Task ... succeeded in" INFO lines, one pair per
    # delivery on top of our outcome= line; off drops just those two
    # (worker.celery_ext.quiet_task_logs).
    celery_task_log: bool = env_field(False, "SNACKVIDEO_CELERY_TASK_LOG")
    # "json": one JSON object per line (worker.celery_ext.json_logs), for Loki and ELK;
    # "text": Celery's own format.
    log_format: str = env_field("text", "SNACKVIDEO_LOG_FORMAT")
    # Celery task events feed Flower. They cost ~1.6 PUBLISH round trips and roughly a
    # fifth of the worker's CPU per delivery (docs/benchmarks.md: 1.26x the events/s
    # without them). Off by default: with no Flower listening, Redis pub/sub drops them
    # anyway, and a running Flower switches them on in every worker by itself (its
    # --enable_events broadcast, every 5 s). "on" only adds the first seconds after a
    # worker starts to what Flower shows.
    task_events: bool = env_field(False, "SNACKVIDEO_TASK_EVENTS")

    @field_validator("scalev_api_base_url")
    @classmethod
    def _safe_base_url(cls, value: str, info: ValidationInfo) -> str:
        rule = "must be an http:// or https:// URL with a host"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError for a port that is not 0-65535)
        except ValueError:
            raise ValueError(f"{rule} and a valid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(rule)
        if "@" in parts.netloc:
            # Scalev takes the storefront key in a header, never in the URL. requests
            # would send these credentials as an Authorization header with every event,
            # and the base URL is also the throttle scope: a Redis key name, a metric
            # label, a status row, a log line. Refused rather than carried along.
            raise ValueError(
                "must not hold credentials (user:password@): Scalev takes the storefront "
                "key in a header, never in the URL"
            )
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            raise ValueError(
                "must have no query or fragment (?...#...): the events path is appended to it"
            )
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

    @field_validator("storefront_api_keys", mode="before")
    @classmethod
    def _key_map(cls, value: object) -> object:
        if isinstance(value, str):
            value = _parse_key_map(value)
        if not isinstance(value, Mapping):
            raise ValueError(_KEY_MAP_SHAPE)
        for store_id, key in value.items():
            if not isinstance(store_id, str) or not store_id:
                raise ValueError(f"a store id must be a non-empty string; {_KEY_MAP_SHAPE}")
            if not isinstance(key, str | SecretStr):
                raise ValueError(f"the key of store {_quoted(store_id)} must be a string")
        return value

    @field_validator("storefront_api_keys")
    @classmethod
    def _keys_are_header_values(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for store_id, key in value.items():
            problem = header_value_problem(key.get_secret_value())
            if problem == "empty":
                raise ValueError(f"the key of store {_quoted(store_id)} is empty")
            if problem is not None:
                raise ValueError(
                    f"the key of store {_quoted(store_id)} is not a valid HTTP header value "
                    f"({problem})"
                )
        return value

    @field_validator("storefront_api_key")
    @classmethod
    def _key_is_a_header_value(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = header_value_problem(value.get_secret_value())
            if problem == "empty":
                raise ValueError("is empty (unset it instead)")
            if problem is not None:
                raise ValueError(f"not a valid HTTP header value ({problem})")
        return value

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

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, value: str) -> str:
        if value not in LOG_FORMATS:
            raise ValueError("must be 'text' or 'json'")
        return value

    @field_validator("redrive_reasons", mode="before")
    @classmethod
    def _split_reasons(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("redrive_reasons")
    @classmethod
    def _known_reasons(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A misspelt reason would match no entry, and nothing would say so.
        if not all(is_reason(reason) for reason in value):
            raise ValueError(
                "must be dead-letter reasons, comma-separated: http_<status> or "
                + ", ".join(KNOWN_REASONS)
            )
        return value

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

    @model_validator(mode="after")
    def _time_limits_in_order(self) -> Settings:
        if self.soft_time_limit_seconds >= self.hard_time_limit_seconds:
            raise ValueError(
                "SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS "
                f"({self.soft_time_limit_seconds:g}s; by default derived from "
                "SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS, SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS "
                "and SNACKVIDEO_MAX_SLEEP_SECONDS) must be below "
                f"SNACKVIDEO_TASK_TIME_LIMIT_SECONDS ({self.hard_time_limit_seconds:g}s), "
                "or a run is killed before it can park its job"
            )
        if self.visibility_timeout_seconds <= self.min_visibility_timeout_seconds:
            raise ValueError(
                "SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS must exceed the hard time limit of a "
                f"task run ({self.min_visibility_timeout_seconds:g}s: "
                "SNACKVIDEO_TASK_TIME_LIMIT_SECONDS, by default "
                f"{HARD_TIME_LIMIT_GRACE_SECONDS:g}s above "
                "SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS, "
                "itself by default derived from SNACKVIDEO_HTTP_CONNECT_TIMEOUT_SECONDS, "
                "SNACKVIDEO_HTTP_READ_TIMEOUT_SECONDS and SNACKVIDEO_MAX_SLEEP_SECONDS), or a "
                "slow job runs twice"
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


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_KEY_MAP_SHAPE = 'must be a JSON object {"<store_id>": "<key>", ...}'


def _parse_key_map(raw: str) -> object:
    if len(raw) > _KEY_MAP_MAX_CHARS:
        raise ValueError(f"{_KEY_MAP_SHAPE} of at most {_KEY_MAP_MAX_CHARS} characters")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        # The position only: exc's own text is safe, but its doc attribute is the keys.
        raise ValueError(
            f"{_KEY_MAP_SHAPE}; not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ValueError(f"{_KEY_MAP_SHAPE}; not valid JSON (nested too deep)") from None


def _quoted(store_id: str) -> str:
    """A store id as a message shows it: quoted, escaped, on one line."""
    return json.dumps(store_id)


def refuse(exc: ConfigurationError) -> NoReturn:
    """Stop the process on an invalid setting: its one line on stderr, exit status 2."""
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()
    raise SystemExit(2)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings.from_env()
