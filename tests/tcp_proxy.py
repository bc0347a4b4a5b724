"""A TCP proxy in front of a real server, whose faults a test scripts while it runs.

Tests point a client at the proxy instead of the server and then decide, at any moment,
what the network does:

    with TcpProxy(("127.0.0.1", redis_port)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        held = proxy.delay_reply_after(b"EVALSHA", seconds=2.6)  # the next EVALSHA's reply
        lost = proxy.drop_after(b"EVALSHA")         # the server runs it; the reply is lost
        proxy.drop_after(b"EVALSHA", skip=1, on_fire=proxy.refuse_connections)
                                                    # the 2nd one's reply is lost, and then
                                                    # the "server" is gone
        proxy.refuse_connections()                  # connect() fails: ECONNREFUSED
        proxy.accept_connections()                  # and works again, on the same port
        proxy.drop_all()                            # cut every open connection
        proxy.set_upstream(("127.0.0.1", other))    # new connections go to another server
        held.wait_fired()                           # the rule met its command and acted
        proxy.count(b"EVALSHA")                     # commands seen that held the marker

Pass-through is the default. A rule matches a *command*, that is bytes from the client
that contain its marker, and acts on the *next bytes the server sends back on that
connection*. For a request/response client such as redis-py without pipelining, that is
the reply to the matched command. Markers are raw bytes, found across TCP segment
boundaries. redis-py sends command names in upper case; a marker is a substring, so
``b"SET"`` also matches CLIENT SETINFO: frame it as RESP does (``b"\\r\\nSET\\r\\n"``) to
match the command name only.

A rule lets the first ``skip`` matching commands (counted from when it was added) pass,
then fires on the next ``times``, then it is spent. When two live rules could act on one
command, the older one does. ``on_fire`` (any callable) runs each time the rule fires,
before its action: it can refuse connections or drop the other links at exactly that
moment.

- ``delay_reply_after``: the reply is held ``seconds`` before it is forwarded. A client
  whose socket timeout is shorter gives up and disconnects; the server has run the
  command all the same.
- ``drop_after``: the command is forwarded, and the proxy waits for the first bytes of
  the reply (so the server has run it) and then closes both sides without forwarding
  them. The client reads end-of-file: "Connection closed by server".

Everything runs on threads (one listener, two per connection), so the proxy works beside
any client in the test's own process or in another process.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

Address = tuple[str, int]
_CHUNK = 65536
_POLL_SECONDS = 0.05


@dataclass
class Rule:
    """One scripted fault; ``fired`` counts the commands it acted on."""

    marker: bytes
    action: Literal["delay", "drop"]
    seconds: float = 0.0
    remaining: int = 1
    skip: int = 0
    on_fire: Callable[[], object] | None = None
    fired: int = 0
    _fired_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait_fired(self, timeout: float = 10.0) -> bool:
        """True once the rule has acted at least once (within ``timeout`` seconds)."""
        return self._fired_event.wait(timeout)


class _Link:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self._armed: list[Rule] = []  # rules waiting for the next reply on this link
        self._lock = threading.Lock()

    def start(self) -> None:
        for target in (self._pump_commands, self._pump_replies):
            threading.Thread(target=target, daemon=True).start()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            # shutdown() wakes the other pump thread from recv(); close() alone may not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy._forget(self)

    def _pump_commands(self) -> None:
        tail = b""  # the end of the previous segment: a marker may straddle two segments
        try:
            while not self.closed.is_set():
                data = self.client.recv(_CHUNK)
                if not data:
                    break
                window = tail + data
                # Arm before forwarding, so the reply cannot overtake its rule.
                rules = self.proxy._match(window, already_seen=tail)
                if rules:
                    with self._lock:
                        self._armed += rules
                self.upstream.sendall(data)
                tail = window[-self.proxy._longest_marker() :] if window else b""
        except OSError:
            pass
        self.close()

    def _pump_replies(self) -> None:
        try:
            while not self.closed.is_set():
                data = self.upstream.recv(_CHUNK)
                if not data:
                    break
                with self._lock:
                    armed, self._armed = self._armed, []
                for rule in armed:
                    if rule.action == "drop":
                        self.proxy._fired(rule)
                        self.close()
                        return
                    self.proxy._fired(rule)
                    if self.closed.wait(rule.seconds):
                        return
                self.client.sendall(data)
        except OSError:
            pass
        self.close()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 (a free port) in front of ``upstream``."""

    def __init__(self, upstream: Address, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._upstream = upstream
        self.host = host
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._counts: dict[bytes, int] = {}
        self._links: set[_Link] = set()
        self._stopped = threading.Event()
        self.connections_accepted = 0
        self._listener: socket.socket | None = self._listen(port)
        self.port: int = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.refuse_connections()
        self.drop_all()
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """A redis:// URL (database 0) that reaches the upstream through this proxy."""
        return f"redis://{self.host}:{self.port}/0"

    # -- what the test scripts -------------------------------------------------------------

    def delay_reply_after(
        self,
        marker: bytes,
        seconds: float,
        *,
        times: int = 1,
        skip: int = 0,
        on_fire: Callable[[], object] | None = None,
    ) -> Rule:
        """Hold the reply to the next ``times`` commands containing ``marker``."""
        rule = Rule(marker, "delay", seconds=seconds, remaining=times, skip=skip, on_fire=on_fire)
        return self._add(rule)

    def drop_after(
        self,
        marker: bytes,
        *,
        times: int = 1,
        skip: int = 0,
        on_fire: Callable[[], object] | None = None,
    ) -> Rule:
        """Forward the next ``times`` such commands, then close the link instead of replying."""
        return self._add(Rule(marker, "drop", remaining=times, skip=skip, on_fire=on_fire))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def count(self, marker: bytes) -> int:
        """How many commands containing ``marker`` went through (counted once it is watched).

        A marker is watched from the first rule that names it, or from ``watch(marker)``.
        """
        with self._lock:
            return self._counts.get(marker, 0)

    def watch(self, marker: bytes) -> None:
        with self._lock:
            self._counts.setdefault(marker, 0)

    def refuse_connections(self) -> None:
        """Close the listening socket: new connections are refused until accept_connections.

        Open connections stay up; ``drop_all`` cuts them.
        """
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() stops the listening at once; close() alone waits for the accept()
            # in the serving thread to return, and a connect in between would succeed.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def accept_connections(self) -> None:
        """Listen again, on the same port."""
        with self._lock:
            if self._listener is None and not self._stopped.is_set():
                self._listener = self._listen(self.port)

    def drop_all(self) -> int:
        """Close every open connection (both sides); returns how many there were."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        return len(links)

    def set_upstream(self, upstream: Address) -> None:
        """Send connections made from now on to ``upstream`` (open ones keep theirs)."""
        with self._lock:
            self._upstream = upstream

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    # -- internals -------------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port comes back after refuse_connections while old links sit in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(128)
        listener.settimeout(_POLL_SECONDS)
        return listener

    def _serve(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stopped.wait(_POLL_SECONDS)
                continue
            try:
                client, _ = listener.accept()
            except OSError:  # the poll timeout, or the listener was closed meanwhile
                continue
            client.settimeout(None)
            with self._lock:
                upstream_address = self._upstream
                self.connections_accepted += 1
            try:
                upstream = socket.create_connection(upstream_address, timeout=5)
            except OSError:
                client.close()  # the server is down: the client sees the link close
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
            link.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _add(self, rule: Rule) -> Rule:
        if not rule.marker:
            raise ValueError("a rule needs a non-empty marker")
        with self._lock:
            self._rules.append(rule)
            self._counts.setdefault(rule.marker, 0)
        return rule

    def _longest_marker(self) -> int:
        with self._lock:
            longest = max((len(marker) for marker in self._counts), default=1)
        return max(longest - 1, 1)

    def _match(self, window: bytes, *, already_seen: bytes) -> list[Rule]:
        """Count the watched markers new in ``window`` and take the live rules they trigger.

        ``already_seen`` is the start of ``window`` that the previous call examined: a
        marker wholly inside it was counted then.
        """
        matched: list[Rule] = []
        with self._lock:
            for marker in self._counts:
                hits = window.count(marker) - already_seen.count(marker)
                if not hits:
                    continue
                self._counts[marker] += hits
                # Every rule counts the command towards its skip; the oldest rule done
                # skipping acts on it, alone.
                acted = False
                for rule in self._rules:
                    if rule.marker != marker or rule.remaining <= 0:
                        continue
                    if rule.skip > 0:
                        rule.skip -= 1
                    elif not acted:
                        rule.remaining -= 1
                        matched.append(rule)
                        acted = True
            self._rules = [rule for rule in self._rules if rule.remaining > 0]
        return matched

    def _fired(self, rule: Rule) -> None:
        if rule.on_fire is not None:
            rule.on_fire()
        with self._lock:
            rule.fired += 1
        rule._fired_event.set()
