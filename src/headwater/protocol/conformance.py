"""Conformance rules for one Open Responses event stream, and an incremental checker that applies them.

Every rule lives in ``RULES`` (id, severity, one-line statement, the spec section it comes from); the checker
reports ``Violation``s naming those ids. It checks one response per stream (see ``split_responses`` for
recordings holding several), runs in linear time, and never raises, whatever order or content it is fed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from msgspec import UNSET

from .codec import event_to_builtins
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
from .resources import UnknownItem

__all__ = [
    "RULES",
    "RULES_BY_ID",
    "Checker",
    "Rule",
    "Severity",
    "Violation",
    "check",
    "report_lines",
    "split_responses",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One conformance rule: a stable id, how bad breaking it is, what it says, and where the spec says it."""

    id: str
    severity: Severity
    statement: str
    source: str


# --- the rules ----------------------------------------------------------------------------------------------
# Everything the checker reports is one of these. Ids are stable: tests, docs and users refer to them.

# fmt: off
RULES: tuple[Rule, ...] = (
    # framing and schema
    Rule("SSE-NAME", "error", "The SSE `event:` name, when present, equals the payload's `type`.",
         "WHATWG SSE (event field); spec: text/event-stream discriminator `type`"),
    Rule("TYPE-UNKNOWN", "warning", "Every event type is one the spec or the seed defines.",
         "spec: POST /responses text/event-stream oneOf; seed: OpenResponsesStreamEvent"),
    Rule("TYPE-SCHEMA", "error", "An event of a known type fits that type's schema.",
         "spec: *StreamingEvent schemas; seed: OpenResponsesStreamEvent"),
    # sequence numbers
    Rule("SEQ-PRESENT", "error", "Every event carries an integer `sequence_number`.",
         "spec: every *StreamingEvent (sequence_number required)"),
    Rule("SEQ-START", "error", "The first event's `sequence_number` is 0.",
         "spec: ResponseCreatedStreamingEvent.sequence_number; seed: response.created example"),
    Rule("SEQ-STEP", "error", "Each `sequence_number` is the previous event's plus one.",
         "spec: *StreamingEvent.sequence_number (the sequence number of the event emitted)"),
    # response lifecycle
    Rule("START-CREATED", "error", "The first event is `response.created`.",
         "spec: ResponseCreatedStreamingEvent; seed: OpenResponsesStreamEventResponseCreated"),
    Rule("CREATED-ONCE", "error", "A stream describes one response: `response.created` occurs once.",
         "spec: ResponseCreatedStreamingEvent"),
    Rule("RESPONSE-ID", "error", "Every lifecycle event's `response.id` is the id `response.created` gave.",
         "spec: ResponseResource.id (the unique ID of the response)"),
    Rule("LIFECYCLE-STATUS", "warning",
         "`response.created` has status queued/in_progress, `response.queued` queued, "
         "`response.in_progress` in_progress.",
         "spec: ResponseCreated/Queued/InProgressStreamingEvent + ResponseResource.status"),
    Rule("TERMINAL-ONCE", "error",
         "At most one terminal event (`response.completed`/`response.incomplete`/`response.failed`).",
         "spec: ResponseCompleted/Incomplete/FailedStreamingEvent"),
    Rule("AFTER-TERMINAL", "error", "No event follows the terminal event.",
         "spec: ResponseCompleted/Incomplete/FailedStreamingEvent"),
    Rule("END-TERMINAL", "error", "The stream ends with a terminal event.",
         "spec: ResponseCompleted/Incomplete/FailedStreamingEvent"),
    Rule("ERROR-THEN-FAILED", "error", "The event after an `error` event is `response.failed`.",
         "spec: ErrorStreamingEvent, ResponseFailedStreamingEvent; seed: OpenResponsesErrorEvent"),
    Rule("TERMINAL-STATUS", "error",
         "The terminal event's type agrees with `response.status` (completed/incomplete/failed); "
         "`response.incomplete` may also say `cancelled` (a response stopped on request: the spec has no "
         "cancelled event, OpenAI's ResponseStatus has the status).",
         "spec: ResponseCompleted/Incomplete/FailedStreamingEvent + ResponseResource.status"),
    Rule("FAILED-ERROR", "warning", "`response.failed` carries a non-null `response.error`.",
         "spec: ResponseResource.error (the error that occurred, if the response failed)"),
    Rule("INCOMPLETE-DETAILS", "warning",
         "`response.incomplete` carries non-null `response.incomplete_details`, unless its status is "
         "`cancelled` (the status says why).",
         "spec: ResponseResource.incomplete_details (why the response was incomplete)"),
    Rule("TERMINAL-OUTPUT", "error",
         "`response.output` of `response.completed`/`response.incomplete` lists exactly the items done in "
         "the stream, in output_index order (count and ids).",
         "spec: ResponseResource.output + ResponseOutputItemDoneStreamingEvent"),
    Rule("TERMINAL-ITEM-FIELDS", "error",
         "Each item of the terminal `response.output` says, field for field, what the stream's own "
         "`output_item.done` for it said: no field lost, added or changed (nested parts, annotations and "
         "fields the spec does not name included). Opaque encrypted values (Fernet tokens, `gAAAAA...`, "
         "which OpenAI encrypts anew each time it serializes an item) count as equal.",
         "spec: ResponseResource.output + ResponseOutputItemDoneStreamingEvent (the snapshot and the events "
         "describe one response)"),
    # output items
    Rule("ITEM-INDEX-NEXT", "error",
         "`output_index` is dense from 0: each `output_item.added` takes the next unused index.",
         "spec: ResponseOutputItemAddedStreamingEvent.output_index"),
    Rule("ITEM-ID-UNIQUE", "error", "No two output items share an id.",
         "spec: Message.id / FunctionCall.id / ReasoningBody.id (the unique ID of the item)"),
    Rule("ITEM-ADDED-FIRST", "error", "An item is `output_item.added` before any other event about it.",
         "spec: ResponseOutputItemAddedStreamingEvent"),
    Rule("ITEM-INDEX-ID", "error", "An event's `output_index` and `item_id` name the same item.",
         "spec: *StreamingEvent.item_id + output_index (the item / the index of the item updated)"),
    Rule("ITEM-DONE-ONCE", "error", "An item is `output_item.done` exactly once.",
         "spec: ResponseOutputItemDoneStreamingEvent"),
    Rule("ITEM-AFTER-DONE", "error", "No event is about an item after its `output_item.done`.",
         "spec: ResponseOutputItemDoneStreamingEvent (the output item was completed)"),
    Rule("ITEM-UNCLOSED", "error", "Every item added is `output_item.done` before `response.completed`.",
         "spec: ResponseOutputItemDoneStreamingEvent, ResponseCompletedStreamingEvent"),
    Rule("ITEM-DONE-MATCH", "error",
         "The `output_item.done` item has the added item's id and type and what its deltas built "
         "(each part's text, arguments, input, code, diff, commands; number of parts).",
         "spec: ResponseOutputItemDoneStreamingEvent + the *Delta events (the delta that was appended)"),
    Rule("ITEM-DONE-STATUS", "warning", "An item at `output_item.done` is no longer `in_progress`.",
         "spec: MessageStatus / FunctionCallStatus (in_progress: model is currently sampling this item)"),
    Rule("EVENT-KIND", "error",
         "An event addresses an item (and part) of a fitting type: text deltas on a message's output_text "
         "part, summary events on a reasoning item, function-call arguments on a function_call, ...",
         "spec: *StreamingEvent descriptions (e.g. item_id: the ID of the tool call item)"),
    # content / summary parts (and shell commands, which OpenAI streams like parts)
    Rule("PART-INDEX-NEXT", "error",
         "`content_index` / `summary_index` / `command_index` are dense from 0 per item: each added part "
         "takes the next unused index.",
         "spec: ResponseContentPartAdded / ResponseReasoningSummaryPartAddedStreamingEvent"),
    Rule("PART-ADDED-FIRST", "error", "A part is added before any delta, done or annotation about it.",
         "spec: ResponseContentPartAdded / ResponseReasoningSummaryPartAddedStreamingEvent"),
    Rule("PART-DONE-ONCE", "error", "A part is done exactly once.",
         "spec: ResponseContentPartDone / ResponseReasoningSummaryPartDoneStreamingEvent"),
    Rule("PART-AFTER-DONE", "error", "No delta, done or annotation is about a part after its done.",
         "spec: ResponseContentPartDone / ResponseReasoningSummaryPartDoneStreamingEvent"),
    Rule("PART-UNCLOSED", "error", "Every part added is done before its item's `output_item.done`.",
         "spec: ResponseContentPartDone / ResponseReasoningSummaryPartDoneStreamingEvent"),
    Rule("PART-DONE-MATCH", "error",
         "A part's done carries the added part's type and the text its deltas built (and as many "
         "annotations as were added).",
         "spec: ResponseContentPartDoneStreamingEvent.part + ResponseOutputTextAnnotationAddedStreamingEvent"),
    Rule("ANNOTATION-INDEX-NEXT", "error", "`annotation_index` is dense from 0 per content part.",
         "spec: ResponseOutputTextAnnotationAddedStreamingEvent.annotation_index"),
    # delta streams
    Rule("DONE-TEXT", "error",
         "Each `.done` text/refusal/arguments/input/code/diff/command equals what was added plus its "
         "deltas, concatenated.",
         "spec: *DeltaStreamingEvent.delta (appended) + *DoneStreamingEvent (the final text)"),
    Rule("STREAM-AFTER-DONE", "error", "No delta and no second `.done` follow a stream's `.done`.",
         "spec: *DoneStreamingEvent (the text was completed)"),
    Rule("STREAM-UNCLOSED", "error", "A stream that had deltas gets its `.done` before its part or item is done.",
         "spec: *DoneStreamingEvent"),
    Rule("PARTIAL-IMAGE-INDEX", "warning", "`partial_image_index` is dense from 0 per image item.",
         "seed: OpenResponsesImageGenCallPartialImage"),
)
# fmt: on

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule at one event. ``index`` is the 0-based position of the event in the stream (for an
    end-of-stream finding: the number of events fed)."""

    index: int
    sequence_number: int | None
    rule_id: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.index}: {self.rule_id} {self.message}"



# --- what each event does to the output it addresses ------------------------------------------------------

_Role = Literal["part.added", "part.done", "delta", "done", "annotation", "progress"]


class _On(NamedTuple):
    role: _Role
    part: str | None = None  # the field naming a part of the item (None: the event is about the whole item)
    stream: str | None = None  # the delta stream the event feeds (delta) or closes (done)
    field: str | None = None  # the event field carrying the delta or the final text
    items: frozenset[str] | None = None  # item types the event may address (None: any)
    closes_part: bool = False  # the stream's done also closes the part (shell commands have no part.done)


_MESSAGE = frozenset({"message"})
_REASONING = frozenset({"reasoning"})
_CONTENT = frozenset({"message", "reasoning"})
_C, _S, _K = "content_index", "summary_index", "command_index"


def _progress(item_type: str) -> _On:
    return _On("progress", items=frozenset({item_type}))


# fmt: off
EVENT_TABLE: dict[type, _On] = {
    ResponseContentPartAdded: _On("part.added", _C, items=_CONTENT),
    ResponseContentPartDone: _On("part.done", _C, items=_CONTENT),
    ResponseOutputTextDelta: _On("delta", _C, "output_text", "delta", _MESSAGE),
    ResponseOutputTextDone: _On("done", _C, "output_text", "text", _MESSAGE),
    ResponseOutputTextAnnotationAdded: _On("annotation", _C, "output_text", None, _MESSAGE),
    ResponseRefusalDelta: _On("delta", _C, "refusal", "delta", _MESSAGE),
    ResponseRefusalDone: _On("done", _C, "refusal", "refusal", _MESSAGE),
    ResponseReasoningTextDelta: _On("delta", _C, "reasoning_text", "delta", _REASONING),
    ResponseReasoningTextDone: _On("done", _C, "reasoning_text", "text", _REASONING),
    ResponseReasoningDelta: _On("delta", _C, "reasoning_text", "delta", _REASONING),
    ResponseReasoningDone: _On("done", _C, "reasoning_text", "text", _REASONING),
    ResponseReasoningSummaryPartAdded: _On("part.added", _S, items=_REASONING),
    ResponseReasoningSummaryPartDone: _On("part.done", _S, items=_REASONING),
    ResponseReasoningSummaryTextDelta: _On("delta", _S, "summary_text", "delta", _REASONING),
    ResponseReasoningSummaryTextDone: _On("done", _S, "summary_text", "text", _REASONING),
    FunctionCallArgumentsDelta: _On("delta", None, "function_call_arguments", "delta", frozenset({"function_call"})),
    FunctionCallArgumentsDone: _On("done", None, "function_call_arguments", "arguments", frozenset({"function_call"})),
    CustomToolCallInputDelta: _On("delta", None, "custom_tool_call_input", "delta", frozenset({"custom_tool_call"})),
    CustomToolCallInputDone: _On("done", None, "custom_tool_call_input", "input", frozenset({"custom_tool_call"})),
    McpCallArgumentsDelta: _On("delta", None, "mcp_call_arguments", "delta", frozenset({"mcp_call"})),
    McpCallArgumentsDone: _On("done", None, "mcp_call_arguments", "arguments", frozenset({"mcp_call"})),
    CodeInterpreterCallCodeDelta: _On("delta", None, "code_interpreter_call_code", "delta",
                                      frozenset({"code_interpreter_call"})),
    CodeInterpreterCallCodeDone: _On("done", None, "code_interpreter_call_code", "code",
                                     frozenset({"code_interpreter_call"})),
    ApplyPatchCallOperationDiffDelta: _On("delta", None, "apply_patch_call_operation_diff", "delta",
                                          frozenset({"apply_patch_call"})),
    ApplyPatchCallOperationDiffDone: _On("done", None, "apply_patch_call_operation_diff", "diff",
                                         frozenset({"apply_patch_call"})),
    ShellCallCommandAdded: _On("part.added", _K, "shell_call_command", "command", frozenset({"shell_call"})),
    ShellCallCommandDelta: _On("delta", _K, "shell_call_command", "delta", frozenset({"shell_call"})),
    ShellCallCommandDone: _On("done", _K, "shell_call_command", "command", frozenset({"shell_call"}),
                              closes_part=True),
    # The output content's delta is an object, not text: checked for order only.
    ShellCallOutputContentDelta: _progress("shell_call_output"),
    ShellCallOutputContentDone: _progress("shell_call_output"),
    ImageGenerationCallInProgress: _progress("image_generation_call"),
    ImageGenerationCallGenerating: _progress("image_generation_call"),
    ImageGenerationCallPartialImage: _progress("image_generation_call"),
    ImageGenerationCallCompleted: _progress("image_generation_call"),
    WebSearchCallInProgress: _progress("web_search_call"),
    WebSearchCallSearching: _progress("web_search_call"),
    WebSearchCallCompleted: _progress("web_search_call"),
    FileSearchCallInProgress: _progress("file_search_call"),
    FileSearchCallSearching: _progress("file_search_call"),
    FileSearchCallCompleted: _progress("file_search_call"),
    CodeInterpreterCallInProgress: _progress("code_interpreter_call"),
    CodeInterpreterCallInterpreting: _progress("code_interpreter_call"),
    CodeInterpreterCallCompleted: _progress("code_interpreter_call"),
    McpCallInProgress: _progress("mcp_call"),
    McpCallCompleted: _progress("mcp_call"),
    McpCallFailed: _progress("mcp_call"),
    McpListToolsInProgress: _progress("mcp_list_tools"),
    McpListToolsCompleted: _progress("mcp_list_tools"),
    McpListToolsFailed: _progress("mcp_list_tools"),
}
# fmt: on

# A content part's type -> the stream that writes it and the part field holding its text.
PART_TEXT: dict[str, tuple[str, str]] = {
    "output_text": ("output_text", "text"),
    "refusal": ("refusal", "refusal"),
    "reasoning_text": ("reasoning_text", "text"),
    "summary_text": ("summary_text", "text"),
}

# Where a stream's text lands in the item of `output_item.done`; "#" stands for the part's index.
ITEM_TEXT_PATH: dict[str, tuple[str, ...]] = {
    "output_text": ("content", "#", "text"),
    "refusal": ("content", "#", "refusal"),
    "reasoning_text": ("content", "#", "text"),
    "summary_text": ("summary", "#", "text"),
    "function_call_arguments": ("arguments",),
    "custom_tool_call_input": ("input",),
    "mcp_call_arguments": ("arguments",),
    "code_interpreter_call_code": ("code",),
    "apply_patch_call_operation_diff": ("operation", "diff"),
    "shell_call_command": ("action", "commands", "#"),
}

# The list in the done item that holds one entry per part of each kind.
ITEM_PART_LIST: dict[str, tuple[str, ...]] = {
    _C: ("content",),
    _S: ("summary",),
    _K: ("action", "commands"),
}

TERMINAL_STATUS: dict[type, str] = {
    ResponseCompleted: "completed",
    ResponseIncomplete: "incomplete",
    ResponseFailed: "failed",
}
LIFECYCLE_STATUS: dict[type, frozenset[str]] = {
    ResponseCreated: frozenset({"queued", "in_progress"}),
    ResponseQueued: frozenset({"queued"}),
    ResponseInProgress: frozenset({"in_progress"}),
}
_TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
_KNOWN_ITEM_TYPES = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "compaction",
        "image_generation_call",
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "custom_tool_call",
        "custom_tool_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "shell_call",
        "shell_call_output",
        "local_shell_call",
        "local_shell_call_output",
    }
)


# --- checker state ------------------------------------------------------------------------------------------


class _Stream:
    """One delta stream: the text it started from, its deltas, whether its `.done` came."""

    __slots__ = ("_cache", "_cached_n", "chunks", "done", "initial", "partial")

    def __init__(self, initial: str, *, partial: bool = False) -> None:
        self.initial = initial
        self.partial = partial  # began before a resumed stream's first event: its full text is unknown
        self.chunks: list[str] = []
        self.done = False
        self._cache = initial
        self._cached_n = 0

    def built(self) -> str:
        # Joined lazily and cached, so each closing event costs the stream's length once: linear overall.
        if self._cached_n != len(self.chunks):
            self._cache = self.initial + "".join(self.chunks)
            self._cached_n = len(self.chunks)
        return self._cache


class _Part:
    __slots__ = ("added", "adopted", "annotations", "done", "initial", "kind", "ptype", "reported", "streams")

    def __init__(self) -> None:
        self.added = False
        self.adopted = False  # added before a resumed stream's first event
        self.done = False
        self.reported = False  # PART-ADDED-FIRST already said for this part
        self.ptype: str | None = None  # the part's type at added
        self.kind: str | None = None  # the stream that writes it
        self.initial = ""
        self.annotations = 0
        self.streams: dict[str, _Stream] = {}


class _Item:
    __slots__ = (
        "added_item",
        "adopted",
        "done",
        "done_event",
        "id",
        "next_part",
        "output_index",
        "partial_images",
        "parts",
        "streams",
        "type",
    )

    def __init__(self, output_index: Any, item: Any) -> None:
        self.output_index = output_index
        self.added_item = item
        self.id: str | None = _str_or_none(getattr(item, "id", None))
        self.type: str | None = _tag(item)
        self.done = False
        self.done_event: Any = None
        self.parts: dict[tuple[str, Any], _Part] = {}
        self.next_part: dict[str, int] = {}
        self.streams: dict[str, _Stream] = {}
        self.partial_images = 0
        self.adopted = False  # added before a resumed stream's first event: what it held then is unknown


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tag(obj: Any) -> str | None:
    """The wire ``type`` of a resource: a Struct's tag (not an attribute), or an unknown object's ``type``."""
    if isinstance(obj, dict):
        return _str_or_none(obj.get("type"))
    tag = getattr(getattr(type(obj), "__struct_config__", None), "tag", None)
    return tag if isinstance(tag, str) else _str_or_none(getattr(obj, "type", None))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_MISSING: Any = object()


def _walk(obj: Any, path: tuple[str, ...], index: Any = None) -> Any:
    """Follow ``path`` (attribute names, dict keys, "#" for ``index``) into a resource; ``_MISSING`` if absent."""
    for step in path:
        key: Any = index if step == "#" else step
        if isinstance(key, int) and not isinstance(key, bool):
            if not isinstance(obj, list) or not 0 <= key < len(obj):
                return _MISSING
            obj = obj[key]
        elif isinstance(obj, dict):
            obj = obj.get(key, _MISSING)
        elif obj is None or obj is UNSET or not isinstance(key, str) or isinstance(obj, (list, str)):
            return _MISSING
        else:
            obj = getattr(obj, key, _MISSING)
        if obj is _MISSING or obj is UNSET:
            return _MISSING
    return obj


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _differ(got: str, want: str) -> str:
    """Where two texts part ways, shortly."""
    at = 0
    for a, b in zip(got, want, strict=False):
        if a != b:
            break
        at += 1
    return f"(len {len(got)} vs {len(want)}, first difference at char {at}: {_show(got[at:])} vs {_show(want[at:])})"


def _path_str(path: tuple[str, ...], index: Any) -> str:
    out = ""
    for step in path:
        out += f"[{index}]" if step == "#" else (f".{step}" if out else step)
    return out


# --- the checker --------------------------------------------------------------------------------------------


class Checker:
    """Checks one response's events as they come: ``feed`` each event, then ``finish`` at end of stream.

    ``starting_after``: the stream is a resumed one (``GET ...?stream=true&starting_after=N``) that begins after
    sequence number N. Its first event is N+1 and need not be ``response.created``; items and parts it meets
    without their ``added`` event were added before it began, and texts whose start it did not see are not
    compared.
    """

    def __init__(self, *, starting_after: int | None = None) -> None:
        self._starting_after = starting_after
        self._n = 0
        self._out: list[Violation] = []
        self._index = 0
        self._seq: int | None = None
        self._last_seq: int | None = None
        self._last_seq_at = 0
        self._created = False
        self._response_id: str | None = None
        self._terminal_at: int | None = None
        self._after_error = False
        self._items: dict[Any, _Item] = {}
        self._by_id: dict[str, _Item] = {}
        self._next_output_index = 0
        self._done_items: list[_Item] = []
        self._unaddressed: set[Any] = set()

    # -- reporting

    def _say(self, rule_id: str, message: str) -> None:
        rule = RULES_BY_ID[rule_id]
        self._out.append(Violation(self._index, self._seq, rule_id, rule.severity, message))

    # -- public API

    def feed(self, event: Any) -> list[Violation]:
        """Check one event; return what it breaks."""
        self._out = []
        self._index = self._n
        self._n += 1
        etype = getattr(event, "type", None)
        self._seq = _int_or_none(getattr(event, "sequence_number", None))
        if not isinstance(etype, str):
            self._say(
                "TYPE-SCHEMA", f"{type(event).__name__} object is not a stream event (no string `type`)"
            )
            return self._out
        self._check_envelope(event, etype)
        self._check_sequence(etype)
        self._check_lifecycle(event, etype)
        if not isinstance(event, UnknownEvent):
            self._check_output(event)
        return self._out

    def finish(self) -> list[Violation]:
        """End-of-stream rules; findings carry index = number of events fed."""
        self._out = []
        self._index = self._n
        self._seq = None
        if self._after_error:
            self._say(
                "ERROR-THEN-FAILED", "the stream ends right after an `error` event, with no `response.failed`"
            )
        if self._terminal_at is None:
            self._say("END-TERMINAL", f"the stream ends after {self._n} events without a terminal event")
        return self._out

    # -- framing, schema, sequence numbers

    def _check_envelope(self, event: Any, etype: str) -> None:
        attrs = getattr(event, "__dict__", None)
        sse_name = event.__dict__.get("_sse_event") if isinstance(attrs, dict) else None
        if sse_name is not None:
            self._say("SSE-NAME", f"SSE `event: {sse_name}` but the payload's type is {etype!r}")
        if isinstance(event, UnknownEvent):
            if event.problem is not None:
                self._say("TYPE-SCHEMA", f"{etype!r} payload does not fit its schema: {event.problem}")
            else:
                self._say("TYPE-UNKNOWN", f"unknown event type {etype!r}")

    def _check_sequence(self, etype: str) -> None:
        seq = self._seq
        if seq is None:
            self._say("SEQ-PRESENT", f"{etype} has no integer sequence_number")
            return
        first = 0 if self._starting_after is None else self._starting_after + 1
        if self._index == 0 and seq != first:
            resumed = "" if self._starting_after is None else f" (the stream resumes after {self._starting_after})"
            self._say("SEQ-START", f"the first event's sequence_number is {seq}, not {first}{resumed}")
        elif self._last_seq is not None:
            want = self._last_seq + (self._index - self._last_seq_at)
            if seq != want:
                self._say("SEQ-STEP", f"sequence_number {seq} follows {self._last_seq} (expected {want})")
        self._last_seq = seq
        self._last_seq_at = self._index

    # -- the response lifecycle

    def _check_lifecycle(self, event: Any, etype: str) -> None:
        if self._after_error and etype != "response.failed":
            self._say("ERROR-THEN-FAILED", f"`error` is followed by {etype}, not `response.failed`")
        self._after_error = etype == "error"
        if self._index == 0 and etype != "response.created" and self._starting_after is None:
            self._say("START-CREATED", f"the stream starts with {etype}, not `response.created`")
        if etype == "response.created":
            if self._created:
                self._say("CREATED-ONCE", "a second `response.created` (split concatenated recordings first)")
            self._created = True
        if self._terminal_at is not None:
            if etype in _TERMINAL_TYPES:
                self._say(
                    "TERMINAL-ONCE",
                    f"a second terminal event {etype} (the first was event {self._terminal_at})",
                )
            else:
                self._say("AFTER-TERMINAL", f"{etype} after the terminal event (event {self._terminal_at})")
        first_terminal = etype in _TERMINAL_TYPES and self._terminal_at is None
        if first_terminal:
            self._terminal_at = self._index
        response = getattr(event, "response", None)
        if response is None or isinstance(event, UnknownEvent):
            return
        rid = _str_or_none(getattr(response, "id", None))
        status = getattr(response, "status", None)
        if isinstance(event, ResponseCreated) and self._response_id is None:
            self._response_id = rid
        elif self._response_id is not None and rid != self._response_id:
            self._say(
                "RESPONSE-ID",
                f"{etype} has response.id {rid!r}, `response.created` had {self._response_id!r}",
            )
        allowed = LIFECYCLE_STATUS.get(type(event))
        if allowed is not None and status not in allowed:
            self._say(
                "LIFECYCLE-STATUS",
                f"{etype} has response.status {status!r}, expected one of {sorted(allowed)}",
            )
        want = TERMINAL_STATUS.get(type(event))
        if want is None:
            return
        if status != want and not (want == "incomplete" and status == "cancelled"):
            self._say("TERMINAL-STATUS", f"{etype} has response.status {status!r}, expected {want!r}")
        if isinstance(event, ResponseFailed) and getattr(response, "error", None) is None:
            self._say("FAILED-ERROR", "`response.failed` has response.error null")
        if (
            isinstance(event, ResponseIncomplete)
            and status != "cancelled"
            and getattr(response, "incomplete_details", None) is None
        ):
            self._say("INCOMPLETE-DETAILS", "`response.incomplete` has response.incomplete_details null")
        if not first_terminal:
            return
        if isinstance(event, ResponseCompleted):
            open_items = [item for item in self._items.values() if not item.done]
            for item in open_items:
                self._say(
                    "ITEM-UNCLOSED",
                    f"item {item.id!r} at output_index {item.output_index} was added "
                    "but never done before `response.completed`",
                )
        if isinstance(event, (ResponseCompleted, ResponseIncomplete)) and self._check_terminal_output(
            getattr(response, "output", None), etype
        ):
            self._check_terminal_fields(event, etype)

    def _check_terminal_output(self, output: Any, etype: str) -> bool:
        """TERMINAL-OUTPUT; True when the output lists the done items (so they can be compared)."""
        if not isinstance(output, list):
            return False
        done = sorted(self._done_items, key=lambda item: _sort_key(item.output_index))
        done_ids = [item.id for item in done]
        out_ids = [_str_or_none(getattr(entry, "id", None)) for entry in output]
        if self._starting_after is not None:  # items done before the stream resumed are not known here
            for item in done:
                if item.id is not None and item.id not in out_ids:
                    self._say("TERMINAL-OUTPUT", f"{etype} response.output lacks item {item.id!r}, done in the stream")
            return False
        if len(out_ids) != len(done_ids):
            self._say(
                "TERMINAL-OUTPUT",
                f"{etype} response.output has {len(out_ids)} items {out_ids[:8]}, "
                f"the stream finished {len(done_ids)} {done_ids[:8]}",
            )
            return False
        for position, (got, want) in enumerate(zip(out_ids, done_ids, strict=True)):
            if got != want:
                self._say(
                    "TERMINAL-OUTPUT",
                    f"{etype} response.output[{position}] has id {got!r}, the stream's "
                    f"item {position} (output_index {done[position].output_index}) is {want!r}",
                )
                return False
        return bool(output)

    def _check_terminal_fields(self, event: Any, etype: str) -> None:
        """TERMINAL-ITEM-FIELDS: the terminal snapshot's items against the stream's own done items, as JSON."""
        output = event_to_builtins(event).get("response", {}).get("output")
        done = sorted(self._done_items, key=lambda item: _sort_key(item.output_index))
        if not isinstance(output, list):
            return
        for position, (theirs, item) in enumerate(zip(output, done, strict=False)):
            if item.done_event is None:
                continue
            said = event_to_builtins(item.done_event).get("item")
            differences = _json_differences(said, theirs)
            if differences:
                shown = "; ".join(differences[:4]) + (f"; {len(differences) - 4} more" if len(differences) > 4 else "")
                self._say(
                    "TERMINAL-ITEM-FIELDS",
                    f"{etype} response.output[{position}] (item {item.id!r}) differs from its output_item.done: "
                    f"{shown}",
                )

    # -- items, parts and delta streams

    def _check_output(self, event: Any) -> None:
        if isinstance(event, ResponseOutputItemAdded):
            self._item_added(event)
        elif isinstance(event, ResponseOutputItemDone):
            self._item_done(event)
        else:
            on = EVENT_TABLE.get(type(event))
            if on is not None:
                self._item_event(event, on)

    def _item_added(self, event: ResponseOutputItemAdded) -> None:
        index = event.output_index
        item = _Item(index, event.item)
        if index in self._items:
            self._say(
                "ITEM-INDEX-NEXT",
                f"output_item.added at output_index {index}, which item "
                f"{self._items[index].id!r} already has (next free: {self._next_output_index})",
            )
            return
        if index != self._next_output_index and not (self._starting_after is not None and not self._items):
            self._say(
                "ITEM-INDEX-NEXT",
                f"output_item.added for item {item.id!r} has output_index {index}, "
                f"expected {self._next_output_index}",
            )
        if item.id is not None:
            if item.id in self._by_id:
                other = self._by_id[item.id]
                self._say(
                    "ITEM-ID-UNIQUE",
                    f"item id {item.id!r} at output_index {index} is already the id of "
                    f"the item at output_index {other.output_index}",
                )
            else:
                self._by_id[item.id] = item
        self._items[index] = item
        if isinstance(index, int) and index >= self._next_output_index:
            self._next_output_index = index + 1

    def _find_item(self, output_index: Any, item_id: Any, what: str) -> _Item | None:
        """The item an event is about, by output_index and item_id; says ITEM-* when they do not agree."""
        by_index = self._items.get(output_index)
        by_id = self._by_id.get(item_id) if isinstance(item_id, str) else None
        if by_index is None and by_id is None and self._starting_after is not None:
            return self._adopt(output_index, item_id)
        if by_index is None and by_id is None:
            key = (output_index, item_id if isinstance(item_id, str) else None)
            if key not in self._unaddressed:
                self._unaddressed.add(key)
                self._say(
                    "ITEM-ADDED-FIRST",
                    f"{what} about item {item_id!r} at output_index {output_index} "
                    "before its output_item.added",
                )
            return None
        if by_index is not None and (
            by_id is by_index or not isinstance(item_id, str) or by_index.id is None
        ):
            return by_index
        if by_index is None:
            assert by_id is not None
            self._say(
                "ITEM-INDEX-ID",
                f"{what} has output_index {output_index}, but item {item_id!r} is at "
                f"output_index {by_id.output_index}",
            )
            return by_id
        self._say(
            "ITEM-INDEX-ID",
            f"{what} has item_id {item_id!r}, but the item at output_index {output_index} is {by_index.id!r}",
        )
        return by_index

    def _adopt(self, output_index: Any, item_id: Any) -> _Item:
        """An item of a resumed stream that was added before the stream began."""
        item = _Item(output_index, None)
        item.id = _str_or_none(item_id)
        item.adopted = True
        self._items[output_index] = item
        if item.id is not None:
            self._by_id[item.id] = item
        if isinstance(output_index, int) and output_index >= self._next_output_index:
            self._next_output_index = output_index + 1
        return item

    def _item_done(self, event: ResponseOutputItemDone) -> None:
        done_item = event.item
        done_id = _str_or_none(getattr(done_item, "id", None))
        item = self._find_item(event.output_index, done_id, "output_item.done")
        if item is None:
            return
        if item.done:
            self._say(
                "ITEM-DONE-ONCE",
                f"second output_item.done for item {item.id!r} at output_index {item.output_index}",
            )
            return
        item.done = True
        item.done_event = event
        self._done_items.append(item)
        label = f"item {item.id!r} (output_index {item.output_index})"
        done_type = _tag(done_item)
        if item.adopted:  # added before the resumed stream began: what was built then is unknown
            item.type = done_type
        if done_type != item.type:
            self._say("ITEM-DONE-MATCH", f"{label} was added as {item.type!r} but is done as {done_type!r}")
        if getattr(done_item, "status", None) == "in_progress":
            self._say("ITEM-DONE-STATUS", f"{label} is done with status 'in_progress'")
        if item.adopted:  # what its streams built before the resumed stream began is unknown: nothing to compare
            return
        # What the streams built, part by part, against what the done item says.
        counts: dict[str, int] = {}
        for (family, sub), part in item.parts.items():
            if part.added:
                counts[family] = counts.get(family, 0) + 1
                if not part.done:
                    self._say(
                        "PART-UNCLOSED",
                        f"{family} {sub} of {label} was added but not done before output_item.done",
                    )
            for kind, stream in part.streams.items():
                self._stream_unclosed(stream, kind, f"{family} {sub} of {label}")
                self._compare_item_text(done_item, kind, stream.built(), sub, label)
            if part.added and part.kind is not None and part.kind not in part.streams:
                self._compare_item_text(done_item, part.kind, part.initial, sub, label)
        for family, count in counts.items():
            listed = _walk(done_item, ITEM_PART_LIST[family])
            if isinstance(listed, list) and len(listed) != count:
                self._say(
                    "ITEM-DONE-MATCH",
                    f"{label} is done with {len(listed)} entries in "
                    f"{'.'.join(ITEM_PART_LIST[family])}, the stream added {count} parts",
                )
        for kind, stream in item.streams.items():
            self._stream_unclosed(stream, kind, label)
            self._compare_item_text(done_item, kind, stream.built(), None, label)

    def _stream_unclosed(self, stream: _Stream, kind: str, where: str) -> None:
        if stream.chunks and not stream.done:
            self._say("STREAM-UNCLOSED", f"{kind} deltas for {where} were never closed by {kind}.done")

    def _compare_item_text(self, done_item: Any, kind: str, built: str, sub: Any, label: str) -> None:
        path = ITEM_TEXT_PATH.get(kind)
        if path is None:
            return
        got = _walk(done_item, path, sub)
        where = _path_str(path, sub)
        if got is _MISSING:
            self._say(
                "ITEM-DONE-MATCH", f"{label} is done without {where}; the {kind} stream built {_show(built)}"
            )
        elif got != built:
            shown = _differ(got, built) if isinstance(got, str) else f"{got!r} vs {_show(built)}"
            self._say(
                "ITEM-DONE-MATCH",
                f"{label}: done item's {where} differs from what the {kind} deltas built {shown}",
            )

    def _item_event(self, event: Any, on: _On) -> None:
        etype = event.type
        item = self._find_item(getattr(event, "output_index", None), getattr(event, "item_id", None), etype)
        if item is None:
            return
        label = f"item {item.id!r} (output_index {item.output_index})"
        if item.done:
            self._say("ITEM-AFTER-DONE", f"{etype} about {label} after its output_item.done")
            return
        if (
            on.items is not None
            and item.type in _KNOWN_ITEM_TYPES
            and item.type not in on.items
            and not isinstance(item.added_item, UnknownItem)
        ):
            self._say("EVENT-KIND", f"{etype} addresses {label}, a {item.type!r} item")
        if isinstance(event, ImageGenerationCallPartialImage):
            if event.partial_image_index != item.partial_images:
                self._say(
                    "PARTIAL-IMAGE-INDEX",
                    f"partial_image_index {event.partial_image_index} for {label}, "
                    f"expected {item.partial_images}",
                )
            item.partial_images += 1
        if on.part is None:
            if on.stream is not None:
                stream = item.streams.get(on.stream)
                if stream is None:
                    initial = _walk(item.added_item, ITEM_TEXT_PATH.get(on.stream, ()))
                    stream = item.streams[on.stream] = _Stream(
                        initial if isinstance(initial, str) else "", partial=item.adopted
                    )
                self._stream_event(event, on, stream, label)
            return
        sub = getattr(event, on.part, None)
        where = f"{on.part} {sub} of {label}"
        if on.role == "part.added":
            self._part_added(event, on, item, sub, where)
            return
        part = item.parts.get((on.part, sub))
        if part is None:
            part = item.parts[(on.part, sub)] = _Part()
            if item.adopted:  # added before the resumed stream began
                part.added = part.adopted = True
        if not part.added and not part.reported:
            part.reported = True
            self._say("PART-ADDED-FIRST", f"{etype} about {where} before the part was added")
        if part.done:
            self._say(
                "PART-DONE-ONCE" if on.role == "part.done" else "PART-AFTER-DONE",
                f"{etype} about {where} after the part was done",
            )
            return
        if on.role == "part.done":
            self._part_done(event, part, where)
            return
        if on.role == "annotation":
            index = getattr(event, "annotation_index", None)
            if index != part.annotations:
                self._say(
                    "ANNOTATION-INDEX-NEXT",
                    f"annotation_index {index} on {where}, expected {part.annotations}",
                )
            part.annotations += 1
            return
        if on.stream is None:
            return
        if part.added and part.kind is not None and part.kind != on.stream:
            self._say("EVENT-KIND", f"{etype} writes to {where}, a {part.ptype!r} part")
        stream = part.streams.get(on.stream)
        if stream is None:
            stream = part.streams[on.stream] = _Stream(
                part.initial if part.kind == on.stream else "", partial=part.adopted
            )
        self._stream_event(event, on, stream, where)
        if on.closes_part and on.role == "done":
            part.done = True

    def _part_added(self, event: Any, on: _On, item: _Item, sub: Any, where: str) -> None:
        assert on.part is not None
        key = (on.part, sub)
        # An item added before a resumed stream began may have had parts before it, too.
        expected = item.next_part.get(on.part, sub if item.adopted and isinstance(sub, int) else 0)
        part = item.parts.get(key)
        if part is not None and part.added:
            self._say("PART-INDEX-NEXT", f"{event.type} for {where}, which was already added")
            return
        if sub != expected:
            self._say("PART-INDEX-NEXT", f"{event.type} for {where}, expected {on.part} {expected}")
        if part is None:
            part = item.parts[key] = _Part()
        part.added = True
        if on.stream is not None and on.field is not None:  # shell commands: the event holds the first text
            part.kind = on.stream
            initial = getattr(event, on.field, "")
        else:
            added_part = getattr(event, "part", None)
            part.ptype = _tag(added_part)
            kind_field = PART_TEXT.get(part.ptype or "")
            initial = _walk(added_part, (kind_field[1],)) if kind_field else ""
            part.kind = kind_field[0] if kind_field else None
        part.initial = initial if isinstance(initial, str) else ""
        if isinstance(sub, int) and sub >= expected:
            item.next_part[on.part] = sub + 1

    def _part_done(self, event: Any, part: _Part, where: str) -> None:
        part.done = True
        for kind, stream in part.streams.items():
            self._stream_unclosed(stream, kind, where)
        if part.adopted:  # added before the resumed stream began: its type and start are unknown
            return
        done_part = getattr(event, "part", None)
        done_type = _tag(done_part)
        if part.added and done_type != part.ptype:
            self._say("PART-DONE-MATCH", f"{where} was added as {part.ptype!r} but is done as {done_type!r}")
            return
        kind_field = PART_TEXT.get(done_type or "")
        if kind_field is not None:
            kind, field = kind_field
            written = part.streams.get(kind)
            built = written.built() if written is not None else (part.initial if part.kind == kind else "")
            got = _walk(done_part, (field,))
            if isinstance(got, str) and got != built:
                self._say(
                    "PART-DONE-MATCH",
                    f"{event.type} {field} of {where} differs from what the {kind} "
                    f"deltas built {_differ(got, built)}",
                )
        annotations = _walk(done_part, ("annotations",))
        if part.annotations and isinstance(annotations, list) and len(annotations) != part.annotations:
            self._say(
                "PART-DONE-MATCH",
                f"{where} is done with {len(annotations)} annotations, {part.annotations} were added",
            )

    def _stream_event(self, event: Any, on: _On, stream: _Stream, where: str) -> None:
        if stream.done:
            self._say("STREAM-AFTER-DONE", f"{event.type} for {where} after its {on.stream}.done")
            return
        text = getattr(event, on.field, None) if on.field is not None else None
        if on.role == "delta":
            stream.chunks.append(text if isinstance(text, str) else "")
            return
        stream.done = True
        if stream.partial:
            return
        built = stream.built()
        if isinstance(text, str) and text != built:
            count = len(stream.chunks)
            self._say(
                "DONE-TEXT",
                f"{event.type} {on.field} for {where} differs from the initial text plus "
                f"{count} deltas {_differ(text, built)}",
            )


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


# --- entry points -------------------------------------------------------------------------------------------


def _json_differences(said: Any, shown: Any, path: str = "") -> list[str]:
    """Where ``shown`` (a snapshot's JSON) does not say what ``said`` (an event's JSON) said, as readable paths."""
    if isinstance(said, dict) and isinstance(shown, dict):
        out: list[str] = []
        for key, value in said.items():
            if key not in shown:
                out.append(f"{path}.{key} is missing")
            else:
                out.extend(_json_differences(value, shown[key], f"{path}.{key}"))
        out.extend(f"{path}.{key} was added" for key in shown if key not in said)
        return out
    if isinstance(said, list) and isinstance(shown, list) and len(said) == len(shown):
        return [d for i, (a, b) in enumerate(zip(said, shown, strict=True)) for d in _json_differences(a, b, f"{path}[{i}]")]
    if isinstance(said, str) and isinstance(shown, str) and said.startswith(_FERNET) and shown.startswith(_FERNET):
        return []  # opaque encrypted state, encrypted anew each time the provider serializes the item
    if said != shown or type(said) is not type(shown):
        return [f"{path or '.'} is {_brief(shown)}, not {_brief(said)}"]
    return []


# Fernet tokens (version byte 0x80, base64): OpenAI's encrypted_content / fingerprint.
_FERNET = "gAAAAA"


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(events: Iterable[Any], *, starting_after: int | None = None) -> list[Violation]:
    """Every violation in one response's stream, end-of-stream rules included (``starting_after``: see
    ``Checker``)."""
    checker = Checker(starting_after=starting_after)
    found: list[Violation] = []
    for event in events:
        found.extend(checker.feed(event))
    found.extend(checker.finish())
    return found


def _shape(message: str) -> str:
    """A finding's message with its numbers masked: findings that differ only in numbers are one kind."""
    return re.sub(r"\d+", "#", message)


