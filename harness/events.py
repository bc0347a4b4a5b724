"""A request body the producer, the worker and the sandbox all accept."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: A purchase as a shop records it; the content of no test's assertion.
PURCHASE = {"currency": "IDR", "value": 150000, "quantity": 2, "price": 75000}


def event(
    click_id: str, *, properties: Mapping[str, Any] = PURCHASE, **extra: Any
) -> dict[str, Any]:
    """One purchase event for ``click_id``; ``extra`` adds top-level keys."""
    payload: dict[str, Any] = {
        "click_id": click_id,
        "events": [{"event_name": "purchase", "properties": dict(properties)}],
    }
    payload.update(extra)
    return payload
