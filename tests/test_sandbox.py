"""The sandbox endpoint, exercised over real HTTP on a port-0 server."""

from __future__ import annotations

import copy
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import SandboxConfig, serve_in_thread
from sandbox.cli import parse_args
from sandbox.ratelimit import FixedWindowLimiter, parse_rate_limit, render_headers
from sandbox.schema import validate_events_request

KEY = "pk_demo_sandbox_key"
EVENTS = "/v3/stores/{store}/public/analytics/snackvideo/events"
ROOT = Path(__file__).resolve().parent.parent
VALID: dict[str, Any] = {
    "click_id": "clk-1",
    "event_source_url": "https://shop.example/checkout",
    "referrer_url": "https://ads.snackvideo.example/c?id=1",
    "events": [
        {
            "event_name": "purchase",
            "properties": {
                "content_type": "product",
                "currency": "IDR",
                "value": 150000,
                "quantity": 2,
                "price": 75000,
            },
        }
    ],
    "variants": [{"variant_unique_id": "var_1", "quantity": 2}],
    "bundle_price_options": [{"bundle_price_option_unique_id": "bpo_1", "quantity": 1}],
}


def body(**changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(VALID)
    payload.update(changes)
    return payload


@dataclass
class Sandbox:
    server: Any
    url: str
    http: requests.Session

    def post(
        self, payload: Any = None, store: str = "demo_store", key: str | None = KEY
    ) -> requests.Response:
        headers = {} if key is None else {"X-Scalev-Storefront-Api-Key": key}
        if payload is None:
            payload = VALID
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.http.post(self.url + EVENTS.format(store=store), data=data, headers=headers)

    def get(self, path: str, **params: str) -> Any:
        response = self.http.get(self.url + path, params=params)
        assert response.status_code == 200
        return response.json()

    def admin(self, path: str, payload: Any = None) -> requests.Response:
        return self.http.post(self.url + path, json=payload)


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(**config: Any) -> Sandbox:
        server, url = serve_in_thread(SandboxConfig(**config))
        sandbox = Sandbox(server, url, requests.Session())
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.http.close()  # close keep-alive connections before the server goes
        sandbox.server.shutdown()
        sandbox.server.server_close()


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return start_sandbox()


# ---- accepted events and auth ---------------------------------------------------------------


def test_valid_event_is_accepted_and_recorded(sandbox: Sandbox) -> None:
    before = time.time()
    response = sandbox.post(VALID)

    assert response.status_code == 204
    assert response.content == b""
    [event] = sandbox.get("/_sandbox/events")["events"]
    assert event["store_id"] == "demo_store"
    assert event["click_id"] == "clk-1"
    assert event["body"] == VALID
    assert before <= event["received_at"] <= time.time()
    stats = sandbox.get("/_sandbox/stats")
    assert stats["requests"] == 1
    assert stats["accepted"] == 1
    assert stats["by_status"] == {"204": 1}


def test_events_filters(sandbox: Sandbox) -> None:
    for click_id in ("a", "b", "a"):
        assert sandbox.post(body(click_id=click_id)).status_code == 204

    assert len(sandbox.get("/_sandbox/events", click_id="a")["events"]) == 2
    assert len(sandbox.get("/_sandbox/events", store_id="demo_store")["events"]) == 3
    assert sandbox.get("/_sandbox/events", store_id="other")["events"] == []


def test_unknown_store_is_404(sandbox: Sandbox) -> None:
    response = sandbox.post(VALID, store="nope")

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.json()["error_code"] == "store_not_found"
    assert sandbox.get("/_sandbox/events")["events"] == []


def test_missing_key_is_401_and_wrong_key_is_403(sandbox: Sandbox) -> None:
    missing = sandbox.post(VALID, key=None)
    wrong = sandbox.post(VALID, key="pk_someone_elses_key")

    assert missing.status_code == 401
    assert missing.json()["error_code"] == "missing_api_key"
    assert wrong.status_code == 403
    assert wrong.json()["error_code"] == "invalid_api_key"


def test_key_header_name_is_case_insensitive(sandbox: Sandbox) -> None:
    url = sandbox.url + EVENTS.format(store="demo_store")
    response = sandbox.http.post(url, json=VALID, headers={"x-scalev-storefront-api-key": KEY})

    assert response.status_code == 204


def test_keep_alive_connection_serves_several_requests(sandbox: Sandbox) -> None:
    host, port = sandbox.server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        headers = {"X-Scalev-Storefront-Api-Key": KEY, "Content-Type": "application/json"}
        statuses = []
        for store in ("demo_store", "nope", "demo_store"):
            conn.request("POST", EVENTS.format(store=store), json.dumps(VALID), headers)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()

    assert statuses == [204, 404, 204]


# ---- schema -----------------------------------------------------------------------------


def _event(**changes: Any) -> list[dict[str, Any]]:
    event = copy.deepcopy(VALID["events"][0])
    event.update(changes)
    return [event]


def _props(**changes: Any) -> list[dict[str, Any]]:
    return _event(properties={**VALID["events"][0]["properties"], **changes})


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(events=_props(quantity=True)), "events.0.properties.quantity"),
        (body(events=_props(value="150000")), "events.0.properties.value"),
        (body(events=_props(price=1.5)), "events.0.properties.price"),
        (body(events=_props(currency=360)), "events.0.properties.currency"),
        (body(events=_event(colour="red")), "events.0.colour"),
        (body(events=_event(event_name=None)), "events.0.event_name"),
        (body(events=_event(properties=[1])), "events.0.properties"),
        (body(events=[]), "events"),
        (body(events={"event_name": "purchase"}), "events"),
        (body(event_source_url="not a url"), "event_source_url"),
        (body(referrer_url="/relative/path"), "referrer_url"),
        ({k: v for k, v in VALID.items() if k != "click_id"}, "click_id"),
        (body(click_id=123), "click_id"),
        (body(variants=[{"variant_unique_id": "v", "quantity": 0}]), "variants.0.quantity"),
        (body(variants=[{"variant_unique_id": "v", "quantity": 1, "x": 1}]), "variants.0.x"),
        (body(bundle_price_options=[{"quantity": 1}]), "bundle_price_options.0.bundle_price_option_unique_id"),  # noqa: E501
        (body(bundle_price_options=None), "bundle_price_options"),
        ([VALID], "body"),
        (b"{not json", "body"),
        (b'{"click_id": "c", "events": [{"event_name": "x"}], "n": NaN}', "body"),
    ],
)
def test_schema_violation_is_400_naming_the_field(
    sandbox: Sandbox, payload: Any, field: str
) -> None:
    response = sandbox.post(payload)

    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "bad_request"
    assert error["error_code"] == "invalid_payload"
    assert field in error["errors"]
    assert set(error) <= {"error", "error_code", "message", "errors"}  # ApiErrorResponse


