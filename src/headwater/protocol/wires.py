"""The JSON a decoded resource came from, remembered lazily: the walk that ``codec.keep_wires`` runs on the first
feed of every event that carries resources (items, parts, annotations, the terminal response).

``resources`` explains what a remembered wire is for (``to_builtins`` gives an object back as the provider sent
it) and keeps the eager form (``keep_wire``); this module is the lazy form, apart so that it can be compiled
(setup.py): it runs on every carrier event of every stream, and most of its cost was the interpreter's. It knows
msgspec Structs in general, not the resource classes, so ``resources`` imports it, not the other way round.

What is remembered on a resource (in its ``__dict__``, under ``WIRE``) is a ``LazyWire``: where the resource's
JSON is in the event's payload and what the resource's class is, nothing decoded. Which fields a freshly decoded
object has set follows from its class and the JSON it was decoded from (a field is set if the JSON has it or its
default is not ``UNSET``), so whether encoding the object would lose or invent a field of its JSON can be worked
out from the JSON alone, when a wire is first read, without a copy of the object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, get_args

import msgspec
from msgspec import NODEFAULT, UNSET, Struct, UnsetType

__all__ = [
    "WIRE",
    "LazyWire",
    "WireSource",
    "defaults_of",
    "differs_as_decoded",
    "has_wire",
    "keep_lazy_wires",
    "keep_wire_lazily",
    "nested_fields",
    "resolved",
    "wire_builtins",
]

WIRE: Final = "_wire"
"""The ``__dict__`` key under which a resource remembers its wire (a dict, or a ``LazyWire``)."""


class WireSource:
    """The JSON an event was decoded from, as plain objects, made (by ``load``) the first time it is needed."""

    __slots__ = ("_load", "_value")

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load: Callable[[], Any] | None = load
        self._value: Any = None

    def value(self) -> Any:
        load = self._load
        if load is not None:
            self._value = load()
            self._load = None
        return self._value


class LazyWire:
    """What ``resources.keep_wire`` would have remembered on an object of class ``cls`` decoded from the JSON at
    ``path`` in ``source``, worked out when first asked for: that JSON object if it differs from what the
    object's declared fields encode (``differs_as_decoded``), else what the object remembered before.

    It holds the object's class, not the object (which would make a reference cycle: object -> its
    ``__dict__`` -> this -> object, and every event that carries a resource would outlive its last reference
    until the cyclic GC ran), nor a copy of it (the fields the object had set when decoded follow from the JSON).
    """

    __slots__ = ("cls", "path", "previous", "source", "wire")

    def __init__(self, source: WireSource, path: tuple[str | int, ...], cls: type, previous: Any) -> None:
        self.source: WireSource | None = source
        self.path = path
        self.cls: type | None = cls
        self.previous = previous
        self.wire: Any = None

    def resolve(self) -> Any:
        cls = self.cls
        if cls is None:
            return self.wire
        wire = self.source.value()  # type: ignore[union-attr]
        for step in self.path:  # as keep_wire descends: into a list by position, into an object by name
            if isinstance(step, int):
                wire = wire[step] if isinstance(wire, list) and step < len(wire) else None
            else:
                wire = wire[step] if isinstance(wire, dict) and step in wire else None
            if wire is None:
                break
        if isinstance(wire, dict) and differs_as_decoded(cls, wire):
            self.wire = wire
        else:
            previous = self.previous
            self.wire = previous.resolve() if isinstance(previous, LazyWire) else previous
        self.cls = self.source = self.previous = None
        return self.wire


def resolved(wire: Any) -> Any:
    """A remembered wire as its JSON object (None if none): a ``LazyWire`` is resolved."""
    return wire.resolve() if isinstance(wire, LazyWire) else wire


class _Shape:
    """What ``differs_as_decoded`` needs of a Struct class: its field names, the ones a decoded object has set
    even when the JSON leaves them out (their default is not ``UNSET``), and whether it encodes a tag."""

    __slots__ = ("always", "fields", "tagged")

    def __init__(self, cls: type) -> None:
        self.fields: tuple[str, ...] = cls.__struct_fields__  # type: ignore[attr-defined]
        self.always: tuple[str, ...] = tuple(
            f.name for f in msgspec.structs.fields(cls) if f.default is not UNSET  # a factory's is NODEFAULT
        )
        self.tagged: bool = cls.__struct_config__.tag is not None  # type: ignore[attr-defined]


_SHAPES: dict[type, _Shape] = {}


def differs_as_decoded(cls: type, wire: dict[str, Any]) -> bool:
    """Whether an object of ``cls`` just decoded from ``wire``, encoded by its declared fields alone, would lose
    or invent a field of ``wire``: ``resources._differs`` of that object, without the object. A field is set
    on it if ``wire`` has it or if its default is not ``UNSET`` (a required field is always in ``wire``)."""
    shape = _SHAPES.get(cls)
    if shape is None:
        shape = _SHAPES[cls] = _Shape(cls)
    for name in shape.always:
        if name not in wire:
            return True  # set on the object from its default: encoding it would invent the field
    present = 0
    for name in shape.fields:
        if name in wire:
            present += 1
    tag = 1 if shape.tagged and "type" in wire else 0
    return len(wire) != present + tag


def keep_wire_lazily(obj: Any, source: WireSource, path: tuple[str | int, ...]) -> None:
    """``resources.keep_wire(obj, <the JSON at path in source>)``, with nothing decoded until a wire is read
    (``has_wire``, ``to_builtins``): a resource that is copied and dropped, or never encoded, costs no JSON
    decoding. ``obj`` must be what was decoded from that JSON, unchanged (an event's own resources)."""
    if isinstance(obj, list):
        for index, item in enumerate(obj):
            if isinstance(item, (Struct, list)):
                keep_wire_lazily(item, source, (*path, index))
        return
    if not isinstance(obj, Struct):
        return
    # Only fields whose type may hold a resource: a decoded dict or list of plain JSON (an MCP server's tool
    # schemas, say) holds none, and keep_wire would find nothing in it to remember. An empty list (most
    # annotations and logprobs) has nothing to walk either.
    cls = type(obj)
    fields = _RESOURCE_FIELDS.get(cls)
    if fields is None:
        fields = _RESOURCE_FIELDS[cls] = _resource_fields(cls)
    for name in fields:
        value = getattr(obj, name)
        if value and isinstance(value, (Struct, list)):
            keep_wire_lazily(value, source, (*path, name))
    attrs = getattr(obj, "__dict__", None)
    if attrs is not None:
        attrs[WIRE] = LazyWire(source, path, cls, attrs.get(WIRE))


# Struct class -> the fields whose declared type includes a Struct (what decoding can put a resource in).
_RESOURCE_FIELDS: dict[type, tuple[str, ...]] = {}


def _resource_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(cls) if _holds_struct(f.type))


