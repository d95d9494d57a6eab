"""Accumulator: folds a stream of events into the response it describes, and says what was wrong with it.

Sans-I/O and tolerant: a missing, duplicated, late or contradictory event becomes a ``Problem``, never an
exception. One Accumulator follows one response; deltas are kept as lists and joined only for a snapshot.

Compiled with mypyc (setup.py). Compiled code checks declared types at run time, and an event built by hand
need not match its class's annotations (msgspec checks types when it decodes, not when a Struct is made or
replaced): so the handlers take their event as ``Any`` (the table ``_HANDLERS`` says which class each folds),
and an item_id or index of the wrong type is folded (or reported) as on the pure-Python path, not refused with
a ``TypeError`` (the property tests below the hot path feed such events).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from msgspec import UNSET
from msgspec.structs import astuple

from .codec import keep_wires_eagerly
from .events import (
    ApplyPatchCallOperationDiffDelta,
    ApplyPatchCallOperationDiffDone,
    CodeInterpreterCallCodeDelta,
    CodeInterpreterCallCodeDone,
    CodeInterpreterCallCompleted,
    CodeInterpreterCallInProgress,
    CodeInterpreterCallInterpreting,
    CustomToolCallInputDelta,
    CustomToolCallInputDone,
    ErrorEvent,
    Event,
    FileSearchCallCompleted,
    FileSearchCallInProgress,
    FileSearchCallSearching,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    ImageGenerationCallCompleted,
    ImageGenerationCallGenerating,
    ImageGenerationCallInProgress,
    ImageGenerationCallPartialImage,
    McpCallArgumentsDelta,
    McpCallArgumentsDone,
    McpCallCompleted,
    McpCallFailed,
    McpCallInProgress,
    McpListToolsCompleted,
    McpListToolsFailed,
    McpListToolsInProgress,
    ResponseCompleted,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputTextAnnotationAdded,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ResponseQueued,
    ResponseReasoningDelta,
    ResponseReasoningDone,
    ResponseReasoningSummaryPartAdded,
    ResponseReasoningSummaryPartDone,
    ResponseReasoningSummaryTextDelta,
    ResponseReasoningSummaryTextDone,
    ResponseReasoningTextDelta,
    ResponseReasoningTextDone,
    ResponseRefusalDelta,
    ResponseRefusalDone,
    ShellCallCommandAdded,
    ShellCallCommandDelta,
    ShellCallCommandDone,
    ShellCallOutputContentDelta,
    ShellCallOutputContentDone,
    UnknownEvent,
    WebSearchCallCompleted,
    WebSearchCallInProgress,
    WebSearchCallSearching,
)
from .resources import (
    ApplyPatchCall,
    CodeInterpreterCall,
    CustomToolCall,
    FileSearchCall,
    FunctionCall,
    ImageGenerationCall,
    InputText,
    ItemField,
    McpCall,
    McpListTools,
    Message,
    OutputText,
    ReasoningItem,
    ReasoningText,
    Refusal,
    Response,
    ResponseError,
    ShellCall,
    ShellCallOutput,
    SummaryText,
    Text,
    UnknownAnnotation,
    UnknownItem,
    UnknownPart,
    WebSearchCall,
    replace,
)
from .wires import keep_lazy_wires

try:
    from mypy_extensions import mypyc_attr  # read by mypyc when it compiles this module (setup.py)
except ImportError:  # mypy, which brings it, is a dev dependency: without it, a stand-in that does nothing

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


__all__ = ["Accumulator", "Problem", "aaccumulate", "accumulate"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the stream got wrong, found while folding it.

    ``event_index`` counts the events fed, from 0 (a problem found at the end of the stream gets the number
    of events fed). ``code`` is a short kebab-case id (``missing-added``, ``snapshot-mismatch``, ...).
    """

    event_index: int
    sequence_number: int | None
    code: str
    message: str


# --- helpers ------------------------------------------------------------------------------------------------

_TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})
# Events whose resources become part of the snapshot: they keep the JSON they came from (``codec.keep_wires``).
_CARRIERS = frozenset({
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseReasoningSummaryPartAdded,
    ResponseReasoningSummaryPartDone,
    ResponseOutputTextAnnotationAdded,
    ResponseCompleted,
    ResponseIncomplete,
    ResponseFailed,
})


def _own(obj: _T) -> _T:
    """A private copy of a resource taken from an event, so that nothing inside an event is ever changed.

    Structs are copied shallowly: the Accumulator never changes a nested object in place, it builds new ones.
    """
    cls = type(obj)
    if cls not in _STRUCT_CLASSES:  # (a set, not isinstance with a tuple: about 5 times cheaper compiled)
        if isinstance(obj, (UnknownItem, UnknownPart, UnknownAnnotation)):
            return type(obj)(copy.deepcopy(obj.data))
        _STRUCT_CLASSES.add(cls)
    return replace(obj)  # type: ignore[type-var]


# The classes _own has copied with ``replace``: those of every resource but the Unknown* ones.
_STRUCT_CLASSES: Final[set[type]] = set()


def _tag(obj: Any) -> str:
    cls = type(obj)
    tag = _TAGS.get(cls)
    if tag is not None:
        return tag
    if isinstance(obj, (UnknownItem, UnknownPart, UnknownAnnotation)):
        return obj.type
    config = getattr(cls, "__struct_config__", None)
    tag = getattr(config, "tag", None)
    tag = tag if isinstance(tag, str) else cls.__name__
    _TAGS[cls] = tag
    return tag


# Class -> its wire tag (or name), for the classes whose every instance has the same one (not Unknown*).
_TAGS: dict[type, str] = {}


def _has_status(item: Any) -> bool:
    if isinstance(item, UnknownItem):
        return "status" in item.data
    return "status" in getattr(type(item), "__struct_fields__", ()) and item.status is not UNSET


def _with_status(item: Any, status: str) -> Any:
    if isinstance(item, UnknownItem):
        return UnknownItem({**item.data, "status": status})
    return replace(item, status=status)


