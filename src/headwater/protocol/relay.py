"""``ResponseRelay``: a ``ResponseWriter`` that also takes another server's events and re-serves them as this
response's, conformantly. Sans-I/O, beside the writer whose state it extends.

It numbers foreign events in its own sequence, gives them its response id, keeps ``output_index`` dense and
item ids unique, adds the ``*.added``/``*.done`` events the upstream left out, and ends the stream with
``response.failed`` when the upstream did not end it. An event passes through byte for byte when nothing in it
had to change. The Responses backend (``server.backends.responses``) feeds it an upstream's events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from msgspec import UNSET

from .codec import (
    decode_event_obj,
    keep_wires,
    replace_event,
    replace_response_event,
)
from .conformance import EVENT_TABLE, ITEM_TEXT_PATH, PART_TEXT
from .events import (
    ApplyPatchCallOperationDiffDelta,
    ApplyPatchCallOperationDiffDone,
    CodeInterpreterCallCodeDelta,
    CodeInterpreterCallCodeDone,
    CustomToolCallInputDelta,
    CustomToolCallInputDone,
    ErrorEvent,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    ImageGenerationCallPartialImage,
    McpCallArgumentsDelta,
    McpCallArgumentsDone,
    ResponseCompleted,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
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
    UnknownEvent,
)
from .resources import (
    IncompleteDetails,
    Message,
    OutputText,
    ReasoningItem,
    ReasoningText,
    Refusal,
    Response,
    ResponseError,
    SummaryText,
    UnknownItem,
    Usage,
    replace,
    to_builtins,
)
from .writer import ResponseWriter, new_id

__all__ = ["ResponseRelay"]

log = logging.getLogger("headwater.server")


# --- the relay ------------------------------------------------------------------------------------------------

# Part families: the event field naming the part, the item list holding parts, the part events.
_PART_LIST = {"content_index": "content", "summary_index": "summary"}
_PART_LISTS: dict[str, tuple[str, ...]] = {
    "content_index": ("content",),
    "summary_index": ("summary",),
    "command_index": ("action", "commands"),
}
_PART_DONE_CLASS: dict[str, Any] = {
    "content_index": ResponseContentPartDone,
    "summary_index": ResponseReasoningSummaryPartDone,
}
_PART_ADDED_CLASS: dict[str, Any] = {
    "content_index": ResponseContentPartAdded,
    "summary_index": ResponseReasoningSummaryPartAdded,
    "command_index": ShellCallCommandAdded,
}
# A stream's empty part, for a delta that comes before its part was added.
_EMPTY_PART: dict[str, Callable[[], Any]] = {
    "output_text": lambda: OutputText(text="", annotations=[]),
    "refusal": lambda: Refusal(refusal=""),
    "reasoning_text": lambda: ReasoningText(text=""),
    "summary_text": lambda: SummaryText(text=""),
}
# The item a delta implies when it comes before its item was added.
_IMPLIED_ITEM: dict[str, Callable[[str], Any]] = {
    "output_text": lambda i: Message(id=i, role="assistant", status="in_progress", content=[]),
    "refusal": lambda i: Message(id=i, role="assistant", status="in_progress", content=[]),
    "reasoning_text": lambda i: ReasoningItem(id=i, summary=[]),
    "summary_text": lambda i: ReasoningItem(id=i, summary=[]),
}
# Delta class <-> done class of each stream.
_DONE_OF: dict[Any, Any] = {
    ResponseOutputTextDelta: ResponseOutputTextDone,
    ResponseRefusalDelta: ResponseRefusalDone,
    ResponseReasoningTextDelta: ResponseReasoningTextDone,
    ResponseReasoningDelta: ResponseReasoningDone,
    ResponseReasoningSummaryTextDelta: ResponseReasoningSummaryTextDone,
    FunctionCallArgumentsDelta: FunctionCallArgumentsDone,
    CustomToolCallInputDelta: CustomToolCallInputDone,
    McpCallArgumentsDelta: McpCallArgumentsDone,
    CodeInterpreterCallCodeDelta: CodeInterpreterCallCodeDone,
    ApplyPatchCallOperationDiffDelta: ApplyPatchCallOperationDiffDone,
    ShellCallCommandDelta: ShellCallCommandDone,
}
_DELTA_OF: dict[Any, Any] = {done: delta for delta, done in _DONE_OF.items()}
_TERMINAL_STATUS: dict[Any, str] = {
    ResponseCompleted: "completed",
    ResponseIncomplete: "incomplete",
    ResponseFailed: "failed",
}
# Event names some servers use for spec events (vLLM's reasoning parts are content parts of a reasoning item).
_ALIASES = {
    "response.reasoning_part.added": "response.content_part.added",
    "response.reasoning_part.done": "response.content_part.done",
}
_ID_PREFIX = {"message": "msg_", "function_call": "fc_", "reasoning": "rs_", "custom_tool_call": "ctc_"}
_RESPONSE_FIELDS = frozenset(Response.__struct_fields__)
_REPAIRS_KEPT = 100


@dataclass(slots=True, eq=False)
class _Stream:
    delta_cls: Any  # the delta class seen (its done class closes it)
    done: bool = False


@dataclass(slots=True, eq=False)
class _Part:
    family: str  # content_index / summary_index / command_index
    index: int  # downstream
    done: bool = False
    annotations: int = 0
    streams: dict[str, _Stream] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Item:
    index: int  # downstream output_index
    id: str  # downstream id
    type: str
    known: bool = True  # a type Headwater models (events about it can be checked for fit)
    done: bool = False
    partial_images: int = 0
    parts: dict[tuple[str, Any], _Part] = field(default_factory=dict)  # (family, upstream index) -> part
    latest: dict[str, _Part] = field(default_factory=dict)  # family -> latest part added
    counts: dict[str, int] = field(default_factory=dict)  # family -> parts added
    streams: dict[str, _Stream] = field(default_factory=dict)  # item-level streams (arguments, input...)


class ResponseRelay(ResponseWriter):
    """A ``ResponseWriter`` that re-serves another server's events (``feed``) as this response's.

    What ``feed`` does to each upstream event: lifecycle events (created, queued, in_progress) are dropped,
    this writer's own ``start()`` having said them; everything else gets the next ``sequence_number``; items
    get the next ``output_index`` (so two items sharing an upstream index, or an upstream counting from 1,
    become 0, 1, 2...) and keep their id unless it is missing or taken; events about an item are routed by
    ``item_id``, then by the upstream ``output_index`` (for item ids that change from event to event), and get
    the item's downstream index and id; part indexes are made dense per item. Missing events are added: an
    item or part added before its first delta, a text/arguments ``.done``, a ``content_part.done``, an
    ``output_item.done`` (before the next terminal event); a ``.done`` whose text is the deltas' plus a tail
    gets the tail as one more delta; one that disagrees otherwise says what the deltas said. The terminal
    event carries this response (its id, its output as the events built it) with the upstream's status,
    usage, error and incomplete_details, and the upstream's extra fields. An ``error`` not followed by
    ``response.failed`` gets one. Events after the terminal one are dropped.

    ``close()`` ends the stream when the upstream stopped: nothing if it ended properly, else
    ``response.failed`` (``truncated="failed"``) or ``response.incomplete`` (``truncated="incomplete"``).
    ``repairs`` lists what was changed beyond numbering (the first 100, for the log; ``repair_count`` counts
    them all).
    """

    def __init__(
        self,
        template: Response | None = None,
        *,
        upstream: str = "the upstream",
        truncated: Literal["failed", "incomplete"] = "failed",
        reasoning_events: Literal["spec", "seed"] = "spec",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(template, reasoning_events=reasoning_events, clock=clock)
        if truncated not in ("failed", "incomplete"):
            raise ValueError(f"truncated must be 'failed' or 'incomplete', not {truncated!r}")
        self.upstream = upstream
        self.truncated = truncated
        self.received = 0  # upstream events fed
        self.repairs: list[str] = []  # the first ones; repair_count counts them all
        self.repair_count = 0
        self.upstream_response_id: str | None = None
        self._items: dict[int, _Item] = {}  # downstream index -> item
        self._by_id: dict[str, _Item] = {}  # upstream item id -> item
        self._by_index: dict[Any, _Item] = {}  # upstream output_index -> latest item there
        self._ids: set[str] = set()
        self._error: ErrorEvent | None = None  # an upstream error awaiting its response.failed
        # The route of the last delta relayed: (its class, upstream item id, upstream part index, item, part,
        # stream). The next delta of the same stream (most of a stream's events) skips the routing.
        self._hot: tuple[Any, Any, Any, _Item, _Part | None, _Stream] | None = None

    @classmethod
    def from_writer(cls, writer: ResponseWriter, **options: Any) -> ResponseRelay:
        """A relay for the response ``writer`` was made for (same template, id, reasoning event names,
        clock); ``writer`` must not have started."""
        if writer.sequence_number:
            raise ValueError("the writer has already written events; make the relay before start()")
        options.setdefault("reasoning_events", "seed" if writer._seed_reasoning else "spec")
        options.setdefault("clock", writer._clock)
        return cls(writer.response, **options)

    # --- the public face ------------------------------------------------------------------------------------

    def feed(self, event: Event) -> list[Event]:
        """This response's events for one upstream event (none, the event renumbered, or with repairs)."""
        hot = self._hot
        if hot is not None and type(event) is hot[0]:
            relayed = self._hot_delta(event, hot)
            if relayed is not None:
                return relayed
        self.received += 1
        out: list[Event] = [] if self._started else self.start()
        keep_wires(event)  # what the upstream sent in items and usage survives into the snapshot
        if type(event) is UnknownEvent and event.type in _ALIASES:
            renamed = decode_event_obj({**event.data, "type": _ALIASES[event.type]}, lenient=True)
            if type(renamed) is UnknownEvent:
                self._repair(f"{event.type} does not fit {_ALIASES[event.type]}'s schema: dropped")
                return out
            self._repair(f"{event.type} relayed as {renamed.type}")
            event = renamed
        if self._finished:
            self._repair(f"{event.type} after the terminal event: dropped")
            return out
        kind = type(event)
        if self._error is not None and kind is not ResponseFailed:
            self._repair(f"{event.type} after an error event, before response.failed: dropped")
            out.extend(self._failed(None))
            return out
        if kind is ResponseOutputItemAdded:
            self._item_added(event, out)  # type: ignore[arg-type]
        elif kind is ResponseOutputItemDone:
            self._item_done(event, out)  # type: ignore[arg-type]
        elif kind in _TERMINAL_STATUS:
            self._terminal(event, out)  # type: ignore[arg-type]
        elif kind is ErrorEvent:
            out.extend(self._close_all("incomplete"))
            self._error = event  # type: ignore[assignment]
            self._pass(out, event)
        elif kind is ResponseCreated or kind is ResponseQueued or kind is ResponseInProgress:
            if kind is ResponseCreated:
                self.upstream_response_id = event.response.id  # type: ignore[union-attr]
        elif kind is UnknownEvent:
            assert isinstance(event, UnknownEvent)
            if event.problem is not None:
                self._repair(f"{event.type} does not fit its schema ({event.problem}): dropped")
            else:
                out.extend(self._push(UnknownEvent(event.type, {**event.data, "sequence_number": self._seq})))
        else:
            on = EVENT_TABLE.get(kind)
            if on is None:  # pragma: no cover - every known event type is in the table
                self._repair(f"{event.type}: not relayed")
            else:
                self._item_event(event, on, out)
        return out

    def _hot_delta(self, event: Any, hot: tuple[Any, Any, Any, _Item, _Part | None, _Stream]) -> list[Event] | None:
        """The next delta of the stream the last delta was relayed to, relayed without routing it again (what
        the routing would decide: the same item, part and stream, none of them done, no error pending); None
        when it is not (the full path decides)."""
        _, item_id, upstream_part, item, part, stream = hot
        if (
            event.item_id != item_id
            or self._finished
            or self._error is not None
            or item.done
            or stream.done
            or self._by_id.get(item_id) is not item
        ):
            return None
        if part is not None:
            if part.done or getattr(event, part.family) != upstream_part:
                return None
            if (
                event.sequence_number == self._seq
                and event.output_index == item.index
                and item.id == item_id
                and upstream_part == part.index
            ):  # nothing to change: the event goes as it came, its bytes kept
                self.received += 1
                return self._push(event)
            self.received += 1
            out: list[Event] = []
            self._pass(out, event, output_index=item.index, item_id=item.id, **{part.family: part.index})
            return out
        self.received += 1
        out = []
        self._pass(out, event, output_index=item.index, item_id=item.id)
        return out

    def close(self) -> list[Event]:
        """The upstream stream has ended: the events that end this response, if it has not ended."""
        out: list[Event] = [] if self._started else self.start()
        if self._finished:
            return out
        if self._error is not None:
            out.extend(self._failed(None))
            return out
        message = (
            f"{self.upstream} ended the stream after {self.received} events without a terminal event "
            "(response.completed / incomplete / failed)"
        )
        self._repair(message)
        if self.truncated == "incomplete":
            out.extend(self.incomplete("upstream_truncated"))
        else:
            out.extend(self.fail("upstream_truncated", message))
        return out

    # The writer's endings, aware of an upstream error already written (its response.failed must follow).

    def fail(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        *,
        error_type: str = "server_error",
        usage: Usage | None = None,
    ) -> list[Event]:
        if self._error is not None and not self._finished:
            return self._failed(ResponseError(code=code, message=message))
        return super().fail(code, message, param, error_type=error_type, usage=usage)

    def incomplete(self, reason: str, usage: Usage | None = None) -> list[Event]:
        if self._error is not None and not self._finished:
            return self._failed(None)
        return super().incomplete(reason, usage)

    def cancelled(self, usage: Usage | None = None) -> list[Event]:
        if self._error is not None and not self._finished:
            return self._failed(None)
        return super().cancelled(usage)

    def complete(self, usage: Usage | None = None) -> list[Event]:
        if self._error is not None and not self._finished:
            return self._failed(None)
        return super().complete(usage)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def _failed(self, fallback: ResponseError | None) -> list[Event]:
        """``response.failed`` after the upstream's ``error`` event."""
        error = self._error
        assert error is not None
        out = self._close_all("incomplete")
        found = ResponseError(code=error.error_code, message=error.error_message)
        if not found.message and fallback is not None:
            found = fallback
        final = replace(
            self._acc.response, status="failed", completed_at=None, error=found, incomplete_details=None
        )
        self._finish(out, ResponseFailed, final)
        self._error = None
        return out

    def _terminal(
        self, event: ResponseCompleted | ResponseIncomplete | ResponseFailed, out: list[Event]
    ) -> None:
        status = _TERMINAL_STATUS[type(event)]
        out.extend(self._close_all("completed" if status == "completed" else "incomplete"))
        theirs = event.response
        error = None
        details = None
        completed_at = None
        if status == "failed":
            error = theirs.error
            if error is None and self._error is not None:
                error = ResponseError(code=self._error.error_code, message=self._error.error_message)
            if error is None:
                self._repair("response.failed without an error: one was added")
                error = ResponseError(code="upstream_error", message=f"{self.upstream} failed the response")
        elif status == "incomplete":
            details = theirs.incomplete_details or IncompleteDetails(reason="unknown")
        else:
            completed_at = int(self._clock())  # on this response's clock, as its created_at
        if theirs.status != status:
            self._repair(f"{event.type} said status {theirs.status!r}: made {status!r}")
        final = replace(
            self._acc.response,
            status=status,
            usage=theirs.usage,
            error=error,
            incomplete_details=details,
            completed_at=completed_at,
        )
        self._pass(out, event, response=final)
        self._finished = True
        self._error = None

    # --- items ----------------------------------------------------------------------------------------------

    def _item_added(self, event: ResponseOutputItemAdded, out: list[Event]) -> None:
        upstream_id = event.item.id if event.item is not None else None
        known = self._by_id.get(upstream_id) if upstream_id else None
        if known is not None and not known.done and known.type == _item_type(event.item):
            self._repair(f"a second output_item.added for item {upstream_id!r}: dropped")
            return
        item = self._add(event.item, event.output_index)
        self._pass(out, event, output_index=item.index, item=_with_id(event.item, item.id))

    def _add(self, upstream_item: Any, upstream_index: Any) -> _Item:
        """Register a new item; its downstream index is the next one."""
        kind = _item_type(upstream_item)
        upstream_id = upstream_item.id if upstream_item is not None else None
        item_id = upstream_id
        if not item_id or item_id in self._ids:
            item_id = new_id(_ID_PREFIX.get(kind, "item_"))
            self._repair(
                f"item {upstream_id!r} at upstream output_index {upstream_index}: given id {item_id!r}"
            )
        index = self._take_index()
        if upstream_index != index:
            self._note_index(upstream_index, index)
        item = _Item(index, item_id, kind, known=not isinstance(upstream_item, UnknownItem))
        self._items[index] = item
        self._ids.add(item_id)
        if upstream_id:
            self._by_id[upstream_id] = item
        self._by_index[upstream_index] = item
        return item

    def _note_index(self, upstream_index: Any, index: int) -> None:
        self._repair(f"upstream output_index {upstream_index} relayed as {index}")

    def _item_done(self, event: ResponseOutputItemDone, out: list[Event]) -> None:
        done = event.item
        item = self._find(done.id if done is not None else None, event.output_index)
        if item is not None and item.done and done is not None and done.id and done.id not in self._by_id:
            item = None  # a done for a new item reusing an index
        if item is not None and done is not None and item.type != _item_type(done):
            self._repair(
                f"output_item.done for a {_item_type(done)} item at the {item.type} item {item.id!r}"
            )
            item = None
        if item is None:
            self._repair(f"output_item.done for item {getattr(done, 'id', None)!r} before its added: added")
            added = _with_status(done, "in_progress") if _has_status(done) else done
            item = self._add(done, event.output_index)
            self._emit(out, ResponseOutputItemAdded, output_index=item.index, item=_with_id(added, item.id))
        elif item.done:
            self._repair(f"a second output_item.done for item {item.id!r}: dropped")
            return
        out.extend(self._close_parts(item))
        final = self._reconcile(item, _with_id(done, item.id))
        self._pass(out, event, output_index=item.index, item=final)
        item.done = True

    def _find(self, item_id: Any, output_index: Any) -> _Item | None:
        if isinstance(item_id, str) and item_id:
            item = self._by_id.get(item_id)
            if item is not None:
                return item
        return self._by_index.get(output_index)

    def _reconcile(self, item: _Item, done: Any) -> Any:
        """The done item, made to agree with what the relayed events built: texts the deltas wrote (and the
        number of parts added) win over what the upstream's done item says; ``in_progress`` becomes
        ``completed``."""
        built = self._acc.item(item.index)
        changed: list[str] = []
        paths = [_PART_LISTS[family] for family in {p.family for p in item.parts.values()}]
        paths += [ITEM_TEXT_PATH[kind] for kind in item.streams if kind in ITEM_TEXT_PATH]
        for path in paths:
            mine = _at(built, path)
            if mine is not None and not _same(_at(done, path), mine):
                done = _with_changes(done, {path[0]: _put(getattr(done, path[0], None), path[1:], mine)})
                changed.append(".".join(path))
        if changed:
            self._repair(f"output_item.done for item {item.id!r}: {', '.join(changed)} taken from the deltas")
        if getattr(done, "status", None) == "in_progress":
            self._repair(f"output_item.done for item {item.id!r} said in_progress: made completed")
            done = _with_status(done, "completed")
        return done

    def _close_all(self, status: str) -> list[Event]:
        """Close every relayed item still open (and whatever the writer itself opened)."""
        out: list[Event] = []
        for index in sorted(self._items):
            item = self._items[index]
            if not item.done:
                self._repair(f"item {item.id!r} was never done: output_item.done added")
                out.extend(self._close_parts(item))
                snapshot = self._acc.item(item.index)
                if _has_status(snapshot) and getattr(snapshot, "status", None) not in (
                    "completed",
                    "incomplete",
                ):
                    snapshot = _with_status(snapshot, status)
                self._emit(out, ResponseOutputItemDone, output_index=item.index, item=snapshot)
                item.done = True
        out.extend(super()._close_all(status))
        return out

    def _close_parts(self, item: _Item) -> list[Event]:
        """The events that close what is open in ``item``: streams, then parts."""
        out: list[Event] = []
        for part in item.parts.values():
            if not part.done:
                self._close_part(item, part, out)
        for kind, stream in item.streams.items():
            if not stream.done:
                self._close_stream(item, None, kind, stream, out)
        return out

    def _close_part(self, item: _Item, part: _Part, out: list[Event]) -> None:
        for kind, stream in part.streams.items():
            if not stream.done:
                self._close_stream(item, part, kind, stream, out)
        if part.family == "command_index":
            if not part.streams:  # a command without deltas: its done closes it
                text = self._built(item, "shell_call_command", part)
                self._emit(
                    out,
                    ShellCallCommandDone,
                    item_id=item.id,
                    output_index=item.index,
                    command_index=part.index,
                    command=text if isinstance(text, str) else "",
                )
        else:
            parts = getattr(self._acc.item(item.index), _PART_LIST[part.family], None)
            if isinstance(parts, list) and 0 <= part.index < len(parts):
                snapshot = parts[part.index]
            else:
                # The snapshot holds no such part: it was added to an item of a type Headwater does not model
                # (whose events cannot be checked for fit), which the accumulator does not give parts. It is
                # closed with an empty part of its family's usual type, as a part never added would be.
                snapshot = _EMPTY_PART["output_text" if part.family == "content_index" else "summary_text"]()
            self._emit(
                out,
                _PART_DONE_CLASS[part.family],
                item_id=item.id,
                output_index=item.index,
                **{part.family: part.index},
                part=snapshot,
            )
        part.done = True

    def _close_stream(
        self, item: _Item, part: _Part | None, kind: str, stream: _Stream, out: list[Event]
    ) -> None:
        self._repair(f"{kind} of item {item.id!r} had no .done: added")
        done_cls = _DONE_OF[stream.delta_cls]
        text_field = EVENT_TABLE[done_cls].field
        assert text_field is not None
        fields: dict[str, Any] = {"item_id": item.id, "output_index": item.index}
        if part is not None:
            fields[part.family] = part.index
        text = self._built(item, kind, part)
        fields[text_field] = text if isinstance(text, str) else ""
        if done_cls is FunctionCallArgumentsDone:
            fields["name"] = getattr(self._acc.item(item.index), "name", UNSET)
        self._emit(out, done_cls, **fields)
        stream.done = True

    def _built(self, item: _Item, kind: str, part: _Part | None) -> Any:
        """What the relayed events built so far for the stream ``kind`` (of ``part``)."""
        value: Any = self._acc.item(item.index)
        for step in ITEM_TEXT_PATH.get(kind, ()):
            if step == "#":
                if part is None or not isinstance(value, list) or not 0 <= part.index < len(value):
                    return None
                value = value[part.index]
            elif isinstance(value, dict):
                value = value.get(step)
            else:
                value = getattr(value, step, None)
            if value is None or value is UNSET:
                return None
        return value

    # --- events about items ---------------------------------------------------------------------------------

    def _item_event(self, event: Any, on: Any, out: list[Event]) -> None:
        item = self._find(getattr(event, "item_id", None), getattr(event, "output_index", None))
        if item is not None and item.known and on.items is not None and item.type not in on.items:
            self._repair(f"{event.type} addressed to the {item.type} item {item.id!r}: not there")
            item = None
        if item is None:
            implied = _IMPLIED_ITEM.get(on.stream or "")
            if implied is None:
                self._repair(
                    f"{event.type} about item {getattr(event, 'item_id', None)!r} before its added: dropped"
                )
                return
            self._repair(f"{event.type} before its item was added: added")
            upstream_id = getattr(event, "item_id", None) or ""
            item = self._add(implied(upstream_id), getattr(event, "output_index", None))
            self._emit(out, ResponseOutputItemAdded, output_index=item.index, item=implied(item.id))
        if item.done:
            self._repair(f"{event.type} about item {item.id!r} after its output_item.done: dropped")
            return
        changes: dict[str, Any] = {"output_index": item.index}
        if getattr(event, "item_id", UNSET) is not UNSET:
            changes["item_id"] = item.id
        if type(event) is ImageGenerationCallPartialImage:
            changes["partial_image_index"] = item.partial_images
            item.partial_images += 1
        if on.part is None:
            if on.stream is not None and not self._stream_event(
                event, on, item, None, item.streams, out, changes
            ):
                return
            self._pass(out, event, **changes)
            self._remember(event, on, item, None, item.streams)
            return
        upstream_part = getattr(event, on.part, None)
        if on.role == "part.added":
            if self._known_part(item, on.part, upstream_part) is not None:
                self._repair(f"{event.type} for a part already added: dropped")
                return
            changes[on.part] = self._new_part(item, on.part, upstream_part).index
            self._pass(out, event, **changes)
            return
        part = self._known_part(item, on.part, upstream_part)
        if part is None:
            latest = item.latest.get(on.part)
            if (
                latest is None
                or latest.done
                or (on.stream is not None and not self._fits(item, latest, on.stream))
            ):
                part = self._implied_part(item, on, upstream_part, out)
                if part is None:
                    self._repair(f"{event.type} about a part never added: dropped")
                    return
            else:
                part = latest
                self._repair(f"{event.type} names {on.part} {upstream_part}: routed to part {part.index}")
            item.parts.setdefault((on.part, upstream_part), part)
        if part.done:
            self._repair(f"{event.type} about part {part.index} of item {item.id!r} after its done: dropped")
            return
        changes[on.part] = part.index
        if on.role == "part.done":
            for kind, stream in part.streams.items():
                if not stream.done:
                    self._close_stream(item, part, kind, stream, out)
            snapshot = getattr(self._acc.item(item.index), _PART_LIST[on.part])[part.index]
            if _texts([event.part]) != _texts([snapshot]) or _annotations(event.part) != _annotations(
                snapshot
            ):
                self._repair(f"{event.type} for item {item.id!r}: part taken from the deltas")
                changes["part"] = snapshot
            part.done = True
        elif on.role == "annotation":
            changes["annotation_index"] = part.annotations
            part.annotations += 1
        elif on.stream is not None:
            if not self._stream_event(event, on, item, part, part.streams, out, changes):
                return
            if on.closes_part and on.role == "done":
                part.done = True
        self._pass(out, event, **changes)
        if on.stream is not None:
            self._remember(event, on, item, part, part.streams)

    def _remember(self, event: Any, on: Any, item: _Item, part: _Part | None, streams: dict[str, _Stream]) -> None:
        """After a delta was routed: its route, for the stream's next deltas (``_hot_delta``)."""
        kind = type(event)
        if on.role != "delta" or kind not in _DONE_OF:
            return
        item_id = getattr(event, "item_id", None)
        stream = streams.get(on.stream)
        if isinstance(item_id, str) and item_id and stream is not None:
            self._hot = (kind, item_id, getattr(event, part.family) if part is not None else None, item, part,
                         stream)

    def _stream_event(
        self,
        event: Any,
        on: Any,
        item: _Item,
        part: _Part | None,
        streams: dict[str, _Stream],
        out: list[Event],
        changes: dict[str, Any],
    ) -> bool:
        """Track one delta or done of a text stream; add what the upstream left out. False: drop the event."""
        stream = streams.get(on.stream)
        if on.role == "delta":
            if stream is None:
                streams[on.stream] = _Stream(type(event))
            elif stream.done:
                self._repair(f"{event.type} after its stream's .done: dropped")
                return False
            return True
        # A done.
        if stream is not None and stream.done:
            self._repair(f"a second {event.type}: dropped")
            return False
        if stream is None:
            stream = streams[on.stream] = _Stream(_DELTA_OF[type(event)])
        got = getattr(event, on.field)
        built = self._built(item, on.stream, part)
        built = built if isinstance(built, str) else ""
        if isinstance(got, str) and got != built:
            if got.startswith(built):
                self._repair(
                    f"{event.type}: the {len(got) - len(built)} characters no delta carried sent as one"
                )
                delta_fields: dict[str, Any] = {
                    "item_id": item.id,
                    "output_index": item.index,
                    "delta": got[len(built) :],
                }
                if part is not None:
                    delta_fields[part.family] = part.index
                self._emit(out, stream.delta_cls, **delta_fields)
            else:
                self._repair(f"{event.type}: its text differs from the deltas'; the deltas' kept")
                changes[on.field] = built
        stream.done = True
        return True

    def _known_part(self, item: _Item, family: str, upstream_part: Any) -> _Part | None:
        return item.parts.get((family, upstream_part))

    def _new_part(self, item: _Item, family: str, upstream_part: Any) -> _Part:
        index = item.counts.get(family, 0)
        item.counts[family] = index + 1
        if upstream_part != index:
            self._repair(f"item {item.id!r}: {family} {upstream_part} relayed as {index}")
        part = _Part(family, index)
        item.parts[(family, upstream_part)] = part
        item.latest[family] = part
        return part

    def _fits(self, item: _Item, part: _Part, stream: str) -> bool:
        """Whether ``stream`` may write to ``part`` (an output_text delta to an output_text part...)."""
        if part.family == "command_index":
            return True
        parts = getattr(self._acc.item(item.index), _PART_LIST[part.family], None)
        if not isinstance(parts, list) or not 0 <= part.index < len(parts):
            return False
        kind = PART_TEXT.get(_item_type(parts[part.index]))
        return kind is not None and kind[0] == stream

    def _implied_part(self, item: _Item, on: Any, upstream_part: Any, out: list[Event]) -> _Part | None:
        """Add the part a delta or done needs (its ``*.part.added`` never came)."""
        family = on.part
        if family == "command_index":
            part = self._new_part(item, family, upstream_part)
            self._emit(
                out,
                ShellCallCommandAdded,
                item_id=item.id,
                output_index=item.index,
                command_index=part.index,
                command="",
            )
            return part
        empty = _EMPTY_PART.get(on.stream or "")
        if empty is None:
            return None
        self._repair(f"{on.stream} for item {item.id!r} before its part was added: added")
        part = self._new_part(item, family, upstream_part)
        self._emit(
            out,
            _PART_ADDED_CLASS[family],
            item_id=item.id,
            output_index=item.index,
            **{family: part.index},
            part=empty(),
        )
        return part

    # --- output ---------------------------------------------------------------------------------------------

    def _pass(self, out: list[Event], event: Any, **changes: Any) -> None:
        """Relay ``event`` with the next sequence number and ``changes``; unchanged fields keep its bytes."""
        if event.sequence_number != self._seq:
            changes["sequence_number"] = self._seq
        changes = {k: v for k, v in changes.items() if k == "response" or getattr(event, k, UNSET) != v}
        if changes:
            if "response" in changes:  # the upstream response's fields Headwater does not model stay
                relayed = replace_response_event(event, _RESPONSE_FIELDS, **changes)
            else:
                relayed = replace_event(event, **changes)
        else:
            relayed = event
        out.extend(self._push(relayed))

    def _repair(self, what: str) -> None:
        self.repair_count += 1
        if len(self.repairs) < _REPAIRS_KEPT:
            self.repairs.append(what)
        log.debug("relay %s: %s", self.id, what)


