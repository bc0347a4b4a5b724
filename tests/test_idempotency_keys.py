"""Idempotency keys of different stores never share a Redis key.

Written plainly as ``snackvideo:idem:{store}:{key}``, store ``shop:eu`` with key
``order-1`` and store ``shop`` with key ``eu:order-1`` were one Redis key: the second
event was taken for a repeat of the first and silently not queued.
"""

from __future__ import annotations

import pytest
import redis

from producers import InvalidEvent, Producer
from producers.enqueue import MAX_IDEMPOTENCY_KEY_CHARS
from producers.keys import DELIVERY_QUEUE, idempotency_key
from tests.queue_helpers import event, queued


def test_the_store_id_is_encoded_so_the_pair_is_unambiguous() -> None:
    assert idempotency_key("shop:eu", "order-1") == "snackvideo:idem:shop%3Aeu:order-1"
    assert idempotency_key("shop", "eu:order-1") == "snackvideo:idem:shop:eu:order-1"
    assert idempotency_key("a%3Ab", "k") == "snackvideo:idem:a%253Ab:k"
    assert idempotency_key("a:b", "k") != idempotency_key("a%3Ab", "k")


def test_a_store_id_without_a_colon_keeps_the_key_it_always_had() -> None:
    # So keys written before this encoding are still found for such stores.
    assert idempotency_key("store_abc", "order-1001") == "snackvideo:idem:store_abc:order-1001"


def test_two_stores_whose_plain_keys_collided_both_get_their_event_queued(
    redis_url: str, redis_client: redis.Redis
) -> None:
    producer = Producer(redis_url)
    first = producer.enqueue("shop:eu", event("clk-eu"), idempotency_key="order-1")
    second = producer.enqueue("shop", event("clk-shop"), idempotency_key="eu:order-1")

    assert first != second
    messages = queued(redis_client)
    assert [(m.kwargs["store_id"], m.kwargs["payload"]["click_id"]) for m in messages] == [
        ("shop:eu", "clk-eu"),
        ("shop", "clk-shop"),
    ]
    # Each pair still deduplicates against itself.
    assert producer.enqueue("shop:eu", event("clk-eu"), idempotency_key="order-1") == first
    assert producer.enqueue("shop", event("clk-shop"), idempotency_key="eu:order-1") == second
    assert redis_client.llen(DELIVERY_QUEUE) == 2
    assert redis_client.get(idempotency_key("shop:eu", "order-1")) == first.encode()
    producer.close()


def test_an_idempotency_key_longer_than_the_bound_is_refused(
    redis_url: str, redis_client: redis.Redis
) -> None:
    producer = Producer(redis_url)
    too_long = "k" * (MAX_IDEMPOTENCY_KEY_CHARS + 1)
    with pytest.raises(InvalidEvent, match=f"at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"):
        producer.enqueue("shop", event("clk"), idempotency_key=too_long)
    assert redis_client.dbsize() == 0
    producer.close()
