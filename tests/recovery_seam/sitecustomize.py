"""A test seam for real worker processes: put this directory first on a worker's
PYTHONPATH and name a fault in ``SNACKVIDEO_TEST_SEAM``. Tests only; nothing in the
project imports it, and without the variable it changes nothing.

    exit_after_park       the pool process exits (os._exit) right after a job was parked,
                          before its message is acked: the parked copy and the one kombu
                          restores are both live
    kill_after_park       the same moment, but the worker's whole process group is SIGKILLed
    exit_on_click:PREFIX  the pool process exits whenever it is about to POST an event whose
                          click_id starts with PREFIX: a job that kills its process every run

Python imports ``sitecustomize`` at start-up, before the worker imports anything; the
patch is applied when the patched module is first imported (a meta path finder), so that
importing it early does not change the order the worker sets itself up in.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

SEAM = os.environ.get("SNACKVIDEO_TEST_SEAM", "")
EXIT_STATUS = 70


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.patch = patch

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: let the real finders find it
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            self.patch(module)

        loader.exec_module = exec_module
        return spec


def _after_park(module: ModuleType) -> None:
    schedule = module.DelayedJobs.schedule

    def schedule_then_die(self: Any, *args: Any, **kwargs: Any) -> bool:
        parked = bool(schedule(self, *args, **kwargs))
        if parked:
            sys.stderr.write("SEAM: parked, dying before the ack\n")
            sys.stderr.flush()
            if SEAM == "kill_after_park":
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os._exit(EXIT_STATUS)
        return parked

    module.DelayedJobs.schedule = schedule_then_die


def _exit_on_click(prefix: str) -> Callable[[ModuleType], None]:
    def patch(module: ModuleType) -> None:
        send = module.ScalevClient.send

        def send_or_die(self: Any, store_id: str, api_key: str, payload: Any) -> Any:
            if str(payload.get("click_id", "")).startswith(prefix):
                sys.stderr.write(f"SEAM: exiting on click {payload.get('click_id')}\n")
                sys.stderr.flush()
                os._exit(EXIT_STATUS)
            return send(self, store_id, api_key, payload)

        module.ScalevClient.send = send_or_die

    return patch


if SEAM in ("exit_after_park", "kill_after_park"):
    sys.meta_path.insert(0, _PatchOnImport("worker.delayed.store", _after_park))
elif SEAM.startswith("exit_on_click:"):
    patch = _exit_on_click(SEAM.split(":", 1)[1])
    sys.meta_path.insert(0, _PatchOnImport("worker.delivery.scalev", patch))
