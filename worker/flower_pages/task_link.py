"""The link from a dead-lettered task in Flower's task view to its entry's page.

The worker ends a dead-lettered task with ``DeadLettered('... entry=/dead-letters/<id>')``
(``worker.errors.dead_letter_path``). Flower shows that text; this UI module, which the
template loader puts into Flower's ``task.html``, adds a row with a link to the entry,
below Flower's ``--url_prefix``. Only the characters ``quote`` writes are read as the id,
and the link is built again by ``reverse_url``: an exception text cannot make it point
anywhere else.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import tornado.web

from worker.errors import DEAD_LETTER_PAGE

ENTRY_IN_EXCEPTION = re.compile(r" entry=" + re.escape(DEAD_LETTER_PAGE) + r"([A-Za-z0-9%._~-]+)")


def entry_id_in(exception: str | None) -> str | None:
    """The entry id a ``DeadLettered`` exception text names, or None."""
    if not exception or not exception.startswith("DeadLettered("):
        return None
    found = ENTRY_IN_EXCEPTION.search(exception)
    return unquote(found.group(1)) if found else None


class DeadLetterLink(tornado.web.UIModule):
    def render(self, task: Any) -> str:
        entry_id = entry_id_in(getattr(task, "exception", None))
        if entry_id is None:
            return ""
        return self.render_string("dead_letter_link.html", entry_id=entry_id).decode()
