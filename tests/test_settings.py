"""Settings: every variable typed and bounded, every refusal one line that names the
variable and its rule and never the value. Pure, but for the TTL bounds (checked against
a real Redis) and the web-app import (a real interpreter).
"""

from __future__ import annotations

import json
import math
import subprocess
from typing import Any, get_args

import pytest
import redis
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from producers import ConfigurationError, DispatchError, Producer
from producers.settings import MAX_TTL_SECONDS, ProducerSettings
from producers.urls import without_password
from tests.conftest import PYTHON, ROOT
from worker.delivery.header_values import header_value_problem
from worker.settings import Settings

SECRET = "pk_live_PLANTED7q2Secret"
PASSWORD = "s3cret-redis-pw"

#: Every variable the worker reads (producer's included), and every numeric one.
VARIABLES = sorted(Settings.variable_of(field) for field in Settings.model_fields)


def numeric_fields(cls: type[ProducerSettings]) -> list[str]:
    return [
        name
        for name, field in cls.model_fields.items()
        if {int, float} & set(get_args(field.annotation) or (field.annotation,))
    ]


def refusal(environ: dict[str, str], cls: type[ProducerSettings] = Settings) -> str:
    with pytest.raises(ConfigurationError) as info:
        cls.from_env(environ)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith("invalid configuration: ")
    return message


# -- the producer's settings ---------------------------------------------------------------


def test_the_producer_settings_have_their_defaults() -> None:
    settings = ProducerSettings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.enqueue_timeout_seconds == 5.0
    assert settings.idempotency_ttl_seconds == 48 * 3600
    assert settings.max_payload_bytes == 512 * 1024


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", "abc", "must be a number from 0.1 to 3600"),
        ("SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", "0", "must be a number from 0.1 to 3600"),
        ("SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", "inf", "must be a number from 0.1 to 3600"),
        ("SNACKVIDEO_IDEMPOTENCY_TTL_SECONDS", "-1", "must be an integer from 1 to 31536000"),
        ("SNACKVIDEO_IDEMPOTENCY_TTL_SECONDS", "1.5", "must be an integer from 1 to 31536000"),
        ("SNACKVIDEO_MAX_PAYLOAD_BYTES", "10", "must be an integer from 1024 to 67108864"),
        ("REDIS_URL", "http://127.0.0.1:6379", "must be a redis://, rediss://, unix:// or sentinel://"),
        ("REDIS_URL", "redis://h:99999/0", "with a readable host and port"),
        ("REDIS_URL", "redis:///0", "with a host"),
        ("REDIS_URL", "redis://h/zero", "its path, if any, is the database number"),
    ],
)
def test_a_bad_producer_variable_is_refused_by_name(variable: str, value: str, rule: str) -> None:
    message = refusal({variable: value}, ProducerSettings)
    assert message.startswith(f"invalid configuration: {variable}: must be")
    assert rule in message


def test_the_producer_refuses_its_own_variables_and_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNACKVIDEO_MAX_ATTEMPTS", "-1")  # the worker's: not the producer's
    monkeypatch.setenv("SCALEV_STOREFRONT_API_KEYS", "not json")
    Producer().close()
    monkeypatch.setenv("SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", "abc")
    with pytest.raises(ConfigurationError) as info:
        Producer()
    assert str(info.value) == (
        "invalid configuration: SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS: must be a number from "
        "0.1 to 3600"
    )
    assert isinstance(info.value, ValueError) and isinstance(info.value, DispatchError)


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        ({"timeout_seconds": 0}, "timeout_seconds: must be a number from 0.1 to 3600"),
        ({"timeout_seconds": math.nan}, "timeout_seconds: must be a number from 0.1 to 3600"),
        (
            {"idempotency_ttl_seconds": -5},
            "idempotency_ttl_seconds: must be an integer from 1 to 31536000",
        ),
        ({"redis_url": ""}, "redis_url: must be a redis://, rediss://, unix:// or sentinel:// URL"),
    ],
)
def test_explicit_producer_arguments_pass_the_same_rules(
    arguments: dict[str, Any], line: str
) -> None:
    # timeout_seconds=0 used to fall back to the default (an `or` on a number).
    with pytest.raises(ConfigurationError) as info:
        Producer(**arguments)
    assert str(info.value) == f"invalid configuration: {line}"


def test_an_explicit_argument_takes_the_place_of_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", "abc")  # not read: overridden
    producer = Producer(timeout_seconds=0.5, idempotency_ttl_seconds=60)
    assert (producer.timeout_seconds, producer.idempotency_ttl_seconds) == (0.5, 60)
    producer.close()


