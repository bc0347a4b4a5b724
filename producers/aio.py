"""``AsyncProducer``: ``Producer`` for asyncio code (the HTTP ingest service, async web apps).

The same validation, messages, idempotency script and retry bound as ``Producer``
(``ProducerBase``), published with ``redis.asyncio`` so that waiting for Redis never
blocks the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tenacity import AsyncRetrying, RetryError

from producers.connections import async_redis_client
from producers.enqueue import (
    ENQUEUE_LUA,
    RETRIED_ERRORS,
    Enqueued,
    PreparedCall,
    ProducerBase,
    enqueued,
)

#: Connections ``AsyncProducer.warm`` opens: one per request in flight, for as many as the
#: benchmark's open loop keeps (16 client connections); more open on first use.
WARM_CONNECTIONS = 16


class AsyncProducer(ProducerBase):
    """Publishes jobs to one Redis from one event loop; create it inside the loop it serves."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        timeout_seconds: float | None = None,
        idempotency_ttl_seconds: int | None = None,
        max_payload_bytes: int | None = None,
        min_replicas: int | None = None,
    ) -> None:
        super().__init__(
            redis_url,
            timeout_seconds=timeout_seconds,
            idempotency_ttl_seconds=idempotency_ttl_seconds,
            max_payload_bytes=max_payload_bytes,
            min_replicas=min_replicas,
        )
        self.client: redis.asyncio.Redis = async_redis_client(
            self.settings,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self.client.register_script(ENQUEUE_LUA)

    async def enqueue(
        self, store_id: str, payload: dict[str, Any], idempotency_key: str | None = None
    ) -> Enqueued:
        """Validate one event and enqueue it; says whether this call queued it."""
        return enqueued(*await self._enqueue(store_id, [payload], [idempotency_key], True))[0]

    async def enqueue_many(
        self,
        store_id: str,
        payloads: Sequence[dict[str, Any]],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> list[Enqueued]:
        """Validate every event, then enqueue them all in one atomic round trip."""
        return enqueued(*await self._enqueue(store_id, payloads, idempotency_keys, False))

    async def _enqueue(
        self,
        store_id: str,
        payloads: Sequence[dict[str, Any]],
        idempotency_keys: Sequence[str | None] | None,
        single: bool,
    ) -> tuple[list[str], list[str]]:
        call = self.prepare(store_id, payloads, idempotency_keys, single=single)
        if call is None:
            return [], []
        return call.outcomes(await self._publish(call))

    async def _publish(self, call: PreparedCall) -> list[Any]:
        # The first attempt runs outside tenacity: nearly every call needs no other, and
        # tenacity's machinery was 5 % of a single-event request's CPU (issue 15). A failed
        # first attempt is retried at once, then with tenacity's waits, in the same bound.
        started = time.monotonic()
        try:
            try:
                return await self._attempt(call)
            except RETRIED_ERRORS as exc:
                if not self.may_retry(time.monotonic() - started):
                    raise self.not_accepted(exc) from exc
            async for attempt in AsyncRetrying(**self.retry_policy(time.monotonic() - started)):
                with attempt:
                    return await self._attempt(call)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise self.not_accepted(cause) from cause
        except redis.RedisError as exc:
            raise self.refused(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, call: PreparedCall) -> list[Any]:
        if self.min_replicas:
            return await self._run_replicated(call)
        return list(await self._script(keys=call.keys, args=call.argv))

    async def _run_replicated(self, call: PreparedCall) -> list[Any]:
        """``Producer._run_replicated``: the script and WAIT on one connection, one trip."""
        for _ in range(2):  # the second time after loading a script Redis did not know
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(self._script.sha, len(call.keys), *call.keys, *call.argv)
            pipe.execute_command("WAIT", self.min_replicas, self.replica_wait_ms)
            result, confirmed = await pipe.execute(raise_on_error=False)
            if isinstance(result, redis.exceptions.NoScriptError):
                await self.client.script_load(ENQUEUE_LUA)
                continue
            return self.confirmed_or_raise(result, confirmed)
        raise redis.exceptions.NoScriptError("the enqueue script did not stay loaded")

    async def warm(self, connections: int = WARM_CONNECTIONS) -> bool:
        """Open ``connections`` Redis connections and load the enqueue script now, before
        requests would: a cold uvicorn worker answered its first 16 requests in 24-30 ms
        (docs/benchmarks.md, issue 15). False when Redis did not answer (within the socket
        timeout): the connections then open on first use, as without this."""
        pool = self.client.connection_pool
        # Every one held until all are open: released at once, one would be taken again.
        opened = await asyncio.gather(
            *(pool.get_connection() for _ in range(connections)),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        failures = [item for item in opened if isinstance(item, BaseException)]
        for connection in opened:
            if not isinstance(connection, BaseException):
                await pool.release(connection)
        for failure in failures:
            if not isinstance(failure, redis.RedisError | OSError):
                raise failure  # a bug, not an unreachable Redis
        if failures:
            return False
        try:
            await self.client.script_load(ENQUEUE_LUA)
        except (redis.RedisError, OSError):
            return False
        return True

    async def ping(self) -> bool:
        """Whether Redis answers now (one try, within the socket timeout)."""
        try:
            return bool(await self.client.ping())
        except (redis.RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await self.client.aclose()
