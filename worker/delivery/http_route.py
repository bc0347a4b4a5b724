"""One POST through urllib3's pool, set up the way ``requests.Session.post`` would.

``requests`` costs ~200 µs of CPU per POST over what urllib3 does for it (331 against
137 µs per POST to the sandbox, ``bench/http_deadline.py``, issue 16): preparing the
request (header dicts, URL re-parsing, hooks), merging the session's settings, building a
``Response``, and its cookie jar. Every POST here goes to one base URL, with the same
proxy, TLS settings and headers, so ``Route`` asks the session's adapter once for what
it would pick every time: the urllib3 pool (``DeadlineAdapter``'s guarded one, with the
session's ``verify``, ``cert`` and proxy), the request target (a path; the whole URL
through a plain HTTP proxy), the session's default headers and its retry policy (none).
Each POST then is ``HTTPAdapter.send``'s one ``urlopen`` call, and a failure is mapped
onto the ``requests`` exception that ``HTTPAdapter.send`` would have raised, so the
callers' error mapping (and its messages) stays as it was.

Not carried over: the session's cookie jar. A requests session stored cookies from
Scalev's answers and sent them back; this sends none (an API key authenticates each POST).
"""

from __future__ import annotations

from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import check_header_validity
from urllib3.connectionpool import ConnectionPool, HTTPConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    LocationValueError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import InvalidHeader as Urllib3InvalidHeader
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.exceptions import SSLError as Urllib3SSLError


class Route:
    """The session's pool, target prefix, headers and retries for ``base_url``."""

    def __init__(self, session: requests.Session, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        probe = requests.Request("POST", self.base_url + "/").prepare()
        adapter = session.get_adapter(probe.url or self.base_url)
        if not isinstance(adapter, HTTPAdapter):
            raise TypeError(f"not an HTTPAdapter: {type(adapter).__name__}")
        self.adapter = adapter
        self.pool: HTTPConnectionPool | None = None
        self.setup_error: Exception | None = None
        try:
            pool: ConnectionPool = adapter.get_connection_with_tls_context(
                probe, session.verify, proxies=session.proxies, cert=session.cert
            )
            assert isinstance(pool, HTTPConnectionPool)
            adapter.cert_verify(pool, probe.url, session.verify, session.cert)  # type: ignore[no-untyped-call]
            self.pool = pool
        # What requests would raise at each POST is raised then: a URL urllib3 refuses, a
        # CA bundle path that does not exist (an OSError, as requests raises it).
        except LocationValueError as exc:
            self.setup_error = requests.exceptions.InvalidURL(exc)
        except OSError as exc:
            self.setup_error = exc
        # "/prefix/" or, through a plain HTTP proxy, "http://host/prefix/".
        self.target_prefix = adapter.request_url(probe, session.proxies).removesuffix("/")
        self.headers: dict[str, str] = {
            name: value if isinstance(value, str) else value.decode("latin-1")
            for name, value in session.headers.items()
            if value is not None
        }

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: urllib3.Timeout,
    ) -> urllib3.BaseHTTPResponse:
        """POST ``body`` to the base URL's ``path``; the response's body is left unread.

        Raises what ``requests`` would: a ``requests.RequestException`` subclass.
        """
        if self.setup_error is not None:
            raise self.setup_error
        assert self.pool is not None
        for header in headers.items():
            check_header_validity(header)  # requests' check: no CR/LF smuggled into a value
        try:
            return self.pool.urlopen(
                "POST",
                self.target_prefix + path,
                body=body,
                headers={**self.headers, **headers, "Content-Length": str(len(body))},
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=self.adapter.max_retries,
                timeout=timeout,
            )
        except (ProtocolError, OSError, MaxRetryError, ClosedPoolError, Urllib3HTTPError) as exc:
            raise as_requests_error(exc) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def as_requests_error(exc: BaseException) -> BaseException:
    """The exception ``HTTPAdapter.send`` raises for what ``urlopen`` raised (requests 2.x)."""
    error: BaseException
    if isinstance(exc, ProtocolError | OSError | ClosedPoolError):
        error = requests.ConnectionError(exc)
    elif isinstance(exc, MaxRetryError):
        error = _from_max_retry(exc)
    elif isinstance(exc, Urllib3ProxyError):
        error = requests.exceptions.ProxyError(exc)
    elif isinstance(exc, Urllib3SSLError):
        error = requests.exceptions.SSLError(exc)
    elif isinstance(exc, ReadTimeoutError):
        error = requests.ReadTimeout(exc)
    elif isinstance(exc, Urllib3InvalidHeader):
        error = requests.exceptions.InvalidHeader(exc)
    else:
        error = exc
    return error


def _from_max_retry(exc: MaxRetryError) -> BaseException:
    reason: Any = exc.reason
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
        return requests.ConnectTimeout(exc)
    if isinstance(reason, ResponseError):
        return requests.exceptions.RetryError(exc)
    if isinstance(reason, Urllib3ProxyError):
        return requests.exceptions.ProxyError(exc)
    if isinstance(reason, Urllib3SSLError):
        return requests.exceptions.SSLError(exc)
    return requests.ConnectionError(exc)