@pytest.mark.processes
def test_a_web_app_imports_producers_whatever_the_worker_variables_say() -> None:
    script = (
        "import sys, producers; p = producers.Producer(); p.close(); "
        "assert not any(m == 'worker' or m.startswith('worker.') for m in sys.modules); "
        "print('ok', p.timeout_seconds)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SNACKVIDEO_MAX_ATTEMPTS": "-1",
        "SCALEV_STOREFRONT_API_KEYS": "not json",
        "SNACKVIDEO_THROTTLE_SCOPE": "global",
        "SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS": "2.5",
    }
    done = subprocess.run(
        [PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok 2.5"


# -- the worker's settings: bounds ---------------------------------------------------------


def test_every_number_has_both_bounds_and_is_finite() -> None:
    fields = numeric_fields(Settings)
    assert "max_age_seconds" in fields and "enqueue_timeout_seconds" in fields
    for name in fields:
        field = Settings.model_fields[name]
        kinds = {type(item) for item in field.metadata}
        assert kinds & {Ge, Gt} and kinds & {Le, Lt}, f"{name} needs a lower and upper bound"
        if float in (get_args(field.annotation) or (field.annotation,)):
            assert any(getattr(item, "allow_inf_nan", None) is False for item in field.metadata)


def out_of_range(field: str) -> list[str]:
    """A value just below and one just above the field's range."""
    low = high = 0.0
    for item in Settings.model_fields[field].metadata:
        if isinstance(item, Ge | Gt):
            low = float(getattr(item, "ge", getattr(item, "gt", 0)))
        if isinstance(item, Le | Lt):
            high = float(getattr(item, "le", getattr(item, "lt", 0)))
    return [repr(low - 1), repr(high + 1)]


@pytest.mark.parametrize("field", numeric_fields(Settings))
def test_every_number_refuses_what_is_out_of_range_or_not_a_number(field: str) -> None:
    variable = Settings.variable_of(field)
    for value in ["inf", "-inf", "nan", "1e300", "abc", *out_of_range(field)]:
        message = refusal({variable: value})
        assert f"{variable}: must be a" in message and " to " in message, (value, message)


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("SNACKVIDEO_MAX_ATTEMPTS", "-1", "must be an integer from 1 to 1000"),
        ("SNACKVIDEO_MAX_AGE_SECONDS", "inf", "must be a number from 1 to 31536000"),
        ("SNACKVIDEO_MAX_AGE_SECONDS", "1e16", "must be a number from 1 to 31536000"),
        ("SNACKVIDEO_SCHEDULER_POLL_SECONDS", "inf", "must be a number from 0.01 to 60"),
        ("SNACKVIDEO_METRICS_PORT", "65536", "must be an integer from 0 to 65535"),
        ("SNACKVIDEO_TASK_SOFT_TIME_LIMIT_SECONDS", "nan", "must be a number from 0.1 to 86400"),
        ("SNACKVIDEO_THROTTLE", "maybe", "must be on or off (also 1/0, true/false, yes/no)"),
        ("SNACKVIDEO_THROTTLE_SCOPE", "global", "must be 'base_url' or 'store'"),
        ("SNACKVIDEO_LOG_FORMAT", "JSON ", "must be 'text' or 'json'"),
        ("SNACKVIDEO_REDRIVE_REASONS", "http_404,http_40", "must be dead-letter reasons"),
        ("SNACKVIDEO_METRICS_ADDRESS", "0.0.0.0:9808", "must be an IP address"),
    ],
)
def test_a_bad_worker_variable_is_refused_by_name(variable: str, value: str, rule: str) -> None:
    assert f"{variable}: {rule}" in refusal({variable: value})


def test_several_bad_variables_are_named_on_one_line() -> None:
    message = refusal({"SNACKVIDEO_MAX_ATTEMPTS": "0", "SNACKVIDEO_DEFAULT_RATE": "-3"})
    assert "SNACKVIDEO_MAX_ATTEMPTS: must be" in message
    assert "SNACKVIDEO_DEFAULT_RATE: must be" in message


def test_an_argument_out_of_range_is_named_by_its_field() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts: must be an integer from 1"):
        Settings(max_attempts=0)


