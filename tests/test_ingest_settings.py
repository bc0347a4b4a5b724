"""The ingest service's settings and tokens: pure, property-tested.

Whatever SNACKVIDEO_INGEST_TOKENS holds, the service either starts with exactly those
tokens or is refused in one line that names the variable and never a secret.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ingest.auth import Authenticator, authorize
from ingest.errors import ApiError
from ingest.settings import (
    MIN_SECRET_CHARS,
    IngestSettings,
    parse_tokens,
    usable_cpus,
    workers_for,
)
from producers import ConfigurationError

#: Every generated name and secret starts with this, so a refusal that quotes one shows.
PLANTED = "Zq"
VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
SECRETS = st.text(VISIBLE, min_size=MIN_SECRET_CHARS, max_size=40).map(PLANTED.__add__)
ANY_TEXT = st.text(max_size=40).map(PLANTED.__add__)
NAMES = st.one_of(st.just(""), st.text(max_size=12).map(PLANTED.__add__))
STORES = st.lists(st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8), max_size=3)
TOKEN_VALUES = st.one_of(
    SECRETS,
    ANY_TEXT,
    st.fixed_dictionaries({"secret": st.one_of(SECRETS, ANY_TEXT)}, optional={"stores": STORES}),
    st.integers(),
    st.none(),
)


def test_defaults() -> None:
    settings = IngestSettings.from_env({})
    assert (settings.ingest_port, settings.ingest_address) == (8088, "127.0.0.1")
    assert settings.ingest_tokens == {}
    assert settings.ingest_workers == workers_for(usable_cpus())


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_default_workers_are_half_the_cpus(cpus: int, workers: int) -> None:
    assert workers_for(cpus) == workers


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_usable_cpus_follow_the_affinity_mask() -> None:
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert usable_cpus() == len(allowed)


@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.dictionaries(NAMES, TOKEN_VALUES, max_size=4))
def test_tokens_are_taken_whole_or_refused_without_a_secret(tokens: dict[str, Any]) -> None:
    variable = json.dumps(tokens)
    try:
        settings = IngestSettings.from_env({"SNACKVIDEO_INGEST_TOKENS": variable})
    except ConfigurationError as exc:
        text = str(exc)
        assert text.startswith("invalid configuration: SNACKVIDEO_INGEST_TOKENS: ")
        assert "\n" not in text
        # Neither a secret nor a name (it may be a secret written in the wrong place).
        assert PLANTED not in text
        return
    assert set(settings.ingest_tokens) == set(tokens)
    authenticator = Authenticator(settings.ingest_tokens.values())
    for name, value in tokens.items():
        secret = value["secret"] if isinstance(value, dict) else value
        token = authenticator.authenticate(f"Bearer {secret}")
        assert token.name == name
        assert secret not in repr(settings)
        stores = value.get("stores") if isinstance(value, dict) else None
        for store in stores or []:
            authorize(token, store)


@pytest.mark.parametrize(
    "raw, why",
    [
        ("[]", "must be a JSON object"),
        ("{", "must be a JSON object"),
        ('{"a": "0123456789abcdef", "b": "0123456789abcdef"}', "share one secret"),
        ('{"a": {"secret": "0123456789abcdef", "stores": []}}', "non-empty list"),
        ('{"a": {"secret": "0123456789abcdef", "stores": ["a/b"]}}', "valid store ids"),
        ('{"a": {"secret": "0123456789abcdef", "store": ["s"]}}', "unknown keys"),
        ('{"a": "0123456789 abcdef"}', "visible ASCII"),
        ('{"a b": "0123456789abcdef"}', "its name"),
    ],
)
def test_token_refusals_name_the_rule(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_tokens(raw)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("SNACKVIDEO_INGEST_PORT", "0"),
        ("SNACKVIDEO_INGEST_PORT", "65536"),
        ("SNACKVIDEO_INGEST_PORT", "http"),
        ("SNACKVIDEO_INGEST_ADDRESS", "127.0.0.1/8"),
        ("SNACKVIDEO_INGEST_WORKERS", "0"),
        ("SNACKVIDEO_INGEST_MAX_BATCH", "1001"),
        ("SNACKVIDEO_INGEST_MAX_BATCH_BYTES", "12"),
    ],
)
def test_each_setting_is_refused_by_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        IngestSettings.from_env({variable: value})
    assert raised.value.names == [variable]


def test_the_ingest_service_never_reads_a_storefront_key() -> None:
    settings = IngestSettings.from_env({"SCALEV_STOREFRONT_API_KEYS": "not even JSON"})
    assert "SCALEV" not in repr(settings)


@hypothesis_settings(max_examples=300, deadline=None)
@given(header=st.one_of(st.none(), st.text(max_size=60)))
def test_any_authorization_header_is_a_token_or_a_401(header: str | None) -> None:
    authenticator = Authenticator(parse_tokens({"ci": "0123456789abcdefXYZ"}).values())
    try:
        token = authenticator.authenticate(header)
    except ApiError as exc:
        assert exc.status == 401
        assert exc.headers == {"WWW-Authenticate": "Bearer"}
        return
    assert header is not None and header.split(" ", 1)[1].strip() == "0123456789abcdefXYZ"
    assert token.name == "ci"
