"""The request body of Scalev's SnackVideo events endpoint, and the Celery job that carries it.

The models follow the OpenAPI schema of
``POST /v3/stores/{store_id}/public/analytics/snackvideo/events`` and exist to *check* a
payload, not to rewrite it. ``validate_payload`` returns the caller's original dict rather
than ``model_dump()``: the schema allows extra keys whose meaning we do not know, and pydantic
would normalise URL strings (``https://a.example`` becomes ``https://a.example/``). What
reaches Scalev must be byte-for-byte what the backend gave us, so a model dump never goes on
the wire.

Integers are strict on purpose: ``True``, ``"5"`` and ``5.0`` all pass pydantic's lax mode
and would be sent as they are, because the original payload is what is sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from producers.errors import InvalidEvent

__all__ = [
    "JOB_SCHEMA_VERSION",
    "MAX_ID_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "BundlePriceOptionItem",
    "ConversionEvent",
    "EventProperties",
    "EventRequest",
    "JobMessage",
    "VariantItem",
    "check_payload_size",
    "nested_deeper_than",
    "request_body",
    "validate_job",
    "validate_payload",
    "validate_payload_body",
    "validate_store_id",
]

JOB_SCHEMA_VERSION = 1
#: Containers nested deeper than this in a payload are refused. The schema needs 4 levels;
#: the bound leaves room for extra keys, and stays far below the depth at which Python's
#: recursive encoders fail: pickling a Celery request for a pool process fails near 500
#: levels and took the whole worker down with it (``worker.celery_ext.body_guard`` guards that too).
MAX_PAYLOAD_DEPTH = 32
#: Default of ``SNACKVIDEO_MAX_PAYLOAD_BYTES``: the largest request body, measured as the
#: compact UTF-8 JSON the worker posts (``request_body``). A real event is about 1 KB; the
#: bound is far above any of them and far below what would strain a noeviction Redis
#: holding the queue and the dead letters.
MAX_PAYLOAD_BYTES = 524_288
#: Longest store id and job id: both go into Redis keys, log lines and metric labels. A
#: store's unique_id and a job's UUID are a few dozen characters.
MAX_ID_CHARS = 200

Quantity = Annotated[StrictInt, Field(ge=1)]
_ANY_URL: TypeAdapter[AnyUrl] = TypeAdapter(AnyUrl)
# Characters that would change which URL a store_id-in-the-path points at.
_PATH_BREAKERS = frozenset("/\\?#%")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _refuse_null(value: object) -> object:
    # The schema does not mark these nullable: absent is fine, an explicit null is not.
    if value is None:
        raise ValueError("must not be null (omit the key instead)")
    return value


def _is_absolute_uri(value: str) -> bool:
    try:
        parts = urlsplit(value)
        _ANY_URL.validate_python(value)  # syntax check only; the result is thrown away
    except (ValueError, ValidationError):
        return False
    return bool(parts.scheme and parts.hostname)


class EventProperties(BaseModel):
    model_config = ConfigDict(extra="allow")

    content_type: StrictStr | None = None
    content_category: StrictStr | None = None
    content_name: StrictStr | None = None
    currency: StrictStr | None = None
    value: StrictInt | None = None
    quantity: StrictInt | None = None
    price: StrictInt | None = None
    query: StrictStr | None = None
    mapping_id: StrictStr | None = None


class ConversionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_name: StrictStr
    properties: EventProperties | None = None

    _no_null_properties = field_validator("properties", mode="before")(_refuse_null)


class VariantItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant_unique_id: StrictStr
    quantity: Quantity


class BundlePriceOptionItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle_price_option_unique_id: StrictStr
    quantity: Quantity


class EventRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    click_id: StrictStr
    events: list[ConversionEvent] = Field(min_length=1)
    event_source_url: StrictStr | None = None
    referrer_url: StrictStr | None = None
    variants: list[VariantItem] | None = None
    bundle_price_options: list[BundlePriceOptionItem] | None = None

    _no_null_lists = field_validator("variants", "bundle_price_options", mode="before")(
        _refuse_null
    )

    @field_validator("event_source_url", "referrer_url", mode="before")
    @classmethod
    def _absolute_uri(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and _is_absolute_uri(value)):
            return value
        raise ValueError("must be an absolute URI or null")


def _store_id_problem(store_id: object) -> str | None:
    if not isinstance(store_id, str):
        return f"must be a string, not {_kind(store_id)}"
    if not store_id:
        return "must not be empty"
    if len(store_id) > MAX_ID_CHARS:
        return f"must be at most {MAX_ID_CHARS} characters, not {len(store_id)}"
    if store_id in (".", ".."):
        return "must not be a dot segment"
    if any(ch.isspace() or not ch.isprintable() or ch in _PATH_BREAKERS for ch in store_id):
        return "must not contain whitespace, control characters or any of / \\ ? # %"
    return None


def validate_store_id(store_id: object) -> str:
    """Return ``store_id`` if it can go into the endpoint's URL path as one segment."""
    problem = _store_id_problem(store_id)
    if problem is not None:
        raise InvalidEvent([("store_id", problem)])
    assert isinstance(store_id, str)  # narrowed by _store_id_problem
    return store_id


