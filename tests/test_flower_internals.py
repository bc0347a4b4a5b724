"""What worker.flower_pages relies on inside Flower: this fails loudly, naming the piece,
when a Flower release moves one (the dependency is pinned to the minor version these
hold for: see pyproject.toml).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import flower
import flower.app
import flower.command
import flower.options
import flower.urls
import tornado.web
from flower.api import BaseApiHandler
from flower.views import BaseHandler
from flower.views.error import NotFoundErrorHandler

from worker.errors import DeadLettered
from worker.flower_pages.install import install, routes
from worker.flower_pages.task_link import entry_id_in
from worker.flower_pages.template_loader import (
    FLOWER_TEMPLATES,
    NAV_LIST_END,
    TASK_FIELDS,
    with_entry_row,
    with_nav_link,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_pinned_minor_version_is_the_one_installed() -> None:
    pin = next(
        line for line in (ROOT / "pyproject.toml").read_text().splitlines() if '"flower' in line
    )
    assert pin.strip().strip(",") == '"flower>=2.2,<2.3"'
    assert flower.__version__.startswith("2.2."), flower.__version__


def test_flower_builds_its_app_from_the_handler_list_and_settings_we_extend() -> None:
    # Flower.__init__ takes flower.urls.handlers (the same list object) and prefixes every
    # route with --url_prefix; the command passes flower.urls.settings as the app's settings.
    assert flower.app.default_handlers is flower.urls.handlers
    init = inspect.getsource(flower.app.Flower.__init__)
    assert "handlers = default_handlers" in init and "rewrite_handler" in init
    assert "Flower(capp=app, options=options, **settings)" in command_source()
    last = flower.urls.handlers[-1]
    assert last[0] == r".*" and last[1] is NotFoundErrorHandler
    assert flower.urls.settings["xsrf_cookies"] is True
    assert Path(flower.urls.settings["template_path"]) == FLOWER_TEMPLATES


def test_the_conf_file_is_executed_before_the_app_is_built() -> None:
    command = command_source()
    assert command.index("apply_options(") < command.index("Flower(")
    assert "parse_config_file(" in inspect.getsource(flower.command.apply_options)
    for name in ("conf", "url_prefix", "basic_auth", "auth", "read_only"):
        assert name in flower.options.options, name


def test_the_base_handlers_we_inherit_authentication_and_xsrf_from() -> None:
    for name in ("get_current_user", "check_xsrf_cookie", "render", "write_error"):
        assert name in vars(BaseHandler), f"flower.views.BaseHandler.{name}"
    assert issubclass(BaseApiHandler, BaseHandler) and "prepare" in vars(BaseApiHandler)
    assert "escape" in inspect.signature(BaseHandler.get_argument).parameters
    xsrf = inspect.getsource(BaseHandler.check_xsrf_cookie)
    assert "Sec-Fetch-Site" in xsrf and "Origin" in xsrf
    assert issubclass(BaseHandler, tornado.web.RequestHandler)


def test_the_navbar_anchor_and_our_link_in_it() -> None:
    navbar = (FLOWER_TEMPLATES / "navbar.html").read_text()
    assert NAV_LIST_END in navbar and "reverse_url('broker')" in navbar
    linked = with_nav_link(navbar)
    assert linked.index("reverse_url('broker')") < linked.index("reverse_url('dead_letters')")
    assert linked.index("reverse_url('dead_letters')") < linked.index(NAV_LIST_END)


def test_the_task_view_anchor_and_the_entry_row_in_it() -> None:
    task_page = (FLOWER_TEMPLATES / "task.html").read_text()
    assert TASK_FIELDS in task_page and "<dl" in task_page
    row = with_entry_row(task_page)
    assert row.index("<dl") < row.index("DeadLetterLink(task)") < row.index(TASK_FIELDS)
    assert "ui_modules" not in flower.urls.settings  # ours is the only one


def test_the_task_link_reads_only_a_dead_lettered_tasks_own_entry() -> None:
    text = repr(DeadLettered("http_404", 404, "clk", "job/1", "job/1-r0"))
    assert entry_id_in(text) == "job/1-r0"  # quoted in the text, read back whole
    assert entry_id_in(repr(DeadLettered("no_api_key", None, None, "job-2"))) is None
    assert entry_id_in("ValueError('x entry=/dead-letters/job-3-r0')") is None
    forged = "DeadLettered('... entry=/dead-letters/javascript:alert(1)')"
    assert entry_id_in(forged) == "javascript"  # the id stops where quote() never writes


def test_install_puts_the_routes_before_the_catch_all_once() -> None:
    handlers: list[Any] = [("/a", object), (r".*", NotFoundErrorHandler)]
    settings: dict[str, Any] = {}
    install(handlers, settings)
    install(handlers, settings)
    assert len(handlers) == 2 + len(routes())
    assert handlers[-1][0] == r".*"
    assert "template_loader" in settings and "DeadLetterLink" in settings["ui_modules"]
    # Through Flower's own url_prefix rewrite, names and kwargs survive.
    rewritten = [flower.app.rewrite_handler(rule, "ops") for rule in routes()]
    assert rewritten[0].regex.pattern == "/ops/dead-letters$"
    assert rewritten[0].name == "dead_letters"
    assert rewritten[1].kwargs == {"action": "replay"}


def command_source() -> str:
    """The body of ``celery flower`` (a click command wrapping the function)."""
    return inspect.getsource(flower.command.flower.callback)
