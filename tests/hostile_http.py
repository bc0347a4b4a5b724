"""A small HTTP server whose every answer a test scripts: a fixed status, headers and body,
a redirect, an answer trickled one byte at a time, or no answer at all.

It records each request it saw (method, path, headers, body) and, for answers it drags
out, when the client closed the connection: ``closed_at - received_at`` is how long the
client let the request run. It binds any loopback address (127.0.0.2 is another host for
requests' cross-host rules) on a free port, serves each connection in its own thread, and
keeps connections alive like a real server, so a kept-alive client socket is tested too.
With an ``ssl.SSLContext`` it speaks HTTPS (``tls_context`` makes a throwaway certificate
for 127.0.0.1 with the openssl command). ``SlowRelay`` sits in front of any server and
hands its bytes to the client one at a time: a TLS handshake that trickles.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found",
           303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect",
           503: "Service Unavailable"}  # fmt: skip


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    received_at: float  # time.monotonic()
    closed_at: float | None = None  # the client closed the connection while we answered
    sent_bytes: int = 0  # of an Endless answer's body, before the client hung up
    peer: object = None  # the client's address: one per connection

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def text(self) -> str:
        """Everything the client sent, for scanning (a key must not be in here)."""
        lines = [f"{self.method} {self.path}", *(f"{k}: {v}" for k, v in self.headers)]
        return "\n".join(lines) + "\n" + self.body.decode("utf-8", "replace")


@dataclass
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def head(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}"]
        headers = {"Content-Length": str(len(self.body)), **self.headers}
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def redirect(status: int, location: str, body: bytes = b"") -> Reply:
    return Reply(status, {"Location": location}, body)


@dataclass
class Trickle:
    """Answer ``reply``, ``part`` ("headers": the whole answer; "body": the headers at
    once, then the body) one byte every ``interval`` seconds."""

    reply: Reply
    part: str = "body"
    interval: float = 0.5


@dataclass
class Hold:
    """Read the request, answer nothing for ``seconds``, then close the connection."""

    seconds: float


@dataclass
class Endless:
    """Answer ``status`` with a body of ``length`` bytes (announced, then sent as fast as
    the client reads, ``chunk`` after ``chunk``) until the client hangs up. ``encoded``:
    a ready compressed body sent once instead, with its ``Content-Encoding``."""

    status: int = 400
    length: int = 4 * 1024**3
    chunk: bytes = b"A" * 65_536
    encoded: tuple[str, bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Behaviour = Reply | Trickle | Hold | Endless
Respond = Callable[[Seen], Behaviour]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(
            self.command,
            self.path,
            list(self.headers.items()),
            self.rfile.read(length) if length else b"",
            time.monotonic(),
            peer=self.client_address,
        )
        owner = self.server.owner
        with owner.lock:
            owner.seen.append(seen)
            respond = owner.respond
        behaviour = respond(seen)
        if isinstance(behaviour, Reply):
            self.wfile.write(behaviour.head() + behaviour.body)
            self.wfile.flush()
        elif isinstance(behaviour, Trickle):
            self._trickle(behaviour, seen)
        elif isinstance(behaviour, Endless):
            self._endless(behaviour, seen)
        else:
            if self._wait_for_close(behaviour.seconds):
                seen.closed_at = time.monotonic()
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _serve

    def _trickle(self, trickle: Trickle, seen: Seen) -> None:
        reply = trickle.reply
        if trickle.part == "body":
            self.wfile.write(reply.head())
            self.wfile.flush()
            slow = reply.body
        else:
            slow = reply.head() + reply.body
        for index in range(len(slow)):
            if self._wait_for_close(trickle.interval):
                seen.closed_at = time.monotonic()
                self.close_connection = True
                return
            try:
                self.connection.sendall(slow[index : index + 1])
            except OSError:
                seen.closed_at = time.monotonic()
                self.close_connection = True
                return

    def _endless(self, endless: Endless, seen: Seen) -> None:
        headers = {"Content-Type": "text/plain", **endless.headers}
        if endless.encoded is not None:
            encoding, body = endless.encoded
            headers["Content-Encoding"] = encoding
            reply = Reply(endless.status, headers, body)
            self.wfile.write(reply.head() + body)
            seen.sent_bytes = len(body)
            return
        head = Reply(endless.status, {**headers, "Content-Length": str(endless.length)}).head()
        self.wfile.write(head)
        try:
            while seen.sent_bytes < endless.length and not self.server.owner.stopping.is_set():
                self.connection.sendall(endless.chunk)
                seen.sent_bytes += len(endless.chunk)
        except OSError:  # the client hung up: what a bounded reader does
            seen.closed_at = time.monotonic()
        self.close_connection = True

    def _wait_for_close(self, seconds: float) -> bool:
        """Wait ``seconds``; True as soon as the client closed (or shut down) its end."""
        deadline = time.monotonic() + seconds
        while not self.server.owner.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    # The plain socket's recv, also under TLS: peek at bytes, EOF is b"".
                    if socket.socket.recv(self.connection, 1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
                # The client sent more (a pipelined request): not a close; keep waiting.
                time.sleep(min(left, 0.05))
        return True


class _Server(socketserver.ThreadingTCPServer):
    # Plain TCPServer: HTTPServer's server_bind would reverse-resolve the address.
    daemon_threads = True
    allow_reuse_address = True
    owner: HostileServer
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.tls is not None:
            # The handshake runs in the connection's own thread (_Handler.setup).
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up mid-handshake is what some tests do


class HostileServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        respond: Respond | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.respond: Respond = respond or (lambda _seen: Reply(204))
        self.stopping = threading.Event()
        self._server = _Server((host, 0), _Handler)
        self._server.owner = self
        self._server.tls = tls
        self.port = int(self._server.server_address[1])
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def script(self, respond: Respond) -> None:
        with self.lock:
            self.respond = respond

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def in_order(*behaviours: Behaviour, then: Behaviour | None = None) -> Respond:
    """Answer the n-th request with the n-th behaviour, and every later one with ``then``."""
    queue = list(behaviours)
    lock = threading.Lock()

    def respond(_seen: Seen) -> Behaviour:
        with lock:
            return queue.pop(0) if queue else (then or Reply(204))

    return respond


def tls_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and the
    certificate's path for the client to trust. Needs the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("no openssl command: CI must run the TLS tests")
        pytest.skip("no openssl command")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


class SlowRelay:
    """A TCP relay to ``target``: what the client sends goes through at once, what the
    target answers reaches the client one byte every ``interval`` seconds. Records when
    the client closed its end (``closed_at``, time.monotonic())."""

    def __init__(self, target: tuple[str, int], interval: float = 0.5) -> None:
        self.target = target
        self.interval = interval
        self.opened_at: list[float] = []
        self.closed_at: list[float] = []
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> SlowRelay:
        self._thread.start()
        return self

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            self.opened_at.append(time.monotonic())
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target, timeout=5)
        pending = b""
        try:
            while not self.stopping.is_set():
                wait = 0.0 if pending else self.interval
                readable, _, _ = select.select([client, upstream], [], [], wait)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        self.closed_at.append(time.monotonic())
                        return
                    upstream.sendall(data)
                if upstream in readable:
                    pending += upstream.recv(65536)
                if pending:
                    client.sendall(pending[:1])
                    pending = pending[1:]
                    time.sleep(self.interval)
        except OSError:
            self.closed_at.append(time.monotonic())
        finally:
            client.close()
            upstream.close()

    def stop(self) -> None:
        self.stopping.set()
        self._listener.close()
        self._thread.join(5)
