"""Enqueue validated events: one atomic Lua call per batch, retried for a bounded time.

A call either returns job ids that are in Redis or raises: validation errors raise
``InvalidEvent`` before anything is written, and a Redis that does not answer within
``SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS`` raises ``EnqueueError``. With
``SNACKVIDEO_ENQUEUE_MIN_REPLICAS`` set, "in Redis" means on the master and that many
replicas (``WAIT``), so that a failover cannot lose what the call returned.

A call queues each event at most once, however often it retries. Its job ids and messages
are built once, before the first attempt, together with a call token. The Lua script
stores the call's result under the token in the same atomic step as the push, so a retry
whose earlier run did the work (its reply was late or lost with a dropped connection)
returns that result and pushes nothing.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_random_exponential,
)

from producers.connections import redis_client
from producers.errors import ConfigurationError, EnqueueError, InvalidEvent
from producers.keys import (
    DELIVERY_QUEUE,
    ENQUEUED_COUNTER,
    enqueue_call_key,
    idempotency_key,
)
from producers.message import build_message
from producers.models import JOB_SCHEMA_VERSION, validate_payload_body, validate_store_id
from producers.settings import CLUSTER_REFUSAL, ProducerSettings

#: Most payloads one ``enqueue_many`` call takes. The batch is one Lua call, and Redis runs
#: nothing else meanwhile (no worker pops, no heartbeat is written): 1,000 events of ~1 KB
#: held it 3.7 ms, 60,000 held it 242 ms (measured, local Redis 7). Larger batches go in
#: several calls, as ``snackvideo enqueue`` sends chunks of 500.
MAX_BATCH_PAYLOADS = 1_000
#: Longest idempotency key: it is part of a Redis key, and keys are compared byte by byte.
MAX_IDEMPOTENCY_KEY_CHARS = 1_000

# Errors after which the same call may succeed: a restart, a failover, a full Redis that
# the operator is draining. Anything else (a bug, a bad script) fails at once.
TRANSIENT_REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
)


class NotReplicated(Exception):
    """Raised (and retried) when fewer replicas than SNACKVIDEO_ENQUEUE_MIN_REPLICAS
    confirmed a stored job within WAIT's timeout."""

    def __init__(self, confirmed: int, wanted: int) -> None:
        self.confirmed = confirmed
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed it")


# A job stored on the master but on too few replicas: the retry, with the same call token,
# pushes nothing again and waits once more (a failover may have left no replica yet).
RETRIED_ERRORS = (*TRANSIENT_REDIS_ERRORS, NotReplicated)

#: How a Redis Cluster node refuses the enqueue script's keys (CLUSTERDOWN, CROSSSLOT,
#: MOVED, ASK), as redis-py raises them.
CLUSTER_REFUSALS = (
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterCrossSlotError,
    redis.exceptions.AskError,
)

ENQUEUE_LUA = resources.files("producers").joinpath("lua/enqueue.lua").read_text()


class Enqueued(NamedTuple):
    """What one event of a batch became (``Producer.enqueue_many_outcomes``)."""

    job_id: str
    #: False when an earlier call holds the event's idempotency key: ``job_id`` is that
    #: call's job, already queued, and nothing was pushed for this event.
    queued_now: bool


class PreparedCall(NamedTuple):
    """One enqueue call, built once: every retry sends these same keys and arguments."""

    keys: list[str]
    argv: list[Any]
    #: The job id this call built for each event (an earlier call's may win, by its key).
    own_ids: list[str]

    def outcomes(self, result: Sequence[Any]) -> tuple[list[str], list[str]]:
        """(the job id of each event, the job id this call built for it) from the script."""
        job_ids = [item.decode() if isinstance(item, bytes) else str(item) for item in result]
        return job_ids, self.own_ids


def enqueued(job_ids: list[str], own_ids: list[str]) -> list[Enqueued]:
    """What each event became: its job, and whether it is the one this call built."""
    return [Enqueued(job, job == own) for job, own in zip(job_ids, own_ids, strict=True)]


