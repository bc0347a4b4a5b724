"""Every value interpolated into a worker log line is escaped, whoever logs it.

Store ids, click ids, job ids and error texts come from producers, from whatever else
writes to the queue, and from Scalev's answers. Written raw, a click_id holding
``"\\nINFO outcome=delivered ..."`` forges a second line for every log reader and alert
rule downstream, and ``"\\x1b[2J"`` clears the terminal of whoever tails the log. The
filter here rewrites a record's arguments (never its format string, never a traceback)
through ``worker.escaping.visible``, so each argument stays on its line, as text.

It sits on the handlers Celery sets up (``after_setup_logger``, ``after_setup_task_logger``):
a handler's filter sees every record that reaches it, Celery's and kombu's as well as
ours, and prefork children inherit the handlers from the main process. The dispatcher's
own ``outcome=`` line also quotes its fields (``worker.escaping.log_field``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger

from worker.escaping import visible


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, bytes | BaseException):
        # What %s would print; an exception message may quote a response or a payload.
        try:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        except Exception:  # a broken __str__: leave the record as it was
            return value
        return visible(text)
    return value  # numbers, None, objects whose %r escapes what it prints


class EscapeArgs(logging.Filter):
    """Escapes the arguments of each record (idempotent: escaped text is printable)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping):
            record.args = {key: _escaped(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_escaped(value) for value in args)
        return True


def install(logger: logging.Logger) -> None:
    """Put the filter on each handler of ``logger`` (once per handler)."""
    for handler in logger.handlers:
        if not any(isinstance(f, EscapeArgs) for f in handler.filters):
            handler.addFilter(EscapeArgs())


def _on_setup(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        install(logger)


after_setup_logger.connect(_on_setup, weak=False)
after_setup_task_logger.connect(_on_setup, weak=False)
