"""Loaded into a worker under test (``--include tests.ignore_soft_limit_seam``): each pool
child ignores Celery's soft-time-limit signal, as a run stuck where Python cannot raise
(inside a C call) would. Only the hard limit can end such a run; the test watches what
Celery then does with the message. Installed at ``task_prerun``, because billiard sets
its own handler after ``worker_process_init``.
"""

from __future__ import annotations

import signal
from typing import Any

from celery.signals import task_prerun


@task_prerun.connect
def _ignore_the_soft_limit(**_: Any) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