def test_the_ttls_at_their_bounds_are_ttls_redis_accepts(redis_client: redis.Redis) -> None:
    # 1e16 as max age made the delivered-marker's SET EX fail after a 2xx; at the bounds
    # every TTL derived from a setting is one Redis takes.
    longest = Settings(max_age_seconds=MAX_TTL_SECONDS, idempotency_ttl_seconds=MAX_TTL_SECONDS)
    assert redis_client.set("marker", "1", ex=longest.delivered_marker_ttl_seconds)
    assert redis_client.set("idem", "1", ex=longest.idempotency_ttl_seconds)
    assert redis_client.ttl("marker") > MAX_TTL_SECONDS


def test_empty_variables_are_unset_and_from_env_reads_only_its_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SNACKVIDEO_MAX_ATTEMPTS", "-1")
    settings = Settings.from_env(
        {"SNACKVIDEO_MAX_ATTEMPTS": "", "SNACKVIDEO_RETRY_MAX_SECONDS": "3"}
    )
    assert (settings.max_attempts, settings.retry_max_seconds) == (10, 3)
    with pytest.raises(ConfigurationError, match="SNACKVIDEO_MAX_ATTEMPTS"):
        Settings()  # the process's own environment


def test_only_the_documented_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fields may be set by name in code; a variable spelt like a field is no setting.
    environ = {"max_attempts": "-1", "redis_url": "http://x", "MAX_ATTEMPTS": "0"}
    assert Settings.from_env(environ).max_attempts == 10
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert Settings().max_attempts == 10


# -- keys and URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (f"{SECRET}\r\nX-Injected: 1", "control character"),
        (f"{SECRET}\n", "control character"),
        (f"{SECRET}\x00", "control character"),
        (f"{SECRET}\x7f", "control character"),
        (f"{SECRET}\x85", "control character"),
        (f"{SECRET}\u2603", "not latin-1"),
        (f" {SECRET}", "leading or trailing space"),
        (f"{SECRET}\xa0", "leading or trailing space"),
    ],
)
def test_a_key_that_is_no_header_value_is_refused_naming_the_store(key: str, problem: str) -> None:
    message = refusal({"SCALEV_STOREFRONT_API_KEYS": json.dumps({"shop-1": key})})
    assert message == (
        'invalid configuration: SCALEV_STOREFRONT_API_KEYS: the key of store "shop-1" is not '
        f"a valid HTTP header value ({problem})"
    )
    message = refusal({"SCALEV_STOREFRONT_API_KEY": key})
    assert message == (
        "invalid configuration: SCALEV_STOREFRONT_API_KEY: not a valid HTTP header value "
        f"({problem})"
    )
    assert header_value_problem(key) == problem


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("not json", "must be a JSON object"),
        (f"{{'shop-1': '{SECRET}'}}", "not valid JSON (Expecting property name"),
        (json.dumps([SECRET]), "must be a JSON object"),
        (json.dumps({"shop-1": [SECRET]}), 'the key of store "shop-1" must be a string'),
        (json.dumps({"shop-1": 5}), 'the key of store "shop-1" must be a string'),
        (json.dumps({"shop-1": None}), 'the key of store "shop-1" must be a string'),
        (json.dumps({"shop-1": ""}), 'the key of store "shop-1" is empty'),
        (json.dumps({"": SECRET}), "a store id must be a non-empty string"),
        ("[" * 100_000, "nested too deep"),
    ],
)
def test_a_bad_key_map_is_refused_without_its_keys(raw: str, rule: str) -> None:
    message = refusal({"SCALEV_STOREFRONT_API_KEYS": raw})
    assert message.startswith("invalid configuration: SCALEV_STOREFRONT_API_KEYS: ")
    assert rule in message
    assert SECRET not in message


def test_valid_keys_are_kept_and_never_shown() -> None:
    settings = Settings.from_env(
        {
            "SCALEV_STOREFRONT_API_KEYS": json.dumps({"shop-1": SECRET, "shop 2": "k y"}),
            "SCALEV_STOREFRONT_API_KEY": "fallback-key",
        }
    )
    assert settings.api_key_for("shop-1") == SECRET
    assert settings.api_key_for("shop 2") == "k y"  # a space inside a value is fine
    assert settings.api_key_for("other") == "fallback-key"
    assert SECRET not in repr(settings) + settings.model_dump_json()


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("https://user:Zq9pw@api.scalev.com", "must not hold credentials"),
        ("https://Zq9pw@api.scalev.com", "must not hold credentials"),
        ("https://api.scalev.com?key=Zq9pw", "must have no query or fragment"),
        ("https://api.scalev.com/#Zq9pw", "must have no query or fragment"),
        ("https://api.scalev.com:99999", "with a host and a valid port"),
        ("https://[::1:Zq9pw", "with a host and a valid port"),
    ],
)
def test_a_base_url_with_credentials_or_a_query_is_refused(url: str, rule: str) -> None:
    message = refusal({"SCALEV_API_BASE_URL": url})
    assert message.startswith("invalid configuration: SCALEV_API_BASE_URL: must ")
    assert rule in message
    assert "Zq9pw" not in message


