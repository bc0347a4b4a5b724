"""The dead-letter pages in a real browser: Debian's chromium driven by pytest-playwright
(Playwright's own browser download cannot run here), against a real Flower, worker,
Redis and sandbox.

Chromium comes from SNACKVIDEO_CHROMIUM, else ``chromium`` on PATH (``.ci/run`` installs
it). Without it these tests skip on a developer's machine and fail in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, expect

from producers import Producer
from tests.conftest import STORE, STORE_KEY, Sandbox, Worker, wait_until, worker_env
from tests.queue_helpers import event
from tests.test_flower import AUTH, Flower, start_flower  # noqa: F401 (a fixture)
from tests.test_flower_pages import NOWHERE, seed
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.keys import DELIVERY_QUEUE

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("SNACKVIDEO_CHROMIUM") or shutil.which("chromium")
SETTLE_SECONDS = 90.0


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments, pointed at the system's chromium."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on PATH (set SNACKVIDEO_CHROMIUM to use another)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture
def logged_in(browser: Browser) -> Iterator[BrowserContext]:
    """A browser that answers Flower's login (basic auth) with the operator's password."""
    context = browser.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]})
    yield context
    context.close()


def test_a_no_api_key_entry_replayed_with_one_click_reaches_the_sandbox(
    redis_url: str,
    sandbox: Sandbox,
    start_worker: Callable[..., Worker],
    start_flower: Callable[..., Flower],  # noqa: F811
    logged_in: BrowserContext,
    tmp_path: Path,
) -> None:
    without_key = worker_env(redis_url, sandbox.base_url, SCALEV_STOREFRONT_API_KEYS="{}")
    worker = start_worker(without_key, concurrency=1)
    flower = start_flower(without_key)
    producer = Producer(redis_url)
    job_id = producer.enqueue(STORE, event("clk-browser-1"))
    producer.close()
    store = DeadLetterStore(redis.Redis.from_url(redis_url))
    wait_until(lambda: store.find(job_id), SETTLE_SECONDS, what="the no_api_key entry")

    page = logged_in.new_page()
    page.goto(f"{flower.base_url}/dead-letters")
    row = page.locator(f'tr[data-entry-id="{job_id}-r0"]')
    expect(row).to_contain_text("no_api_key")
    expect(row).to_contain_text("clk-browser-1")
    expect(page.locator("#dead-letter-counts")).to_contain_text("no_api_key × 1")
    expect(page.get_by_role("link", name="Dead letters")).to_have_attribute("aria-current", "page")
    page.screenshot(path=str(tmp_path / "dead-letters.png"), full_page=True)  # not the repo

    # The operator fixes the key: the worker restarts with it.
    worker.stop()
    start_worker(worker_env(redis_url, sandbox.base_url), concurrency=1)

    row.get_by_role("link").click()
    expect(page.locator("#reason")).to_have_text("no_api_key")
    page.locator("#replay").click()
    expect(page.locator("#result")).to_contain_text("Replayed 1 entry")
    expect(page.locator("#result")).to_contain_text("skipped 0")
    received = wait_until(
        lambda: sandbox.events(click_id="clk-browser-1"), SETTLE_SECONDS, what="the delivery"
    )
    assert received[0]["store_id"] == STORE
    assert STORE_KEY not in page.content()
    assert store.find(job_id) is None


def test_bulk_replay_replays_what_its_preview_counted_and_purge_names_the_count(
    redis_client: redis.Redis,
    redis_url: str,
    start_flower: Callable[..., Flower],  # noqa: F811
    logged_in: BrowserContext,
) -> None:
    specs = [(f"job-{n}", "http_404", "s1") for n in range(7)]
    store = seed(
        redis_client, *specs, ("job-k1", "no_api_key", "s2"), ("job-k2", "no_api_key", "s2")
    )
    flower = start_flower(worker_env(redis_url, NOWHERE))
    page = logged_in.new_page()

    page.goto(f"{flower.base_url}/dead-letters?reason=http_404")
    page.locator("#replay-matching").click()
    preview = page.locator("#preview")
    expect(preview).to_contain_text("7 entries match: http_404 × 7")
    previewed = count_in(preview.inner_text(), r"(\d+) entries match")
    expect(page.locator("#confirm")).to_have_text("Replay 7 entries")
    page.locator("#confirm").click()
    result = page.locator("#result")
    expect(result).to_contain_text("Replayed 7 entries: http_404 × 7; skipped 0.")
    assert count_in(result.inner_text(), r"Replayed (\d+) entries") == previewed
    assert redis_client.llen(DELIVERY_QUEUE) == previewed == 7
    assert len(store) == 2

    page.goto(f"{flower.base_url}/dead-letters?store=s2")
    page.locator("#purge-matching").click()
    expect(page.locator("#preview")).to_contain_text("2 entries match: no_api_key × 2")
    expect(page.locator("#confirm")).to_have_text("Purge 2 entries for good")
    page.locator("#confirm").click()
    expect(page.locator("#result")).to_contain_text("Purged 2 entries")
    assert len(store) == 0 and redis_client.llen(DELIVERY_QUEUE) == 7


def test_anonymous_visitors_get_401_and_a_cross_site_post_gets_403_and_changes_nothing(
    redis_client: redis.Redis,
    redis_url: str,
    browser: Browser,
    start_flower: Callable[..., Flower],  # noqa: F811
    logged_in: BrowserContext,
) -> None:
    store = seed(redis_client, ("job-x", "http_404", "s1"))
    flower = start_flower(worker_env(redis_url, NOWHERE))

    # A browser without the login: Chromium gives up on the challenge as a navigation, so
    # ask through the context's own request client, which shows the answer.
    anonymous = browser.new_context()
    for path in ("/dead-letters", "/dead-letters/job-x", "/api/dead-letters"):
        response = anonymous.request.get(f"{flower.base_url}{path}")
        assert response.status == 401, path
        assert "job-x" not in response.text()
    refused = anonymous.request.post(
        f"{flower.base_url}/dead-letters/replay", form={"ids": "job-x"}
    )
    assert refused.status == 401
    anonymous.close()

    # A page on another site posts the Replay form to Flower in the operator's browser,
    # which holds the operator's login.
    target = f"{flower.base_url}/dead-letters/replay"
    with other_site(target, "job-x") as attacker_url:
        page = logged_in.new_page()
        with page.expect_response(lambda r: r.url == target) as answer:
            page.goto(attacker_url)
        assert answer.value.status == 403
        assert answer.value.request.header_value("sec-fetch-site") == "cross-site"
    assert store.get("job-x-r0") is not None and redis_client.llen(DELIVERY_QUEUE) == 0


def test_an_entry_holding_script_shows_it_as_text_and_never_runs_it(
    redis_client: redis.Redis,
    redis_url: str,
    start_flower: Callable[..., Flower],  # noqa: F811
    logged_in: BrowserContext,
) -> None:
    hostile = '<script>window.pwned = "body"</script><img src=x onerror="window.pwned=\'img\'">'
    DeadLetterStore(redis_client).add(
        DeadLetter(
            job_id="job-xss",
            store_id="<b>store</b>",
            payload={"click_id": '<script>window.pwned = "click"</script>'},
            reason="http_400",
            status_code=400,
            error=hostile,
        )
    )
    flower = start_flower(worker_env(redis_url, NOWHERE))
    page = logged_in.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(f"{flower.base_url}/dead-letters")
    expect(page.locator('tr[data-entry-id="job-xss-r0"]')).to_contain_text(
        '<script>window.pwned = "click"</script>'
    )
    page.goto(f"{flower.base_url}/dead-letters/job-xss")
    expect(page.locator("#error-body")).to_have_text(hostile)
    expect(page.locator("#payload")).to_contain_text('<script>window.pwned = \\"click\\"</script>')
    page.wait_for_load_state("load")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#entry-fields b").count() == 0  # the store id's tag is text too
    assert dialogs == []


def count_in(text: str, pattern: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in {text!r}"
    return int(found.group(1))


class other_site:
    """A page on http://localhost:<port> (Flower is on 127.0.0.1: another site) whose
    form posts ``ids`` to ``target`` as soon as it loads."""

    def __init__(self, target: str, entry: str) -> None:
        html = (
            f'<form id="f" method="post" action="{target}">'
            f'<input name="ids" value="{entry}"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()

        class Attacker(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://localhost:{self.server.server_address[1]}/"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