def _holds_struct(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, Struct):
        return True
    return any(_holds_struct(arg) for arg in get_args(hint))


# --- an event's resources ---------------------------------------------------------------------------------------

_json_decoder: Final = msgspec.json.Decoder()
# The fields of events that carry resources (an item, a part, an annotation, a response).
_NESTED: Final = ("item", "part", "annotation", "response")
# Event class -> which of _NESTED it has (none for a delta, nor for UnknownEvent).
_NESTED_OF: dict[type, tuple[str, ...]] = {}


def keep_lazy_wires(event: Any) -> list[str]:
    """``codec.keep_wires`` but for its rare eager part: let the resources inside a decoded event remember,
    lazily, the JSON they came from (its payload bytes); returns the resource fields whose wires are still to be
    kept eagerly (an event that remembers a ``_wire`` of its own and no payload: ``codec.keep_wires_eagerly``),
    else []. Marks the event done either way (idempotent).

    Here, not in ``codec``, so that it is compiled with the walk (setup.py) and the Accumulator calls it
    natively: it runs on every carrier event it folds. (This module imports neither the events nor the
    resources, which import it: an ``UnknownEvent`` is one with none of ``_NESTED``.)"""
    cls = type(event)
    nested = _NESTED_OF.get(cls)
    if nested is None:
        fields = getattr(cls, "__struct_fields__", ())
        nested = _NESTED_OF[cls] = tuple(name for name in _NESTED if name in fields)
    if not nested:
        return []
    attrs = event.__dict__
    if "_wires" in attrs:
        return []
    # The class's resource fields (cached), not getattr(event, name, None) for each of _NESTED: an attribute
    # that is not there raises (and swallows) an AttributeError, far dearer than the walk itself.
    names = [name for name in nested if getattr(event, name) is not None]
    if not names:
        return []
    attrs["_wires"] = True
    raw = attrs.get("_raw")
    if raw is None:
        return names if "_wire" in attrs else []
    # The payload bytes cannot change: what the resources remember is decoded from them when first read.
    payload: bytes = raw
    source = WireSource(lambda: _json_decoder.decode(payload))
    attrs["_source"] = source  # codec.replace_event reads the event's wire from it: one decoding of the payload
    for name in names:
        value = getattr(event, name)
        if name == "response":
            keep_wire_lazily(value.output, source, ("response", "output"))
            if value.usage is not None:
                keep_wire_lazily(value.usage, source, ("response", "usage"))
        else:
            keep_wire_lazily(value, source, (name,))
    return []


# --- the wires read back: resources.to_builtins's walk ----------------------------------------------------------

