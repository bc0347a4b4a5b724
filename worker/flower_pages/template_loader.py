"""One template loader for Flower's templates and ours, with the dead-letter link in the
navigation bar.

Our pages extend Flower's ``base.html``, so they look like the rest of Flower and keep its
scripts and theme. Tornado allows one loader per application (the ``template_loader``
setting): this one reads a name from our folder when we ship it, else from Flower's.
Flower's ``navbar.html`` gains one ``<li>`` before the end of its first list (Workers,
Tasks, Broker), and its ``task.html`` the row of a dead-lettered task's entry
(``task_link.py``); ``tests/test_flower_internals.py`` fails when either anchor moves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flower
from tornado.template import Loader, Template

FLOWER_TEMPLATES = Path(flower.__file__).parent / "templates"
OUR_TEMPLATES = Path(__file__).parent / "templates"
NAVBAR = "navbar.html"
TASK = "task.html"
#: Where Flower's task view lists a task's other fields; the entry's row goes before it.
TASK_FIELDS = "{% for name in task._fields %}"
TASK_ROW = "{% module DeadLetterLink(task) %}\n      "
#: The end of the navbar's first list, the main tabs; the link goes before it.
NAV_LIST_END = "</ul>"
NAV_LINK = """<li class="nav-item">
          <a class="nav-link{% if active_tab == 'dead_letters' %} active{% end %}"
            href="{{ reverse_url('dead_letters') }}"
            {% if active_tab == 'dead_letters' %}aria-current="page"{% end %}>Dead letters</a>
        </li>
      """


class PagesLoader(Loader):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(str(FLOWER_TEMPLATES), **kwargs)

    def _create_template(self, name: str) -> Template:
        ours = OUR_TEMPLATES / name
        path = ours if ours.is_file() else FLOWER_TEMPLATES / name
        text = path.read_text(encoding="utf-8")
        if name == NAVBAR:
            text = with_nav_link(text)
        elif name == TASK:
            text = with_entry_row(text)
        return Template(text, name=name, loader=self)


def with_nav_link(navbar: str) -> str:
    if NAV_LIST_END not in navbar:
        raise RuntimeError(f"Flower's {NAVBAR} has no {NAV_LIST_END}: cannot add the link")
    return navbar.replace(NAV_LIST_END, NAV_LINK + NAV_LIST_END, 1)


def with_entry_row(task_page: str) -> str:
    if TASK_FIELDS not in task_page:
        raise RuntimeError(f"Flower's {TASK} has no {TASK_FIELDS}: cannot add the entry's row")
    return task_page.replace(TASK_FIELDS, TASK_ROW + TASK_FIELDS, 1)
