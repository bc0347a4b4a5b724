"""The dead-letter pages and their JSON API, served by a real Flower process started as
the Procfile starts it, against a real Redis: authentication, cross-site refusals,
filters, dry runs, url_prefix and read-only mode. (The browser tests are in
test_flower_pages_browser.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
import redis
import requests
import tornado.web

from tests.conftest import worker_env
from tests.test_flower import AUTH, Flower, start_flower  # noqa: F401 (a fixture)
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.keys import DELIVERY_QUEUE

pytestmark = pytest.mark.integration

NOWHERE = "http://127.0.0.1:9"  # no worker runs here: nothing is sent


def seed(client: redis.Redis, *specs: tuple[str, str, str]) -> DeadLetterStore:
    """Entries (job_id, reason, store_id), one millisecond apart, the first oldest."""
    store = DeadLetterStore(client)
    start = time.time() - 60
    for n, (job_id, reason, store_id) in enumerate(specs):
        store.add(
            DeadLetter(
                job_id=job_id,
                store_id=store_id,
                payload={"click_id": f"clk-{job_id}", "events": [{"event_name": "purchase"}]},
                reason=reason,
                status_code=404 if reason == "http_404" else None,
                dead_lettered_at=start + n / 1000,
            )
        )
    return store


def post(flower: Flower, path: str, auth: tuple[str, str] | None = AUTH, **kwargs: object):
    return requests.post(f"{flower.base_url}{path}", auth=auth, timeout=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def flower_env(redis_url: str) -> dict[str, str]:
    return worker_env(redis_url, NOWHERE)


def test_anonymous_and_cross_site_requests_are_refused_and_change_nothing(
    redis_client: redis.Redis,
    flower_env: dict[str, str],
    start_flower: Callable[..., Flower],  # noqa: F811
) -> None:
    store = seed(redis_client, ("job-a", "http_404", "s1"), ("job-b", "no_api_key", "s2"))
    flower = start_flower(flower_env)

    for path in (
        "/dead-letters",
        "/dead-letters/job-a",
        "/api/dead-letters",
        "/api/dead-letters/job-a",
    ):
        assert flower.get(path, auth=None).status_code == 401, path
        assert flower.get(path, auth=("ops", "wrong")).status_code == 401, path
    assert post(flower, "/dead-letters/replay", auth=None, data={"ids": "job-a"}).status_code == 401
    assert post(flower, "/api/dead-letters/purge", auth=None, json={"all": True}).status_code == 401

    # With the right password, but sent from another site (a browser says so): refused.
    cross_site = {"Sec-Fetch-Site": "cross-site"}
    other_origin = {"Origin": "http://evil.example"}
    for headers in (cross_site, other_origin):
        done = post(flower, "/dead-letters/replay", data={"ids": "job-a"}, headers=headers)
        assert done.status_code == 403, headers
        done = post(flower, "/api/dead-letters/purge", json={"all": True}, headers=headers)
        assert done.status_code == 403, headers
    assert len(store) == 2 and redis_client.llen(DELIVERY_QUEUE) == 0

    # The same request from a script (no browser headers) acts.
    done = post(flower, "/api/dead-letters/replay", json={"ids": ["job-a"]})
    assert done.status_code == 200, done.text
    assert done.json()["ids"] == ["job-a-r0"]
    assert len(store) == 1 and redis_client.llen(DELIVERY_QUEUE) == 1


def test_the_api_filters_shows_and_acts_on_exactly_what_a_dry_run_counted(
    redis_client: redis.Redis,
    flower_env: dict[str, str],
    start_flower: Callable[..., Flower],  # noqa: F811
) -> None:
    store = seed(
        redis_client,
        ("job-1", "http_404", "s1"),
        ("job-2", "http_404", "s2"),
        ("job-3", "no_api_key", "s1"),
        ("job-4", "http_400", "s1"),
    )
    flower = start_flower(flower_env)

    listing = flower.get("/api/dead-letters?reason=http_404").json()
    assert [e["id"] for e in listing["entries"]] == ["job-2-r0", "job-1-r0"]  # newest first
    assert listing["counts_by_reason"] == {"http_400": 1, "http_404": 2, "no_api_key": 1}
    assert listing["total"] == 4
    page = flower.get("/api/dead-letters?limit=3&offset=3").json()
    assert [e["id"] for e in page["entries"]] == ["job-1-r0"] and page["next_offset"] is None
    assert flower.get("/api/dead-letters?store=s2").json()["entries"][0]["job_id"] == "job-2"
    assert flower.get("/api/dead-letters/job-3").json()["reason"] == "no_api_key"

    bad = flower.get("/api/dead-letters?since=yesterday")
    assert bad.status_code == 400 and bad.json()["error"].startswith("since: invalid duration")
    bad = post(flower, "/api/dead-letters/replay", json={"filter": {"reason": "http_4o4"}})
    assert bad.status_code == 400 and bad.json()["error"].startswith("filter.reason: unknown")
    bad = post(flower, "/api/dead-letters/replay", json={"ids": ["job-1"], "all": True})
    assert bad.status_code == 400 and "exactly one of" in bad.json()["error"]
    missing = post(flower, "/api/dead-letters/purge", json={"ids": ["job-1", "nope"]})
    assert missing.status_code == 404 and missing.json()["missing"] == ["nope"]
    assert len(store) == 4

    preview = post(
        flower, "/api/dead-letters/replay", json={"filter": {"store": "s1"}, "dry_run": True}
    ).json()
    assert preview["count"] == 3 and preview["by_reason"] == {
        "http_400": 1,
        "http_404": 1,
        "no_api_key": 1,
    }
    # An entry dead-lettered after the dry run is not in what it counted: not replayed.
    late = DeadLetter("job-late", "s1", {}, "http_404", dead_lettered_at=preview["before"] + 1)
    store.add(late)
    done = post(
        flower,
        "/api/dead-letters/replay",
        json={"filter": {"store": "s1", "before": preview["before"]}},
    ).json()
    assert done["count"] == preview["count"] == 3 and done["skipped"] == []
    assert sorted(done["ids"]) == sorted(preview["ids"])
    assert redis_client.llen(DELIVERY_QUEUE) == 3
    assert store.get("job-late-r0") is not None

    purged = post(flower, "/api/dead-letters/purge", json={"ids": ["job-2"]}).json()
    assert purged["ids"] == ["job-2-r0"] and store.get("job-2-r0") is None


def test_the_pages_honour_url_prefix_and_read_only(
    redis_client: redis.Redis,
    flower_env: dict[str, str],
    start_flower: Callable[..., Flower],  # noqa: F811
) -> None:
    store = seed(redis_client, ("job-p", "http_404", "s1"))
    flower = start_flower(flower_env, "--read_only=True", url_prefix="ops")

    page = flower.get("/dead-letters")
    assert page.status_code == 200
    assert 'href="/ops/dead-letters"' in page.text  # Flower's navigation links here
    assert 'href="/ops/dead-letters/job-p-r0"' in page.text
    assert "Replay</button>" not in page.text  # read-only: no buttons, and why
    assert "Flower runs read-only" in page.text
    assert requests.get(f"{flower.origin}/dead-letters", auth=AUTH, timeout=10).status_code == 404
    assert flower.get("/api/dead-letters/job-p").json()["id"] == "job-p-r0"

    assert post(flower, "/dead-letters/replay", data={"ids": "job-p"}).status_code == 403
    assert post(flower, "/api/dead-letters/purge", json={"ids": ["job-p"]}).status_code == 403
    dry = post(flower, "/api/dead-letters/purge", json={"ids": ["job-p"], "dry_run": True})
    assert dry.status_code == 200 and dry.json()["count"] == 1
    assert len(store) == 1 and redis_client.llen(DELIVERY_QUEUE) == 0


def test_without_a_login_configured_the_pages_show_but_nothing_changes(
    redis_client: redis.Redis,
    flower_env: dict[str, str],
    start_flower: Callable[..., Flower],  # noqa: F811
) -> None:
    # As Flower's own buttons, which act through its API: no authentication, no actions.
    store = seed(redis_client, ("job-n", "http_404", "s1"))
    flower = start_flower(flower_env, login=False)
    page = flower.get("/dead-letters", auth=None)
    assert page.status_code == 200 and "job-n-r0" in page.text
    assert "need Flower&#x27;s login" in page.text and "Replay</button>" not in page.text
    assert post(flower, "/dead-letters/replay", auth=None, data={"ids": "job-n"}).status_code == 401
    refused = post(flower, "/api/dead-letters/replay", auth=None, json={"ids": ["job-n"]})
    assert refused.status_code == 401
    assert len(store) == 1 and redis_client.llen(DELIVERY_QUEUE) == 0


def test_with_flowers_oauth_a_post_needs_the_xsrf_token_the_pages_carry(
    redis_client: redis.Redis,
    flower_env: dict[str, str],
    start_flower: Callable[..., Flower],  # noqa: F811
) -> None:
    # Flower's OAuth keeps the user in a signed cookie; signed here with the same secret
    # instead of asking a provider. Cookie sessions are where XSRF tokens matter.
    secret = "flower-pages-test-cookie-secret"
    env = dict(flower_env, FLOWER_AUTH="ops@example.com", FLOWER_COOKIE_SECRET=secret)
    store = seed(redis_client, ("job-o", "http_404", "s1"), ("job-q", "http_404", "s1"))
    flower = start_flower(env, login=False)
    session = requests.Session()
    session.cookies.set(
        "user", tornado.web.create_signed_value(secret, "user", "ops@example.com").decode()
    )

    anonymous = requests.get(f"{flower.base_url}/dead-letters", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
    page = session.get(f"{flower.base_url}/dead-letters", timeout=10)
    assert page.status_code == 200 and "job-o-r0" in page.text
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token is not None and session.cookies.get("_xsrf")

    replay = f"{flower.base_url}/dead-letters/replay"
    assert session.post(replay, data={"ids": "job-o"}, timeout=10).status_code == 403
    api = f"{flower.base_url}/api/dead-letters/replay"
    assert session.post(api, json={"ids": ["job-q"]}, timeout=10).status_code == 403
    assert len(store) == 2 and redis_client.llen(DELIVERY_QUEUE) == 0

    done = session.post(replay, data={"ids": "job-o", "_xsrf": token.group(1)}, timeout=10)
    assert done.status_code == 200 and "Replayed 1 entry" in done.text
    headers = {"X-Xsrftoken": token.group(1)}
    done = session.post(api, json={"ids": ["job-q"]}, headers=headers, timeout=10)
    assert done.status_code == 200 and done.json()["ids"] == ["job-q-r0"]
    assert len(store) == 0 and redis_client.llen(DELIVERY_QUEUE) == 2
