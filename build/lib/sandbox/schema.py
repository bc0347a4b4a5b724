"""Validation of the SnackVideo events request body, following the OpenAPI contract.

``validate_events_request`` returns ``{field path: problem}`` for every problem found (an
empty dict means valid); paths look like ``events.0.properties.value``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

_MISSING: Any = object()
_EVENT_KEYS = frozenset({"event_name", "properties"})
_INT_PROPERTIES = ("value", "quantity", "price")
_STR_PROPERTIES = (
    "content_type",
    "content_category",
    "content_name",
    "currency",
    "query",
    "mapping_id",
)
# (array field, its id field); both item schemas are {id: string, quantity: integer >= 1}.
_ITEM_ARRAYS = (
    ("variants", "variant_unique_id"),
    ("bundle_price_options", "bundle_price_option_unique_id"),
)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: Python's parser would otherwise accept NaN and Infinity."""
    return json.loads(raw, parse_constant=_refuse_constant)


def _is_int(value: object) -> bool:
    # bool subclasses int, but JSON true is not an integer to the API.
    return type(value) is int


def validate_events_request(body: object) -> dict[str, str]:
    if not isinstance(body, dict):
        return {"body": "must be a JSON object"}
    errors: dict[str, str] = {}
    _check_required_str(body, "click_id", "click_id", errors)
    for key in ("event_source_url", "referrer_url"):
        if key in body:
            problem = _uri_problem(body[key])
            if problem:
                errors[key] = problem
    _check_events(body.get("events", _MISSING), errors)
    for field, id_key in _ITEM_ARRAYS:
        if field in body:
            _check_items(body[field], field, id_key, errors)
    return errors


def _check_required_str(obj: dict[str, Any], key: str, path: str, errors: dict[str, str]) -> None:
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        errors[path] = "is required"
    elif not isinstance(value, str):
        errors[path] = "must be a string"


def _uri_problem(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string or null"
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unterminated IPv6 host "http://["
        return "must be an absolute URI"
    if not (parts.scheme and parts.netloc):
        return "must be an absolute URI"
    return None


def _check_events(events: object, errors: dict[str, str]) -> None:
    if events is _MISSING:
        errors["events"] = "is required"
    elif not isinstance(events, list):
        errors["events"] = "must be an array"
    elif not events:
        errors["events"] = "must contain at least 1 item"
    else:
        for index, event in enumerate(events):
            _check_event(event, f"events.{index}", errors)


def _check_event(event: object, path: str, errors: dict[str, str]) -> None:
    if not isinstance(event, dict):
        errors[path] = "must be an object"
        return
    for key in sorted(event.keys() - _EVENT_KEYS):
        errors[f"{path}.{key}"] = "unknown field"
    _check_required_str(event, "event_name", f"{path}.event_name", errors)
    if "properties" in event:
        _check_properties(event["properties"], f"{path}.properties", errors)


def _check_properties(props: object, path: str, errors: dict[str, str]) -> None:
    if props is None:
        return
    if not isinstance(props, dict):
        errors[path] = "must be an object or null"
        return
    for key in _INT_PROPERTIES:
        value = props.get(key)
        if value is not None and not _is_int(value):
            errors[f"{path}.{key}"] = "must be an integer or null"
    for key in _STR_PROPERTIES:
        value = props.get(key)
        if value is not None and not isinstance(value, str):
            errors[f"{path}.{key}"] = "must be a string or null"


def _check_items(items: object, field: str, id_key: str, errors: dict[str, str]) -> None:
    if not isinstance(items, list):
        errors[field] = "must be an array"
        return
    allowed = {id_key, "quantity"}
    for index, item in enumerate(items):
        path = f"{field}.{index}"
        if not isinstance(item, dict):
            errors[path] = "must be an object"
            continue
        for key in sorted(item.keys() - allowed):
            errors[f"{path}.{key}"] = "unknown field"
        _check_required_str(item, id_key, f"{path}.{id_key}", errors)
        quantity = item.get("quantity", _MISSING)
        if quantity is _MISSING:
            errors[f"{path}.quantity"] = "is required"
        elif not _is_int(quantity):
            errors[f"{path}.quantity"] = "must be an integer"
        elif quantity < 1:
            errors[f"{path}.quantity"] = "must be >= 1"
