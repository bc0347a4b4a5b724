"""Reading the delivery queue the way kombu does: helpers shared by the core-path tests."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from typing import Any

import redis

from harness.events import event as event  # re-exported: the core-path tests use it
from producers.keys import DELIVERY_QUEUE
from tests.conftest import Worker, wait_until
from worker.keys import SCHEDULED, UNACKED


@dataclass(frozen=True)
class QueuedMessage:
    envelope: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.envelope["headers"])


def decode_message(raw: bytes | str) -> QueuedMessage:
    """Unpack a Celery protocol-2 message: JSON envelope, base64 body ``[args, kwargs, embed]``."""
    envelope = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope["content-type"] == "application/json"
    args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    return QueuedMessage(envelope, args, kwargs, embed)


def queued(client: redis.Redis, queue: str = DELIVERY_QUEUE) -> list[QueuedMessage]:
    """Every message on the list, oldest first (kombu pushes with LPUSH and pops from the right)."""
    return [decode_message(raw) for raw in reversed(client.lrange(queue, 0, -1))]


class PubSubRecorder(threading.Thread):
    """Every pub/sub message on the Redis (Celery's task events travel this way)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe("*")
        self.messages: list[tuple[bytes, bytes]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "pmessage":
                self.messages.append((message["channel"], message["data"]))

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.pubsub.close()
        self.client.close()

    def task_events(self) -> list[dict[str, Any]]:
        """Celery's task events seen so far (what Flower reads), decoded."""
        events: list[dict[str, Any]] = []
        for channel, data in list(self.messages):
            if b"celeryev" not in channel:
                continue
            body = json.loads(base64.b64decode(json.loads(data)["body"]))
            events += body if isinstance(body, list) else [body]
        return events


def wait_idle(client: redis.Redis, timeout: float = 60.0) -> None:
    """Nothing queued, in flight (kombu's unacked hash) or parked for a retry."""

    def idle() -> bool:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(DELIVERY_QUEUE)
            pipe.hlen(UNACKED)
            pipe.zcard(SCHEDULED)
            return not any(pipe.execute())

    wait_until(idle, timeout, what="queue, unacked and scheduled set to drain")


def log_lines(worker: Worker, *needles: str) -> list[str]:
    """The worker's log lines that contain every one of ``needles``."""
    return [line for line in worker.log().splitlines() if all(n in line for n in needles)]
