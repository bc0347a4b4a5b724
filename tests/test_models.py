"""Schema rules of the request body and the job message; pure unit tests, no Redis."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest

from producers.errors import InvalidEvent
from producers.models import (
    JOB_SCHEMA_VERSION,
    MAX_PAYLOAD_DEPTH,
    EventRequest,
    JobMessage,
    validate_job,
    validate_payload,
    validate_store_id,
)


def good_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "click_id": "clk-1",
        "events": [
            {
                "event_name": "purchase",
                "properties": {"currency": "IDR", "value": 150000, "quantity": 2, "price": 75000},
            }
        ],
    }
    payload.update(overrides)
    return payload


def good_job(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "job_id": "job-1",
        "store_id": "store_abc",
        "payload": good_payload(),
        "enqueued_at": 1_700_000_000.5,
        "schema": JOB_SCHEMA_VERSION,
    }
    kwargs.update(overrides)
    return kwargs


def refused(payload: object, *fields: str) -> InvalidEvent:
    """Assert validate_payload refuses ``payload`` and names each of ``fields``."""
    with pytest.raises(InvalidEvent) as info:
        validate_payload(payload)
    for field in fields:
        assert field in info.value.fields
        assert f"{field}: " in str(info.value)
    return info.value


def message_for(exc: InvalidEvent, field: str) -> str:
    return dict(exc.problems)[field]


def with_properties(**properties: Any) -> dict[str, Any]:
    return good_payload(events=[{"event_name": "purchase", "properties": properties}])


def with_variant(**item: Any) -> dict[str, Any]:
    return good_payload(variants=[{"variant_unique_id": "v1", "quantity": 1}, item])


def with_bundle(**item: Any) -> dict[str, Any]:
    return good_payload(
        bundle_price_options=[{"bundle_price_option_unique_id": "b1", "quantity": 1}, item]
    )


# --- accepted payloads are returned untouched -------------------------------------------


def test_good_payload_is_returned_as_the_same_object() -> None:
    payload = good_payload()
    before = copy.deepcopy(payload)
    assert validate_payload(payload) is payload
    assert payload == before


def test_minimal_payload_is_accepted() -> None:
    payload = {"click_id": "c", "events": [{"event_name": "addToCart"}]}
    assert validate_payload(payload) is payload


def test_extra_top_level_keys_are_kept_untouched() -> None:
    nested = {"a": [1, 2, {"b": None}]}
    payload = good_payload(test_event_code="T1", custom=nested)
    result = validate_payload(payload)
    assert result is payload
    assert result["custom"] is nested
    assert result["test_event_code"] == "T1"


def test_properties_extra_key_is_kept() -> None:
    payload = with_properties(value=1, order_id="o-9", contents=[{"id": "x"}])
    result = validate_payload(payload)
    props = result["events"][0]["properties"]
    assert props["order_id"] == "o-9"
    assert props["contents"] == [{"id": "x"}]


def test_string_properties_accept_string_and_null() -> None:
    names = ["content_type", "content_category", "content_name", "currency", "query", "mapping_id"]
    validate_payload(with_properties(**{name: "x" for name in names}))
    validate_payload(with_properties(**{name: None for name in names}))


@pytest.mark.parametrize("name", ["content_type", "currency", "mapping_id"])
def test_string_property_refuses_a_number(name: str) -> None:
    exc = refused(with_properties(**{name: 5}), f"events.0.properties.{name}")
    assert message_for(exc, f"events.0.properties.{name}") == "must be a string, not int"


def test_events_may_have_no_properties() -> None:
    validate_payload(good_payload(events=[{"event_name": "view"}]))


def test_properties_null_is_refused_because_the_schema_does_not_allow_it() -> None:
    exc = refused(
        good_payload(events=[{"event_name": "v", "properties": None}]), "events.0.properties"
    )
    assert "null" in message_for(exc, "events.0.properties")


# --- click_id and events ------------------------------------------------------------------


def test_missing_click_id() -> None:
    payload = good_payload()
    del payload["click_id"]
    exc = refused(payload, "click_id")
    assert message_for(exc, "click_id") == "field required"


@pytest.mark.parametrize("value", [123, None, b"clk", ["clk"]])
def test_non_string_click_id(value: object) -> None:
    exc = refused(good_payload(click_id=value), "click_id")
    assert message_for(exc, "click_id").startswith("must be a string")


def test_missing_events() -> None:
    payload = good_payload()
    del payload["events"]
    exc = refused(payload, "events")
    assert message_for(exc, "events") == "field required"


def test_empty_events() -> None:
    exc = refused(good_payload(events=[]), "events")
    assert message_for(exc, "events") == "must have at least 1 item"


@pytest.mark.parametrize("value", [{"event_name": "x"}, "purchase", None])
def test_events_not_a_list(value: object) -> None:
    exc = refused(good_payload(events=value), "events")
    assert message_for(exc, "events").startswith("must be a list")


def test_event_without_event_name() -> None:
    exc = refused(
        good_payload(events=[{"event_name": "ok"}, {"properties": {}}]), "events.1.event_name"
    )
    assert message_for(exc, "events.1.event_name") == "field required"


def test_event_name_must_be_a_string() -> None:
    refused(good_payload(events=[{"event_name": 7}]), "events.0.event_name")


def test_event_with_unknown_key() -> None:
    exc = refused(
        good_payload(events=[{"event_name": "x", "eventName": "x"}]), "events.0.eventName"
    )
    assert message_for(exc, "events.0.eventName") == "unknown field"


def test_event_that_is_not_an_object() -> None:
    exc = refused(good_payload(events=["purchase"]), "events.0")
    assert message_for(exc, "events.0") == "must be an object, not str"


# --- integer properties are strict --------------------------------------------------------


@pytest.mark.parametrize("name", ["value", "quantity", "price"])
@pytest.mark.parametrize(
    ("bad", "kind"), [(True, "bool"), (False, "bool"), ("5", "str"), (5.5, "float"), (5.0, "float")]
)
def test_integer_property_refuses_non_integers(name: str, bad: object, kind: str) -> None:
    field = f"events.0.properties.{name}"
    exc = refused(with_properties(**{name: bad}), field)
    assert message_for(exc, field) == f"must be an integer, not {kind}"


@pytest.mark.parametrize("name", ["value", "quantity", "price"])
@pytest.mark.parametrize("good", [5, 0, -3, None])
def test_integer_property_accepts_integers_and_null(name: str, good: object) -> None:
    payload = with_properties(**{name: good})
    assert validate_payload(payload) is payload


# --- variants and bundle price options ----------------------------------------------------


def test_variants_and_bundles_accepted() -> None:
    payload = good_payload(
        variants=[{"variant_unique_id": "v1", "quantity": 3}],
        bundle_price_options=[{"bundle_price_option_unique_id": "b1", "quantity": 1}],
    )
    assert validate_payload(payload) is payload


@pytest.mark.parametrize("bad", [0, -1, True, "2", 2.0])
def test_variant_quantity_refused(bad: object) -> None:
    refused(with_variant(variant_unique_id="v2", quantity=bad), "variants.1.quantity")


def test_variant_quantity_zero_message() -> None:
    exc = refused(with_variant(variant_unique_id="v2", quantity=0), "variants.1.quantity")
    assert message_for(exc, "variants.1.quantity") == "must be >= 1"


def test_variant_unknown_key_and_missing_id() -> None:
    exc = refused(
        with_variant(quantity=1, sku="S"), "variants.1.sku", "variants.1.variant_unique_id"
    )
    assert message_for(exc, "variants.1.sku") == "unknown field"
    assert message_for(exc, "variants.1.variant_unique_id") == "field required"


def test_variant_missing_quantity() -> None:
    refused(with_variant(variant_unique_id="v2"), "variants.1.quantity")


@pytest.mark.parametrize("bad", [0, -1, True, "2", 2.0])
def test_bundle_quantity_refused(bad: object) -> None:
    field = "bundle_price_options.1.quantity"
    refused(with_bundle(bundle_price_option_unique_id="b2", quantity=bad), field)


def test_bundle_unknown_key_and_missing_id() -> None:
    exc = refused(
        with_bundle(quantity=1, extra=1),
        "bundle_price_options.1.extra",
        "bundle_price_options.1.bundle_price_option_unique_id",
    )
    assert message_for(exc, "bundle_price_options.1.extra") == "unknown field"


@pytest.mark.parametrize("name", ["variants", "bundle_price_options"])
def test_list_fields_refuse_null_but_may_be_absent(name: str) -> None:
    exc = refused(good_payload(**{name: None}), name)
    assert "null" in message_for(exc, name)
    validate_payload(good_payload())  # absent
    validate_payload(good_payload(**{name: []}))


@pytest.mark.parametrize("name", ["variants", "bundle_price_options"])
def test_list_fields_refuse_an_object(name: str) -> None:
    exc = refused(good_payload(**{name: {"quantity": 1}}), name)
    assert message_for(exc, name) == "must be a list, not dict"


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["event_source_url", "referrer_url"])
@pytest.mark.parametrize(
    "url", ["https://shop.example/p?x=1", "https://shop.example", "HTTP://Shop.Example:8080/a/../b"]
)
def test_absolute_url_is_accepted_and_kept_byte_for_byte(name: str, url: str) -> None:
    result = validate_payload(good_payload(**{name: url}))
    assert result[name] is url
    assert json.dumps(result[name]) == json.dumps(url)  # no trailing slash, no lower-casing


@pytest.mark.parametrize("name", ["event_source_url", "referrer_url"])
@pytest.mark.parametrize(
    "bad", ["not a url", "/relative", "shop.example/p", "mailto:a@b.example", "https://", "", 42]
)
def test_non_absolute_url_is_refused(name: str, bad: object) -> None:
    exc = refused(good_payload(**{name: bad}), name)
    assert message_for(exc, name) == "must be an absolute URI or null"


@pytest.mark.parametrize("name", ["event_source_url", "referrer_url"])
def test_url_may_be_null(name: str) -> None:
    validate_payload(good_payload(**{name: None}))


# --- several problems, wrong shapes, JSON -------------------------------------------------


def test_every_problem_is_named_at_once() -> None:
    payload = {
        "click_id": 1,
        "events": [
            {"event_name": "a", "properties": {"value": True}},
            {"nope": 1},
        ],
        "variants": [{"variant_unique_id": "v", "quantity": 0}],
        "referrer_url": "/relative",
        "when": datetime.datetime(2024, 1, 1),
    }
    exc = refused(
        payload,
        "click_id",
        "events.0.properties.value",
        "events.1.event_name",
        "events.1.nope",
        "variants.0.quantity",
        "referrer_url",
        "when",
    )
    assert len(exc.fields) == len(set(exc.fields)) == 7


@pytest.mark.parametrize("payload", [None, [], "{}", 3, ("click_id", "c")])
def test_non_dict_payload(payload: object) -> None:
    exc = refused(payload, "payload")
    assert exc.fields == ["payload"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (good_payload(extra=datetime.date(2024, 1, 1)), "extra"),
        (good_payload(extra={"nested": [1, {2, 3}]}), "extra.nested.1"),
        (
            with_properties(value=1, sent_at=datetime.datetime(2024, 1, 1)),
            "events.0.properties.sent_at",
        ),
        (good_payload(extra={1: "int key"}), "extra.1"),
        (good_payload(extra=float("nan")), "extra"),
        (good_payload(extra=object()), "extra"),
    ],
)
def test_non_json_value_is_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    refused(payload, field)


def test_circular_payload_is_refused() -> None:
    payload = good_payload()
    payload["me"] = payload
    refused(payload, "me")


def test_a_field_is_named_once_even_if_it_breaks_two_rules() -> None:
    exc = refused(good_payload(click_id={1, 2}), "click_id")
    assert exc.fields == ["click_id"]


def test_invalid_event_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="click_id"):
        validate_payload({"events": [{"event_name": "x"}]})


def test_model_still_describes_the_schema() -> None:
    model = EventRequest.model_validate(good_payload(extra=1))
    assert model.events[0].properties is not None
    assert model.events[0].properties.value == 150000
    assert model.model_extra == {"extra": 1}


# --- store_id -----------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["store_abc", "A1-b2.c3~d"])
def test_validate_store_id_accepts(good: str) -> None:
    assert validate_store_id(good) == good


@pytest.mark.parametrize(
    "bad", ["a/b", "", " x", "x ", "a\tb", "a?b", "a#b", "a%2Fb", "..", ".", "a\\b", "a\x00b", 5]
)
def test_validate_store_id_refuses(bad: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_store_id(bad)
    assert info.value.fields == ["store_id"]
    assert "store_id: " in str(info.value)


# --- job messages -------------------------------------------------------------------------


def test_good_job() -> None:
    kwargs = good_job()
    job = validate_job(kwargs)
    assert isinstance(job, JobMessage)
    assert (job.job_id, job.store_id, job.schema_version) == ("job-1", "store_abc", 1)
    assert job.payload == kwargs["payload"]
    assert (job.attempts, job.replay_count) == (0, 0)


def test_job_round_trip_uses_the_wire_name_schema() -> None:
    kwargs = good_job(attempts=2, replay_count=1, generation=3, internal_errors=1)
    dumped = validate_job(kwargs).model_dump(by_alias=True)
    assert dumped == kwargs
    assert "schema" in dumped and "schema_version" not in dumped
    assert validate_job(json.loads(json.dumps(dumped))).model_dump(by_alias=True) == kwargs


def test_the_worker_s_kwargs_default_to_zero_for_a_contract_only_message() -> None:
    job = validate_job(good_job())
    assert (job.attempts, job.replay_count, job.generation, job.internal_errors) == (0, 0, 0, 0)


@pytest.mark.parametrize("key", ["generation", "internal_errors"])
def test_the_worker_s_counters_are_non_negative_integers(key: str) -> None:
    for bad in (-1, 1.0, "1", True):
        with pytest.raises(InvalidEvent):
            validate_job(good_job(**{key: bad}))


def chain(levels: int) -> dict[str, Any]:
    """Dicts nested ``levels`` deep: {"x": {"x": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


def test_a_payload_nested_deeper_than_the_bound_is_refused_by_name() -> None:
    # The payload object is the first level.
    validate_payload({**good_payload(), "extra": chain(MAX_PAYLOAD_DEPTH - 1)})
    with pytest.raises(InvalidEvent) as info:
        validate_payload({**good_payload(), "extra": chain(MAX_PAYLOAD_DEPTH)})
    assert f"nested deeper than {MAX_PAYLOAD_DEPTH} levels" in str(info.value)
    # Far deeper than Python's recursion limit: refused all the same, no RecursionError.
    with pytest.raises(InvalidEvent):
        validate_payload({**good_payload(), "extra": chain(5_000)})


def test_job_is_built_with_schema_and_sent_as_schema() -> None:
    job = JobMessage(job_id="j", store_id="s", payload=good_payload(), enqueued_at=1.0, schema=1)
    assert job.schema_version == 1
    assert job.model_dump(by_alias=True)["schema"] == 1


def test_job_may_also_be_built_by_python_name() -> None:
    fields: dict[str, Any] = {"schema_version": 1}  # mypy only knows the alias
    job = JobMessage(job_id="j", store_id="s", payload={}, enqueued_at=1.0, **fields)
    assert job.model_dump(by_alias=True)["schema"] == 1


def test_integer_enqueued_at_is_accepted() -> None:
    assert validate_job(good_job(enqueued_at=1_700_000_000)).enqueued_at == 1_700_000_000.0


@pytest.mark.parametrize("key", ["job_id", "store_id", "payload", "enqueued_at", "schema"])
def test_job_missing_key(key: str) -> None:
    kwargs = good_job()
    del kwargs[key]
    with pytest.raises(InvalidEvent) as info:
        validate_job(kwargs)
    assert key in info.value.fields
    assert f"{key}: field required" in str(info.value)


def test_job_extra_key() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(priority=5))
    assert info.value.fields == ["priority"]
    assert "priority: unknown field" in str(info.value)


def test_job_schema_version_key_is_not_the_wire_name() -> None:
    kwargs = good_job()
    kwargs["schema_version"] = kwargs.pop("schema")
    with pytest.raises(InvalidEvent) as info:
        validate_job(kwargs)
    assert set(info.value.fields) == {"schema", "schema_version"}


@pytest.mark.parametrize("version", [2, 0, True, "1"])
def test_job_other_schema_refused(version: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(schema=version))
    assert info.value.fields == ["schema"]
    assert "schema: " in str(info.value)


def test_job_schema_2_message() -> None:
    with pytest.raises(InvalidEvent, match="schema: unsupported job schema 2"):
        validate_job(good_job(schema=2))


@pytest.mark.parametrize("store_id", ["a/b", "", " x", None])
def test_job_bad_store_id(store_id: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(store_id=store_id))
    assert info.value.fields == ["store_id"]
    assert "store_id: " in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"job_id": ""}, "job_id"),
        ({"job_id": 7}, "job_id"),
        ({"enqueued_at": 0}, "enqueued_at"),
        ({"enqueued_at": -1.0}, "enqueued_at"),
        ({"enqueued_at": "1700000000"}, "enqueued_at"),
        ({"enqueued_at": True}, "enqueued_at"),
        ({"enqueued_at": float("inf")}, "enqueued_at"),
        ({"attempts": -1}, "attempts"),
        ({"attempts": 1.0}, "attempts"),
        ({"replay_count": -1}, "replay_count"),
        ({"replay_count": "0"}, "replay_count"),
        ({"payload": [1]}, "payload"),
    ],
)
def test_job_bad_values(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(**overrides))
    assert info.value.fields == [field]


