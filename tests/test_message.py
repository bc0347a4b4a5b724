"""The queue message as text: the envelope's pieces and holes, the payload's bytes spliced
in, the ids a call draws. Pure unit tests, no Redis.

``build_message`` fills a template cut from ``_envelope`` rather than encoding the dict
(issue 15's third pass); these tests hold it to the text encoding the dict gives.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from producers.enqueue import new_uuids
from producers.message import _compact, _envelope, _kwargs_repr, build_message
from producers.models import request_body

# Quotes, backslashes, controls, NULs and non-ASCII: what JSON has to escape, or not.
awkward = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


def job_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "job_id": "job-1",
        "store_id": "store_abc",
        "payload": {"click_id": 'clk-ü"\\', "events": [{"event_name": "purchase"}]},
        "enqueued_at": 1_700_000_000.25,
        "schema": 1,
    }
    kwargs.update(overrides)
    return kwargs


def body_of(message: str) -> Any:
    return json.loads(base64.b64decode(json.loads(message)["body"]))


@settings(max_examples=200, deadline=None)
@given(
    task_id=awkward,
    task_name=awkward,
    queue=awkward,
    tag=awkward,
    job_id=awkward,
    attempts=st.integers(0, 10**6),
)
def test_the_filled_template_is_the_envelope_encoded_whole(
    task_id: str, task_name: str, queue: str, tag: str, job_id: str, attempts: int
) -> None:
    kwargs = job_kwargs(job_id=job_id, attempts=attempts)
    message = build_message(
        kwargs, task_id=task_id, task_name=task_name, queue=queue, delivery_tag=tag or None
    )
    sent_tag = json.loads(message)["properties"]["delivery_tag"]
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = base64.b64encode(_compact([[], kwargs, embed]).encode())
    expected = _envelope(
        body.decode(), task_name, task_id, attempts, _kwargs_repr(kwargs), queue, sent_tag
    )
    assert message == _compact(expected)
    if tag:
        assert sent_tag == tag
    else:
        assert uuid.UUID(sent_tag).version == 4


def test_the_envelope_is_the_one_kombu_reads() -> None:
    message = json.loads(build_message(job_kwargs(), task_id="job-1", delivery_tag="t-1"))
    assert message["headers"]["task"] == "snackvideo.deliver"
    assert message["headers"]["id"] == message["headers"]["root_id"] == "job-1"
    assert message["properties"]["correlation_id"] == "job-1"
    assert message["properties"]["delivery_info"] == {"exchange": "", "routing_key": "snackvideo"}
    assert message["properties"]["delivery_tag"] == "t-1"
    assert body_of(json.dumps(message))[1] == job_kwargs()


@settings(max_examples=100, deadline=None)
@given(click_id=awkward, store_id=awkward, enqueued_at=st.floats(0.5, 2e9), extra=awkward)
def test_a_payload_body_spliced_in_gives_the_same_kwargs(
    click_id: str, store_id: str, enqueued_at: float, extra: str
) -> None:
    payload = {"click_id": click_id, "events": [{"event_name": "e"}], extra: [extra, 1.5]}
    kwargs = job_kwargs(store_id=store_id, payload=payload, enqueued_at=enqueued_at)
    whole = build_message(kwargs, task_id="j", delivery_tag="t")
    spliced = build_message(
        kwargs, task_id="j", delivery_tag="t", payload_body=request_body(payload)
    )
    assert body_of(spliced) == body_of(whole) == [[], kwargs, body_of(whole)[2]]
    # Only the body differs: the payload is the last of the kwargs there.
    assert json.loads(spliced) | {"body": ""} == json.loads(whole) | {"body": ""}
    assert list(body_of(spliced)[1]) == [key for key in kwargs if key != "payload"] + ["payload"]


def test_a_payload_body_alone_is_still_an_object() -> None:
    spliced = build_message({"payload": {"a": 1}}, task_id="j", payload_body=b'{"a":1}')
    assert body_of(spliced)[1] == {"payload": {"a": 1}}


def test_new_uuids_are_random_version_4_uuids_in_their_usual_text() -> None:
    ids = new_uuids(500)
    assert len(set(ids)) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert new_uuids(0) == []
