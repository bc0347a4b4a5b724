"""Celery protocol-2 messages written straight into the kombu Redis list.

Why not ``Celery.send_task``: kombu publishes one message per round trip and leaves no
way to couple the push with the idempotency key. Writing the same envelope kombu writes
lets ``enqueue`` do idempotency and publish in one atomic Lua call, and ``enqueue_many``
push a whole batch in one round trip. The worker (delayed jobs, replays) reuses this builder
so every message on the queue has one shape.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from producers.keys import DELIVER_TASK, DELIVERY_QUEUE

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def build_message(
    kwargs: dict[str, Any],
    *,
    task_id: str,
    task_name: str = DELIVER_TASK,
    queue: str = DELIVERY_QUEUE,
    delivery_tag: str | None = None,
) -> str:
    """Return the JSON string kombu's Redis transport expects on the queue list."""
    body = _compact([[], kwargs, _EMBED]).encode("utf-8")
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": int(kwargs.get("attempts", 0)),
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        # Flower shows these two; they carry the job only, never an API key.
        "argsrepr": "()",
        "kwargsrepr": _kwargs_repr(kwargs),
        "origin": _ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            # Anonymous exchange: kombu restores an unacked message to the list named
            # by routing_key, so no exchange binding has to exist for the restore.
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    }
    return _compact(envelope)


def _kwargs_repr(kwargs: dict[str, Any]) -> str:
    # Short enough for Flower's task list, long enough to find the event again.
    payload = kwargs.get("payload")
    click_id = payload.get("click_id") if isinstance(payload, dict) else None
    shown = {
        "job_id": kwargs.get("job_id"),
        "store_id": kwargs.get("store_id"),
        "click_id": click_id,
        "attempts": kwargs.get("attempts", 0),
        "replay_count": kwargs.get("replay_count", 0),
    }
    return repr(shown)
