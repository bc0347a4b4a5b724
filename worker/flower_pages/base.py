"""What the pages and the API share: Flower's handlers, the store, and blocking calls off
the event loop."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

import tornado.web
from flower.api import BaseApiHandler
from flower.utils import strtobool
from flower.views import BaseHandler
from tornado.ioloop import IOLoop

from worker.connections import redis_client, redis_clock
from worker.deadletter.store import DeadLetterStore
from worker.settings import get_settings

T = TypeVar("T")

_stores: dict[int, DeadLetterStore] = {}

NEEDS_LOGIN = (
    "Replay and purge need Flower's login: set FLOWER_BASIC_AUTH=user:password "
    "(or --auth), or FLOWER_UNAUTHENTICATED_API=true on a trusted machine."
)


class StoreAccess:
    """The dead-letter store of this process, and a way to call it without blocking
    Flower's event loop (Redis calls run on Flower's executor, as its own API's do)."""

    @property
    def store(self) -> DeadLetterStore:
        pid = os.getpid()
        if pid not in _stores:
            _stores[pid] = DeadLetterStore.from_settings(redis_client(), get_settings())
        return _stores[pid]

    async def blocking(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await IOLoop.current().run_in_executor(
            None, functools.partial(function, *args, **kwargs)
        )

    def redis_now(self) -> float:
        """Now on the clock the entries were stamped with: where a preview's set ends."""
        return redis_clock().now()


class PageHandler(StoreAccess, BaseHandler):
    """An HTML page: Flower's BaseHandler, its login, its templates and its XSRF checks."""

    def prepare(self) -> None:
        # Flower's own buttons act through its API, which refuses to run without
        # authentication unless FLOWER_UNAUTHENTICATED_API says so (BaseApiHandler.prepare).
        # Our buttons post to these pages: the same rule for every request that changes state.
        if self.request.method != "GET" and not changes_allowed(self):
            raise tornado.web.HTTPError(401, NEEDS_LOGIN)

    def values(self, *names: str) -> dict[str, str | None]:
        """Request arguments, raw: Flower's ``get_argument`` HTML-escapes by default, and a
        value escaped twice would show as ``&amp;lt;``; the templates escape once."""
        return {name: self.get_argument(name, None, escape=False) for name in names}

    def query_of(self, values: dict[str, str | None], names: tuple[str, ...]) -> str:
        """The query string that carries these arguments on (to a preview, a next page)."""
        return urlencode({name: values[name] for name in names if values.get(name)})

    def change_refusal(self) -> str | None:
        """Why the Replay and Purge buttons are not shown, or None when they are (the
        POST checks again)."""
        if self.application.options.read_only:
            return "Flower runs read-only (--read_only): replay and purge are off."
        if not changes_allowed(self):
            return NEEDS_LOGIN
        return None


class ApiHandler(StoreAccess, BaseApiHandler):
    """A JSON endpoint: Flower's API handler, with errors as JSON ``{"error": ...}``."""

    def send_json(self, data: Any) -> None:
        # default=repr: a payload an unreadable job left may hold what JSON cannot (as
        # ``dlq list --json``); "</" escaped as Tornado does, so no text closes a script tag.
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, default=repr).replace("</", "<\\/"))

    def fail(self, status: int, message: str, **extra: Any) -> None:
        self.set_status(status)
        self.send_json({"error": message, **extra})


def changes_allowed(handler: Any) -> bool:
    options = handler.application.options
    return bool(options.basic_auth or options.auth) or bool(
        strtobool(os.environ.get("FLOWER_UNAUTHENTICATED_API") or "false")
    )