class ProducerBase:
    """What the blocking and the asyncio producer share: settings, validation, messages.

    Subclasses only publish a ``PreparedCall`` with their own Redis client.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        timeout_seconds: float | None = None,
        idempotency_ttl_seconds: int | None = None,
        max_payload_bytes: int | None = None,
        min_replicas: int | None = None,
    ) -> None:
        settings = producer_settings(
            redis_url=redis_url,
            timeout_seconds=timeout_seconds,
            idempotency_ttl_seconds=idempotency_ttl_seconds,
            max_payload_bytes=max_payload_bytes,
            min_replicas=min_replicas,
        )
        self.settings = settings
        self.redis_url = settings.redis_url
        self.timeout_seconds = settings.enqueue_timeout_seconds
        self.idempotency_ttl_seconds = settings.idempotency_ttl_seconds
        self.max_payload_bytes = settings.max_payload_bytes
        # redis-py's own retry is switched off so that the one policy below bounds the call.
        # The bound covers the whole call: retries stop starting once the last one could
        # still run its full socket timeout before the deadline.
        self.socket_timeout = min(2.0, self.timeout_seconds / 2)
        self._retry_window_seconds = self.timeout_seconds - self.socket_timeout
        self.call_ttl_seconds = call_ttl_seconds(self.timeout_seconds, self.socket_timeout)
        self.min_replicas = settings.enqueue_min_replicas
        # WAIT blocks the connection: half the socket timeout leaves the reply time to come.
        self.replica_wait_ms = max(1, int(self.socket_timeout * 1000 / 2))

    def prepare(
        self,
        store_id: str,
        payloads: Sequence[dict[str, Any]],
        idempotency_keys: Sequence[str | None] | None,
        *,
        single: bool,
    ) -> PreparedCall | None:
        """Validate everything, then build the call; None when there is nothing to send."""
        store_id = validate_store_id(store_id)
        if len(payloads) > MAX_BATCH_PAYLOADS:
            count = len(payloads)
            why = f"{count} in one call, more than {MAX_BATCH_PAYLOADS}: split the batch"
            raise InvalidEvent([("payloads", why)])
        if idempotency_keys is not None and len(idempotency_keys) != len(payloads):
            raise ValueError("idempotency_keys must have one entry per payload")
        keys = list(idempotency_keys or [None] * len(payloads))
        validated, bodies = _validate_all(payloads, single=single, max_bytes=self.max_payload_bytes)
        if not validated:
            return None
        argv: list[Any] = [self.idempotency_ttl_seconds, len(validated), self.call_ttl_seconds]
        now = time.time()
        # Two random UUIDs per event (job id, delivery tag) from one read of the OS's
        # randomness: py-spy found a fifth of a 100-event batch's samples in uuid4().
        ids = new_uuids(2 * len(validated))
        own_ids = ids[: len(validated)]
        for payload, body, key, job_id, tag in zip(
            validated, bodies, keys, own_ids, ids[len(validated) :], strict=True
        ):
            kwargs = {
                "job_id": job_id,
                "store_id": store_id,
                "payload": payload,
                "enqueued_at": now,
                "schema": JOB_SCHEMA_VERSION,
            }
            message = build_message(kwargs, task_id=job_id, delivery_tag=tag, payload_body=body)
            argv += [_idempotency_arg(store_id, key), job_id, message]
        call_key = enqueue_call_key(os.urandom(16).hex())  # unique; no UUID object needed
        return PreparedCall([DELIVERY_QUEUE, ENQUEUED_COUNTER, call_key], argv, own_ids)

    def retry_policy(self, spent_seconds: float = 0.0) -> dict[str, Any]:
        """tenacity's arguments for publishing one call (``Retrying`` or ``AsyncRetrying``);
        ``spent_seconds``: what the call spent before tenacity started (its first attempt)."""
        return {
            "retry": retry_if_exception_type(RETRIED_ERRORS),
            "stop": stop_before_delay(self._retry_window_seconds - spent_seconds),
            "wait": wait_random_exponential(multiplier=0.05, max=1.0),
            "reraise": False,
        }

    def may_retry(self, spent_seconds: float) -> bool:
        """Whether a call that has run ``spent_seconds`` may still start an attempt."""
        return spent_seconds < self._retry_window_seconds

    def not_accepted(self, cause: BaseException | None) -> EnqueueError:
        """The error for a call whose retries ran out (raise it ``from`` the last cause)."""
        within = f"{self.timeout_seconds:g}s"
        if isinstance(cause, NotReplicated):
            return EnqueueError(
                f"Redis stored the job, but {cause} within {within}: it may still be "
                "delivered, and an enqueue with the same idempotency key does not queue it twice"
            )
        return EnqueueError(f"Redis did not accept the job within {within}: {cause}")

    def refused(self, exc: redis.RedisError) -> EnqueueError:
        """The error for a call Redis refused outright (raise it ``from`` ``exc``)."""
        if isinstance(exc, CLUSTER_REFUSALS):
            return EnqueueError(f"Redis refused the job: {CLUSTER_REFUSAL}")
        return EnqueueError(f"Redis refused the job: {exc}")

    def confirmed_or_raise(self, result: Any, confirmed: Any) -> list[Any]:
        """The script's result once WAIT says enough replicas hold it, else raise."""
        if isinstance(result, Exception):
            raise result
        if isinstance(confirmed, Exception):
            raise confirmed
        if int(confirmed) < self.min_replicas:
            raise NotReplicated(int(confirmed), self.min_replicas)
        return list(result)


