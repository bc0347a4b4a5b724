"""Loads the Lua scripts in ``worker/lua`` once; each file's first line is its signature."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua_source(name: str) -> str:
    return resources.files("worker").joinpath(f"lua/{name}.lua").read_text()