def _item_type(item: Any) -> str:
    if item is None:
        return "item"
    if isinstance(item, UnknownItem):
        return item.type
    tag = getattr(type(item), "__struct_config__", None)
    tag = getattr(tag, "tag", None)
    return tag if isinstance(tag, str) else str(getattr(item, "type", "item"))


def _with_id(item: Any, item_id: str) -> Any:
    if item is None or item.id == item_id:
        return item
    return _with_changes(item, {"id": item_id})


def _has_status(item: Any) -> bool:
    if isinstance(item, UnknownItem):
        return "status" in item.data
    return item is not None and "status" in type(item).__struct_fields__


def _with_status(item: Any, status: str) -> Any:
    return _with_changes(item, {"status": status})


def _with_changes(item: Any, changes: Mapping[str, Any]) -> Any:
    if isinstance(item, UnknownItem):
        return UnknownItem({**item.data, **{k: to_builtins(v) for k, v in changes.items()}})
    return replace(item, **changes)


def _annotations(part: Any) -> int:
    annotations = getattr(part, "annotations", None)
    return len(annotations) if isinstance(annotations, list) else 0


def _part_text(part: Any) -> Any:
    kind = PART_TEXT.get(_item_type(part))
    return getattr(part, kind[1], None) if kind is not None else None


def _at(obj: Any, path: Sequence[str]) -> Any:
    """The value at ``path`` (attribute names or dict keys) in a resource, or None."""
    for step in path:
        obj = obj.get(step) if isinstance(obj, dict) else getattr(obj, step, None)
        if obj is None or obj is UNSET:
            return None
    return obj


def _put(base: Any, path: Sequence[str], value: Any) -> Any:
    """``base`` (a dict, or a resource) with ``value`` at ``path``; ``value`` itself for an empty path."""
    if not path:
        return value
    copy = dict(base) if isinstance(base, dict) else to_builtins(base) if base is not None else {}
    if not isinstance(copy, dict):
        copy = {}
    copy[path[0]] = _put(copy.get(path[0]), path[1:], to_builtins(value))
    return copy


def _same(theirs: Any, mine: Any) -> bool:
    if isinstance(mine, list) and not all(isinstance(x, str) for x in mine):
        return _texts(theirs) == _texts(mine)
    return bool(theirs == mine)


def _texts(parts: Any) -> list[tuple[str, Any]] | None:
    """A part list as (type, text) pairs: what the deltas decide about it."""
    if not isinstance(parts, list):
        return None
    return [(_item_type(p), _part_text(p)) for p in parts]
