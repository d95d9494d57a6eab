"""JSON payloads <-> typed events: the fast path (one prebuilt msgspec decoder) and the slow paths.

The fast path decodes a payload straight into its event class and keeps the payload bytes on the event. Only a
payload that the fast path rejects takes the slow path: unknown event types become ``UnknownEvent``, unknown
nested item/part/annotation types become ``Unknown*`` objects, and a wrong field type is a ``DecodeError`` (or,
in lenient mode, an ``UnknownEvent`` carrying the problem). camelCase reading (TypeScript SDK dumps) is slow-path. A payload nested deeper than the interpreter lets
msgspec follow is a ``DecodeError`` too, never a ``RecursionError``.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from functools import cache
from typing import Any

import msgspec
from msgspec.structs import replace as _struct_replace

from .errors import DecodeError
from .events import EVENT_CLASSES, Event, KnownEvent, UnknownEvent
from .resources import (
    Response,
    UnknownAnnotation,
    UnknownItem,
    UnknownPart,
    _enc_hook,
    _Unknown,
    has_wire,
    keep_wire,
    to_builtins,
)
from .wires import WireSource, keep_lazy_wires

__all__ = [
    "decode_event",
    "decode_event_obj",
    "decode_response",
    "encode_event",
    "encode_response",
    "event_to_builtins",
    "fast_decoder",
    "keep_wires",
    "replace_event",
    "replace_response_event",
    "to_camel",
    "to_snake",
]

_decoder = msgspec.json.Decoder(KnownEvent)
fast_decoder = _decoder
"""The fast path's decoder (payload -> known event class); ``stream.EventDecoder`` runs it inline."""
_json_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def decode_event(data: bytes, *, lenient: bool = False, camel: bool = False) -> Event:
    """One JSON payload (the ``data:`` of one SSE event) to its typed event.

    ``lenient``: a known type whose fields do not fit the schema gives an ``UnknownEvent`` with ``problem`` set
    instead of raising ``DecodeError``. ``camel``: read camelCase keys (as the TypeScript SDK prints them).
    """
    try:
        return _decode_event(data, lenient, camel)
    except RecursionError:
        raise DecodeError("payload is nested too deeply to decode", payload=data) from None


def _decode_event(data: bytes, lenient: bool, camel: bool) -> Event:
    event: Event
    if not camel:
        try:
            event = _decoder.decode(data)
        except msgspec.ValidationError:
            pass
        except msgspec.DecodeError as exc:
            raise DecodeError(f"payload is not valid JSON: {exc}", payload=data) from None
        else:
            event.__dict__["_raw"] = data
            return event
    try:
        obj = _json_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}", payload=data) from None
    if camel:
        obj = to_snake(obj)
        event = decode_event_obj(obj, lenient=lenient)
        if type(event) is not UnknownEvent:
            event.__dict__["_wire"] = obj  # re-encodes as what was read, in snake_case
        return event
    event = _decode_event_obj(obj, lenient)
    event.__dict__["_raw"] = data
    return event


# Where an unknown nested tag may stand, and a stand-in of a known type that is valid at that place.
_STAND_INS: dict[str, tuple[dict[str, Any], type[_Unknown]]] = {
    "item": ({"type": "message"}, UnknownItem),
    "output": ({"type": "message"}, UnknownItem),
    "part": ({"type": "output_text"}, UnknownPart),
    "content": ({"type": "output_text"}, UnknownPart),
    "summary": ({"type": "summary_text"}, UnknownPart),
    "annotation": ({"type": "url_citation"}, UnknownAnnotation),
    "annotations": ({"type": "url_citation"}, UnknownAnnotation),
}
_UNKNOWN_TAG = re.compile(r"^Invalid value .* - at `\$((?:\.\w+|\[\d+\])*)\.type`$")
_PATH_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")


def decode_event_obj(obj: Any, *, lenient: bool = False) -> Event:
    """A decoded JSON object (dict) to its typed event; the slow path behind ``decode_event``."""
    try:
        return _decode_event_obj(obj, lenient)
    except RecursionError:
        raise DecodeError("payload is nested too deeply to decode") from None


def _decode_event_obj(obj: Any, lenient: bool) -> Event:
    if not isinstance(obj, dict):
        raise DecodeError(f"event payload must be a JSON object, got {type(obj).__name__}")
    etype = obj.get("type")
    cls = EVENT_CLASSES.get(etype) if isinstance(etype, str) else None
    if cls is None:
        if not isinstance(etype, str):
            problem = "event has no string `type` field"
            if not lenient:
                raise DecodeError(problem, sequence_number=_seq(obj))
            return UnknownEvent(type=str(etype), data=obj, problem=problem)
        return UnknownEvent(type=etype, data=obj)
    unknowns: list[tuple[list[str | int], _Unknown]] = []
    work = obj
    for _ in range(10_000):
        try:
            event = msgspec.convert(work, cls)
            break
        except msgspec.ValidationError as exc:
            message = str(exc)
            path = _unknown_tag_path(message)
            if path is not None and work is obj:
                work = _json_decoder.decode(_encoder.encode(obj))  # substitute in a copy, keep obj intact
            if path is None or not _substitute(work, path, unknowns):
                if lenient:
                    return UnknownEvent(type=str(etype), data=obj, problem=message)
                raise DecodeError(message, event_type=etype, sequence_number=_seq(obj)) from None
    else:  # pragma: no cover - would need 10k unknown nested objects
        raise DecodeError("too many unknown nested objects", event_type=etype, sequence_number=_seq(obj))
    for path, unknown in unknowns:
        _put(event, path, unknown)
    return event  # type: ignore[return-value]


