"""A guard in front of Celery's task strategy: unreadable message bodies are dead-lettered.

Celery builds a request from a protocol-2 body by unpacking ``[args, kwargs, embed]`` in
the worker's main process, outside any task. A body of another shape (``{}``, ``[[], {}]``,
``5``) raises there, the consumer loop dies, the worker exits, and the unacknowledged
message is restored to the queue for the next worker to die on: one stray message
would stop every worker in turn. A body that is not JSON at all is acked and logged by
Celery, but the job is gone. Both are parked here as ``invalid_job`` and acked instead,
as the README promises for any message the worker cannot read.

So is a body nested deeper than ``MAX_BODY_DEPTH``: Celery pickles each request for its
pool process, pickling recurses once per level, and near 500 levels the RecursionError
escaped as "Unrecoverable error": the worker exited, and the message, restored, took the
next worker down too (measured with kombu 5.7 / Celery 5.7 / CPython 3.11).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.worker.strategy import default
from kombu.exceptions import DecodeError

from producers.models import MAX_PAYLOAD_DEPTH, may_nest_deeper_than, nested_deeper_than
from worker.deadletter.unreadable import park_raw

log = logging.getLogger("snackvideo.delivery")


#: The body is [args, kwargs, embed], the payload a kwarg: its MAX_PAYLOAD_DEPTH levels
#: plus the envelope's, with room to spare, and far below the ~500 that break pickling.
MAX_BODY_DEPTH = MAX_PAYLOAD_DEPTH + 32


def body_problem(body: Any) -> str | None:
    """Why ``body`` (the decoded message body) cannot be called as a task, else None."""
    if isinstance(body, dict) and "args" in body:
        return None  # a hybrid protocol-1 body; Celery reads it safely
    if not isinstance(body, list | tuple) or len(body) != 3:
        return "message body must be [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return "message args must be a list"
    if not isinstance(kwargs, dict):
        return "message kwargs must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "message embed must be an object or null"
    return None


def guarded(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy, after a check that the body can be unpacked at all."""
    handle = default(task, app, consumer, **kwargs)

    def on_message(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
    ) -> Any:
        if body is None:  # protocol 2: the body is decoded lazily, so look before Celery does
            raw: Any
            problem: str | None
            try:
                raw = message.payload
            except DecodeError as exc:
                raw = message.body
                if isinstance(exc.__context__, RecursionError):  # json.loads gave up on depth
                    problem = f"message body is nested deeper than {MAX_BODY_DEPTH} levels"
                else:
                    problem = f"message body is not valid JSON: {exc}"
            else:
                # The walk only when the body's text could nest that deep (11 us a message).
                if may_nest_deeper_than(message.body, MAX_BODY_DEPTH) and nested_deeper_than(
                    raw, MAX_BODY_DEPTH
                ):
                    problem = f"message body is nested deeper than {MAX_BODY_DEPTH} levels"
                else:
                    problem = body_problem(raw)
                raw = message.body  # its text as it came, kept like any unreadable message's
            if problem is not None:
                return _dead_letter(message, raw, problem, ack, reject, consumer)
        return handle(message, body, ack, reject, callbacks, **kw)

    return on_message


def _dead_letter(
    message: Any, raw: Any, problem: str, ack: Any, reject: Any, consumer: Any
) -> None:
    headers = message.headers if isinstance(message.headers, dict) else {}
    queue = (message.delivery_info or {}).get("routing_key") or ""
    try:
        park_raw(raw, problem, job_id=headers.get("id"), queue=queue)
    except redis.RedisError as exc:
        log.warning("cannot dead-letter unreadable message %s: %s", headers.get("id"), exc)
        reject(log, consumer.connection_errors, requeue=True)
        return
    ack(log, consumer.connection_errors)