def test_every_problem_is_reported_at_once(sandbox: Sandbox) -> None:
    response = sandbox.post({"events": [{"event_name": "x", "properties": {"value": True}}]})

    assert set(response.json()["errors"]) == {"click_id", "events.0.properties.value"}


def test_extra_keys_and_nulls_are_accepted(sandbox: Sandbox) -> None:
    payload = body(
        test_event_code="TEST123",  # extra top-level key
        event_source_url=None,
        referrer_url=None,
        events=[
            {
                "event_name": "addToCart",
                "properties": {
                    "value": None,
                    "quantity": None,
                    "price": None,
                    "currency": None,
                    "content_name": None,
                    "brand": "acme",  # extra properties key
                },
            },
            {"event_name": "pageView", "properties": None},
            {"event_name": "search"},
        ],
        variants=[],
    )

    assert sandbox.post(payload).status_code == 204


def test_minimal_payload_is_valid() -> None:
    assert validate_events_request({"click_id": "", "events": [{"event_name": "x"}]}) == {}


# ---- rate limit -------------------------------------------------------------------------


@pytest.mark.parametrize("reset_style", ["seconds", "epoch", "epoch-ms"])
def test_rate_limit_returns_plain_429_with_headers(
    start_sandbox: Callable[..., Sandbox], reset_style: str
) -> None:
    sandbox = start_sandbox(rate_limit=3, rate_window_seconds=60, reset_style=reset_style)

    allowed = [sandbox.post(VALID) for _ in range(3)]
    refused = sandbox.post(VALID)

    assert [r.status_code for r in allowed] == [204, 204, 204]
    assert [r.headers["X-Ratelimit-Remaining"] for r in allowed] == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.headers["Content-Type"].startswith("text/plain")
    assert refused.text == "Too Many Requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-Ratelimit-Limit"] == "3"
    assert refused.headers["X-Ratelimit-Remaining"] == "0"
    reset = int(refused.headers["X-Ratelimit-Reset"])
    if reset_style == "seconds":
        assert 1 <= reset <= 60
    elif reset_style == "epoch":
        assert time.time() < reset <= time.time() + 61
    else:
        assert time.time() * 1000 < reset <= (time.time() + 61) * 1000
    stats = sandbox.get("/_sandbox/stats")
    assert stats["by_status"] == {"204": 3, "429": 1}
    assert stats["max_in_window"] == 4


