"""Test seam: run a process with its wall clock shifted, like a host whose clock is off.

Put this directory on the process's PYTHONPATH and set
``SNACKVIDEO_TEST_CLOCK_OFFSET_SECONDS``. Python's ``site`` imports ``sitecustomize`` at
start-up, before the program imports anything, so ``time.time`` (and ``time.time_ns``) are
shifted before kombu, Celery or the project bind them (kombu does ``from time import
time`` at import). Monotonic clocks are left alone, as on a real host. Only tests set this.
"""

import os
import time

_offset = float(os.environ.get("SNACKVIDEO_TEST_CLOCK_OFFSET_SECONDS") or 0.0)

if _offset:
    _real_time = time.time
    _real_time_ns = time.time_ns
    _offset_ns = int(_offset * 1e9)

    def _shifted_time() -> float:
        return _real_time() + _offset

    def _shifted_time_ns() -> int:
        return _real_time_ns() + _offset_ns

    time.time = _shifted_time
    time.time_ns = _shifted_time_ns