class JobMessage(BaseModel):
    """The kwargs of the ``snackvideo.deliver`` task.

    Build it with ``schema=`` and dump it with ``model_dump(by_alias=True)``: the wire name is
    ``schema``. ``validate_job`` checks the wire form and therefore refuses ``schema_version``.
    """

    # `schema` is a (deprecated) BaseModel attribute, so the field gets another Python name.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    job_id: StrictStr = Field(min_length=1, max_length=MAX_ID_CHARS)
    store_id: str
    payload: dict[str, Any]
    enqueued_at: StrictFloat = Field(gt=0, allow_inf_nan=False)
    schema_version: StrictInt = Field(alias="schema")
    attempts: StrictInt = Field(default=0, ge=0)
    replay_count: StrictInt = Field(default=0, ge=0)
    # Added by the worker, never by a producer (a message with only the five contract
    # kwargs stays valid). `generation` counts the times this run of the job was parked:
    # a restored copy of an older generation finds a newer one recorded and stands down
    # (the done-check in worker/keys.py). `internal_errors` counts runs that ended in an
    # error the dispatcher does not classify (worker/delivery/dispatcher.py).
    generation: StrictInt = Field(default=0, ge=0)
    internal_errors: StrictInt = Field(default=0, ge=0)

    @field_validator("store_id", mode="before")
    @classmethod
    def _store_id(cls, value: object) -> object:
        problem = _store_id_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != JOB_SCHEMA_VERSION:
            raise ValueError(f"unsupported job schema {value}, expected {JOB_SCHEMA_VERSION}")
        return value