def test_the_worker_takes_only_urls_its_broker_understands() -> None:
    assert "REDIS_URL: must be a redis://, rediss:// or sentinel:// URL" in refusal(
        {"REDIS_URL": "unix:///run/redis.sock"}
    )
    assert ProducerSettings.from_env({"REDIS_URL": "unix:///run/redis.sock"})


def test_the_worker_refuses_a_redis_password_in_the_query() -> None:
    # kombu cannot read it there: every process died in a TypeError traceback.
    url = f"redis://127.0.0.1:6379/0?password={PASSWORD}"
    message = refusal({"REDIS_URL": url})
    rule = "must be a redis://, rediss:// or sentinel:// URL without password in its query"
    assert f"REDIS_URL: {rule}" in message
    assert PASSWORD not in message
    assert ProducerSettings.from_env({"REDIS_URL": url}).redis_url == url  # redis-py reads it


def test_a_redis_password_is_masked_wherever_settings_are_shown() -> None:
    url = f"redis://dispatch:{PASSWORD}@127.0.0.1:6379/0"
    settings = Settings.from_env({"REDIS_URL": url})
    assert settings.redis_url == url  # the client gets it whole
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in shown
        assert "redis://dispatch:***@127.0.0.1:6379/0" in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://dispatch:{PASSWORD}@h:6379/0", "redis://dispatch:***@h:6379/0"),
        (f"redis://:{PASSWORD}@h", "redis://:***@h"),
        (f"redis://{PASSWORD}@h", "redis://***@h"),
        (f"redis://u:{PASSWORD}@@h", "redis://u:***@h"),
        (f"rediss://h/0?password={PASSWORD}&ssl=1", "rediss://h/0?password=***&ssl=1"),
        ("https://api.scalev.com/v3", "https://api.scalev.com/v3"),
        (f"http://[::1:{PASSWORD}@x", "http://(unreadable URL)"),
    ],
)
def test_without_password_hides_every_form_of_password(url: str, shown: str) -> None:
    assert without_password(url) == shown


# -- any value of any variable -------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_NUMBERS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e16", "0", "-0", "1_000", " 5 ", "0x1f"]),
)
_JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8,
).map(json.dumps)
_KEY_MAPS = st.dictionaries(_TEXT, _TEXT, max_size=3).map(json.dumps)
_VALUES = st.one_of(_TEXT, _NUMBERS, _JSONISH, _KEY_MAPS, _TEXT.map(lambda t: f"https://{t}"))


@hypothesis_settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(environ=st.dictionaries(st.sampled_from(VARIABLES), _VALUES, max_size=4))
def test_any_value_of_any_variable_gives_settings_or_one_line_naming_it(
    environ: dict[str, str],
) -> None:
    try:
        Settings.from_env(environ)
    except ConfigurationError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message
        assert message.startswith("invalid configuration: ")
        # Each problem names a variable it was given (a check across fields may name
        # another one too, e.g. the heartbeat beside the dead-after time).
        assert any(variable in message for variable in environ if environ[variable])


_PLANTED = st.one_of(_TEXT.map(lambda text: SECRET + text), _TEXT.map(lambda t: t + SECRET))


@hypothesis_settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.dictionaries(_TEXT, _PLANTED, max_size=3),
    fallback=_PLANTED,
    as_json=st.booleans(),
)
def test_no_refusal_ever_shows_a_key(keys: dict[str, str], fallback: str, as_json: bool) -> None:
    raw = json.dumps(keys) if as_json else repr(keys)  # repr: not JSON, the keys inside
    for environ in (
        {"SCALEV_STOREFRONT_API_KEYS": raw},
        {"SCALEV_STOREFRONT_API_KEY": fallback},
    ):
        try:
            Settings.from_env(environ)
        except ConfigurationError as exc:
            message = str(exc)
            assert SECRET not in message
            assert "\n" not in message and "\r" not in message
            (variable,) = environ
            assert message.startswith(f"invalid configuration: {variable}: ")
