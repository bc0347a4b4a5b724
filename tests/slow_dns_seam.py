"""Loaded into a worker under test (``celery ... worker --include tests.slow_dns_seam``):
names under ``.slow.test`` resolve to 127.0.0.1, and the first such lookup in each process
takes ``SLOW_LOOKUP_SECONDS`` first, as a dead DNS server would. The seam is the
process's bounded resolver (``worker.delivery.resolver``); everything else is the real worker.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from worker.delivery.resolver import bounded_resolver

SLOW_LOOKUP_SECONDS = 20.0
_slow_ones_left = [1]  # per process: a forked child starts with its own copy


def _lookup(host: str, port: int, family: int, kind: int) -> list[Any]:
    if host.endswith(".slow.test"):
        if _slow_ones_left[0] > 0:
            _slow_ones_left[0] -= 1
            time.sleep(SLOW_LOOKUP_SECONDS)
        return socket.getaddrinfo("127.0.0.1", port, family, kind)
    return socket.getaddrinfo(host, port, family, kind)


bounded_resolver().lookup = _lookup