def test_rate_limit_headers_are_on_error_responses_too(
    start_sandbox: Callable[..., Sandbox],
) -> None:
    sandbox = start_sandbox(rate_limit=10, rate_window_seconds=60, fail_first=1)

    responses = [
        sandbox.post(VALID, store="nope"),
        sandbox.post(VALID, key=None),
        sandbox.post(VALID, key="wrong"),
        sandbox.post({}),
        sandbox.post(VALID),  # injected 503
    ]

    assert [r.status_code for r in responses] == [404, 401, 403, 400, 503]
    assert [r.headers["X-Ratelimit-Remaining"] for r in responses] == ["9", "8", "7", "6", "5"]


def test_no_rate_limit_means_no_headers(sandbox: Sandbox) -> None:
    response = sandbox.post(VALID)

    assert response.status_code == 204
    assert not [h for h in response.headers if h.lower().startswith("x-ratelimit")]


def test_hidden_limit_refuses_without_rate_limit_headers(
    start_sandbox: Callable[..., Sandbox],
) -> None:
    """A proxy that strips X-Ratelimit-*: the limit still holds, only Retry-After tells."""
    sandbox = start_sandbox(rate_limit=2, rate_window_seconds=60, rate_limit_headers=False)

    responses = [sandbox.post(VALID) for _ in range(3)]

    assert [r.status_code for r in responses] == [204, 204, 429]
    for response in responses:
        assert not [h for h in response.headers if h.lower().startswith("x-ratelimit")]
    assert 1 <= int(responses[2].headers["Retry-After"]) <= 60


def test_clock_aligned_windows_start_on_multiples_of_the_window() -> None:
    limiter = FixedWindowLimiter(limit=2, window_seconds=10, alignment="clock")

    first = limiter.hit(1004.0)  # the window began at 1000, not at this request
    second = limiter.hit(1009.9)
    third = limiter.hit(1010.1)  # the next multiple: a fresh window

    assert first is not None and first.reset_at == 1010.0
    assert second is not None and second.remaining == 0
    assert third is not None and third.allowed and third.remaining == 1
    assert third.reset_at == 1020.0
    assert [w["start"] for w in limiter.windows()] == [1000.0, 1010.0]


def test_window_alignment_and_hidden_headers_are_validated() -> None:
    with pytest.raises(ValueError, match="window_alignment"):
        SandboxConfig(window_alignment="sometimes")
    with pytest.raises(ValueError, match="rate_limit_headers"):
        SandboxConfig(rate_limit_headers="no")  # type: ignore[arg-type]
    options = parse_args(["--window-alignment", "clock", "--no-rate-limit-headers"], env={})
    assert options.config.window_alignment == "clock"
    assert options.config.rate_limit_headers is False


