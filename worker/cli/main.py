"""The ``snackvideo`` command: enqueue, dlq, sandbox, status, ingest.

Every command but ``ingest`` reads the worker's settings first, so an invalid one stops
each of them the same way (one line, exit 2), the sandbox included; ``ingest`` checks its
own settings the same way. None imports Celery: ``status`` builds
the Celery app for its worker ping, the one step that needs it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import redis

from producers.errors import ConfigurationError
from worker.cli import dlq, enqueue, status
from worker.connections import refuse_cluster_mode
from worker.settings import get_settings, refuse


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The ingest service reads its own settings (the producer's and its own), never the
    # worker's: it holds no storefront key. Imported here, so no other command loads it.
    if argv[:1] == ["ingest"]:
        from ingest.server import exec_service

        return exec_service(argv[1:])
    try:
        get_settings()
    except ConfigurationError as exc:
        refuse(exc)
    # The sandbox owns its flags; hand them over untouched.
    if argv[:1] == ["sandbox"]:
        from sandbox import main as sandbox_main

        return sandbox_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    if args.command in COMMANDS_READING_REDIS:
        refuse_cluster_mode()
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        # A ConfigurationError (one line: the variable and its rule, never the value) or
        # a usage error the command names.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"error: Redis did not answer: {exc}", file=sys.stderr)
        return 1


#: Commands that read Redis through the worker's client; ``enqueue`` goes through the
#: producer, which names a cluster in its own error.
COMMANDS_READING_REDIS = frozenset({"dlq", "status"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snackvideo", description="Queue-backed dispatcher for SnackVideo events."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    enqueue.add_parser(commands)
    commands.add_parser("sandbox", help="run the local Scalev stand-in (see: sandbox --help)")
    commands.add_parser("ingest", help="serve the HTTP ingest API (see: ingest --help)")
    dlq.add_parser(commands)
    status.add_parser(commands)
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