class Producer(ProducerBase):
    """Publishes jobs to one Redis. Thread-safe; create one per process and reuse it."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        timeout_seconds: float | None = None,
        idempotency_ttl_seconds: int | None = None,
        max_payload_bytes: int | None = None,
        min_replicas: int | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(
            redis_url,
            timeout_seconds=timeout_seconds,
            idempotency_ttl_seconds=idempotency_ttl_seconds,
            max_payload_bytes=max_payload_bytes,
            min_replicas=min_replicas,
        )
        self.client = client or redis_client(
            self.settings,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self.client.register_script(ENQUEUE_LUA)

    def enqueue(
        self, store_id: str, payload: dict[str, Any], idempotency_key: str | None = None
    ) -> str:
        return self.enqueue_many(
            store_id, [payload], idempotency_keys=[idempotency_key], _single=True
        )[0]

    def enqueue_many(
        self,
        store_id: str,
        payloads: Sequence[dict[str, Any]],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        _single: bool = False,
    ) -> list[str]:
        return self._enqueue(store_id, payloads, idempotency_keys, single=_single)[0]

    def enqueue_many_outcomes(
        self,
        store_id: str,
        payloads: Sequence[dict[str, Any]],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> list[Enqueued]:
        """``enqueue_many``, and for each event whether this call queued it."""
        return enqueued(*self._enqueue(store_id, payloads, idempotency_keys, single=False))

    def _enqueue(
        self,
        store_id: str,
        payloads: Sequence[dict[str, Any]],
        idempotency_keys: Sequence[str | None] | None,
        *,
        single: bool,
    ) -> tuple[list[str], list[str]]:
        """(the job id of each event, the job id this call built for it)."""
        call = self.prepare(store_id, payloads, idempotency_keys, single=single)
        if call is None:
            return [], []
        return call.outcomes(self._publish(call))

    def _publish(self, call: PreparedCall) -> list[Any]:
        try:
            for attempt in Retrying(**self.retry_policy()):
                with attempt:
                    if self.min_replicas:
                        return self._run_replicated(call)
                    return list(self._script(keys=call.keys, args=call.argv))
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise self.not_accepted(cause) from cause
        except redis.RedisError as exc:
            raise self.refused(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_replicated(self, call: PreparedCall) -> list[Any]:
        """The script, then WAIT, on one connection in one round trip: WAIT counts the
        replicas that have this connection's writes, the script's included."""
        for _ in range(2):  # the second time after loading a script Redis did not know
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(self._script.sha, len(call.keys), *call.keys, *call.argv)
            pipe.execute_command("WAIT", self.min_replicas, self.replica_wait_ms)  # type: ignore[no-untyped-call]
            result, confirmed = pipe.execute(raise_on_error=False)
            if isinstance(result, redis.exceptions.NoScriptError):
                self.client.script_load(ENQUEUE_LUA)
                continue
            return self.confirmed_or_raise(result, confirmed)
        raise redis.exceptions.NoScriptError("the enqueue script did not stay loaded")

    def close(self) -> None:
        self.client.close()


#: Producer's arguments and the settings fields they stand for.
_ARGUMENT_FIELDS = {
    "redis_url": "redis_url",
    "timeout_seconds": "enqueue_timeout_seconds",
    "idempotency_ttl_seconds": "idempotency_ttl_seconds",
    "max_payload_bytes": "max_payload_bytes",
    "min_replicas": "enqueue_min_replicas",
}


def producer_settings(**arguments: Any) -> ProducerSettings:
    """The environment's settings with the arguments given (not None) in their place,
    every one checked by the same rules; a refusal names an argument as the caller wrote
    it (``timeout_seconds``), a variable by its name (``REDIS_URL``)."""
    given = {
        _ARGUMENT_FIELDS[name]: value for name, value in arguments.items() if value is not None
    }
    try:
        return ProducerSettings.from_env(**given)
    except ConfigurationError as exc:
        argument_of = {field: name for name, field in _ARGUMENT_FIELDS.items()}
        raise ConfigurationError(
            [(argument_of.get(name, name), rule) for name, rule in exc.problems]
        ) from None


def call_ttl_seconds(timeout_seconds: float, socket_timeout: float) -> int:
    """How long a call's token lives: past the last moment a retry of the call can be sent.

    The last attempt starts before ``timeout - socket_timeout``. Before its script reaches
    Redis it may wait up to one socket timeout for each of: the connect, redis-py's
    handshake (CLIENT SETINFO twice, SELECT), a NOSCRIPT answer and the SCRIPT LOAD. So
    every run is sent within ``timeout + 5 x socket_timeout`` of the call's start (15 s
    with the defaults); five more seconds cover a Redis that reads the command late: 20 s.
    """
    return math.ceil(timeout_seconds + 5 * socket_timeout) + 5


def new_uuids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs, as ``str(uuid.uuid4())`` gives them.

    Written from the hex of one ``os.urandom`` read with the version and variant bits set
    in place: a ``uuid.UUID`` object per id cost half again the time of building a message.
    """
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(byte & 0x0F | 0x40 for byte in raw[6::16])  # version 4
    raw[8::16] = bytes(byte & 0x3F | 0x80 for byte in raw[8::16])  # variant RFC 4122
    text = raw.hex()
    return [
        f"{text[i : i + 8]}-{text[i + 8 : i + 12]}-{text[i + 12 : i + 16]}-"
        f"{text[i + 16 : i + 20]}-{text[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def idempotency_key_problem(key: object) -> str | None:
    """Why ``key`` cannot be an idempotency key, or None when it can."""
    if not isinstance(key, str):
        return f"must be a non-empty string, not {'null' if key is None else type(key).__name__}"
    if not key:
        return "must be a non-empty string"
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        return f"must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters, not {len(key)}"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a JSON "\\ud800" escape) would otherwise fail inside redis-py.
        return "must be valid Unicode text (no lone surrogates)"
    return None