def _message(error: Any) -> str:
    kind, got = error["type"], _kind(error.get("input"))
    simple = {
        "missing": "field required",
        "extra_forbidden": "unknown field",
        "int_type": f"must be an integer, not {got}",
        "float_type": f"must be a number, not {got}",
        "string_type": f"must be a string, not {got}",
        "list_type": f"must be a list, not {got}",
        "dict_type": f"must be an object, not {got}",
        "model_type": f"must be an object, not {got}",
        "invalid_key": "keys must be strings",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return simple[kind]
    ctx = error.get("ctx", {})
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "too_short":
        count = ctx["min_length"]
        return f"must have at least {count} item{'' if count == 1 else 's'}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind in ("greater_than_equal", "greater_than"):
        op, bound = (">=", ctx["ge"]) if kind == "greater_than_equal" else (">", ctx["gt"])
        return f"must be {op} {bound}"
    return str(error["msg"])


def _path(prefix: str, loc: tuple[Any, ...], root: str) -> str:
    if loc and loc[-1] == "[key]":  # pydantic's marker for a bad dict key; name the key
        loc = loc[:-1]
    dotted = ".".join(str(part) for part in loc)
    return f"{prefix}{dotted}" if dotted else root


def _pydantic_problems(exc: ValidationError, prefix: str, root: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = "keys must be strings" if loc[-1:] == ("[key]",) else _message(error)
        _merge(problems, [(_path(prefix, loc, root), message)])
    return problems


def _merge(problems: list[tuple[str, str]], more: list[tuple[str, str]]) -> None:
    """Append the problems of ``more`` about fields ``problems`` does not name yet."""
    named = {field for field, _ in problems}
    problems.extend(problem for problem in more if problem[0] not in named)


def _encodes_as_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def may_nest_deeper_than(text: object, limit: int) -> bool:
    """False when ``text``, a value's JSON (str or bytes), opens no more than ``limit``
    brackets: the value cannot nest deeper, and its walk (``nested_deeper_than``, a Python
    step per value) is not needed. A bracket inside a string counts too: never fewer
    brackets than levels. Anything but text: True (walk it)."""
    if isinstance(text, str):
        return text.count("{") + text.count("[") > limit
    if isinstance(text, bytes | bytearray):
        return text.count(b"{") + text.count(b"[") > limit
    return True


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether containers (dicts, lists, tuples) nest more than ``limit`` levels in
    ``value``. An explicit stack, not recursion: the value may be nested far deeper than
    Python's recursion limit (a cycle counts as deeper than any limit)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _json_problems(value: object) -> list[tuple[tuple[Any, ...], str]]:
    """What would stop ``json.dumps(..., allow_nan=False)`` or change on a round trip, by
    location. Walked with an explicit stack (in the order recursion would take), never
    deeper than ``MAX_PAYLOAD_DEPTH``: the check itself must not recurse on hostile input."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    # (value, its location, ids of the containers above it: a cycle is one of those again)
    stack: list[tuple[object, tuple[Any, ...], frozenset[int]]] = [(value, (), frozenset())]
    while stack:
        item, loc, above = stack.pop()
        if isinstance(item, str):
            if not _encodes_as_utf8(item):  # the message body and the POST are UTF-8
                problems.append((loc, "must be valid Unicode text (lone surrogate)"))
            continue
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                problems.append((loc, "must be a finite number (NaN and Infinity are not JSON)"))
            continue
        if not isinstance(item, dict | list | tuple):
            problems.append((loc, f"must be JSON-serialisable, not {_kind(item)}"))
            continue
        if id(item) in above:
            problems.append((loc, "circular reference"))
            continue
        if len(loc) >= MAX_PAYLOAD_DEPTH:
            problems.append((loc, f"nested deeper than {MAX_PAYLOAD_DEPTH} levels"))
            continue
        inner = above | {id(item)}
        children: list[tuple[object, tuple[Any, ...], frozenset[int]]] = []
        if isinstance(item, dict):
            for key, member in item.items():
                if not isinstance(key, str):  # json.dumps would turn 1 into "1", silently
                    problems.append(((*loc, key), "keys must be strings"))
                elif not _encodes_as_utf8(key):
                    problems.append(
                        ((*loc, repr(key)), "keys must be valid Unicode text (lone surrogate)")
                    )
                else:
                    children.append((member, (*loc, key), inner))
        else:
            children = [(member, (*loc, index), inner) for index, member in enumerate(item)]
        stack.extend(reversed(children))
    return problems


#: Compact JSON, text as it is; NaN and Infinity refused (the walk refuses them too).
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: raw_decode: what json.loads does, without its two whitespace matches (none is written).
_JSON_DECODER = json.JSONDecoder()


def request_body(payload: dict[str, Any]) -> bytes:
    """The bytes the worker POSTs for ``payload``: compact JSON, UTF-8, text as it is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _size_problem(size: int, limit: int) -> str:
    return f"{size} bytes, more than SNACKVIDEO_MAX_PAYLOAD_BYTES ({limit})"


def check_payload_size(payload: dict[str, Any], limit: int) -> int:
    """The size of ``payload`` as posted (``request_body``); ``InvalidEvent`` when it is
    over ``limit`` bytes. For a payload already known to be JSON (``validate_payload``
    does this check itself)."""
    size = len(request_body(payload))
    if size > limit:
        raise InvalidEvent([("payload", _size_problem(size, limit))])
    return size


def _plain_body(payload: dict[str, Any]) -> bytes | None:
    """``request_body(payload)`` when the walk (``_json_problems``) would find nothing;
    None when it may find something, and must then run to say what.

    The same verdict at C speed, for the common case. The encoder refuses NaN, Infinity,
    cycles and what is not JSON (it recurses in C, within the recursion limit, and raises
    RecursionError rather than crash); the UTF-8 encode refuses lone surrogates. Nesting
    is bounded by the number of brackets, walked only when there are more. Decoding the
    text again shows a key that was not a string (1 comes back as "1"; a tuple comes back
    as a list, and goes to the walk, which accepts it). The walk, a Python step per value,
    was 40 % of validating an event (docs/benchmarks.md, issue 15, third pass)."""
    try:
        text = _JSON_ENCODER.encode(payload)
        body = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    if may_nest_deeper_than(text, MAX_PAYLOAD_DEPTH) and nested_deeper_than(
        payload, MAX_PAYLOAD_DEPTH
    ):
        return None
    if _JSON_DECODER.raw_decode(text)[0] != payload:  # at most 32 levels: no deep recursion
        return None
    return body


def _checked_payload(
    payload: object, prefix: str, root: str, max_bytes: int
) -> tuple[list[tuple[str, str]], bytes | None]:
    """The problems of ``payload``, and its request body when it has none."""
    if not isinstance(payload, dict):
        return [(root, f"must be an object, not {_kind(payload)}")], None
    problems: list[tuple[str, str]] = []
    body = _plain_body(payload)
    if body is None:
        problems = [(_path(prefix, loc, root), message) for loc, message in _json_problems(payload)]
    if not problems:
        # The walk above found nothing json.dumps would choke on (no cycle, no depth it
        # would recurse into), so measuring is safe; and it comes before the schema, whose
        # check of a huge list is the slow part of refusing it.
        try:
            if body is None:
                body = request_body(payload)
        except (TypeError, ValueError) as exc:  # the walk should catch all; this is the authority
            return [(root, f"must be JSON-serialisable: {exc}")], None
        if len(body) > max_bytes:
            return [(root, _size_problem(len(body), max_bytes))], None
    try:
        EventRequest.model_validate(payload)
    except ValidationError as exc:
        more = problems
        problems = _pydantic_problems(exc, prefix, root)
        _merge(problems, more)
    return problems, None if problems else body


def validate_payload_body(
    payload: object, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[dict[str, Any], bytes]:
    """``validate_payload``, and the payload's ``request_body``, made on the way: the
    producer puts those bytes into the message rather than encoding the payload again."""
    problems, body = _checked_payload(payload, prefix="", root="payload", max_bytes=max_bytes)
    if problems:
        raise InvalidEvent(problems)
    assert isinstance(payload, dict) and body is not None  # no problems: both were made
    return payload, body


def validate_payload(payload: object, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Check ``payload`` against the request schema and return it unchanged (the same object).

    Raises ``InvalidEvent`` naming every offending field as a dotted path; a payload whose
    request body would be over ``max_bytes`` is refused as ``payload: N bytes, more than
    SNACKVIDEO_MAX_PAYLOAD_BYTES (max_bytes)``.
    """
    return validate_payload_body(payload, max_bytes=max_bytes)[0]


def validate_job(kwargs: object, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> JobMessage:
    """Check Celery task kwargs, including the payload (its fields prefixed ``payload.``)."""
    if not isinstance(kwargs, dict):
        raise InvalidEvent([("kwargs", f"must be an object, not {_kind(kwargs)}")])
    problems: list[tuple[str, str]] = []
    job: JobMessage | None = None
    try:
        # by_name=False: Python code may say schema_version=, but the wire name is `schema`.
        job = JobMessage.model_validate(kwargs, by_name=False)
    except ValidationError as exc:
        problems = _pydantic_problems(exc, prefix="", root="kwargs")
    if isinstance(kwargs.get("payload"), dict):  # a non-dict payload is reported above
        more, _ = _checked_payload(
            kwargs["payload"], prefix="payload.", root="payload", max_bytes=max_payload_bytes
        )
        _merge(problems, more)
    if problems:
        job_id = kwargs.get("job_id")
        shown = job_id if isinstance(job_id, str) and len(job_id) <= MAX_ID_CHARS else None
        raise InvalidEvent(problems, prefix=f"job {shown}: " if shown is not None else "")
    assert job is not None  # no problems means the model validated
    return job