def report_lines(path: str, found: Iterable[tuple[int, Violation]], *, show_all: bool = False) -> Iterator[str]:
    """The lines ``headwater check`` prints for one file's findings: ``PATH:INDEX: RULE-ID [severity] message``,
    ``found`` giving each violation with its INDEX in the file (counted from the file's first event). A finding
    that recurs (same rule, same message but for its numbers) is printed once, then where else it stands;
    ``show_all`` prints each."""
    groups: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
    for index, violation in found:
        key = (violation.rule_id, violation.severity, _shape(violation.message))
        groups.setdefault(key, []).append((index, violation.message))
    for (rule_id, severity, _), seen in groups.items():
        shown = seen if show_all else seen[:1]
        for index, message in shown:
            yield f"{path}:{index}: {rule_id} [{severity}] {message}"
        if len(seen) > len(shown):
            more = ", ".join(str(index) for index, _ in seen[1:9]) + (", ..." if len(seen) > 9 else "")
            yield f"{path}:{seen[0][0]}: {rule_id}: {len(seen) - 1} more like it, at events {more}"


def split_responses(events: Iterable[Any]) -> list[list[Any]]:
    """Split a recording of several responses back to back at each `response.created` (events before the
    first `response.created`, if any, form a group of their own)."""
    groups: list[list[Any]] = []
    current: list[Any] = []
    for event in events:
        if getattr(event, "type", None) == "response.created" and current:
            groups.append(current)
            current = []
        current.append(event)
    if current:
        groups.append(current)
    return groups