def _idempotency_arg(store_id: str, key: str | None) -> str:
    if key is None:
        return ""
    problem = idempotency_key_problem(key)
    if problem is not None:
        raise InvalidEvent([("idempotency_key", problem)])
    return idempotency_key(store_id, key)


def _validate_all(
    payloads: Sequence[object], *, single: bool, max_bytes: int
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Validate every payload before anything is written; name each offending one.
    Returns the payloads and their request bodies."""
    problems: list[tuple[str, str]] = []
    validated: list[dict[str, Any]] = []
    bodies: list[bytes] = []
    for index, payload in enumerate(payloads):
        try:
            checked, body = validate_payload_body(payload, max_bytes=max_bytes)
        except InvalidEvent as exc:
            prefix = "" if single else f"payloads[{index}]."
            problems += [(prefix + field, message) for field, message in exc.problems]
            continue
        validated.append(checked)
        bodies.append(body)
    if problems:
        raise InvalidEvent(problems)
    return validated, bodies


_default: Producer | None = None
_default_lock = threading.Lock()


def default_producer() -> Producer:
    """The process-wide producer, built from the environment on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Producer()
        return _default


def reset_default_producer() -> None:
    """Forget the process-wide producer (after a fork, or when REDIS_URL changed)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = None


def enqueue(store_id: str, payload: dict[str, Any], idempotency_key: str | None = None) -> str:
    """Validate one event and enqueue it; returns the job id (the first one for a repeated key)."""
    return default_producer().enqueue(store_id, payload, idempotency_key)


def enqueue_many(
    store_id: str,
    payloads: Sequence[dict[str, Any]],
    idempotency_keys: Sequence[str | None] | None = None,
) -> list[str]:
    """Validate every event, then enqueue them all in one atomic round trip."""
    return default_producer().enqueue_many(store_id, payloads, idempotency_keys=idempotency_keys)
