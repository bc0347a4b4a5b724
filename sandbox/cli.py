"""``snackvideo sandbox`` / ``python -m sandbox``: run the stand-in endpoint in the foreground."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from sandbox.ratelimit import RESET_STYLES, WINDOW_ALIGNMENTS, parse_rate_limit
from sandbox.server import make_server
from sandbox.state import DEFAULT_STORES, SandboxConfig

STORES_ENV = "SANDBOX_STORES"


@dataclass(frozen=True)
class CliOptions:
    config: SandboxConfig
    host: str
    port: int
    log_requests: bool


def _rate_limit(spec: str) -> tuple[int, float]:
    try:
        return parse_rate_limit(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _store_pair(text: str) -> tuple[str, str]:
    store, sep, key = text.partition("=")
    if not (sep and store and key):
        raise argparse.ArgumentTypeError(f"expected STORE=KEY, got {text!r}")
    return store, key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snackvideo sandbox",
        description="Local stand-in for Scalev's SnackVideo events endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument(
        "--rate-limit", type=_rate_limit, metavar="N/S",
        help="allow N requests per S-second fixed window (default: unlimited)",
    )  # fmt: skip
    parser.add_argument("--reset-style", choices=RESET_STYLES, default="seconds")
    parser.add_argument(
        "--window-alignment", choices=WINDOW_ALIGNMENTS, default="first-request",
        help="a window opens at the first request after the last one, or on the clock",
    )  # fmt: skip
    parser.add_argument(
        "--no-rate-limit-headers", action="store_true",
        help="enforce --rate-limit but write no X-Ratelimit-* header (a hidden limit)",
    )  # fmt: skip
    parser.add_argument("--stores", metavar="FILE", help='JSON object {"store_id": "key"}')
    parser.add_argument(
        "--store", type=_store_pair, action="append", default=[], metavar="STORE=KEY",
        help="add one store (repeatable; overrides --stores)",
    )  # fmt: skip
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    parser.add_argument("--always-fail", action="append", default=[], metavar="PREFIX")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="MS")
    parser.add_argument(
        "--announce-limit", type=int, metavar="N",
        help="write N in X-Ratelimit-Limit whatever the real limit (a lying server)",
    )  # fmt: skip
    parser.add_argument(
        "--announce-limit-answers", type=int, metavar="N",
        help="only the first N answers lie (default: every one)",
    )  # fmt: skip
    parser.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    return parser


def _load_stores_json(text: str, source: str) -> dict[str, str]:
    try:
        stores = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(stores, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in stores.items()
    ):
        raise ValueError(f'{source} must be a JSON object {{"store_id": "key", ...}}')
    return stores


def resolve_stores(
    stores_file: str | None, pairs: Sequence[tuple[str, str]], env: Mapping[str, str]
) -> dict[str, str]:
    """``--stores`` then ``--store`` on top; ``$SANDBOX_STORES`` only when neither is given."""
    if stores_file is None and not pairs:
        if env.get(STORES_ENV):
            return _load_stores_json(env[STORES_ENV], f"${STORES_ENV}")
        return dict(DEFAULT_STORES)
    stores: dict[str, str] = {}
    if stores_file is not None:
        try:
            with open(stores_file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ValueError(f"cannot read --stores file: {exc}") from exc
        stores.update(_load_stores_json(text, stores_file))
    stores.update(pairs)
    return stores


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> CliOptions:
    """Parse CLI flags into options without binding anything (argparse exits on bad flags)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        stores = resolve_stores(args.stores, args.store, os.environ if env is None else env)
        limit, window = args.rate_limit if args.rate_limit else (None, 1.0)
        config = SandboxConfig(
            stores=stores,
            rate_limit=limit,
            rate_window_seconds=window,
            reset_style=args.reset_style,
            window_alignment=args.window_alignment,
            rate_limit_headers=not args.no_rate_limit_headers,
            fail_first=args.fail_first,
            always_fail=args.always_fail,
            fail_status=args.fail_status,
            latency_ms=args.latency_ms,
            announce_limit=args.announce_limit,
            announce_limit_answers=args.announce_limit_answers,
        )
    except ValueError as exc:  # ConfigError included
        parser.error(str(exc))
    return CliOptions(config, args.host, args.port, args.log_requests)


class _Stop(Exception):
    """Raised from the SIGTERM handler to unwind ``serve_forever`` (honcho stops with TERM)."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        server = make_server(
            options.config, options.host, options.port, log_requests=options.log_requests
        )
    except OSError as exc:
        print(f"sandbox: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    print(f"sandbox listening on http://{shown}:{port}", flush=True)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if in_main_thread else None
    try:
        server.serve_forever()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        server.server_close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
