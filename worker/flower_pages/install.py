"""Adding the dead-letter pages to Flower before it builds its application.

Flower builds its Tornado application from ``flower.urls.handlers`` and
``flower.urls.settings`` (``flower.app.Flower.__init__``, ``flower.command``), after it
has executed the ``--conf`` file. ``install`` puts our routes into that list, before its
last route, the catch-all 404; Flower then applies ``--url_prefix`` to ours as to its own.
It sets the template loader and the task view's link module in those settings.
``tests/test_flower_internals.py`` checks each of these assumptions and fails loudly when
a Flower release moves one.
"""

from __future__ import annotations

from typing import Any

import flower.urls
from tornado.web import url

from worker.errors import DEAD_LETTER_PAGE
from worker.flower_pages.api import EntryApi, ListApi, TakeApi
from worker.flower_pages.pages import DeadLetterPage, DeadLettersPage, TakePage
from worker.flower_pages.task_link import DeadLetterLink
from worker.flower_pages.template_loader import PagesLoader

LIST_PAGE = DEAD_LETTER_PAGE.rstrip("/")
CATCH_ALL = ".*"


def routes() -> list[Any]:
    # Literal paths before the entry pattern: /dead-letters/replay is not an entry id.
    return [
        url(LIST_PAGE, DeadLettersPage, name="dead_letters"),
        url(LIST_PAGE + "/replay", TakePage, {"action": "replay"}, name="dead_letters_replay"),
        url(LIST_PAGE + "/purge", TakePage, {"action": "purge"}, name="dead_letters_purge"),
        url(DEAD_LETTER_PAGE + "([^/]+)", DeadLetterPage, name="dead_letter"),
        url("/api" + LIST_PAGE, ListApi),
        url("/api" + LIST_PAGE + "/replay", TakeApi, {"action": "replay"}),
        url("/api" + LIST_PAGE + "/purge", TakeApi, {"action": "purge"}),
        url("/api" + DEAD_LETTER_PAGE + "([^/]+)", EntryApi),
    ]


def install(handlers: list[Any] | None = None, settings: dict[str, Any] | None = None) -> None:
    """Add the routes and the loader to Flower's (or the given) handlers and settings;
    a second call changes nothing."""
    handlers = flower.urls.handlers if handlers is None else handlers
    settings = flower.urls.settings if settings is None else settings
    if any(getattr(rule, "name", None) == "dead_letters" for rule in handlers):
        return
    if not handlers or _pattern(handlers[-1]) != CATCH_ALL:
        raise RuntimeError("Flower's last route is not its catch-all 404: cannot add pages")
    handlers[-1:-1] = routes()
    settings["template_loader"] = PagesLoader()
    settings.setdefault("ui_modules", {})["DeadLetterLink"] = DeadLetterLink


def _pattern(rule: Any) -> str:
    pattern = rule.regex.pattern if hasattr(rule, "regex") else rule[0]
    return str(pattern).removesuffix("$")
