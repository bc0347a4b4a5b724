"""Settings from the environment: the mechanism both sides share, and the producer's own.

Reading typed settings from environment variables is what pydantic-settings does; this
module adds what the project needs on top of it:

- every field reads one environment variable, named exactly (``validation_alias``), and
  an empty variable counts as unset;
- ``from_env(environ)`` reads a given mapping instead of ``os.environ`` (``make run``
  builds the environment of the processes it starts, tests build their own);
- an invalid setting raises ``ConfigurationError``: one line naming each offending
  variable (an explicit argument by its field name) and its rule, never the value, since
  it may be a storefront key or a URL with a password. pydantic's own error text, which
  can quote the input, never leaves this module.

``ProducerSettings`` holds only what ``producers`` reads, so a web app that imports
``producers`` never fails on a worker-only variable. The worker's ``Settings``
(``worker.settings``) extends it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Self, get_args
from urllib.parse import parse_qsl, urlsplit

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, SecretStr, ValidationError, field_serializer, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from producers.errors import ConfigurationError
from producers.models import MAX_PAYLOAD_BYTES as DEFAULT_MAX_PAYLOAD_BYTES
from producers.urls import without_password

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SENTINEL_MASTER = "mymaster"
DEFAULT_ENQUEUE_TIMEOUT_SECONDS = 5.0
DEFAULT_IDEMPOTENCY_TTL_SECONDS = 48 * 3600

#: The longest TTL a setting may ask Redis for. Redis itself accepts far more (EX up to
#: about 9e15 s), but each such key is memory held for every event: a year is the most
#: any window here needs, and the bound keeps every derived TTL an integer Redis takes.
MAX_TTL_SECONDS = 365 * 86_400

#: URL schemes of Redis Cluster (redis-py's and other clients' spellings).
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster", "cluster"})
#: Why a cluster is refused, and what to use instead: one line.
CLUSTER_REFUSAL = (
    "Redis Cluster is not supported (the enqueue and delivery Lua scripts touch several "
    "keys in one call, and kombu has no cluster transport); for failover use Redis "
    "Sentinel: REDIS_URL=sentinel://host1:26379;sentinel://host2:26379 with "
    "SNACKVIDEO_REDIS_SENTINEL_MASTER"
)

# Error types whose pydantic text is replaced by the field's range: the value was not a
# number, not finite, or out of bounds; the rule says all three at once.
_NUMBER_ERRORS = frozenset(
    {
        "int_parsing",
        "int_type",
        "int_from_float",
        "int_parsing_size",
        "float_parsing",
        "float_type",
        "finite_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    }
)
_BOOL_ERRORS = frozenset({"bool_parsing", "bool_type"})
_BOOL_RULE = "must be on or off (also 1/0, true/false, yes/no)"
_REDIS_DB_PATH = re.compile(r"^/?\d*$")

# The mapping ``from_env`` reads for the settings built in this context (None: os.environ).
_environ: ContextVar[Mapping[str, str] | None] = ContextVar("snackvideo_environ", default=None)


def env_field(default: Any, variable: str, **constraints: Any) -> Any:
    """A field read from ``variable``. Numbers are finite unless a field says otherwise:
    pydantic takes "inf" and "nan" for a float, and an infinite duration overflowed or
    stopped a thread where it was used."""
    if any(bound in constraints for bound in ("ge", "gt", "le", "lt")):
        constraints.setdefault("allow_inf_nan", False)
    return Field(default, validation_alias=variable, **constraints)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping, reading the fields'
    variables only. (With fields settable by name, pydantic-settings would also read a
    variable spelt like a field, ``max_attempts``: no such variable is part of the
    configuration.)"""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        variables = {field.validation_alias for field in settings_cls.model_fields.values()}
        self.env_vars = {
            name: value for name, value in environ.items() if name in variables and value != ""
        }