def _seq(obj: dict[str, Any]) -> int | None:
    value = obj.get("sequence_number")
    return value if isinstance(value, int) else None


def _unknown_tag_path(message: str) -> list[str | int] | None:
    match = _UNKNOWN_TAG.match(message)
    if match is None:
        return None
    return [name if name else int(index) for name, index in _PATH_STEP.findall(match.group(1))]


def _substitute(work: Any, path: list[str | int], unknowns: list[tuple[list[str | int], _Unknown]]) -> bool:
    """Replace the object at ``path`` in ``work`` by a stand-in; remember what stood there."""
    if not path:
        return False
    # The field name that decides what kind of object stands here: the last name on the path.
    kind = next((step for step in reversed(path) if isinstance(step, str)), None)
    if kind not in _STAND_INS:
        return False
    parent = work
    for step in path[:-1]:
        parent = parent[step]
    original = parent[path[-1]]
    if not isinstance(original, dict):
        return False
    stand_in, unknown_cls = _STAND_INS[kind]
    parent[path[-1]] = dict(stand_in)
    unknowns.append((path, unknown_cls(original)))
    return True


def _put(event: Any, path: list[str | int], value: Any) -> None:
    parent = event
    for step in path[:-1]:
        parent = parent[step] if isinstance(step, int) else getattr(parent, step)
    last = path[-1]
    if isinstance(last, int):
        parent[last] = value
    else:
        msgspec.structs.force_setattr(parent, last, value)


# The fields of events that carry resources (an item, a part, an annotation, a response).
_NESTED = ("item", "part", "annotation", "response")


def keep_wires(event: Event) -> None:
    """Let the resources inside a decoded event remember the JSON they came from (``resources.keep_wire``), so
    that a snapshot built from them shows what the provider sent. Only events that carry resources are read
    (never a delta); an event built here, with nothing decoded, has nothing to keep. Idempotent. (The walk is
    ``wires.keep_lazy_wires``, compiled; an event with a wire of its own and no payload is read here.)"""
    names = keep_lazy_wires(event)
    if names:
        keep_wires_eagerly(event, names)


def keep_wires_eagerly(event: Event, names: list[str]) -> None:
    """``keep_wires`` for an event that remembers a wire of its own (``_wire``: read camelCase, or changed by
    ``replace_event``), not payload bytes: ``keep_wire`` on its resource fields ``names``."""
    wire = event_to_builtins(event)
    for name in names:
        value = getattr(event, name)
        if name == "response":  # the response is the receiver's own; what it holds is the provider's
            raw = wire.get("response")
            if isinstance(raw, dict):
                keep_wire(value.output, raw.get("output"))
                if value.usage is not None:
                    keep_wire(value.usage, raw.get("usage"))
        else:
            keep_wire(value, wire.get(name))


def encode_event(event: Event) -> bytes:
    """An event as single-line JSON. A decoded, unchanged event gives back exactly the bytes it came from."""
    raw = event.__dict__.get("_raw")
    if raw is not None:
        return raw
    if type(event) is UnknownEvent:
        return _encoder.encode(event.data)
    wire = event.__dict__.get("_wire")
    if wire is not None:
        return _encoder.encode(wire)
    nested = _nested_of(type(event))
    if nested and any(has_wire(getattr(event, name)) for name in nested):
        return _encoder.encode(to_builtins(event))
    return _encoder.encode(event)


@cache
def _nested_of(cls: type) -> tuple[str, ...]:
    """Which of ``_NESTED`` an event class has: none for a delta, so the hot path of ``encode_event`` (every
    event the writer makes) skips the walk for remembered wires without a look at the event."""
    fields = getattr(cls, "__struct_fields__", ())
    return tuple(name for name in _NESTED if name in fields)


def _response_hook(obj: object) -> object:
    to_builtins = getattr(obj, "to_builtins", None)
    if to_builtins is None:
        raise NotImplementedError(f"cannot encode {type(obj).__name__}")
    return to_builtins()


_response_encoder = msgspec.json.Encoder(enc_hook=_response_hook)
_response_decoder = msgspec.json.Decoder(Response)


def encode_response(response: Response) -> bytes:
    """A ``ResponseResource`` as JSON: every spec-required field, nulls included; what a relayed upstream sent
    in its items, parts, annotations and usage as it sent it (``resources.to_builtins``)."""
    if has_wire(response):
        return _response_encoder.encode(to_builtins(response))
    return _response_encoder.encode(response)