_to_builtins: Final = msgspec.to_builtins
_PLAIN: Final = (str, int, float, bool, type(None), UnsetType)
# Struct class -> the fields that may hold resources (not plain strings or numbers); -> its fields' defaults.
_NESTED_FIELDS: dict[type, tuple[str, ...]] = {}
_DEFAULTS: dict[type, dict[str, Any]] = {}


def nested_fields(cls: type) -> tuple[str, ...]:
    """The fields of a Struct class that may hold resources (not plain strings or numbers)."""
    names = _NESTED_FIELDS.get(cls)
    if names is None:
        hints = msgspec.structs.fields(cls)
        names = _NESTED_FIELDS[cls] = tuple(
            f.name for f in hints if not all(t in _PLAIN for t in (get_args(f.type) or (f.type,)))
        )
    return names


def defaults_of(cls: type) -> dict[str, Any]:
    """A Struct class's fields that have a default, with it (a factory's made once)."""
    out = _DEFAULTS.get(cls)
    if out is None:
        out = {}
        for f in msgspec.structs.fields(cls):
            if f.default is not NODEFAULT:
                out[f.name] = f.default
            elif f.default_factory is not NODEFAULT:
                out[f.name] = f.default_factory()
        _DEFAULTS[cls] = out
    return out


def _wire_of(obj: Any) -> Any:
    attrs = getattr(obj, "__dict__", None)
    if not attrs:
        return None
    wire = attrs.get(WIRE)
    return wire.resolve() if isinstance(wire, LazyWire) else wire


def has_wire(obj: Any) -> bool:
    """``resources.has_wire``: whether ``obj`` (a resource, an event, a list or dict of them) holds any object
    that remembers its wire."""
    if isinstance(obj, list):
        return any(has_wire(value) for value in obj)
    if isinstance(obj, dict):
        return any(has_wire(value) for value in obj.values())
    if not isinstance(obj, Struct):
        return False
    if _wire_of(obj) is not None:
        return True
    for name in nested_fields(type(obj)):
        value = getattr(obj, name)
        if isinstance(value, (Struct, list)) and has_wire(value):
            return True
    return False


def wire_builtins(obj: Any, enc_hook: Callable[[Any], Any]) -> Any:
    """``resources.to_builtins``'s walk: ``obj`` as builtins where it, or anything in it, remembers its wire;
    None where nothing does (msgspec's conversion, in C, with ``enc_hook``, is then the answer). One walk, of
    the fields that may hold resources only. Here, not in ``resources``, so that it is compiled (setup.py): it
    converts every relayed event that carries resources, the terminal one's whole response among them."""
    if isinstance(obj, list):
        outs: list[Any] | None = None
        for index, value in enumerate(obj):
            if isinstance(value, (Struct, list, dict)):
                out = wire_builtins(value, enc_hook)
                if out is not None:
                    if outs is None:
                        outs = [None] * len(obj)
                    outs[index] = out
        if outs is None:
            return None
        return [
            _to_builtins(value, enc_hook=enc_hook) if out is None else out
            for value, out in zip(obj, outs, strict=True)
        ]
    if isinstance(obj, dict):
        found: dict[Any, Any] | None = None
        for key, value in obj.items():
            if isinstance(value, (Struct, list, dict)):
                out = wire_builtins(value, enc_hook)
                if out is not None:
                    if found is None:
                        found = {}
                    found[key] = out
        if found is None:
            return None
        return {
            key: found[key] if key in found else _to_builtins(value, enc_hook=enc_hook) for key, value in obj.items()
        }
    if not isinstance(obj, Struct):
        return None
    cls = type(obj)
    wire = _wire_of(obj)
    patches: dict[str, Any] | None = None
    for name in nested_fields(cls):
        value = getattr(obj, name)
        if value and isinstance(value, (Struct, list, dict)):
            out = wire_builtins(value, enc_hook)
            if out is not None:
                if patches is None:
                    patches = {}
                patches[name] = out
    if wire is None and patches is None:
        return None
    # msgspec converts the whole object in C (the tag first, then every field that is set, in order); the
    # fields holding a resource that remembers its wire take their converted values from the walk.
    result: dict[str, Any] = _to_builtins(obj, enc_hook=enc_hook)
    if patches is not None:
        result.update(patches)  # (keys already there: their places are kept)
    if wire is None:
        return result
    for name, default in defaults_of(cls).items():
        if name not in wire and name in result and getattr(obj, name) == default:
            del result[name]  # the provider left it out: not invented
    fields = cls.__struct_fields__
    merged: dict[str, Any] = {}
    for key, value in wire.items():
        if key in result:
            merged[key] = result[key]
        elif key not in fields:
            merged[key] = value
    for key, value in result.items():
        if key not in merged:
            merged[key] = value
    return merged
