"""``SNACKVIDEO_LOG_FORMAT=json``: every log line of the worker and beat as one JSON object.

For Loki and ELK, which read a field instead of parsing a line. The formatter is
python-json-logger's: each record becomes ``{"timestamp", "level", "logger", "process",
"message", ...}`` plus what the record carries as ``extra``; the ``outcome=`` lines carry
their fields that way (``outcome``, ``job_id``, ``store_id``, ``click_id``, ``status``,
``attempt``, ``wait``, ``reason``, ``seconds``, ``redelivered``), so a JSON reader gets
them typed and the text line keeps its exact form. JSON escapes every control character,
so a click_id holding a newline cannot forge a second line here either.

It replaces the formatter of the handlers Celery sets up (``after_setup_logger``: the root
logger and the multiprocessing logger; ``after_setup_task_logger``: ``celery.task``).
Prefork children inherit those handlers, formatter included. The worker's startup
banner is a ``print``, not a log record: in JSON mode it is not printed
(``celeryd_after_setup``), and Python warnings become JSON lines too
(``capture_warnings``, called by ``worker.celery_app``), so the output holds JSON only.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, celeryd_after_setup
from celery.utils.log import get_multiprocessing_logger
from pythonjsonlogger.json import JsonFormatter

from worker.settings import get_settings

#: The record attributes every line has, under the names log pipelines expect.
_RENAMED = {"levelname": "level", "name": "logger", "processName": "process"}


def json_formatter() -> logging.Formatter:
    """One JSON object per record: UTC ISO timestamp, level, logger, process, message,
    the record's ``extra`` fields, and ``exc_info`` as text when there is a traceback."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(processName)s %(message)s",
        rename_fields=_RENAMED,
        timestamp=True,
    )


def install(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(json_formatter())


def capture_warnings() -> None:
    """Python warnings as JSON lines on stderr, from now on.

    Celery warns before it sets up logging (running as root: ``SecurityWarning``), and
    ``warnings`` writes to stderr by itself, over several lines. Routed through a logger
    of their own with the JSON formatter, they stay one object per line.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter())
    warnings_log = logging.getLogger("py.warnings")
    warnings_log.handlers = [handler]
    warnings_log.propagate = False
    logging.captureWarnings(True)


def _wanted() -> bool:
    return get_settings().log_format == "json"


def _on_setup(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None and _wanted():
        install(logger)
        if logger is logging.getLogger():
            install(get_multiprocessing_logger())


def _no_banner(instance: Any = None, **_: Any) -> None:
    if instance is not None and _wanted():
        instance.quiet = True


after_setup_logger.connect(_on_setup, weak=False)
after_setup_task_logger.connect(_on_setup, weak=False)
celeryd_after_setup.connect(_no_banner, weak=False)
