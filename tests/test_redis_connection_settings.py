"""How REDIS_URL's forms and the connection variables become clients: the Sentinel list,
TLS options, refusals of a cluster URL and of a CA file that cannot be read, and
passwords kept out of everything printed. (The real servers: tests/test_sentinel.py,
tests/test_redis_tls.py, tests/test_fault_sentinel_failover.py.)"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.connections import redis_client, sentinel_addresses, tls_options
from producers.settings import CLUSTER_REFUSAL, ProducerSettings
from producers.urls import without_password
from tests.conftest import PYTHON, ROOT
from tests.test_settings import refusal
from worker.celery_ext.broker import broker_use_ssl, sentinel_transport_options
from worker.settings import Settings

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")
SENTINELS = "sentinel://:master-pw@10.0.0.1:26379;sentinel://10.0.0.2;sentinel://10.0.0.3:26380"


def test_a_sentinel_list_is_a_redis_url_for_producers_and_workers() -> None:
    for cls in (ProducerSettings, Settings):
        settings = cls.from_env({"REDIS_URL": SENTINELS})
        assert settings.redis_sentinel_master == "mymaster"
    assert sentinel_addresses(SENTINELS) == [
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26379),
        ("10.0.0.3", 26380),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://10.0.0.1:26379;redis://10.0.0.2:6379",
        "sentinel://10.0.0.1:26379;sentinel://",
        "sentinel://10.0.0.1:99999",
    ],
)
def test_a_broken_sentinel_list_is_refused(url: str) -> None:
    message = refusal({"REDIS_URL": url})
    assert "REDIS_URL: must be a redis://, rediss:// or sentinel:// URL" in message


@pytest.mark.parametrize(
    "url", ["redis+cluster://10.0.0.1:7000", "rediss+cluster://u:pw-7@10.0.0.1:7000"]
)
def test_a_cluster_url_is_refused_pointing_to_sentinel(url: str) -> None:
    for cls in (ProducerSettings, Settings):
        message = refusal({"REDIS_URL": url}, cls)
        assert message == f"invalid configuration: REDIS_URL: {CLUSTER_REFUSAL}"
        assert "sentinel://" in message and "pw-7" not in message


@pytest.mark.processes
def test_a_cluster_url_stops_the_cli_in_one_line() -> None:
    done = subprocess.run(
        [SNACKVIDEO, "status"],
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis+cluster://127.0.0.1:1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: invalid configuration: REDIS_URL: {CLUSTER_REFUSAL}"
    ]


def test_the_sentinel_password_and_master_name_reach_kombu_and_stay_hidden() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": SENTINELS,
            "SNACKVIDEO_REDIS_SENTINEL_MASTER": "dispatch",
            "SNACKVIDEO_REDIS_SENTINEL_PASSWORD": "sentinel-pw-3",
        }
    )
    options = sentinel_transport_options(settings)
    assert options["master_name"] == "dispatch"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw-3"
    assert "sentinel-pw-3" not in repr(settings)
    assert "master-pw" not in repr(settings)
    assert "master-pw" not in settings.model_dump_json()
    assert sentinel_transport_options(Settings.from_env({"REDIS_URL": "redis://h/0"})) == {}


def test_a_sentinel_client_asks_for_the_master_by_name_with_its_credentials() -> None:
    url = "sentinel://:master-pw@10.0.0.1:26379/3;sentinel://10.0.0.2;sentinel://10.0.0.3:26380"
    settings = ProducerSettings.from_env(
        {"REDIS_URL": url, "SNACKVIDEO_REDIS_SENTINEL_MASTER": "m1"}
    )
    client = redis_client(settings, socket_timeout=1)
    pool = client.connection_pool
    assert pool.service_name == "m1"
    assert pool.connection_kwargs["password"] == "master-pw"
    assert pool.connection_kwargs["db"] == 3
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379, 26380]
    # The Sentinels get the timeouts, not the master's password.
    sentinel_kwargs = sentinels[0].connection_pool.connection_kwargs
    assert sentinel_kwargs.get("password") is None and sentinel_kwargs["socket_timeout"] == 1
    client.close()


HOSTS = st.sampled_from(["10.0.0.7", "s1.internal", "[::1]"])


@given(st.lists(st.tuples(HOSTS, st.integers(1, 65535)), min_size=1, max_size=5))
def test_any_list_of_sentinels_is_read_back_in_order(sentinels: list[tuple[str, int]]) -> None:
    url = ";".join(f"sentinel://{host}:{port}" for host, port in sentinels)
    assert ProducerSettings.from_env({"REDIS_URL": url}).redis_url == url
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url
    assert sentinel_addresses(url) == [(host.strip("[]"), port) for host, port in sentinels]


PASSWORD_TEXT = st.text(alphabet="abcXYZ019-_.~", min_size=1, max_size=12)


@given(st.lists(PASSWORD_TEXT, min_size=1, max_size=4))
def test_every_password_of_a_sentinel_list_is_masked(passwords: list[str]) -> None:
    url = ";".join(
        f"sentinel://user:{password}@10.0.0.{n}:26379" for n, password in enumerate(passwords)
    )
    shown = without_password(url)
    assert shown.count("user:***@") == len(passwords)
    for password in passwords:
        assert f":{password}@" not in shown


def test_rediss_verifies_certificates_everywhere_by_default(tmp_path: Path) -> None:
    plain = Settings.from_env({"REDIS_URL": "rediss://10.0.0.1:6380/0"})
    assert tls_options(plain) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert broker_use_ssl(plain) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert broker_use_ssl(Settings.from_env({"REDIS_URL": "redis://10.0.0.1/0"})) is None
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    private = Settings.from_env(
        {"REDIS_URL": "rediss://10.0.0.1:6380/0", "SNACKVIDEO_REDIS_CA_FILE": str(ca)}
    )
    assert broker_use_ssl(private) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}
    client = redis_client(private)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED and kwargs["ssl_ca_certs"] == str(ca)
    client.close()


def test_a_ca_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    message = refusal({"SNACKVIDEO_REDIS_CA_FILE": str(tmp_path / "missing.pem")})
    assert "SNACKVIDEO_REDIS_CA_FILE: must name a readable file of PEM CA certificates" in message


def test_min_replicas_has_its_range() -> None:
    assert ProducerSettings.from_env({}).enqueue_min_replicas == 0
    message = refusal({"SNACKVIDEO_ENQUEUE_MIN_REPLICAS": "-1"}, ProducerSettings)
    assert "SNACKVIDEO_ENQUEUE_MIN_REPLICAS: must be an integer from 0 to 100" in message
