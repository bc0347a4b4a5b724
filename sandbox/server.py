"""The HTTP side of the sandbox: request handler, server class and server factories.

Hot-path notes (benchmarks point many workers at this process, so it must not be the
bottleneck): each response goes out in one ``write`` with ``TCP_NODELAY`` set, so a small
header segment never waits on the client's delayed ACK; per-request logging is off unless
asked for; state is locked only inside ``SandboxState``.
"""

from __future__ import annotations

import hmac
import json
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox.ratelimit import render_headers, seconds_until_reset
from sandbox.schema import parse_json, validate_events_request
from sandbox.state import Accepted, ConfigError, SandboxConfig, SandboxState

API_KEY_HEADER = "X-Scalev-Storefront-Api-Key"
_EVENTS_PREFIX = "/v3/stores/"
_EVENTS_SUFFIX = "/public/analytics/snackvideo/events"
_JSON = "application/json"
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_INJECTED_FAILURE = json.dumps(
    {"error": "unavailable", "message": "sandbox injected failure"}
).encode()

Headers = list[tuple[str, str]]


def _error_body(
    error: str, code: str, message: str, errors: dict[str, str] | None = None
) -> bytes:
    body: dict[str, Any] = {"error": error, "error_code": code, "message": message}
    if errors is not None:
        body["errors"] = errors
    return json.dumps(body).encode()


def _store_id(path: str) -> str | None:
    """The store id of an events path, else None."""
    if path.startswith(_EVENTS_PREFIX) and path.endswith(_EVENTS_SUFFIX):
        store_id = path[len(_EVENTS_PREFIX) : -len(_EVENTS_SUFFIX)]
        if store_id and "/" not in store_id:
            return store_id
    return None


