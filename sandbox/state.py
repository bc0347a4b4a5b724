"""Sandbox configuration and the shared, thread-safe state behind the HTTP handler.

The handler reads ``state.config`` once per request; updates swap in a whole new config
object, so a request never sees half an update. All counters live behind one lock, held
only for the few dict/list operations that change them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sandbox.ratelimit import (
    RESET_STYLES,
    WINDOW_ALIGNMENTS,
    Decision,
    FixedWindowLimiter,
    parse_rate_limit,
)

DEFAULT_STORES: dict[str, str] = {"demo_store": "pk_demo_sandbox_key"}


class ConfigError(ValueError):
    """Raised when a config (or a ``/_sandbox/config`` update) has unknown fields or bad values."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def mask_key(key: str) -> str:
    """Show the first 4 characters of a key, or nothing of a key too short to spare them."""
    return key[:4] + "…" if len(key) > 8 else "…"


@dataclass
class SandboxConfig:
    stores: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STORES))
    rate_limit: int | None = None  # requests per window; None = unlimited, no headers
    rate_window_seconds: float = 1.0
    reset_style: str = "seconds"  # how X-Ratelimit-Reset is written: see RESET_STYLES
    window_alignment: str = "first-request"  # where a window starts: see WINDOW_ALIGNMENTS
    # False: the limit still refuses (429 + Retry-After) but no X-Ratelimit-* header is
    # written, as behind a proxy that strips them: the client must find the rate itself.
    rate_limit_headers: bool = True
    fail_first: int = 0  # first N attempts of each click_id get fail_status
    always_fail: list[str] = field(default_factory=list)  # click_id prefixes that always fail
    fail_status: int = 503
    latency_ms: float = 0.0
    # A lying rate limiter: the X-Ratelimit-Limit written on rate-limited answers whatever
    # the real limit (Remaining is capped to it, as a server believing it would write);
    # None tells the truth. The real limit still decides what is refused.
    announce_limit: int | None = None
    # Only the first N answers after announce_limit was set lie; None: every one.
    announce_limit_answers: int | None = None

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ConfigError(problems)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"SandboxConfig({fields})"

    def masked(self) -> dict[str, Any]:
        """The JSON view served by ``/_sandbox/config``: every key masked."""
        view = dataclasses.asdict(self)
        view["stores"] = {store: mask_key(key) for store, key in self.stores.items()}
        return view

    def copy(self) -> SandboxConfig:
        return dataclasses.replace(
            self, stores=dict(self.stores), always_fail=list(self.always_fail)
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _config_problems(config: SandboxConfig) -> dict[str, str]:
    problems: dict[str, str] = {}
    stores = config.stores
    if not isinstance(stores, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in stores.items()
    ):
        problems["stores"] = "must map store ids to key strings"
    if config.rate_limit is not None and (
        type(config.rate_limit) is not int or config.rate_limit < 0
    ):
        problems["rate_limit"] = "must be an integer >= 0, an 'N/S' string or null"
    window = config.rate_window_seconds
    if not _is_number(window) or not math.isfinite(window) or window <= 0:
        problems["rate_window_seconds"] = "must be a number > 0"
    if config.reset_style not in RESET_STYLES:
        problems["reset_style"] = f"must be one of {', '.join(RESET_STYLES)}"
    if config.window_alignment not in WINDOW_ALIGNMENTS:
        problems["window_alignment"] = f"must be one of {', '.join(WINDOW_ALIGNMENTS)}"
    if type(config.rate_limit_headers) is not bool:
        problems["rate_limit_headers"] = "must be true or false"
    if type(config.fail_first) is not int or config.fail_first < 0:
        problems["fail_first"] = "must be an integer >= 0"
    if not isinstance(config.always_fail, list) or not all(
        isinstance(p, str) for p in config.always_fail
    ):
        problems["always_fail"] = "must be a list of strings"
    # 1xx would break the HTTP exchange itself.
    if type(config.fail_status) is not int or not 200 <= config.fail_status <= 599:
        problems["fail_status"] = "must be an integer HTTP status in 200..599"
    latency = config.latency_ms
    if not _is_number(latency) or not math.isfinite(latency) or latency < 0:
        problems["latency_ms"] = "must be a number >= 0"
    for name in ("announce_limit", "announce_limit_answers"):
        value = getattr(config, name)
        if value is not None and (type(value) is not int or value < 0):
            problems[name] = "must be an integer >= 0 or null"
    return problems


_FIELDS = frozenset(f.name for f in dataclasses.fields(SandboxConfig))
_ANNOUNCE_FIELDS = frozenset({"announce_limit", "announce_limit_answers"})


def patch_config(current: SandboxConfig, patch: object) -> SandboxConfig:
    """Return ``current`` with ``patch`` applied.

    ``stores`` merges like a JSON merge patch (a ``null`` key removes that store), so a
    demo can add the missing store without knowing the others. ``rate_limit`` also takes
    the CLI's ``"N/S"`` string, which sets the window too.
    """
    if not isinstance(patch, dict):
        raise ConfigError({"body": "must be a JSON object"})
    unknown = sorted(patch.keys() - _FIELDS)
    if unknown:
        raise ConfigError({key: "unknown field" for key in unknown})
    changes = dict(patch)
    if "stores" in changes:
        changes["stores"] = _merge_stores(current.stores, changes["stores"])
    if isinstance(changes.get("rate_limit"), str):
        try:
            limit, window = parse_rate_limit(changes["rate_limit"])
        except ValueError as exc:
            raise ConfigError({"rate_limit": str(exc)}) from exc
        changes["rate_limit"] = limit
        changes.setdefault("rate_window_seconds", window)
    return dataclasses.replace(current.copy(), **changes)  # validates in __post_init__


def _merge_stores(current: Mapping[str, str], patch: object) -> object:
    if not isinstance(patch, dict):
        return patch  # reported by the validation that follows
    merged = dict(current)
    for store, key in patch.items():
        if key is None:
            merged.pop(store, None)
        else:
            merged[store] = key
    return merged


class Accepted(NamedTuple):
    store_id: str
    click_id: str
    raw_body: bytes  # kept raw: a fraction of the parsed dict's memory in long benchmarks
    received_at: float


class SandboxState:
    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._config = config.copy()
        self._limiter = FixedWindowLimiter(
            config.rate_limit, config.rate_window_seconds, alignment=config.window_alignment
        )
        self._accepted: list[Accepted] = []
        self._requests = 0
        self._by_status: Counter[int] = Counter()
        self._attempts: dict[str, int] = {}
        self._announced = 0  # answers that carried announce_limit since it was set

    @property
    def config(self) -> SandboxConfig:
        return self._config

    def hit(self) -> tuple[float, Decision | None]:
        """Count one events request in the totals and the rate-limit window."""
        now = self.clock()
        with self._lock:
            self._requests += 1
            return now, self._limiter.hit(now)

    def announced_limit(self, config: SandboxConfig) -> int | None:
        """The limit this answer announces instead of the truth, else None (counts it)."""
        if config.announce_limit is None:
            return None
        with self._lock:
            budget = config.announce_limit_answers
            if budget is not None and self._announced >= budget:
                return None
            self._announced += 1
            return config.announce_limit

    def next_attempt(self, click_id: str) -> int:
        """Count one valid attempt for ``click_id``; return its 1-based number."""
        with self._lock:
            attempt = self._attempts.get(click_id, 0) + 1
            self._attempts[click_id] = attempt
            return attempt

    def settle(self, status: int, accepted: Accepted | None = None) -> None:
        with self._lock:
            self._by_status[status] += 1
            if accepted is not None:
                self._accepted.append(accepted)

    def events(self, store_id: str | None = None, click_id: str | None = None) -> list[Any]:
        with self._lock:
            rows = list(self._accepted)
        return [
            {
                "store_id": row.store_id,
                "click_id": row.click_id,
                "body": json.loads(row.raw_body),
                "received_at": row.received_at,
            }
            for row in rows
            if (store_id is None or row.store_id == store_id)
            and (click_id is None or row.click_id == click_id)
        ]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": {str(code): n for code, n in sorted(self._by_status.items())},
                "accepted": len(self._accepted),
                "attempts_by_click_id": dict(self._attempts),
                "max_in_window": self._limiter.peak,
                "window_seconds": self._limiter.window_seconds,
                "windows": self._limiter.windows(),
                "announced_limit_answers": self._announced,
            }

    def reset(self) -> None:
        with self._lock:
            self._accepted.clear()
            self._requests = 0
            self._by_status.clear()
            self._attempts.clear()
            self._announced = 0
            self._limiter.reset()

    def update_config(self, patch: object) -> SandboxConfig:
        with self._lock:
            config = patch_config(self._config, patch)
            self._config = config
            if isinstance(patch, dict) and patch.keys() & _ANNOUNCE_FIELDS:
                self._announced = 0  # "the first N answers" count from now
            self._limiter.configure(
                config.rate_limit, config.rate_window_seconds, config.window_alignment
            )
            return config