def decode_response(data: bytes) -> Response:
    """A stored ``ResponseResource`` (JSON) as the typed resource. Raises ``msgspec.DecodeError`` /
    ``msgspec.ValidationError`` for bytes that are not one; one nested too deeply to decode is a
    ``msgspec.DecodeError`` too, never a ``RecursionError``."""
    try:
        return _response_decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("the response is nested too deeply to decode") from None


def event_to_builtins(event: Event) -> dict[str, Any]:
    """An event as a JSON-ready dict (wire field names), provider extras included."""
    if type(event) is UnknownEvent:
        return dict(event.data)
    raw = event.__dict__.get("_raw")
    if raw is not None:
        return _json_decoder.decode(raw)
    wire = event.__dict__.get("_wire")
    if wire is not None:
        return dict(wire)
    return to_builtins(event)


def replace_event(event: KnownEvent, **changes: Any) -> KnownEvent:
    """A copy of ``event`` with ``changes`` applied (e.g. a new ``sequence_number``). Everything else it
    encodes to stays as the provider sent it, fields Headwater does not model included (field-for-field)."""
    return _replace_event(event, changes, None)


def replace_response_event(event: KnownEvent, known: AbstractSet[str], **changes: Any) -> KnownEvent:
    """``replace_event`` of an event that carries a response, ``changes["response"]`` its new one: the fields
    of the event's own response that are not in ``known`` (a provider's own: ``copilot_usage``,
    ``tool_usage``...) stay in the copy's response. (The relay's terminal event: its payload, the whole upstream
    response, is decoded once.)"""
    return _replace_event(event, changes, known)


def _replace_event(event: KnownEvent, changes: dict[str, Any], known: AbstractSet[str] | None) -> KnownEvent:
    new = _struct_replace(event, **changes)
    attrs = event.__dict__
    if "_raw" in attrs or "_wire" in attrs:
        source = attrs.get("_source")
        # What the event's resources remember lazily is decoded from the same payload, once (a shallow copy:
        # only its top level changes here).
        wire = dict(source.value()) if isinstance(source, WireSource) else event_to_builtins(event)
        theirs = wire.get("response") if known is not None else None
        wire.update(to_builtins(changes))
        if isinstance(theirs, dict):
            extras = {key: value for key, value in theirs.items() if key not in known}  # type: ignore[operator]
            mine = wire.get("response")
            if extras and isinstance(mine, dict):
                wire["response"] = {**mine, **extras}
        new.__dict__["_wire"] = wire
        if "_wires" in attrs or _all_changed(new, changes):
            new.__dict__["_wires"] = True  # its resources remember their wires already: see below
    return new


def _all_changed(new: KnownEvent, changes: dict[str, Any]) -> bool:
    """Whether every resource ``new`` carries is one of ``changes``.

    ``replace_event`` marks the copy done for ``keep_wires`` (``_wires``) when each resource in it remembers
    its wire already, so that the walk that would compare them with the copy's wire again (the Accumulator's,
    on every relayed event that carries resources; on the terminal one, the whole final response) is skipped:
    a resource in ``changes`` has for its wire ``to_builtins`` of that very object, and ``keep_wire`` of an
    object against its own ``to_builtins`` changes nothing it encodes to (each object would remember what it
    gives back already); one kept from ``event`` (the same object: the copy is shallow) remembers what
    ``event``'s wire says if ``event`` is done (``keep_wires`` ran on it), and that is what the copy's wire
    says of it. A resource kept from an event not done is still to be read from the wire: not marked."""
    nested = _nested_of(type(new))
    return bool(nested) and all(name in changes or getattr(new, name) is None for name in nested)


# --- camelCase (TypeScript SDK dumps) -----------------------------------------------------------------------

# Free-form maps whose keys are the user's, not the protocol's: never renamed.
# JSON schemas (``parameters``, ``input_schema``, ``schema``, ``properties``), environment variables, metadata...
_FREE_FORM = frozenset(
    {"metadata", "variables", "parameters", "schema", "input_schema", "properties", "headers", "arguments", "env"}
)
_ACRONYM_STEP = re.compile(r"([A-Z]+)([A-Z][a-z])")  # "HTTPHeaders" -> "HTTP_Headers"
_CAMEL_STEP = re.compile(r"([a-z0-9])([A-Z])")  # "itemId" -> "item_Id", "itemID" -> "item_ID"


def _snake_key(key: str) -> str:
    return _CAMEL_STEP.sub(r"\1_\2", _ACRONYM_STEP.sub(r"\1_\2", key)).lower()


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _rename(obj: Any, rename: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            new_key = rename(key) if isinstance(key, str) else key
            out[new_key] = value if _snake_key(key) in _FREE_FORM else _rename(value, rename)
        return out
    if isinstance(obj, list):
        return [_rename(value, rename) for value in obj]
    return obj


def to_snake(obj: Any) -> Any:
    """camelCase keys to the wire's snake_case, leaving free-form maps (metadata, variables, ...) alone."""
    return _rename(obj, _snake_key)


def to_camel(obj: Any) -> Any:
    """The wire's snake_case keys to camelCase (as the TypeScript SDK shows them)."""
    return _rename(obj, _camel_key)
