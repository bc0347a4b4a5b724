"""Celery's two per-task INFO lines, dropped unless ``SNACKVIDEO_CELERY_TASK_LOG=on``.

For every delivery Celery logs ``Task snackvideo.deliver[<id>] received`` (the main
process, logger ``celery.worker.strategy``) and ``Task snackvideo.deliver[<id>] succeeded
in 0.01s: 'delivered status=204'`` (the pool child, ``celery.app.trace``), on top of our
own ``outcome=`` line, which says all of that and more. Writing them cost 0.45 ms of
worker CPU per event in the benchmark (docs/benchmarks.md, ``quiet_logs``).

Only those two messages are dropped, matched by Celery's format strings. Everything else
those loggers say stays: retries (``Task ... retry: ...``), failures (``raised expected:
DeadLettered(...)``, which tests and operators grep), rejections, errors. Lowering the
loggers' level instead would drop the INFO-level failure lines too.

The filter sits on the two loggers themselves, installed when Celery has set up logging
in the main process (``after_setup_logger``): prefork children are forked from it and
inherit it, and a child that starts otherwise (spawn) installs it again on
``worker_process_init``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.signals import after_setup_logger, worker_process_init

from worker.settings import get_settings

#: The loggers Celery writes the two lines to.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
_DROPPED = (LOG_RECEIVED, LOG_SUCCESS)


class DropPerTaskLines(logging.Filter):
    """Drops Celery's "received" and "succeeded" lines; lets every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _DROPPED


#: Says nothing at INFO but the "received" line, and Celery asks its level once, when the
#: consumer builds its task strategies: above INFO the line is not even built. Built and
#: then filtered, its LogRecord cost ~4 % of the main process's CPU (py-spy, issue 16).
RECEIVED_LINE_LOGGER = "celery.worker.strategy"


def install() -> None:
    """Put the filter on both loggers (once, however often it is called), and the
    strategy logger above INFO."""
    for name in PER_TASK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropPerTaskLines) for f in logger.filters):
            logger.addFilter(DropPerTaskLines())
    strategy_logger = logging.getLogger(RECEIVED_LINE_LOGGER)
    if strategy_logger.getEffectiveLevel() < logging.WARNING:
        strategy_logger.setLevel(logging.WARNING)


def _install_unless_wanted(**_: Any) -> None:
    if not get_settings().celery_task_log:
        install()


after_setup_logger.connect(_install_unless_wanted, weak=False)
worker_process_init.connect(_install_unless_wanted, weak=False)
