"""Baseline B: the Celery task a team writes on day one. ``celery -A bench.naive_worker worker``

Default Celery settings (prefork, prefetch 4, early acks, no task events), and a task
that does one ``requests.post`` per event: a new connection each time, no throttle, no
dead letters, no idempotency. The storefront key comes from the environment, like the
real worker's, so no job carries it.
"""

from __future__ import annotations

import os
from typing import Any

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
