"""Baseline B: the Celery task a team writes on day one. ``celery -A bench.naive_worker worker``

Default Celery settings (prefork, prefetch 4, early acks, no task events), and a task
that does one ``requests.post`` per event: a new connection each time, no throttle, no
dead letters, no idempotency. The storefront key comes from the environment, like the
real worker's, so no job carries it. A second task, ``naive.touch``, does no HTTP at all:
it shows what Celery itself costs per task on this machine.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
import requests
from celery import Celery

NAIVE_TASK = "naive.post"

app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.task(name=NAIVE_TASK)
def post(url: str, payload: dict[str, Any]) -> int:
    response = requests.post(
        url,
        json=payload,
        headers={"X-Scalev-Storefront-Api-Key": os.environ["SCALEV_STOREFRONT_API_KEY"]},
        timeout=10,
    )
    response.raise_for_status()
    return response.status_code


TOUCH_TASK = "naive.touch"
FIRST_KEY, LAST_KEY, DONE_KEY = "naive:first", "naive:last", "naive:done"
_clients: dict[int, redis.Redis] = {}


@app.task(name=TOUCH_TASK)
def touch() -> None:
    """Celery's own floor: a task that only records its finish time (one round trip)."""
    client = _clients.get(os.getpid())
    if client is None:  # one client per process: a pool made before a fork is not shared
        client = _clients[os.getpid()] = redis.Redis.from_url(app.conf.broker_url)
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        pipe.set(FIRST_KEY, now, nx=True)
        pipe.set(LAST_KEY, now)
        pipe.incr(DONE_KEY)
        pipe.execute()