def test_job_payload_errors_are_prefixed() -> None:
    payload = good_payload(click_id=1, variants=[{"variant_unique_id": "v", "quantity": True}])
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(payload=payload))
    assert info.value.fields == ["payload.click_id", "payload.variants.0.quantity"]
    assert "payload.click_id: must be a string, not int" in str(info.value)
    assert str(info.value).startswith("job job-1: ")


def test_job_payload_non_json_value_is_prefixed() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(payload=good_payload(extra={1, 2})))
    assert info.value.fields == ["payload.extra"]


def test_job_payload_bad_key_named_once() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(payload={**good_payload(), 1: "x"}))
    assert info.value.fields == ["payload.1"]


def test_job_and_payload_problems_together() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(good_job(schema=2, store_id="a/b", payload=good_payload(events=[])))
    assert set(info.value.fields) == {"schema", "store_id", "payload.events"}


@pytest.mark.parametrize("kwargs", [None, [], "job"])
def test_job_kwargs_not_a_dict(kwargs: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_job(kwargs)
    assert info.value.fields == ["kwargs"]


def test_a_shallow_payload_with_more_brackets_than_levels_is_accepted() -> None:
    # More containers than MAX_PAYLOAD_DEPTH, none deeper than 3 levels: the bracket count
    # sends it to the exact depth walk, which lets it through.
    variants = [{"variant_unique_id": f"v{i}", "quantity": 1} for i in range(MAX_PAYLOAD_DEPTH)]
    payload = good_payload(variants=variants, extra=[[], [{}], "[[[{{{"])
    assert validate_payload(payload) is payload


def test_a_tuple_is_accepted_and_posted_as_a_list() -> None:
    payload = good_payload(extra=("a", 1))
    assert validate_payload(payload) is payload
