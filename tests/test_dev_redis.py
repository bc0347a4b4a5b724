"""``make run``'s embedded Redis takes the password of ``REDIS_URL``.

Without it a ``REDIS_URL`` with a password never answered: Redis refuses AUTH with a
password it was not given, and ``make run`` gave up after 10 s. The credentials reach
redis-server on stdin, never on its command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from scripts.dev_redis import redis_answers, start_embedded_redis, stop_embedded_redis
from scripts.redis_binary import redis_server_binary
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("userinfo", "password"),
    [
        (":dev-pw-5Rj2", "dev-pw-5Rj2"),
        ("alice:dev%20pw%22q%5C", 'dev pw"q\\'),  # percent-encoded space, quote, backslash
    ],
)
def test_the_embedded_redis_requires_the_urls_credentials(
    userinfo: str, password: str, tmp_path: Path
) -> None:
    if redis_server_binary() is None:
        pytest.skip("no redis-server available")
    port = free_port()
    url = f"redis://{userinfo}@127.0.0.1:{port}/0"
    process = start_embedded_redis(url, tmp_path, dict(os.environ), lambda: False)
    try:
        assert redis_answers(url)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()  # no anonymous access
        client = redis.Redis.from_url(url)
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert password.encode() not in command_line
    finally:
        stop_embedded_redis(process)