class SandboxHandler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    # ---- dispatch -------------------------------------------------------------------------

    def do_POST(self) -> None:
        raw = self._read_body()
        if raw is None:
            return
        path, _, _ = self.path.partition("?")
        store_id = _store_id(path)
        if store_id is not None:
            self._post_event(store_id, raw)
        elif path == "/_sandbox/reset":
            self.server.state.reset()
            self._send_json(200, {"ok": True})
        elif path == "/_sandbox/config":
            self._post_config(raw)
        else:
            self._not_found(path)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        state = self.server.state
        if url.path == "/_sandbox/health":
            self._send_json(200, {"ok": True})
        elif url.path == "/_sandbox/events":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            events = state.events(query.get("store_id"), query.get("click_id"))
            self._send_json(200, {"events": events})
        elif url.path == "/_sandbox/stats":
            self._send_json(200, state.stats())
        elif url.path == "/_sandbox/config":
            self._send_json(200, state.config.masked())
        elif _store_id(url.path) is not None:
            body = _error_body("method_not_allowed", "method_not_allowed", "use POST")
            self._send(405, body, _JSON, [("Allow", "POST")])
        else:
            self._not_found(url.path)

    # ---- the events endpoint --------------------------------------------------------------

    def _post_event(self, store_id: str, raw: bytes) -> None:
        state = self.server.state
        config = state.config  # one snapshot per request; updates swap the whole object
        now, decision = state.hit()
        headers: Headers = []
        if decision is not None and config.rate_limit_headers:
            announced = state.announced_limit(config)
            headers = render_headers(decision, config.reset_style, announced)
        if decision is not None and not decision.allowed:
            headers.append(("Retry-After", str(seconds_until_reset(decision))))
            return self._finish(config, 429, b"Too Many Requests", "text/plain", headers)

        expected = config.stores.get(store_id)
        if expected is None:
            body = _error_body("not_found", "store_not_found", f"store {store_id!r} not found")
            return self._finish(config, 404, body, _JSON, headers)
        given = self.headers.get(API_KEY_HEADER)
        if not given:
            body = _error_body("unauthorized", "missing_api_key", f"{API_KEY_HEADER} is required")
            return self._finish(config, 401, body, _JSON, headers)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            message = "storefront API key is not valid for this store"
            body = _error_body("forbidden", "invalid_api_key", message)
            return self._finish(config, 403, body, _JSON, headers)

        try:
            payload = parse_json(raw)
        except ValueError as exc:  # includes UnicodeDecodeError
            body = _error_body(
                "bad_request", "invalid_payload", "request body is not valid JSON",
                {"body": f"invalid JSON: {exc}"},
            )  # fmt: skip
            return self._finish(config, 400, body, _JSON, headers)
        errors = validate_events_request(payload)
        if errors:
            message = "request body does not match the events schema"
            body = _error_body("bad_request", "invalid_payload", message, errors)
            return self._finish(config, 400, body, _JSON, headers)

        click_id: str = payload["click_id"]
        # Attempts count only requests that got this far, so a 429 or a bad key does not use
        # up a fail_first allowance.
        attempt = state.next_attempt(click_id)
        if attempt <= config.fail_first or click_id.startswith(tuple(config.always_fail)):
            return self._finish(config, config.fail_status, _INJECTED_FAILURE, _JSON, headers)
        accepted = Accepted(store_id, click_id, raw, now)
        self._finish(config, 204, b"", None, headers, accepted)

    def _finish(
        self,
        config: SandboxConfig,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: Headers,
        accepted: Accepted | None = None,
    ) -> None:
        # Recorded before the response leaves, so a client that saw 204 finds its event.
        self.server.state.settle(status, accepted)
        if config.latency_ms:
            time.sleep(config.latency_ms / 1000)
        self._send(status, body, content_type, headers)

    # ---- admin ----------------------------------------------------------------------------

    def _post_config(self, raw: bytes) -> None:
        try:
            patch = parse_json(raw) if raw.strip() else {}
        except ValueError as exc:
            body = _error_body(
                "bad_request", "invalid_config", "request body is not valid JSON",
                {"body": f"invalid JSON: {exc}"},
            )  # fmt: skip
            return self._send(400, body, _JSON)
        try:
            config = self.server.state.update_config(patch)
        except ConfigError as exc:
            body = _error_body("bad_request", "invalid_config", "config rejected", exc.errors)
            return self._send(400, body, _JSON)
        self._send_json(200, config.masked())

    def _not_found(self, path: str) -> None:
        body = _error_body("not_found", "route_not_found", f"no route for {self.command} {path}")
        self._send(404, body, _JSON)

    # ---- I/O ------------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """Read the whole body so the keep-alive stream stays aligned; None if unreadable."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            body = _error_body("bad_request", "bad_content_length", "invalid Content-Length")
            self._send(400, body, _JSON)
            return None
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _send_json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), _JSON)

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Headers | tuple[()] = (),
    ) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if status != 204:  # a 204 must not carry Content-Length
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = "\r\n".join(lines) + "\r\n\r\n"
        self.wfile.write(head.encode("latin-1") + body)
        if self.server.log_requests:
            self.log_request(status)

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(fmt, *args)


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default backlog of 5 drops connects when dozens of workers start at once.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], state: SandboxState, log_requests: bool = False
    ) -> None:
        self.state = state
        self.log_requests = log_requests
        super().__init__(address, SandboxHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up on a keep-alive connection is routine, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class SandboxServer6(SandboxServer):
    address_family = socket.AF_INET6


def make_server(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_requests: bool = False,
) -> SandboxServer:
    """Bind (port 0 picks a free port) but do not serve; call ``serve_forever()``."""
    server_class = SandboxServer6 if ":" in host else SandboxServer
    return server_class((host, port), SandboxState(config), log_requests)


def base_url(server: SandboxServer) -> str:
    """A URL clients can connect to (a wildcard bind is reached through loopback)."""
    host, port = str(server.server_address[0]), int(server.server_address[1])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve_in_thread(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_requests: bool = False,
) -> tuple[SandboxServer, str]:
    """Start a server in a daemon thread; stop it with ``shutdown()`` then ``server_close()``."""
    server = make_server(config, host, port, log_requests=log_requests)
    # A short poll interval keeps shutdown() (and so test teardown) quick.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
        name=f"sandbox-{server.server_address[1]}",
    )  # fmt: skip
    thread.start()
    return server, base_url(server)