def test_limiter_windows_and_header_styles() -> None:
    limiter = FixedWindowLimiter(limit=2, window_seconds=10)

    first = limiter.hit(1000.0)
    second = limiter.hit(1004.2)
    third = limiter.hit(1009.9)
    fresh = limiter.hit(1010.0)

    assert first is not None and second is not None and third is not None and fresh is not None
    verdicts = (first.allowed, second.allowed, third.allowed, fresh.allowed)
    assert verdicts == (True, True, False, True)
    assert render_headers(second, "seconds")[2] == ("X-Ratelimit-Reset", "6")  # ceil(5.8)
    assert render_headers(third, "seconds")[2] == ("X-Ratelimit-Reset", "1")  # never 0
    assert render_headers(second, "epoch")[2] == ("X-Ratelimit-Reset", "1010")
    assert render_headers(second, "epoch-ms")[2] == ("X-Ratelimit-Reset", "1010000")
    assert limiter.peak == 3
    assert limiter.windows() == [{"start": 1000.0, "count": 3}, {"start": 1010.0, "count": 1}]


# ---- injected faults and latency --------------------------------------------------------


def test_fail_first_fails_each_click_id_n_times(start_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = start_sandbox(fail_first=2)

    statuses = [sandbox.post(VALID).status_code for _ in range(3)]
    other = sandbox.post(body(click_id="clk-2"))
    failed = sandbox.post(body(click_id="clk-3"))

    assert statuses == [503, 503, 204]
    assert other.status_code == 503
    assert failed.json() == {"error": "unavailable", "message": "sandbox injected failure"}
    stats = sandbox.get("/_sandbox/stats")
    assert stats["attempts_by_click_id"] == {"clk-1": 3, "clk-2": 1, "clk-3": 1}
    assert stats["accepted"] == 1


def test_always_fail_prefix(start_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = start_sandbox(always_fail=["doomed-"], fail_status=500)

    doomed = [sandbox.post(body(click_id="doomed-1")).status_code for _ in range(3)]
    fine = sandbox.post(body(click_id="fine-1"))

    assert doomed == [500, 500, 500]
    assert fine.status_code == 204
    assert [e["click_id"] for e in sandbox.get("/_sandbox/events")["events"]] == ["fine-1"]


def test_latency_is_added(start_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = start_sandbox(latency_ms=50)

    started = time.monotonic()
    response = sandbox.post(VALID)

    assert response.status_code == 204
    assert time.monotonic() - started >= 0.05  # a lower bound only: cannot flake


# ---- admin ------------------------------------------------------------------------------


def test_health_and_unknown_route(sandbox: Sandbox) -> None:
    assert sandbox.get("/_sandbox/health") == {"ok": True}
    missing = sandbox.http.get(sandbox.url + "/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert sandbox.admin("/nowhere").status_code == 404


def test_config_update_fixes_unknown_store(sandbox: Sandbox) -> None:
    assert sandbox.post(VALID, store="shop_b", key="pk_shop_b_secret").status_code == 404

    updated = sandbox.admin("/_sandbox/config", {"stores": {"shop_b": "pk_shop_b_secret"}})

    assert updated.status_code == 200
    assert updated.json()["stores"] == {"demo_store": "pk_d…", "shop_b": "pk_s…"}
    assert sandbox.post(VALID, store="shop_b", key="pk_shop_b_secret").status_code == 204
    assert sandbox.post(VALID).status_code == 204  # stores merge: demo_store is kept


def test_config_update_changes_faults_and_rate_limit(
    start_sandbox: Callable[..., Sandbox],
) -> None:
    sandbox = start_sandbox(fail_first=5)
    assert sandbox.post(VALID).status_code == 503

    updated = sandbox.admin("/_sandbox/config", {"fail_first": 0, "rate_limit": "1/60"})

    assert updated.json()["rate_limit"] == 1
    assert updated.json()["rate_window_seconds"] == 60
    assert sandbox.get("/_sandbox/config") == updated.json()
    assert [sandbox.post(VALID).status_code for _ in range(2)] == [204, 429]
    assert sandbox.admin("/_sandbox/config", {"rate_limit": None}).status_code == 200
    assert sandbox.post(VALID).status_code == 204


def test_announce_limit_lies_in_the_headers_for_the_first_n_answers(
    start_sandbox: Callable[..., Sandbox],
) -> None:
    sandbox = start_sandbox(rate_limit=5, rate_window_seconds=60)
    updated = sandbox.admin("/_sandbox/config", {"announce_limit": 0, "announce_limit_answers": 2})
    assert updated.status_code == 200

    answers = [sandbox.post(VALID) for _ in range(3)]

    # The real limit (5) still decides: all three accepted. Only the headers lie.
    assert [r.status_code for r in answers] == [204, 204, 204]
    seen = [(r.headers["X-Ratelimit-Limit"], r.headers["X-Ratelimit-Remaining"]) for r in answers]
    assert seen == [("0", "0"), ("0", "0"), ("5", "2")]
    assert sandbox.get("/_sandbox/stats")["announced_limit_answers"] == 2
    # Setting it again counts the first N answers from then; without a count, all lie.
    sandbox.admin("/_sandbox/config", {"announce_limit": 3, "announce_limit_answers": None})
    lied = [sandbox.post(VALID) for _ in range(2)]
    assert [r.headers["X-Ratelimit-Limit"] for r in lied] == ["3", "3"]
    # A config update opens a fresh window: 4 and 3 really left, capped to the 3 announced.
    assert [r.headers["X-Ratelimit-Remaining"] for r in lied] == ["3", "3"]
    assert sandbox.admin("/_sandbox/config", {"announce_limit": -1}).status_code == 400


def test_bad_config_update_is_400_and_changes_nothing(sandbox: Sandbox) -> None:
    response = sandbox.admin(
        "/_sandbox/config", {"fail_status": "oops", "reset_style": "weekly", "colour": 1}
    )
    also_bad = sandbox.admin("/_sandbox/config", {"fail_status": 99, "latency_ms": -1})

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"colour"}
    assert set(also_bad.json()["errors"]) == {"fail_status", "latency_ms"}
    assert sandbox.get("/_sandbox/config")["fail_status"] == 503


def test_reset_clears_events_counters_and_window(start_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = start_sandbox(rate_limit=2, rate_window_seconds=60, fail_first=1)
    assert [sandbox.post(VALID).status_code for _ in range(3)] == [503, 204, 429]

    assert sandbox.admin("/_sandbox/reset").status_code == 200

    assert sandbox.get("/_sandbox/events") == {"events": []}
    stats = sandbox.get("/_sandbox/stats")
    assert (stats["requests"], stats["by_status"], stats["accepted"]) == (0, {}, 0)
    assert stats["attempts_by_click_id"] == {}
    assert stats["max_in_window"] == 0
    assert sandbox.post(VALID).status_code == 503  # attempts and window start over


def test_api_key_never_leaks(start_sandbox: Callable[..., Sandbox]) -> None:
    secret = "pk_super_secret_storefront_key"
    sandbox = start_sandbox(stores={"s1": secret})
    assert sandbox.post(VALID, store="s1", key=secret).status_code == 204
    assert sandbox.post(VALID, store="s1", key=secret[:-1]).status_code == 403

    outputs = [
        sandbox.http.get(sandbox.url + path).text
        for path in ("/_sandbox/events", "/_sandbox/config", "/_sandbox/stats")
    ]
    outputs.append(sandbox.admin("/_sandbox/config", {"fail_first": 0}).text)
    outputs.append(sandbox.post(VALID, store="s1", key="wrong").text)
    outputs.append(repr(sandbox.server.state.config))

    for text in outputs:
        assert secret not in text
        assert secret[:-1] not in text


# ---- CLI --------------------------------------------------------------------------------


def test_cli_parses_rate_limit_and_faults() -> None:
    options = parse_args(
        ["--port", "0", "--rate-limit", "25/1", "--reset-style", "epoch-ms",
         "--fail-first", "2", "--always-fail", "bad-", "--always-fail", "worse-",
         "--fail-status", "500", "--latency-ms", "7.5", "--announce-limit", "0",
         "--announce-limit-answers", "3"],
        env={},
    )  # fmt: skip

    assert options.port == 0
    assert options.host == "127.0.0.1"
    config = options.config
    assert (config.rate_limit, config.rate_window_seconds) == (25, 1.0)
    assert config.reset_style == "epoch-ms"
    assert (config.fail_first, config.fail_status) == (2, 500)
    assert config.always_fail == ["bad-", "worse-"]
    assert config.latency_ms == 7.5
    assert (config.announce_limit, config.announce_limit_answers) == (0, 3)
    assert config.stores == {"demo_store": KEY}


def test_cli_defaults() -> None:
    options = parse_args([], env={})

    assert (options.host, options.port) == ("127.0.0.1", 8099)
    assert options.config.rate_limit is None
    assert options.config.reset_style == "seconds"
    assert options.config.fail_status == 503
    assert options.config.announce_limit is None


@pytest.mark.parametrize(
    ("spec", "parsed"), [("25/1", (25, 1.0)), ("100/10", (100, 10.0)), ("5", (5, 1.0))]
)
def test_parse_rate_limit(spec: str, parsed: tuple[int, float]) -> None:
    assert parse_rate_limit(spec) == parsed


@pytest.mark.parametrize("spec", ["", "fast", "10/0", "-1/1", "1/2/3"])
def test_bad_rate_limit_is_a_usage_error(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--rate-limit", spec], env={})

    assert exc.value.code == 2
    assert "rate-limit" in capsys.readouterr().err


def test_cli_stores_sources(tmp_path: Path) -> None:
    stores_file = tmp_path / "stores.json"
    stores_file.write_text('{"a": "pk_a", "b": "pk_b"}')
    env = {"SANDBOX_STORES": '{"from_env": "pk_env"}'}

    from_file = parse_args(["--stores", str(stores_file), "--store", "b=pk_b2"], env=env)
    from_flags = parse_args(["--store", "c=pk=c"], env=env)
    from_env = parse_args([], env=env)

    assert from_file.config.stores == {"a": "pk_a", "b": "pk_b2"}
    assert from_flags.config.stores == {"c": "pk=c"}
    assert from_env.config.stores == {"from_env": "pk_env"}


def test_demo_stores_file_matches_default() -> None:
    demo = ROOT / "sandbox" / "demo-stores.json"

    assert json.loads(demo.read_text()) == {"demo_store": KEY}
    assert parse_args(["--stores", str(demo)], env={}).config.stores == {"demo_store": KEY}


def test_bad_stores_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "stores.json"
    bad.write_text('["not", "an", "object"]')

    with pytest.raises(SystemExit):
        parse_args(["--stores", str(bad)], env={})
    with pytest.raises(SystemExit):
        parse_args(["--stores", str(tmp_path / "missing.json")], env={})


def test_python_dash_m_sandbox_serves_and_stops() -> None:
    command = [sys.executable, "-m", "sandbox", "--port", "0", "--store", "s=pk_cli_key_123"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("sandbox listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            with requests.Session() as http:
                assert http.get(url + "/_sandbox/health", timeout=5).json() == {"ok": True}
                response = http.post(
                    url + EVENTS.format(store="s"),
                    json=VALID,
                    headers={"X-Scalev-Storefront-Api-Key": "pk_cli_key_123"},
                    timeout=5,
                )
                assert response.status_code == 204
        finally:
            proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_config_validates_on_construction() -> None:
    with pytest.raises(ValueError, match="reset_style"):
        SandboxConfig(reset_style="weekly")
    assert "pk_demo" not in repr(SandboxConfig())
