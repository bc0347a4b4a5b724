"""Loads a package's Lua scripts once: each lives beside the module that runs it
(``worker/throttle/acquire.lua``), and each file's first line is its signature."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua_source(package: str, name: str) -> str:
    """The text of ``<name>.lua`` in ``package`` (``lua_source("worker.throttle", "acquire")``)."""
    return resources.files(package).joinpath(f"{name}.lua").read_text()
