"""rediss:// verifies the server's certificate in every component, by default.

A redis-server with ``--tls-port`` and a certificate signed by a CA the test makes
(openssl). With ``SNACKVIDEO_REDIS_CA_FILE`` naming that CA, a producer, a real worker and
the CLI work over TLS. Without it (the system's trust store) or with another CA, each
refuses: the CLI and the producer in one line, the worker by not connecting. kombu on
its own would have connected the worker with ``CERT_NONE``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from producers import EnqueueError, Producer
from tests.conftest import (
    PYTHON,
    ROOT,
    STORE,
    RedisServer,
    Sandbox,
    Worker,
    free_port,
    wait_until,
    worker_env,
)
from tests.fault_helpers import Ledger, event

pytestmark = pytest.mark.integration

SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")


@dataclass(frozen=True)
class Certificates:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.crt",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("no openssl: CI must run the TLS tests")
        pytest.skip("no openssl to make the test's CA")
    directory = tmp_path / "tls"
    directory.mkdir()
    ca, ca_key = make_ca(directory, "test-ca")
    other_ca, _ = make_ca(directory, "other-ca")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    return Certificates(ca, other_ca, directory / "server.crt", directory / "server.key")


@pytest.fixture
def tls_url(certificates: Certificates, tmp_path: Path) -> str:
    """rediss:// URL of a redis-server serving TLS with the test's certificate (its plain
    port is only for the fixture's readiness check)."""
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis-tls",
        extra_args=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certificates.cert),
            "--tls-key-file", str(certificates.key),
            "--tls-ca-cert-file", str(certificates.ca),
            "--tls-auth-clients", "no",
        ),
    )  # fmt: skip
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield f"rediss://127.0.0.1:{tls_port}/0"
    server.stop()


def snackvideo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SNACKVIDEO, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_producer_worker_and_cli_work_over_tls_with_the_ca_file(
    tls_url: str,
    certificates: Certificates,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = worker_env(tls_url, sandbox.base_url, SNACKVIDEO_REDIS_CA_FILE=str(certificates.ca))
    worker = start_worker(env, concurrency=1)
    monkeypatch.setenv("SNACKVIDEO_REDIS_CA_FILE", str(certificates.ca))
    producer = Producer(tls_url)
    ledger = Ledger(tls_url, sandbox)
    ledger.offer("over-tls", 3, producer)
    wait_until(lambda: len(ledger.accepted()) == 3, timeout=60, what="3 deliveries over TLS")
    status = snackvideo(env, "status")
    assert status.returncode == 0, status.stderr
    assert "certificate verify failed" not in worker.log()
    producer.close()


@pytest.mark.parametrize("ca", ["system trust store", "another CA"])
def test_a_server_the_ca_did_not_sign_is_refused(
    ca: str,
    tls_url: str,
    certificates: Certificates,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = (
        {}
        if ca == "system trust store"
        else {"SNACKVIDEO_REDIS_CA_FILE": str(certificates.other_ca)}
    )
    env = worker_env(tls_url, sandbox.base_url, **extra)

    for command in (["status"], ["dlq", "list"]):
        done = snackvideo(env, *command)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ")
        assert "certificate verify failed" in lines[0]

    enqueue = subprocess.run(
        [SNACKVIDEO, "enqueue", "--store", STORE, "-"],
        input='{"click_id": "tls-1", "events": [{"event_name": "purchase"}]}',
        env={**env, "SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS": "0.5"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enqueue.returncode != 0
    assert "Traceback" not in enqueue.stderr
    assert "certificate verify failed" in enqueue.stderr

    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(EnqueueError, match="certificate verify failed"):
        Producer(tls_url, timeout_seconds=0.5).enqueue(STORE, event("tls-2"))

    # The worker does not fall back to an unverified connection: it never gets ready.
    worker = start_worker(env, concurrency=1, wait_ready=False)
    wait_until(
        lambda: "certificate verify failed" in worker.log(),
        timeout=60,
        what="the worker to refuse the certificate",
    )
    assert " ready." not in worker.log()