def _where(
    output_index: Any = None,
    item_id: Any = None,
    content_index: Any = None,
    summary_index: Any = None,
    command_index: Any = None,
) -> str:
    parts = [f"output_index {output_index}"] if output_index is not None else []
    if isinstance(item_id, str):
        parts.append(f"item_id {item_id!r}")
    for name, value in (
        ("content_index", content_index),
        ("summary_index", summary_index),
        ("command_index", command_index),
    ):
        if value is not None:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def _index(value: Any) -> int | None:
    """An output_index as an int (the seed types some as ``number``), or None if it is not a whole number."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# How far past the last part (or command) a stream may point before the index is taken for garbage: parts are
# kept in a list, and a content_index of 10**9 must not make the accumulator allocate a billion slots.
_MAX_INDEX_GAP = 1024


def _bad_index(index: int, size: int) -> bool:
    return index < 0 or index > size + _MAX_INDEX_GAP


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-15:]} ({len(text)} chars)"


class _Slot:
    """One string being built from deltas: a content or summary part, a call's arguments, a shell command.

    ``sealed``: a ``*.done`` for the text arrived (later deltas are late); ``done``: the part itself is done.
    """

    __slots__ = ("annotations", "base", "chunks", "done", "implicit", "logprobs", "sealed")

    def __init__(self, text: str | None, base: Any = None, *, done: bool = False) -> None:
        self.chunks: list[str] = [text] if text else []
        self.base = base
        self.done = done
        self.sealed = done
        self.implicit = False
        self.annotations: list[Any] | None = None
        self.logprobs: list[Any] | None = None
        if type(base) is OutputText:
            self.annotations = list(base.annotations)
            if isinstance(base.logprobs, list):
                self.logprobs = list(base.logprobs)

    @classmethod
    def of_part(cls, part: Any, *, done: bool) -> _Slot:
        part = _own(part)
        return cls(_part_text(part), part, done=done)

    def value(self) -> str:
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        if not chunks:
            return ""
        joined = "".join(chunks)
        self.chunks = [joined]  # join once; later snapshots reuse it
        return joined

    def set(self, text: str) -> None:
        self.chunks = [text] if text else []

    def part(self) -> Any:
        """The content part as built so far (a new object; the slot's own state is never handed out)."""
        base = self.base
        cls = type(base)
        if cls is OutputText:
            changes: dict[str, Any] = {"text": self.value(), "annotations": list(self.annotations or ())}
            if self.logprobs is not None:
                changes["logprobs"] = list(self.logprobs)
            return replace(base, **changes)
        if cls is Refusal:
            return replace(base, refusal=self.value())
        if cls in _TEXT_PARTS:
            return replace(base, text=self.value())
        return base


_TEXT_PARTS = (ReasoningText, SummaryText, Text, InputText)


def _part_text(part: Any) -> str | None:
    if type(part) is Refusal:
        return part.refusal
    if type(part) is OutputText or type(part) in _TEXT_PARTS:
        return part.text
    return None


class _ShellOutput:
    """One command's entry of a ``shell_call_output``: its fixed fields plus stdout/stderr built from deltas."""

    __slots__ = ("base", "done", "streams")

    def __init__(self, base: dict[str, Any], *, done: bool) -> None:
        self.base = base
        self.done = done
        self.streams: dict[str, _Slot] = {}

    def entry(self) -> dict[str, Any]:
        entry = dict(self.base)
        for key, slot in self.streams.items():
            entry[key] = slot.value()
        return entry


# Item class -> the string field that item-level deltas build (``diff`` lives in ApplyPatchCall.operation).
_STREAM_FIELD: dict[type, str] = {
    FunctionCall: "arguments",
    CustomToolCall: "input",
    McpCall: "arguments",
    CodeInterpreterCall: "code",
    ApplyPatchCall: "diff",
}


class _Item:
    """One output item: the item as last given whole by an event, plus what deltas have built on it since."""

    __slots__ = (
        "base",
        "commands",
        "content",
        "done",
        "id",
        "id_warned",
        "implicit",
        "index",
        "outputs",
        "snap",
        "stream",
        "summary",
    )

    def __init__(self, index: int, item: Any, *, implicit: bool = False) -> None:
        self.index = index
        self.implicit = implicit
        self.done = False
        self.id_warned = False
        self.adopt(item, done=False)

    def adopt(self, item: Any, *, done: bool) -> None:
        """Take ``item`` (from an event) as this item's new state; what it carries counts as complete."""
        base = _own(item)
        self.base = base
        self.id: str | None = base.id if isinstance(base.id, str) else None
        self.snap: Any = None
        self.content: list[_Slot | None] | None = None
        self.summary: list[_Slot | None] | None = None
        self.stream: _Slot | None = None
        self.commands: list[_Slot | None] | None = None
        self.outputs: list[_ShellOutput | None] | None = None
        cls = type(base)
        if cls is Message:
            self.content = [_Slot.of_part(part, done=True) for part in base.content]
        elif cls is ReasoningItem:
            self.summary = [_Slot.of_part(part, done=True) for part in base.summary]
            if isinstance(base.content, list):
                self.content = [_Slot.of_part(part, done=True) for part in base.content]
        elif cls in _STREAM_FIELD:
            value = self._stream_value(base)
            if value is not None:
                self.stream = _Slot(value, done=done)
        elif cls is ShellCall:
            commands = base.action.get("commands") if isinstance(base.action, dict) else None
            if isinstance(commands, list):
                self.commands = [_Slot(c if isinstance(c, str) else "", done=True) for c in commands]
        elif cls is ShellCallOutput:
            self.outputs = [
                _ShellOutput(entry if isinstance(entry, dict) else {}, done=True) for entry in base.output
            ]

    @staticmethod
    def _stream_value(base: Any) -> str | None:
        if type(base) is ApplyPatchCall:
            op = base.operation
            diff = op.get("diff") if isinstance(op, dict) else None
            return diff if isinstance(diff, str) else None
        value = getattr(base, _STREAM_FIELD[type(base)])
        return value if isinstance(value, str) else None

    def open_slots(self) -> Iterator[tuple[str, _Slot]]:
        """Every part, command or stream of this item that was opened and not yet done, with where it is."""
        for name in ("content", "summary", "commands"):
            slots = getattr(self, name)
            for index, slot in enumerate(slots or ()):
                if slot is not None and not slot.done:
                    label = {"content": "content_index", "summary": "summary_index"}.get(
                        name, "command_index"
                    )
                    yield f"{label} {index}", slot
        if self.stream is not None and not self.stream.done and self.stream.chunks:
            yield _STREAM_FIELD[type(self.base)], self.stream
        for index, out in enumerate(self.outputs or ()):
            if out is not None and not out.done:
                yield f"output[{index}]", _Slot(None)

    def snapshot(self) -> Any:
        snap = self.snap
        if snap is not None:
            return snap
        base = self.base
        cls = type(base)
        if cls is Message:
            snap = replace(base, content=_parts(self.content))
        elif cls is ReasoningItem:
            if self.content is not None:
                snap = replace(base, summary=_parts(self.summary), content=_parts(self.content))
            else:
                snap = replace(base, summary=_parts(self.summary))
        elif cls in _STREAM_FIELD and self.stream is not None:
            value = self.stream.value()
            if cls is ApplyPatchCall:
                op = base.operation
                snap = replace(base, operation={**op, "diff": value}) if isinstance(op, dict) else base
            else:
                snap = replace(base, **{_STREAM_FIELD[cls]: value})
        elif cls is ShellCall and self.commands is not None:
            action = dict(base.action) if isinstance(base.action, dict) else {}
            action["commands"] = [slot.value() for slot in self.commands if slot is not None]
            snap = replace(base, action=action)
        elif cls is ShellCallOutput and self.outputs is not None:
            snap = replace(base, output=[out.entry() for out in self.outputs if out is not None])
        else:
            snap = base  # never changed in place, so it can be handed out
        self.snap = snap
        return snap


def _parts(slots: list[_Slot | None] | None) -> list[Any]:
    return [slot.part() for slot in slots or () if slot is not None]


# --- comparing what the deltas built with what the server says --------------------------------------------


def _texts(parts: Any) -> list[tuple[str, str | None]]:
    return [(_tag(part), _part_text(part)) for part in parts] if isinstance(parts, list) else []


def _differences(built: Any, server: Any, *, partial: bool) -> Iterator[tuple[str, Any, Any]]:
    """(field, built value, server value) for each field that differs.

    ``partial``: ``built`` is what deltas made of an item before its ``done``: compare only the ids and the
    texts that deltas did build (an item may be streamed with no deltas at all), not the status.
    """
    if _tag(built) != _tag(server):
        yield "type", _tag(built), _tag(server)
        return
    if built.id != server.id and isinstance(built.id, str) and isinstance(server.id, str):
        yield "id", built.id, server.id
    if not partial:
        b_status, s_status = getattr(built, "status", UNSET), getattr(server, "status", UNSET)
        if b_status is not UNSET and s_status is not UNSET and b_status != s_status:
            yield "status", b_status, s_status
    if isinstance(server, UnknownItem):
        return
    fields: tuple[str, ...] = ()
    cls = type(server)
    if cls is Message:
        yield from _part_differences("content", built.content, server.content, partial=partial)
    elif cls is ReasoningItem:
        yield from _part_differences("summary", built.summary, server.summary, partial=partial)
        yield from _part_differences("content", built.content, server.content, partial=partial)
    elif cls is FunctionCall or cls is McpCall:
        fields = ("name", "arguments")
    elif cls is CustomToolCall:
        fields = ("name", "input")
    elif cls is CodeInterpreterCall:
        fields = ("code",)
    elif cls is ApplyPatchCall:
        b_op, s_op = built.operation, server.operation
        b_diff = b_op.get("diff") if isinstance(b_op, dict) else None
        s_diff = s_op.get("diff") if isinstance(s_op, dict) else None
        if b_diff != s_diff and not (partial and not b_diff):
            yield "operation.diff", b_diff, s_diff
    elif cls is ShellCall:
        b_cmds = built.action.get("commands") if isinstance(built.action, dict) else None
        s_cmds = server.action.get("commands") if isinstance(server.action, dict) else None
        if b_cmds != s_cmds and not (partial and not b_cmds):
            yield "action.commands", b_cmds, s_cmds
    for name in fields:
        b_value, s_value = getattr(built, name), getattr(server, name)
        if b_value != s_value and not (partial and not b_value):
            yield name, b_value, s_value


def _part_differences(name: str, built: Any, server: Any, *, partial: bool) -> Iterator[tuple[str, Any, Any]]:
    b_texts, s_texts = _texts(built), _texts(server)
    if partial and not b_texts:
        return
    if len(b_texts) != len(s_texts):
        yield f"{name} (number of parts)", len(b_texts), len(s_texts)
    for index, (b, s) in enumerate(zip(b_texts, s_texts, strict=False)):
        if b[0] != s[0]:
            yield f"{name}[{index}].type", b[0], s[0]
        elif b[1] != s[1] and not (partial and not b[1]):
            yield f"{name}[{index}].{'refusal' if b[0] == 'refusal' else 'text'}", b[1], s[1]


# --- the accumulator ----------------------------------------------------------------------------------------

_PROGRESS: dict[type, tuple[type, str]] = {
    ImageGenerationCallInProgress: (ImageGenerationCall, "in_progress"),
    ImageGenerationCallGenerating: (ImageGenerationCall, "generating"),
    ImageGenerationCallCompleted: (ImageGenerationCall, "completed"),
    WebSearchCallInProgress: (WebSearchCall, "in_progress"),
    WebSearchCallSearching: (WebSearchCall, "searching"),
    WebSearchCallCompleted: (WebSearchCall, "completed"),
    FileSearchCallInProgress: (FileSearchCall, "in_progress"),
    FileSearchCallSearching: (FileSearchCall, "searching"),
    FileSearchCallCompleted: (FileSearchCall, "completed"),
    CodeInterpreterCallInProgress: (CodeInterpreterCall, "in_progress"),
    CodeInterpreterCallInterpreting: (CodeInterpreterCall, "interpreting"),
    CodeInterpreterCallCompleted: (CodeInterpreterCall, "completed"),
    McpCallInProgress: (McpCall, "in_progress"),
    McpCallCompleted: (McpCall, "completed"),
    McpCallFailed: (McpCall, "failed"),
    McpListToolsInProgress: (McpListTools, "in_progress"),
    McpListToolsCompleted: (McpListTools, "completed"),
    McpListToolsFailed: (McpListTools, "failed"),
}

# Item-level string streams: delta class -> item class; done class -> (item class, the done event's field).
_STREAM_DELTAS: dict[type, type] = {
    FunctionCallArgumentsDelta: FunctionCall,
    CustomToolCallInputDelta: CustomToolCall,
    McpCallArgumentsDelta: McpCall,
    CodeInterpreterCallCodeDelta: CodeInterpreterCall,
    ApplyPatchCallOperationDiffDelta: ApplyPatchCall,
}
_STREAM_DONES: dict[type, tuple[type, str]] = {
    FunctionCallArgumentsDone: (FunctionCall, "arguments"),
    CustomToolCallInputDone: (CustomToolCall, "input"),
    McpCallArgumentsDone: (McpCall, "arguments"),
    CodeInterpreterCallCodeDone: (CodeInterpreterCall, "code"),
    ApplyPatchCallOperationDiffDone: (ApplyPatchCall, "diff"),
}

_TERMINALS: dict[type, str] = {
    ResponseCompleted: "completed",
    ResponseIncomplete: "incomplete",
    ResponseFailed: "failed",
}


def _implicit_item(cls: type, item_id: Any) -> Any:
    """The stand-in for an item whose ``output_item.added`` never came."""
    item_id = item_id if isinstance(item_id, str) else None
    if cls is ReasoningItem or cls is McpListTools:
        return cls(id=item_id)
    if cls is ApplyPatchCall:
        return cls(id=item_id, status="in_progress", operation={"diff": ""})
    if cls is ShellCall:
        return cls(id=item_id, status="in_progress", action={"commands": []})
    return cls(id=item_id, status="in_progress")


_astuple: Final = astuple


class _HotFields:
    """Where the fields the hot path reads are in a delta class's ``__struct_fields__`` (so in ``astuple`` of
    one of its events): the number, the item, the part index (``sub``: content_index, summary_index, or
    output_index again for an item-level stream), the text, and the logprobs (-1: the class has none)."""

    __slots__ = ("delta", "item_id", "logprobs", "output_index", "seq", "sub")

    def __init__(self, fields: tuple[str, ...], sub_name: str) -> None:
        self.seq = fields.index("sequence_number")
        self.item_id = fields.index("item_id")
        self.output_index = fields.index("output_index")
        self.sub = fields.index(sub_name)
        self.delta = fields.index("delta")
        self.logprobs = fields.index("logprobs") if "logprobs" in fields else -1


_NO_HOT_FIELDS: Final = _HotFields(("sequence_number", "item_id", "output_index", "delta"), "output_index")
_NO_SLOT: Final = _Slot(None)  # the hot path's slot while it was never armed (never written: nothing matches)
# (delta class, its part index's name) -> its _HotFields.
_HOT_FIELDS: dict[tuple[type, str], _HotFields] = {}


def _hot_fields(cls: type, sub_name: str) -> _HotFields:
    key = (cls, sub_name)
    found = _HOT_FIELDS.get(key)
    if found is None:
        found = _HOT_FIELDS[key] = _HotFields(cls.__struct_fields__, sub_name)  # type: ignore[attr-defined]
    return found


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests' subclass turns the hot path off
class Accumulator:
    """Folds the events of one response into that response.

    ``feed`` every event in order; read ``response`` (a snapshot, cheap to read again when nothing changed)
    at any moment. When the terminal event carries the server's output, what the deltas built is compared with
    it (differences become ``snapshot-mismatch`` problems) and the server's word is taken.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.unknown_events = 0
        self._count = 0
        self._base: Response | None = None
        self._items: dict[int, _Item] = {}
        self._by_id: dict[str, _Item] = {}
        self._error: ResponseError | None = None
        self._final: Response | None = None
        self._snap: Response | None = None
        self._text: tuple[Response, str] | None = None
        # Sequence numbers seen: every number up to _last_seq except those still in a gap ([lo, hi] ranges).
        self._last_seq = -1
        self._gaps: list[list[int]] = []
        self._ended = False
        # The hot delta: where the last delta went (its class, output_index, item_id, and the value of its part
        # index) and the slot it grew. A delta of that class to that same place, numbered right after the last
        # event, is folded by ``feed`` itself; any other event disarms it. ``_hot_at``: where in the delta
        # class's fields (``_HotFields``) those values are.
        self._hot_cls: type | None = None
        self._hot_base = 0  # _count - _last_seq when it armed
        self._hot_seen = -1  # _last_seq when the snapshots were last brought up to date with the hot path
        self._hot_index: Any = None
        self._hot_id: Any = None
        self._hot_sub: Any = None
        self._hot_at = _NO_HOT_FIELDS
        self._hot_slot = _NO_SLOT
        self._hot_state: _Item | None = None

    # --- public face ----------------------------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Fold one event in. Never raises for a malformed stream: see ``problems``."""
        cls = type(event)
        if cls is self._hot_cls:
            # The hot path: the next delta of the text (or arguments) the last event grew. What the handler
            # would check of it was checked when it armed, and nothing else has happened since. The fields are
            # read in one call (``msgspec.structs.astuple``, by position): compiled, an attribute of a msgspec
            # Struct is read by the generic lookup, several times dearer than the interpreter's; interpreted,
            # the two cost about the same. What it leaves to do is done when it is needed: the events it folds
            # are counted when it disarms (``_count`` follows ``_last_seq`` meanwhile), and the snapshots it
            # makes stale are dropped when one is read (``_settle``).
            # The comparisons: an int sequence number natively; the indexes (small ints, which the interpreter
            # keeps one object each of) by identity first, each of these about a tenth of a generic ==.
            values = _astuple(event)
            at = self._hot_at
            seq = values[at.seq]
            index = values[at.output_index]
            sub = values[at.sub]
            if (
                isinstance(seq, int)
                and seq == self._last_seq + 1
                and values[at.item_id] == self._hot_id
                and (index is self._hot_index or index == self._hot_index)
                and (sub is self._hot_sub or sub == self._hot_sub)
            ):
                self._last_seq = seq
                slot = self._hot_slot
                slot.chunks.append(values[at.delta])
                if at.logprobs >= 0:
                    logprobs = values[at.logprobs]
                    if logprobs:
                        _add_logprobs(slot, logprobs)
                return
        if self._hot_cls is not None:
            self._count = self._hot_base + self._last_seq  # with the deltas the hot path folded
            if self._hot_seen != self._last_seq:
                self._settle()
            self._hot_cls = None
        self._count += 1
        problems = len(self.problems)
        handler = _HANDLERS.get(cls)
        if handler is None:
            if isinstance(event, UnknownEvent):
                self.unknown_events += 1
                return
            raise TypeError(f"not an event: {type(event).__name__}")
        if self._final is not None:
            self._problem(event, "after-terminal", f"{event.type} after the terminal event; ignored")
            return
        seq = event.sequence_number
        if seq is not None and seq < 0:
            self._problem(event, "bad-sequence", f"sequence_number {seq} is negative; folded without it")
            seq = None
        if seq is not None:
            last = self._last_seq
            if seq > last:
                if seq != last + 1:
                    self._gaps.append([last + 1, seq - 1])  # numbers skipped: a late event may still fill one
                self._last_seq = seq
            elif self._fill_gap(seq):
                self._problem(event, "out-of-order", f"sequence_number {seq} after {last}")
            else:
                # A repeated sequence_number is a replayed event (a reconnect, a retried write): fold it once.
                self._problem(event, "duplicate-event", f"sequence_number {seq} was already seen; ignored")
                return
        if self._count == 1 and type(event) is not ResponseCreated:
            self._problem(event, "missing-created", f"the stream starts with {event.type}")
        if cls in _CARRIERS:  # codec.keep_wires, its compiled walk called natively
            names = keep_lazy_wires(event)
            if names:
                keep_wires_eagerly(event, names)
        handler(self, event)
        if len(self.problems) != problems:
            # The handler said something about this event: if it armed the hot path, the next delta must be
            # checked too. (Not `if self._hot_cls is not None and ...`: mypy narrows _hot_cls to None across the
            # handler call, and compiled code would trust that.)
            self._hot_cls = None

    def _settle(self) -> None:
        """Drop the snapshots that the hot path's deltas since it armed (or since the last call) made stale."""
        self._hot_seen = self._last_seq
        self._hot_state.snap = None  # type: ignore[union-attr]
        self._snap = None

    def _fill_gap(self, seq: int) -> bool:
        """Whether ``seq`` was skipped so far (and is now seen): an event arriving late, not a replay."""
        for i, (lo, hi) in enumerate(self._gaps):
            if lo <= seq <= hi:
                pieces = [piece for piece in ([lo, seq - 1], [seq + 1, hi]) if piece[0] <= piece[1]]
                self._gaps[i : i + 1] = pieces
                return True
        return False

    def end(self) -> None:
        """Say that the stream has ended; a stream that ends with no terminal event (and no error) is a problem."""
        if self._ended:
            return
        self._ended = True
        if self._hot_cls is not None:
            self._count = self._hot_base + self._last_seq
        if self._final is None and self._error is None:
            self.problems.append(
                Problem(self._count, None, "missing-terminal", "the stream ended without a terminal event")
            )

    @property
    def response(self) -> Response:
        """The response as it stands: items so far with their texts so far. Do not change it in place."""
        if self._hot_cls is not None and self._hot_seen != self._last_seq:
            self._settle()
        snap = self._snap
        if snap is None:
            snap = self._final if self._final is not None else self._build()
            self._snap = snap
        return snap

    def item(self, output_index: int) -> ItemField | None:
        """The item at ``output_index`` as it stands (None if there is none)."""
        if self._final is not None:
            output = self._final.output
            return output[output_index] if 0 <= output_index < len(output) else None
        if self._hot_cls is not None and self._hot_seen != self._last_seq:
            self._settle()
        state = self._items.get(output_index)
        return state.snapshot() if state is not None else None

    @property
    def output_text(self) -> str:
        """The text of every ``output_text`` part of every message, joined (as OpenAI's SDK ``output_text``)."""
        snap = self.response
        cached = self._text
        if cached is None or cached[0] is not snap:
            cached = self._text = (snap, snap.output_text)
        return cached[1]

    @property
    def function_calls(self) -> list[FunctionCall]:
        return [item for item in self.response.output if type(item) is FunctionCall]

    @property
    def status(self) -> str:
        return self.response.status

    @property
    def done(self) -> bool:
        """True once a terminal event (completed, incomplete, failed) was folded in."""
        return self._final is not None

    @property
    def error(self) -> ResponseError | None:
        """The ``error`` event's code, message and param; else the failed response's ``error``."""
        if self._error is not None:
            return self._error
        return self.response.error

    # --- internals ------------------------------------------------------------------------------------------

    def _problem(self, event: Any, code: str, message: str) -> None:
        self.problems.append(Problem(self._count - 1, event.sequence_number, code, message))

    def _changed(self, state: _Item) -> None:
        state.snap = None
        self._snap = None

    def _ordered(self) -> list[_Item]:
        return [self._items[index] for index in sorted(self._items)]

    def _build(self) -> Response:
        base = self._base if self._base is not None else Response()
        output = [state.snapshot() for state in self._ordered()]
        if self._error is not None:
            return replace(base, output=output, status="failed", error=self._error)
        return replace(base, output=output)

    def _lookup(self, event: Any, output_index: Any, item_id: Any) -> _Item | None:
        """The item an event addresses: by output_index, else by item_id."""
        output_index = _index(output_index)
        state = self._items.get(output_index) if output_index is not None else None
        if state is not None:
            if (
                isinstance(item_id, str)
                and state.id is not None
                and state.id != item_id
                and not state.id_warned
            ):
                state.id_warned = True
                self._problem(
                    event,
                    "item-id-mismatch",
                    f"{_where(output_index, item_id)}: the item at that output_index has id {state.id!r}",
                )
            return state
        state = self._by_id.get(item_id) if isinstance(item_id, str) else None
        if state is not None:
            self._problem(
                event,
                "output-index-mismatch",
                f"{_where(output_index, item_id)}: that item is at output_index {state.index}",
            )
        return state

    def _register(self, state: _Item) -> None:
        self._items[state.index] = state
        if state.id is not None:
            self._by_id.setdefault(state.id, state)

    def _target(self, event: Any, cls: type, allowed: tuple[type, ...] = ()) -> _Item | None:
        """The open item an item-level event addresses (of class ``cls``, or one of ``allowed``); an item never
        added is created as a ``cls``."""
        item_id = getattr(event, "item_id", None)
        state = self._lookup(event, event.output_index, item_id)
        if state is None:
            index = _index(event.output_index)
            if index is None or index < 0:
                self._problem(
                    event, "bad-output-index", f"{_where(event.output_index, item_id)}: no such item; ignored"
                )
                return None
            self._problem(
                event, "missing-added", f"{_where(index, item_id)}: {event.type} for an item never added"
            )
            state = _Item(index, _implicit_item(cls, item_id), implicit=True)
            self._register(state)
            return state
        kind = type(state.base)
        if kind is not cls and kind not in allowed:
            self._problem(
                event,
                "wrong-item-type",
                f"{_where(state.index, item_id)}: {event.type} for a {_tag(state.base)} item; ignored",
            )
            return None
        if state.done:
            self._problem(
                event,
                "delta-after-done",
                f"{_where(state.index, item_id)}: {event.type} after the item's done",
            )
            return None
        return state

    def _slot(self, event: Any, state: _Item, where: str, index: int, part_cls: type) -> _Slot | None:
        """The part at ``index`` of ``state.content`` or ``.summary``; created (a problem) if never added."""
        slots = state.content if where == "content" else state.summary
        if slots is not None and 0 <= index < len(slots):
            slot = slots[index]
            if slot is not None:
                if type(slot.base) is not part_cls:
                    self._problem(
                        event,
                        "wrong-part-type",
                        f"{_where(state.index, state.id)}, {where} {index}: {event.type} for a "
                        f"{_tag(slot.base)} part; ignored",
                    )
                    return None
                return slot
        if _bad_index(index, len(slots or ())):
            self._problem(event, "bad-index", f"{_where(state.index, state.id)}: {where} index {index}")
            return None
        self._problem(
            event,
            "missing-added",
            f"{_where(state.index, state.id)}, {where} index {index}: {event.type} for a part never added",
        )
        slot = _Slot("", part_cls())
        slot.implicit = True
        self._put(state, where, index, slot)
        return slot

    @staticmethod
    def _put(state: _Item, where: str, index: int, slot: _Slot) -> None:
        slots = state.content if where == "content" else state.summary
        if slots is None:
            slots = []
            if where == "content":
                state.content = slots
            else:
                state.summary = slots
        while len(slots) <= index:
            slots.append(None)
        slots[index] = slot

    # --- lifecycle ------------------------------------------------------------------------------------------

    def _on_lifecycle(self, event: Any) -> None:
        if type(event) is ResponseCreated and self._base is not None:
            self._problem(event, "duplicate-created", "a second response.created before any terminal event")
        # Lifecycle snapshots carry no output worth taking: the items come from their own events.
        self._base = replace(event.response, output=[])
        self._snap = None

    def _on_error(self, event: Any) -> None:
        param = event.error_param
        self._error = ResponseError(code=event.error_code, message=event.error_message, param=param)
        self._snap = None

    def _on_terminal(self, event: Any) -> None:
        status = _TERMINALS[type(event)]
        close_as = "completed" if status == "completed" else "incomplete"
        for state in self._ordered():
            if not state.done:
                self._close(event, state, close_as)
        built = [state.snapshot() for state in self._ordered()]
        server = event.response
        if server.output:
            self._reconcile(event, built, server.output)
            final = replace(server, output=[_own(item) for item in server.output])
        else:
            final = replace(server, output=built)
        if final.status != status and not (status == "incomplete" and final.status == "cancelled"):
            self._problem(
                event, "terminal-status", f"{event.type} carries a response with status {final.status!r}"
            )
            final = replace(final, status=status)
        if status == "failed" and final.error is None and self._error is not None:
            final = replace(final, error=self._error)
        self._final = final
        self._snap = None

    def _close(self, event: Any, state: _Item, status: str) -> None:
        """Close an item the stream left open (no ``output_item.done``) as the terminal event says."""
        where = _where(state.index, state.id)
        for label, slot in state.open_slots():
            self._problem(event, "missing-done", f"{where}, {label}: never done")
            slot.done = slot.sealed = True
        for out in state.outputs or ():
            if out is not None:
                out.done = True
        if state.stream is not None:
            state.stream.done = state.stream.sealed = True
        self._problem(event, "missing-done", f"{where}: no response.output_item.done")
        if _has_status(state.base) and state.base.status not in _TERMINAL_STATUSES:
            state.base = _with_status(state.base, status)
        state.done = True
        self._changed(state)

    def _reconcile(self, event: Any, built: list[Any], server: list[Any]) -> None:
        if len(built) != len(server):
            self._problem(
                event,
                "snapshot-mismatch",
                f"the terminal response has {len(server)} output items; the events built {len(built)}",
            )
        for index, (mine, theirs) in enumerate(zip(built, server, strict=False)):
            if mine is None or theirs is None:
                continue
            for name, b_value, s_value in _differences(mine, theirs, partial=False):
                self._problem(
                    event,
                    "snapshot-mismatch",
                    f"{_where(index, theirs.id)}: {name} is {_short(s_value)} in the terminal response, "
                    f"{_short(b_value)} from the events",
                )

    # --- output items ---------------------------------------------------------------------------------------

    def _on_item_added(self, event: Any) -> None:
        item = event.item
        index = event.output_index
        if item is None:
            self._problem(event, "null-item", f"{_where(index)}: output_item.added with a null item; ignored")
            return
        if isinstance(item, UnknownItem):
            self._problem(event, "unknown-item", f"{_where(index, item.id)}: unknown item type {item.type!r}")
        state = self._items.get(index)
        if state is not None:
            if state.implicit and not state.done and _tag(state.base) == _tag(item):
                # The added came after deltas that already made the item: keep what they built.
                state.base = _own(item)
                state.implicit = False
                state.id = item.id if isinstance(item.id, str) else state.id
                self._register(state)
                self._changed(state)
                return
            self._problem(
                event, "duplicate-added", f"{_where(index, item.id)}: an item is already there; ignored"
            )
            return
        if index != len(self._items):
            self._problem(
                event, "output-index-order", f"{_where(index, item.id)}: expected {len(self._items)}"
            )
        if isinstance(item.id, str) and item.id in self._by_id:
            self._problem(event, "duplicate-item-id", f"{_where(index, item.id)}: that id is already in use")
        state = _Item(index, item)
        self._register(state)
        self._snap = None

    def _on_item_done(self, event: Any) -> None:
        item = event.item
        index = event.output_index
        if item is None:
            self._problem(event, "null-item", f"{_where(index)}: output_item.done with a null item; ignored")
            return
        state = self._lookup(event, index, item.id)
        if state is None:
            self._problem(
                event, "missing-added", f"{_where(index, item.id)}: output_item.done for an item never added"
            )
            if isinstance(item, UnknownItem):
                self._problem(
                    event, "unknown-item", f"{_where(index, item.id)}: unknown item type {item.type!r}"
                )
            state = _Item(index, item)
            self._register(state)
        elif state.done:
            self._problem(
                event, "duplicate-done", f"{_where(index, item.id)}: the item was already done; ignored"
            )
            return
        else:
            for name, b_value, s_value in _differences(state.snapshot(), item, partial=True):
                self._problem(
                    event,
                    "done-mismatch",
                    f"{_where(index, item.id)}: {name} is {_short(s_value)} in output_item.done, "
                    f"{_short(b_value)} from the deltas",
                )
            for label, _slot in state.open_slots():
                self._problem(
                    event, "missing-done", f"{_where(index, item.id)}, {label}: never done before the item's done"
                )
            state.adopt(item, done=True)
            state.implicit = False
            self._register(state)
        state.done = True
        if state.stream is not None:
            state.stream.done = state.stream.sealed = True
        self._changed(state)

    # --- content parts --------------------------------------------------------------------------------------

    def _part_added(self, event: Any, where: str, index: int) -> None:
        part = event.part
        cls = ReasoningItem if where == "summary" or type(part) is ReasoningText else Message
        state = self._target(event, cls, () if where == "summary" else (Message, ReasoningItem))
        if state is None:
            return
        slots = state.content if where == "content" else state.summary
        existing = slots[index] if slots is not None and 0 <= index < len(slots) else None
        if existing is not None:
            if existing.implicit and not existing.done and type(existing.base) is type(part):
                existing.base = _own(part)  # the added came after its deltas: keep the text they built
                existing.implicit = False
                self._changed(state)
                return
            self._problem(
                event,
                "duplicate-added",
                f"{_where(state.index, state.id)}, {where} index {index}: already added",
            )
            return
        if _bad_index(index, len(slots or ())):
            self._problem(event, "bad-index", f"{_where(state.index, state.id)}: {where} index {index}")
            return
        if index != len(slots or ()):
            self._problem(
                event,
                "index-order",
                f"{_where(state.index, state.id)}: {where} index {index}, expected {len(slots or ())}",
            )
        self._put(state, where, index, _Slot.of_part(part, done=False))
        self._changed(state)

    def _part_done(self, event: Any, where: str, index: int) -> None:
        part = event.part
        cls = ReasoningItem if where == "summary" or type(part) is ReasoningText else Message
        state = self._target(event, cls, () if where == "summary" else (Message, ReasoningItem))
        if state is None:
            return
        slots = state.content if where == "content" else state.summary
        slot = slots[index] if slots is not None and 0 <= index < len(slots) else None
        label = f"{_where(state.index, state.id)}, {where} index {index}"
        if slot is None:
            self._problem(event, "missing-added", f"{label}: part done for a part never added")
        elif slot.done:
            self._problem(event, "duplicate-done", f"{label}: the part was already done; ignored")
            return
        else:
            built = slot.value()
            text = _part_text(part)
            if _tag(slot.base) != _tag(part):
                self._problem(
                    event, "done-mismatch", f"{label}: part type {_tag(part)!r}, added as {_tag(slot.base)!r}"
                )
            elif built and text is not None and built != text:
                self._problem(
                    event,
                    "done-mismatch",
                    f"{label}: text is {_short(text)} in the part's done, {_short(built)} from the deltas",
                )
        if _bad_index(index, len(slots or ())):
            self._problem(event, "bad-index", f"{label}: ignored")
            return
        self._put(state, where, index, _Slot.of_part(part, done=True))
        self._changed(state)

    def _on_content_part_added(self, event: Any) -> None:
        self._part_added(event, "content", event.content_index)

    def _on_content_part_done(self, event: Any) -> None:
        self._part_done(event, "content", event.content_index)

    def _on_summary_part_added(self, event: Any) -> None:
        self._part_added(event, "summary", event.summary_index)

    def _on_summary_part_done(self, event: Any) -> None:
        self._part_done(event, "summary", event.summary_index)

    # --- text deltas (the hot path) -------------------------------------------------------------------------

    def _on_output_text_delta(self, event: Any) -> None:
        state = self._items.get(event.output_index)
        if state is None or state.id != event.item_id or state.done or type(state.base) is not Message:
            state = self._target(event, Message)
            if state is None:
                return
        slots = state.content
        index = event.content_index
        slot = slots[index] if slots is not None and 0 <= index < len(slots) else None
        if slot is None or type(slot.base) is not OutputText:
            slot = self._slot(event, state, "content", index, OutputText)
            if slot is None:
                return
        if slot.sealed:
            self._late_delta(event, state, "content", index)
            return
        slot.chunks.append(event.delta)
        if event.logprobs:
            _add_logprobs(slot, event.logprobs)
        state.snap = None
        self._snap = None
        self._arm(event, "content_index", index, slot, state)

    def _arm(self, event: Any, sub_name: str, sub: Any, slot: _Slot, state: _Item) -> None:
        """Make ``feed`` fold the deltas that follow ``event`` to the same place into ``slot`` by itself."""
        if event.sequence_number is None:
            return
        self._hot_cls = type(event)
        self._hot_base = self._count - self._last_seq  # each delta folded by the hot path adds 1 to both
        self._hot_seen = self._last_seq  # the snapshots are up to date (the handler dropped the stale ones)
        self._hot_index = event.output_index
        self._hot_id = event.item_id
        self._hot_sub = sub
        self._hot_at = _hot_fields(type(event), sub_name)
        self._hot_slot = slot
        self._hot_state = state

    def _late_delta(self, event: Any, state: _Item, where: str, index: int) -> None:
        self._problem(
            event,
            "delta-after-done",
            f"{_where(state.index, state.id)}, {where} index {index}: {event.type} after the text's done; ignored",
        )

    def _text_delta(self, event: Any, cls: type, where: str, index: int, part_cls: type) -> None:
        state = self._target(event, cls)
        if state is None:
            return
        slot = self._slot(event, state, where, index, part_cls)
        if slot is None:
            return
        if slot.sealed:
            self._late_delta(event, state, where, index)
            return
        slot.chunks.append(event.delta)
        self._changed(state)
        self._arm(event, "content_index" if where == "content" else "summary_index", index, slot, state)

    def _text_done(
        self, event: Any, cls: type, where: str, index: int, part_cls: type, text: str
    ) -> _Slot | None:
        state = self._target(event, cls)
        if state is None:
            return None
        slot = self._slot(event, state, where, index, part_cls)
        if slot is None:
            return None
        label = f"{_where(state.index, state.id)}, {where} index {index}"
        built = slot.value()
        if slot.sealed:
            code = "duplicate-done" if not slot.done else "out-of-order"
            self._problem(event, code, f"{label}: {event.type} after the part's done; ignored")
            return None
        if built and built != text:
            self._problem(
                event,
                "done-mismatch",
                f"{label}: text is {_short(text)} in {event.type}, {_short(built)} from deltas",
            )
        slot.set(text)
        slot.sealed = True
        self._changed(state)
        return slot

    def _on_output_text_done(self, event: Any) -> None:
        slot = self._text_done(event, Message, "content", event.content_index, OutputText, event.text)
        if slot is not None and isinstance(event.logprobs, list):
            slot.logprobs = list(event.logprobs)

    def _on_annotation_added(self, event: Any) -> None:
        state = self._target(event, Message)
        if state is None:
            return
        slot = self._slot(event, state, "content", event.content_index, OutputText)
        if slot is None:
            return
        label = (
            f"{_where(state.index, state.id, event.content_index)}, annotation_index {event.annotation_index}"
        )
        if slot.done:
            self._problem(event, "delta-after-done", f"{label}: annotation after the part's done; ignored")
            return
        annotations = slot.annotations if slot.annotations is not None else []
        slot.annotations = annotations
        position = event.annotation_index
        if 0 <= position < len(annotations):
            self._problem(event, "duplicate-annotation", f"{label}: replaces the annotation already there")
            annotations[position] = _own(event.annotation)
        else:
            if position != len(annotations):
                self._problem(event, "index-order", f"{label}: expected annotation_index {len(annotations)}")
            annotations.append(_own(event.annotation))
        self._changed(state)

    def _on_refusal_delta(self, event: Any) -> None:
        self._text_delta(event, Message, "content", event.content_index, Refusal)

    def _on_refusal_done(self, event: Any) -> None:
        self._text_done(event, Message, "content", event.content_index, Refusal, event.refusal)

    def _on_reasoning_delta(self, event: Any) -> None:
        self._text_delta(event, ReasoningItem, "content", event.content_index, ReasoningText)

    def _on_reasoning_done(self, event: Any) -> None:
        self._text_done(event, ReasoningItem, "content", event.content_index, ReasoningText, event.text)

    def _on_summary_delta(self, event: Any) -> None:
        self._text_delta(event, ReasoningItem, "summary", event.summary_index, SummaryText)

    def _on_summary_done(self, event: Any) -> None:
        self._text_done(event, ReasoningItem, "summary", event.summary_index, SummaryText, event.text)

    # --- item-level streams: arguments, custom tool input, code, patch diff ----------------------------------

    def _stream(self, event: Any, cls: type) -> tuple[_Item, _Slot] | None:
        state = self._target(event, cls)
        if state is None:
            return None
        if state.stream is None:
            state.stream = _Slot("")
        return state, state.stream

    def _on_stream_delta(self, event: Any) -> None:
        # Fast path (every argument delta after the first): the open item at that index, same id and kind.
        state = self._items.get(event.output_index)
        if (
            state is not None
            and state.id == event.item_id
            and not state.done
            and state.stream is not None
            and type(state.base) is _STREAM_DELTAS[type(event)]
        ):
            slot = state.stream
        else:
            found = self._stream(event, _STREAM_DELTAS[type(event)])
            if found is None:
                return
            state, slot = found
        if slot.sealed:
            self._problem(
                event,
                "delta-after-done",
                f"{_where(state.index, state.id)}: {event.type} after its done; ignored",
            )
            return
        slot.chunks.append(event.delta)
        self._changed(state)
        self._arm(event, "output_index", event.output_index, slot, state)

    def _on_stream_done(self, event: Any) -> None:
        cls, field = _STREAM_DONES[type(event)]
        found = self._stream(event, cls)
        if found is None:
            return
        state, slot = found
        label = _where(state.index, state.id)
        if slot.sealed:
            self._problem(event, "duplicate-done", f"{label}: {event.type} again; ignored")
            return
        text = getattr(event, field)
        built = slot.value()
        if built and built != text:
            self._problem(
                event,
                "done-mismatch",
                f"{label}: {field} is {_short(text)} in {event.type}, {_short(built)} from deltas",
            )
        slot.set(text)
        slot.sealed = slot.done = True
        name = getattr(event, "name", UNSET)
        if isinstance(name, str) and name != state.base.name:
            if state.base.name:
                self._problem(
                    event,
                    "done-mismatch",
                    f"{label}: name is {name!r} in {event.type}, {state.base.name!r} when added",
                )
            state.base = replace(state.base, name=name)
        self._changed(state)

    # --- hosted tools ---------------------------------------------------------------------------------------

    def _on_progress(self, event: Any) -> None:
        cls, status = _PROGRESS[type(event)]
        state = self._target(event, cls)
        if state is None:
            return
        if _has_status(state.base):
            state.base = _with_status(state.base, status)
            self._changed(state)

    def _on_partial_image(self, event: Any) -> None:
        state = self._target(event, ImageGenerationCall)
        if state is None:
            return
        # Until the done item brings the final image, the latest partial one stands in for it.
        state.base = replace(state.base, result=event.partial_image_b64)
        self._changed(state)

    def _command(self, event: Any) -> tuple[_Item, _Slot | None, list[_Slot | None]] | None:
        state = self._target(event, ShellCall)
        if state is None:
            return None
        if state.commands is None:
            state.commands = []
        commands = state.commands
        index = event.command_index
        if _bad_index(index, len(commands)):
            self._problem(event, "bad-index", f"{_where(state.index, state.id)}: command_index {index}")
            return None
        return state, commands[index] if index < len(commands) else None, commands

    def _on_command_added(self, event: Any) -> None:
        found = self._command(event)
        if found is None:
            return
        state, slot, commands = found
        index = event.command_index
        if slot is not None and not slot.implicit:
            self._problem(event, "duplicate-added", f"{_where(state.index, state.id, command_index=index)}")
            return
        if slot is not None:
            slot.implicit = False
            return
        if index != len(commands):
            self._problem(event, "index-order", f"{_where(state.index, state.id)}: command_index {index}")
        while len(commands) <= index:
            commands.append(None)
        commands[index] = _Slot(event.command)
        self._changed(state)

    def _command_slot(self, event: Any) -> tuple[_Item, _Slot] | None:
        found = self._command(event)
        if found is None:
            return None
        state, slot, commands = found
        index = event.command_index
        if slot is None:
            self._problem(
                event,
                "missing-added",
                f"{_where(state.index, state.id, command_index=index)}: command never added",
            )
            while len(commands) <= index:
                commands.append(None)
            slot = commands[index] = _Slot("")
            slot.implicit = True
        return state, slot

    def _on_command_delta(self, event: Any) -> None:
        found = self._command_slot(event)
        if found is None:
            return
        state, slot = found
        if slot.sealed:
            self._problem(
                event,
                "delta-after-done",
                f"{_where(state.index, state.id, command_index=event.command_index)}: after its done; ignored",
            )
            return
        slot.chunks.append(event.delta)
        self._changed(state)

    def _on_command_done(self, event: Any) -> None:
        found = self._command_slot(event)
        if found is None:
            return
        state, slot = found
        label = _where(state.index, state.id, command_index=event.command_index)
        if slot.done:
            self._problem(event, "duplicate-done", f"{label}: command done again; ignored")
            return
        built = slot.value()
        if built and built != event.command:
            self._problem(
                event,
                "done-mismatch",
                f"{label}: command is {_short(event.command)}, {_short(built)} from deltas",
            )
        slot.set(event.command)
        slot.done = slot.sealed = True
        self._changed(state)

    def _shell_output(self, event: Any) -> tuple[_Item, _ShellOutput] | None:
        state = self._target(event, ShellCallOutput)
        if state is None:
            return None
        if state.outputs is None:
            state.outputs = []
        outputs = state.outputs
        index = event.command_index
        if _bad_index(index, len(outputs)):
            self._problem(event, "bad-index", f"{_where(state.index, state.id)}: command_index {index}")
            return None
        while len(outputs) <= index:
            outputs.append(None)
        out = outputs[index]
        if out is None:
            out = outputs[index] = _ShellOutput({}, done=False)
        return state, out

    def _on_shell_output_delta(self, event: Any) -> None:
        found = self._shell_output(event)
        if found is None:
            return
        state, out = found
        if out.done:
            self._problem(
                event,
                "delta-after-done",
                f"{_where(state.index, state.id, command_index=event.command_index)}: output after its done",
            )
            return
        delta = event.delta
        if isinstance(delta, dict):
            for key, value in delta.items():
                if isinstance(value, str):
                    out.streams.setdefault(key, _Slot("")).chunks.append(value)
                else:
                    out.base = {**out.base, key: value}
        self._changed(state)

    def _on_shell_output_done(self, event: Any) -> None:
        found = self._shell_output(event)
        if found is None:
            return
        state, out = found
        outputs = state.outputs or []
        final = event.output
        # OpenAI sends the item's whole output list here; a single entry is taken as this command's.
        entries = final if isinstance(final, list) else [final]
        start = 0 if len(entries) > event.command_index else event.command_index
        for offset, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            position = start + offset
            while len(outputs) <= position:
                outputs.append(None)
            previous = outputs[position]
            if previous is not None:
                for key, slot in previous.streams.items():
                    built = slot.value()
                    if built and entry.get(key) != built:
                        self._problem(
                            event,
                            "done-mismatch",
                            f"{_where(state.index, state.id, command_index=position)}: {key} is "
                            f"{_short(entry.get(key))} when done, {_short(built)} from deltas",
                        )
            outputs[position] = _ShellOutput(dict(entry), done=True)
        out.done = True
        self._changed(state)


def _build_handlers() -> dict[type, Callable[[Any, Any], None]]:
    handlers: dict[type, Callable[[Any, Any], None]] = {
        ResponseCreated: Accumulator._on_lifecycle,
        ResponseQueued: Accumulator._on_lifecycle,
        ResponseInProgress: Accumulator._on_lifecycle,
        ResponseCompleted: Accumulator._on_terminal,
        ResponseIncomplete: Accumulator._on_terminal,
        ResponseFailed: Accumulator._on_terminal,
        ErrorEvent: Accumulator._on_error,
        ResponseOutputItemAdded: Accumulator._on_item_added,
        ResponseOutputItemDone: Accumulator._on_item_done,
        ResponseContentPartAdded: Accumulator._on_content_part_added,
        ResponseContentPartDone: Accumulator._on_content_part_done,
        ResponseOutputTextDelta: Accumulator._on_output_text_delta,
        ResponseOutputTextDone: Accumulator._on_output_text_done,
        ResponseOutputTextAnnotationAdded: Accumulator._on_annotation_added,
        ResponseRefusalDelta: Accumulator._on_refusal_delta,
        ResponseRefusalDone: Accumulator._on_refusal_done,
        ResponseReasoningTextDelta: Accumulator._on_reasoning_delta,
        ResponseReasoningDelta: Accumulator._on_reasoning_delta,
        ResponseReasoningTextDone: Accumulator._on_reasoning_done,
        ResponseReasoningDone: Accumulator._on_reasoning_done,
        ResponseReasoningSummaryPartAdded: Accumulator._on_summary_part_added,
        ResponseReasoningSummaryPartDone: Accumulator._on_summary_part_done,
        ResponseReasoningSummaryTextDelta: Accumulator._on_summary_delta,
        ResponseReasoningSummaryTextDone: Accumulator._on_summary_done,
        ImageGenerationCallPartialImage: Accumulator._on_partial_image,
        ShellCallCommandAdded: Accumulator._on_command_added,
        ShellCallCommandDelta: Accumulator._on_command_delta,
        ShellCallCommandDone: Accumulator._on_command_done,
        ShellCallOutputContentDelta: Accumulator._on_shell_output_delta,
        ShellCallOutputContentDone: Accumulator._on_shell_output_done,
    }
    for cls in _STREAM_DELTAS:
        handlers[cls] = Accumulator._on_stream_delta
    for cls in _STREAM_DONES:
        handlers[cls] = Accumulator._on_stream_done
    for cls in _PROGRESS:
        handlers[cls] = Accumulator._on_progress
    return handlers


# Event class -> the Accumulator method that folds it (one table for every instance: none is built per response).
_HANDLERS = _build_handlers()


# --- one core, two faces ------------------------------------------------------------------------------------


def accumulate(events: Iterable[Event]) -> Accumulator:
    """Fold every event of ``events`` into a new Accumulator, then mark the end of the stream."""
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    acc.end()
    return acc


async def aaccumulate(events: AsyncIterable[Event]) -> Accumulator:
    """``accumulate`` for an async stream of events."""
    acc = Accumulator()
    async for event in events:
        acc.feed(event)
    acc.end()
    return acc


def _add_logprobs(slot: Any, logprobs: list[Any]) -> None:
    """A text delta's logprobs onto its content slot (rare: only when the request asked for them)."""
    if slot.logprobs is None:
        slot.logprobs = []
    slot.logprobs.extend(logprobs)