class EnvSettings(BaseSettings):
    """Typed settings from environment variables, refused in one line when invalid."""

    model_config = SettingsConfigDict(
        frozen=True,
        # Unknown keyword arguments are a caller's typo; unknown variables are not read.
        extra="forbid",
        case_sensitive=True,
        env_ignore_empty=True,
        # Fields are set by environment variable (the alias) or, in code, by field name.
        validate_by_alias=True,
        validate_by_name=True,
    )

    #: URL schemes this side's Redis client understands.
    REDIS_SCHEMES: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix", "sentinel")
    #: Query arguments of REDIS_URL this side's client cannot take.
    REDIS_QUERY_REFUSED: ClassVar[frozenset[str]] = frozenset()

    redis_url: str = env_field(DEFAULT_REDIS_URL, "REDIS_URL")
    # The name Sentinel knows the master by, when REDIS_URL lists Sentinels.
    redis_sentinel_master: str = env_field(
        DEFAULT_SENTINEL_MASTER, "SNACKVIDEO_REDIS_SENTINEL_MASTER", min_length=1
    )
    # The Sentinels' own password (their requirepass), when they have one. The master's
    # user and password are the sentinel:// URL's user:password@, as kombu reads them.
    redis_sentinel_password: SecretStr | None = env_field(
        None, "SNACKVIDEO_REDIS_SENTINEL_PASSWORD"
    )
    # CA certificates (PEM) that rediss:// servers are verified against, for a private CA;
    # unset: the system's trust store. Certificates are verified either way.
    redis_ca_file: str | None = env_field(None, "SNACKVIDEO_REDIS_CA_FILE")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # from None: pydantic's error, and what it chains, may quote the value.
            raise ConfigurationError(_problems(type(self), exc)) from None
        except SettingsError as exc:
            raise ConfigurationError([("", _settings_error_text(exc))]) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **values: Any) -> Self:
        """Settings from ``environ`` (default: ``os.environ``); ``values``, given by field
        name, take the place of their variables and are checked by the same rules."""
        with _reading(os.environ if environ is None else environ):
            return cls(**values)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then the environment; no .env or secrets files: all configuration is
        # environment variables, and a stray file in the working directory changes nothing.
        environ = _environ.get()
        source = _MappingEnvSource(settings_cls, os.environ if environ is None else environ)
        return (init_settings, source)

    @classmethod
    def variable_of(cls, field: str) -> str:
        """The environment variable a field is read from."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else field

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A printed settings object (a log line, a traceback, a debugger) shows no password.
        for name, value in super().__repr_args__():
            yield name, without_password(value) if name == "redis_url" else value

    @field_validator("redis_ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError("must name a readable file of PEM CA certificates")
        return value

    @field_serializer("redis_url", when_used="json")
    def _redis_url_shown(self, value: str) -> str:
        return without_password(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        *others, last = [f"{scheme}://" for scheme in cls.REDIS_SCHEMES]
        schemes = f"{', '.join(others)} or {last}" if others else last
        rule = f"must be a {schemes} URL"
        if value.partition("://")[0].lower() in CLUSTER_SCHEMES:
            raise ValueError(CLUSTER_REFUSAL)
        # kombu's Sentinel form: one sentinel:// URL per Sentinel, joined by ";".
        urls = value.split(";") if value.startswith("sentinel://") else [value]
        for url in urls:
            _check_redis_url(url, rule, cls.REDIS_SCHEMES, cls.REDIS_QUERY_REFUSED)
            if len(urls) > 1 and not url.startswith("sentinel://"):
                raise ValueError(f"{rule}; each part of a Sentinel list is a sentinel:// URL")
        return value


def _check_redis_url(
    url: str, rule: str, schemes: tuple[str, ...], query_refused: frozenset[str]
) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not 0-65535)
    except ValueError:
        raise ValueError(f"{rule} with a readable host and port") from None
    if parts.scheme not in schemes:
        raise ValueError(rule)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{rule}; unix:// needs the socket's path")
    elif not parts.hostname:
        raise ValueError(f"{rule} with a host")
    elif not _REDIS_DB_PATH.match(parts.path):
        raise ValueError(f"{rule}; its path, if any, is the database number (/0)")
    refused = {name for name, _ in parse_qsl(parts.query)} & query_refused
    if refused:
        raise ValueError(
            f"{rule} without {', '.join(sorted(refused))} in its query: give the user "
            "and password as user:password@ before the host"
        )


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _environ.set(environ)
    try:
        yield
    finally:
        _environ.reset(token)


class ProducerSettings(EnvSettings):
    """What ``producers.Producer`` reads. Explicit arguments pass the same checks."""

    # How long one enqueue call may keep its caller (a web request) waiting while it
    # retries an unreachable Redis. At least 0.1 s: each try gets half of it as socket
    # timeout, and a connect plus the script need more than 50 ms on a loaded host. At
    # most an hour: a caller blocked longer is hung, not retrying.
    enqueue_timeout_seconds: float = env_field(
        DEFAULT_ENQUEUE_TIMEOUT_SECONDS, "SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", ge=0.1, le=3600
    )
    # The idempotency window: a key is held (SET NX EX) this long. Redis takes only a
    # positive whole number of seconds; at most MAX_TTL_SECONDS (one key per keyed event).
    idempotency_ttl_seconds: int = env_field(
        DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        "SNACKVIDEO_IDEMPOTENCY_TTL_SECONDS",
        ge=1,
        le=MAX_TTL_SECONDS,
    )
    # The largest event (its JSON) enqueue accepts. At least 1 KiB: a purchase with a few
    # properties is a few hundred bytes. At most 64 MiB: the job travels base64-encoded
    # (4/3 of it) inside one Redis string and sits in a worker's memory while it is sent.
    max_payload_bytes: int = env_field(
        DEFAULT_MAX_PAYLOAD_BYTES, "SNACKVIDEO_MAX_PAYLOAD_BYTES", ge=1024, le=64 * 1024 * 1024
    )
    # Replicas that must hold a job (WAIT) before enqueue returns it. 0: the master's
    # reply is the acknowledgement, and a failover may lose the last jobs acknowledged.
    # At most 100: more replicas than any deployment runs is a typo.
    enqueue_min_replicas: int = env_field(0, "SNACKVIDEO_ENQUEUE_MIN_REPLICAS", ge=0, le=100)


# -- one line per refusal ----------------------------------------------------------------


def _problems(cls: type[EnvSettings], exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        if not loc:
            # A check across fields names its variables itself.
            problems.append(("", _message(error)))
            continue
        name = str(loc[0])
        field = _field_named(cls, name)
        rule = _rule(field, error) if field is not None else _message(error)
        if len(loc) > 1 and error["type"] not in _NUMBER_ERRORS:
            rule = f"{rule} (at {'.'.join(str(part) for part in loc[1:])})"
        problems.append((name, rule))
    return _one_per_name(problems)


def _field_named(cls: type[EnvSettings], name: str) -> FieldInfo | None:
    """The field behind an error location: its field name or its variable."""
    if name in cls.model_fields:
        return cls.model_fields[name]
    for field in cls.model_fields.values():
        if field.validation_alias == name:
            return field
    return None


def _message(error: ErrorDetails) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return " ".join(message.split())  # one line, whatever a message held


def _rule(field: FieldInfo, error: ErrorDetails) -> str:
    if error["type"] in _NUMBER_ERRORS:
        bounds = _range(field)
        if bounds is not None:
            return bounds
    if error["type"] in _BOOL_ERRORS:
        return _BOOL_RULE
    return _message(error)


def _range(field: FieldInfo) -> str | None:
    """``must be a number from 0.1 to 3600`` from the field's type and bounds."""
    types = get_args(field.annotation) or (field.annotation,)
    if int in types:
        kind = "an integer"
    elif float in types:
        kind = "a number"
    else:
        return None
    low: object = None
    high: object = None
    strict_low = strict_high = False
    for item in field.metadata:
        if isinstance(item, Ge):
            low = item.ge
        elif isinstance(item, Gt):
            low, strict_low = item.gt, True
        elif isinstance(item, Le):
            high = item.le
        elif isinstance(item, Lt):
            high, strict_high = item.lt, True
    if low is not None and high is not None and not (strict_low or strict_high):
        return f"must be {kind} from {_number(low)} to {_number(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'above' if strict_low else 'at least'} {_number(low)}")
    if high is not None:
        parts.append(f"{'below' if strict_high else 'at most'} {_number(high)}")
    return f"must be {kind}" + (f", {' and '.join(parts)}" if parts else "")


def _number(value: object) -> str:
    return f"{value:.10g}" if isinstance(value, int | float) else str(value)


def _one_per_name(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A union (``float | None``) reports one error per branch: keep each line once."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for problem in problems:
        if problem not in seen:
            seen.add(problem)
            unique.append(problem)
    return unique


def _settings_error_text(exc: SettingsError) -> str:
    # pydantic-settings' own message names the field and its source, never the value
    # (the value is in the exception it chains, which is dropped).
    return " ".join(str(exc).split())
