"""ResponseWriter: the only way server code makes events, and it can only make a conformant stream.

Each method checks first and raises ``WriterError`` before emitting anything; then it returns the events it
emitted, numbered from 0. Every event is folded into an ``Accumulator``, which is where the snapshots come from.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from msgspec import UNSET

from .accumulate import Accumulator
from .errors import WriterError
from .events import (
    CustomToolCallInputDelta,
    CustomToolCallInputDone,
    ErrorEvent,
    ErrorPayload,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
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
)
from .resources import (
    AnnotationField,
    CustomToolCall,
    FunctionCall,
    IncompleteDetails,
    ItemField,
    LogProb,
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
)

__all__ = [
    "CustomToolCallWriter",
    "FunctionCallWriter",
    "ItemWriter",
    "MessageWriter",
    "PartWriter",
    "ReasoningTextWriter",
    "ReasoningWriter",
    "RefusalWriter",
    "ResponseWriter",
    "SummaryWriter",
    "TextWriter",
    "new_id",
]

_ITEM_STATUSES = frozenset({"completed", "incomplete"})

# Id prefixes, as OpenAI's are; any other item type gets "item_".
_ID_PREFIX = {
    "message": "msg_",
    "function_call": "fc_",
    "reasoning": "rs_",
    "custom_tool_call": "ctc_",
    "function_call_output": "fco_",
    "custom_tool_call_output": "ctco_",
}


def _text(value: object, what: str) -> str:
    """A delta must be text: anything else would make a non-conformant event, so refuse it before emitting."""
    if type(value) is not str:
        raise WriterError(f"{what} must be a str, not {type(value).__name__}")
    return value


def new_id(prefix: str) -> str:
    """A fresh id: ``prefix`` and 32 random hex digits."""
    return prefix + secrets.token_hex(16)


def _item_type(item: Any) -> str:
    if isinstance(item, UnknownItem):
        return item.type
    tag = type(item).__struct_config__.tag
    return tag if isinstance(tag, str) else "item"


class ResponseWriter:
    """Writes the events of one response, in order, from a ``Response`` template.

    The template gives the response's id (generated when empty), ``model``, ``created_at`` (now when 0) and
    the request echo fields (``tools``, ``temperature``, ``instructions``, ...). ``reasoning_events`` picks the
    name of reasoning-text events: ``"spec"`` (``response.reasoning.*``) or ``"seed"``
    (``response.reasoning_text.*``).
    """

    def __init__(
        self,
        template: Response | None = None,
        *,
        reasoning_events: Literal["spec", "seed"] = "spec",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if reasoning_events not in ("spec", "seed"):
            raise ValueError(f"reasoning_events must be 'spec' or 'seed', not {reasoning_events!r}")
        template = template if template is not None else Response()
        self._clock = clock
        self._template = replace(
            template,
            id=template.id or new_id("resp_"),
            object="response",
            created_at=template.created_at or int(clock()),
            completed_at=None,
            status="in_progress",
            incomplete_details=None,
            output=[],
            error=None,
            usage=None,
        )
        self._seed_reasoning = reasoning_events == "seed"
        self._acc = Accumulator()
        self._seq = 0
        self._started = False
        self._begun = False  # response.in_progress emitted
        self._finished = False
        self._errored = False  # an error event was emitted (a resumed stream that was failing): fail() ends it
        self._open: dict[int, ItemWriter] = {}
        self._next_index = 0

    @classmethod
    def resume(
        cls,
        events: Iterable[Event],
        *,
        reasoning_events: Literal["spec", "seed"] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> ResponseWriter:
        """A writer that goes on after ``events``: the beginning of a stream some writer made and could not
        finish (it died with its process). Its next event is numbered after the last one, its open items and
        parts are open again (``fail``, ``complete``, ... close them as a writer would), and what it writes
        makes, with ``events``, one conformant stream. ``reasoning_events``: as the stream named them when it
        says (by default: seed names if any reasoning-text event has one). Raises ``WriterError`` for what is
        not the unfinished beginning of a stream (numbered from 0 without gaps, ``response.created`` first,
        no terminal event, nothing the accumulator finds wrong)."""
        logged = list(events)
        if not logged or not isinstance(logged[0], ResponseCreated):
            raise WriterError("a stream to resume begins with response.created")
        if reasoning_events is None:
            seed = any(isinstance(e, (ResponseReasoningTextDelta, ResponseReasoningTextDone)) for e in logged)
            reasoning_events = "seed" if seed else "spec"
        writer = cls(logged[0].response, reasoning_events=reasoning_events, clock=clock)
        writer._started = True
        for n, event in enumerate(logged):
            if event.sequence_number != n:
                raise WriterError(f"event {n} of the stream to resume is numbered {event.sequence_number}")
            if isinstance(event, (ResponseCompleted, ResponseIncomplete, ResponseFailed)):
                raise WriterError(f"the stream to resume is finished ({event.type} at {n})")
            writer._acc.feed(event)
            writer._replay(event)
        if writer._acc.problems:
            problem = writer._acc.problems[0]
            raise WriterError(f"the stream to resume is not conformant: {problem.code}: {problem.message}")
        writer._seq = len(logged)
        return writer

    def _replay(self, event: Event) -> None:
        """Bring the writer's own state (open items and parts, what each has closed) up to ``event``."""
        if isinstance(event, ResponseInProgress):
            self._begun = True
        elif isinstance(event, ErrorEvent):
            self._errored = True
        elif isinstance(event, ResponseOutputItemAdded):
            index = event.output_index
            self._next_index = max(self._next_index, index + 1)
            kind = _RESUMED_ITEMS.get(type(event.item), ItemWriter)
            self._open[index] = kind._resumed(self, index, event.item)
        elif isinstance(event, ResponseOutputItemDone):
            item = self._open.pop(event.output_index, None)
            if item is not None:
                item.closed = True
                item._parts.clear()  # as ``ItemWriter._done_events`` does: no cycle left behind
        elif isinstance(event, (ResponseContentPartAdded, ResponseReasoningSummaryPartAdded)):
            item = self._open.get(event.output_index)
            if item is not None:
                item._resume_part(event)
        elif isinstance(event, (FunctionCallArgumentsDone, CustomToolCallInputDone)):
            item = self._open.get(event.output_index)
            if item is not None:
                item._input_done = True
        elif isinstance(event, _PART_TEXT_DONE + _PART_DONE):
            item = self._open.get(event.output_index)
            where = "summary" if isinstance(event, _SUMMARY_EVENTS) else "content"
            part = item._parts.get(where) if item is not None else None
            if part is not None:
                if isinstance(event, _PART_DONE):
                    part.closed = True
                else:
                    part._text_closed = True

    # --- state ----------------------------------------------------------------------------------------------

    @property
    def response(self) -> Response:
        """The response as the events so far describe it (the terminal event's snapshot, once finished)."""
        if not self._started:
            return self._template
        return self._acc.response

    @property
    def sequence_number(self) -> int:
        """The number of events emitted so far, which is the ``sequence_number`` the next event gets."""
        return self._seq

    @property
    def finished(self) -> bool:
        """True once a terminal event was emitted; nothing can be written after that."""
        return self._finished

    @property
    def id(self) -> str:
        return self._template.id

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self, queued: bool = False, *, wait: bool = False) -> list[Event]:
        """``response.created`` (then ``response.queued`` if ``queued``), then ``response.in_progress``.
        ``wait``: a queued response that waits for its turn stops after ``response.queued``; ``begin()`` then
        gives ``response.in_progress`` when it starts (it may also end while it waits: cancelled, failed)."""
        if self._started:
            raise WriterError("start() was already called")
        self._started = True
        out: list[Event] = []
        if queued or wait:
            snapshot = replace(self._template, status="queued")
            self._emit(out, ResponseCreated, response=snapshot)
            self._emit(out, ResponseQueued, response=snapshot)
        else:
            self._emit(out, ResponseCreated, response=self._template)
        if not wait:
            out.extend(self.begin())
        return out

    def begin(self) -> list[Event]:
        """``response.in_progress``: the response that ``start(wait=True)`` left queued starts."""
        self._check_open()
        if self._begun:
            raise WriterError("the response has already begun (response.in_progress was emitted)")
        self._begun = True
        out: list[Event] = []
        self._emit(out, ResponseInProgress, response=replace(self._acc.response, status="in_progress"))
        return out

    def complete(self, usage: Usage | None = None) -> list[Event]:
        """Close whatever is open (as completed), then ``response.completed``."""
        self._check_open()
        self._check_not_failing()
        out = self._close_all("completed")
        final = replace(
            self._acc.response,
            status="completed",
            completed_at=int(self._clock()),
            usage=usage,
            error=None,
            incomplete_details=None,
        )
        self._finish(out, ResponseCompleted, final)
        return out

    def incomplete(self, reason: str, usage: Usage | None = None) -> list[Event]:
        """Close whatever is open (as incomplete), then ``response.incomplete`` with ``reason``."""
        self._check_open()
        self._check_not_failing()
        out = self._close_all("incomplete")
        final = replace(
            self._acc.response,
            status="incomplete",
            completed_at=None,
            usage=usage,
            error=None,
            incomplete_details=IncompleteDetails(reason=reason),
        )
        self._finish(out, ResponseIncomplete, final)
        return out

    def cancelled(self, usage: Usage | None = None) -> list[Event]:
        """Close whatever is open (as incomplete), then ``response.incomplete`` whose response says
        ``status: "cancelled"`` with no ``incomplete_details``: the spec has no cancelled event, and OpenAI's
        types allow only ``max_output_tokens`` / ``content_filter`` as an incomplete reason."""
        self._check_open()
        self._check_not_failing()
        out = self._close_all("incomplete")
        final = replace(
            self._acc.response,
            status="cancelled",
            completed_at=None,
            usage=usage,
            error=None,
            incomplete_details=None,
        )
        self._finish(out, ResponseIncomplete, final)
        return out

    def fail(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        *,
        error_type: str = "server_error",
        usage: Usage | None = None,
    ) -> list[Event]:
        """Close whatever is open (as incomplete), then ``error`` and ``response.failed`` (with ``usage``: what
        was consumed before the failure, when known).

        The ``error`` event carries the seed's top-level ``code``/``message``/``param`` and the spec's nested
        ``error`` object both, so that clients of either kind read it.
        """
        self._check_open()
        out = self._close_all("incomplete")
        if not self._errored:
            payload = ErrorPayload(type=error_type, code=code, message=message, param=param)
            self._emit(out, ErrorEvent, code=code, message=message, param=param, error=payload)
            self._errored = True
        final = replace(
            self._acc.response,
            status="failed",
            completed_at=None,
            usage=usage,
            error=ResponseError(code=code, message=message),
            incomplete_details=None,
        )
        self._finish(out, ResponseFailed, final)
        return out

    # --- items ----------------------------------------------------------------------------------------------

    def message(self, phase: str | None = None) -> MessageWriter:
        """Open an assistant message (``output_item.added``); its events are on the returned writer's ``events``."""
        self._check_open()
        item = Message(
            id=new_id("msg_"), role="assistant", status="in_progress", content=[], phase=phase or UNSET
        )
        return MessageWriter(self, item)

    def function_call(self, name: str, call_id: str | None = None) -> FunctionCallWriter:
        self._check_open()
        item = FunctionCall(
            id=new_id("fc_"),
            call_id=call_id or new_id("call_"),
            name=name,
            arguments="",
            status="in_progress",
        )
        return FunctionCallWriter(self, item)

    def reasoning(self) -> ReasoningWriter:
        self._check_open()
        return ReasoningWriter(self, ReasoningItem(id=new_id("rs_"), summary=[]))

    def custom_tool_call(self, name: str, call_id: str | None = None) -> CustomToolCallWriter:
        self._check_open()
        item = CustomToolCall(
            id=new_id("ctc_"), call_id=call_id or new_id("call_"), name=name, input="", status="in_progress"
        )
        return CustomToolCallWriter(self, item)

    def add_item(self, item: ItemField) -> list[Event]:
        """An item that arrives whole: ``output_item.added`` then ``output_item.done``, both carrying it."""
        self._check_open()
        if item is None:
            raise WriterError("add_item() needs an item")
        if not item.id:
            prefix = _ID_PREFIX.get(_item_type(item), "item_")
            if isinstance(item, UnknownItem):
                item = UnknownItem({**item.data, "id": new_id(prefix)})
            else:
                item = replace(item, id=new_id(prefix))
        elif isinstance(item, UnknownItem):
            item = UnknownItem(dict(item.data))
        else:
            item = replace(item)  # the caller keeps its object; ours is never changed
        if getattr(item, "status", UNSET) in (None, "in_progress"):
            item = _with_status(item, "completed")
        out: list[Event] = []
        index = self._take_index()
        self._emit(out, ResponseOutputItemAdded, output_index=index, item=item)
        self._emit(out, ResponseOutputItemDone, output_index=index, item=item)
        return out

    # --- internals ------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._started:
            raise WriterError("start() must come first")
        if self._finished:
            raise WriterError("the response is finished: nothing can be written after its terminal event")

    def _check_not_failing(self) -> None:
        if self._errored:
            raise WriterError("an error event was emitted: the response can only fail() now")

    def _emit(self, out: list[Event], cls: Any, **fields: Any) -> Any:
        event = cls(sequence_number=self._seq, **fields)
        self._seq += 1
        self._acc.feed(event)
        out.append(event)
        return event

    def _push(self, event: Any) -> list[Event]:
        """Emit an event already numbered with ``self._seq`` (the deltas' path: no keyword unpacking)."""
        self._seq += 1
        self._acc.feed(event)
        return [event]

    def _take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _close_all(self, status: str) -> list[Event]:
        out: list[Event] = []
        for index in sorted(self._open):
            out.extend(self._open[index]._close(status))
        return out

    def _finish(self, out: list[Event], cls: Any, final: Response) -> None:
        self._emit(out, cls, response=final)
        self._finished = True

    def _item(self, output_index: int) -> Any:
        return self._acc.item(output_index)


def _with_status(item: Any, status: str) -> Any:
    if isinstance(item, UnknownItem):
        return UnknownItem({**item.data, "status": status})
    return replace(item, status=status)


# --- item writers -------------------------------------------------------------------------------------------


class ItemWriter:
    """One open output item. ``events`` holds what opening it emitted (its ``output_item.added``)."""

    def __init__(self, writer: ResponseWriter, item: Any) -> None:
        self._writer = writer
        self.output_index = writer._take_index()
        self.id: str = item.id
        self.closed = False
        self._parts: dict[str, PartWriter | None] = {}
        self.events: list[Event] = []
        self._input_done = False  # (calls) their arguments' or input's done event was emitted
        writer._emit(self.events, ResponseOutputItemAdded, output_index=self.output_index, item=item)
        writer._open[self.output_index] = self

    @classmethod
    def _resumed(cls, writer: ResponseWriter, output_index: int, item: Any) -> ItemWriter:
        """The writer of an item that a resumed stream opened (``ResponseWriter.resume``): nothing is emitted."""
        self = cls.__new__(cls)
        self._writer = writer
        self.output_index = output_index
        self.id = item.data.get("id", "") if isinstance(item, UnknownItem) else item.id
        self.closed = False
        self._parts = {}
        self.events = []
        self._input_done = False
        self._resumed_fields(item)
        return self

    def _resumed_fields(self, item: Any) -> None:
        """What a subclass keeps of its item beyond the common fields (``_resumed``)."""

    def _resume_part(self, event: Any) -> None:
        """A part that a resumed stream opened on this item (``ResponseWriter.resume``)."""
        kind: type[PartWriter]
        if isinstance(event, ResponseReasoningSummaryPartAdded):
            where, kind, index = "summary", SummaryWriter, event.summary_index
        elif isinstance(self, ReasoningWriter):
            where, kind, index = "content", ReasoningTextWriter, event.content_index
        else:
            where, index = "content", event.content_index
            kind = RefusalWriter if isinstance(event.part, Refusal) else TextWriter
        self._parts[where] = kind._resumed(self, index)

    def _check_open(self) -> None:
        self._writer._check_open()
        if self.closed:
            raise WriterError(f"item {self.id} (output_index {self.output_index}) is done")

    def _open_part(self, where: str) -> int:
        """Check that no other part of this kind is open; give the next index of that kind."""
        self._check_open()
        current = self._parts.get(where)
        if current is not None and not current.closed:
            raise WriterError(
                f"item {self.id}: {where} part {current.index} is still open; call its done() first"
            )
        return self._next_part_index(where)

    def _next_part_index(self, where: str) -> int:
        snapshot = self._writer._item(self.output_index)
        parts = getattr(snapshot, where, None)
        return len(parts) if isinstance(parts, list) else 0

    def _done_events(self, status: str, **changes: Any) -> list[Event]:
        """Close open parts, then ``output_item.done`` with the item as built, ``status`` and ``changes``."""
        out: list[Event] = []
        for part in self._parts.values():
            if part is not None and not part.closed:
                out.extend(part._close())
        # A part holds its item (``PartWriter._item``): with the item holding its parts back, every finished
        # message would be a reference cycle that only the cyclic collector frees, with the run's writer graph
        # behind it. A done item opens no part again, so it lets them go.
        self._parts.clear()
        item = self._writer._item(self.output_index)
        if "status" in type(item).__struct_fields__ and item.status is not UNSET:
            changes["status"] = status
        if changes:
            item = replace(item, **changes)
        self._writer._emit(out, ResponseOutputItemDone, output_index=self.output_index, item=item)
        self.closed = True
        del self._writer._open[self.output_index]
        return out

    def _close(self, status: str) -> list[Event]:
        return self._done_events(status)

    def done(self, status: str = "completed") -> list[Event]:
        """Close open parts, then ``output_item.done`` with the full item and ``status``."""
        self._check_open()
        if status not in _ITEM_STATUSES:
            raise WriterError(f"an item is done as 'completed' or 'incomplete', not {status!r}")
        return self._done_events(status)


class MessageWriter(ItemWriter):
    """An assistant message: ``text()`` and ``refusal()`` parts, one open at a time."""

    def text(self) -> TextWriter:
        index = self._open_part("content")
        part = TextWriter(self, index, OutputText(text="", annotations=[], logprobs=[]))
        self._parts["content"] = part
        return part

    def refusal(self) -> RefusalWriter:
        index = self._open_part("content")
        part = RefusalWriter(self, index, Refusal(refusal=""))
        self._parts["content"] = part
        return part


class PartWriter:
    """One open content or summary part. ``events`` holds what opening it emitted."""

    _where = "content"

    def __init__(self, item: ItemWriter, index: int, part: Any) -> None:
        self._item = item
        self._writer = item._writer
        self.index = index
        self.closed = False
        self._text_closed = False  # its text's done event was emitted (the part's own done not yet)
        self.events: list[Event] = []
        self._writer._emit(self.events, self._added_class(), **self._address(), part=part)

    @classmethod
    def _resumed(cls, item: ItemWriter, index: int) -> PartWriter:
        """The writer of a part that a resumed stream opened: nothing is emitted."""
        self = cls.__new__(cls)
        self._item = item
        self._writer = item._writer
        self.index = index
        self.closed = False
        self._text_closed = False
        self.events = []
        return self

    def _added_class(self) -> Any:
        return ResponseContentPartAdded

    def _done_class(self) -> Any:
        return ResponseContentPartDone

    def _address(self) -> dict[str, Any]:
        return {
            "item_id": self._item.id,
            "output_index": self._item.output_index,
            "content_index": self.index,
        }

    def _check_open(self) -> None:
        self._item._check_open()
        if self.closed:
            raise WriterError(f"item {self._item.id}: {self._where} part {self.index} is done")

    def _built(self) -> Any:
        """This part as the events so far built it."""
        item = self._writer._item(self._item.output_index)
        return getattr(item, self._where)[self.index]

    def _text_done(self, out: list[Event]) -> None:
        raise NotImplementedError

    def _close(self) -> list[Event]:
        out: list[Event] = []
        if not self._text_closed:
            self._text_done(out)
            self._text_closed = True
        self._writer._emit(out, self._done_class(), **self._address(), part=self._built())
        self.closed = True
        return out

    def done(self) -> list[Event]:
        """The text's done event with the full text, then the part's done."""
        self._check_open()
        return self._close()


class TextWriter(PartWriter):
    """An ``output_text`` part: deltas (with logprobs), annotations, done."""

    def delta(self, text: str, logprobs: Iterable[LogProb] | None = None) -> list[Event]:
        self._check_open()
        _text(text, "a text delta")
        item = self._item
        writer = self._writer
        event = ResponseOutputTextDelta(
            sequence_number=writer._seq,
            item_id=item.id,
            output_index=item.output_index,
            content_index=self.index,
            delta=text,
            logprobs=list(logprobs) if logprobs else [],
        )
        return writer._push(event)

    def annotate(self, annotation: AnnotationField) -> list[Event]:
        self._check_open()
        out: list[Event] = []
        index = len(self._built().annotations)
        self._writer._emit(
            out,
            ResponseOutputTextAnnotationAdded,
            **self._address(),
            annotation_index=index,
            annotation=annotation,
        )
        return out

    def _text_done(self, out: list[Event]) -> None:
        part = self._built()
        logprobs = list(part.logprobs) if isinstance(part.logprobs, list) else []
        self._writer._emit(out, ResponseOutputTextDone, **self._address(), text=part.text, logprobs=logprobs)


class RefusalWriter(PartWriter):
    """A ``refusal`` part."""

    def delta(self, text: str) -> list[Event]:
        self._check_open()
        _text(text, "a delta")
        item = self._item
        event = ResponseRefusalDelta(
            sequence_number=self._writer._seq,
            item_id=item.id,
            output_index=item.output_index,
            content_index=self.index,
            delta=text,
        )
        return self._writer._push(event)

    def _text_done(self, out: list[Event]) -> None:
        self._writer._emit(out, ResponseRefusalDone, **self._address(), refusal=self._built().refusal)


class FunctionCallWriter(ItemWriter):
    """A function call: argument deltas, then done (``function_call_arguments.done`` carries ``name`` too)."""

    def __init__(self, writer: ResponseWriter, item: FunctionCall) -> None:
        super().__init__(writer, item)
        self.name = item.name
        self.call_id = item.call_id

    def _resumed_fields(self, item: Any) -> None:
        self.name = item.name
        self.call_id = item.call_id

    def delta(self, arguments: str) -> list[Event]:
        self._check_open()
        _text(arguments, "an arguments delta")
        event = FunctionCallArgumentsDelta(
            sequence_number=self._writer._seq,
            item_id=self.id,
            output_index=self.output_index,
            delta=arguments,
        )
        return self._writer._push(event)

    def _done_events(self, status: str, **changes: Any) -> list[Event]:
        out: list[Event] = []
        if not self._input_done:
            arguments = self._writer._item(self.output_index).arguments
            self._writer._emit(
                out,
                FunctionCallArgumentsDone,
                item_id=self.id,
                output_index=self.output_index,
                arguments=arguments,
                name=self.name,
            )
            self._input_done = True
        out.extend(super()._done_events(status, **changes))
        return out


class CustomToolCallWriter(ItemWriter):
    """A custom tool call: input deltas, then done."""

    def __init__(self, writer: ResponseWriter, item: CustomToolCall) -> None:
        super().__init__(writer, item)
        self.name = item.name
        self.call_id = item.call_id

    def _resumed_fields(self, item: Any) -> None:
        self.name = item.name
        self.call_id = item.call_id

    def delta(self, text: str) -> list[Event]:
        self._check_open()
        _text(text, "a delta")
        event = CustomToolCallInputDelta(
            sequence_number=self._writer._seq, item_id=self.id, output_index=self.output_index, delta=text
        )
        return self._writer._push(event)

    def _done_events(self, status: str, **changes: Any) -> list[Event]:
        out: list[Event] = []
        if not self._input_done:
            text = self._writer._item(self.output_index).input
            self._writer._emit(
                out, CustomToolCallInputDone, item_id=self.id, output_index=self.output_index, input=text
            )
            self._input_done = True
        out.extend(super()._done_events(status, **changes))
        return out


class ReasoningWriter(ItemWriter):
    """A reasoning item: ``summary()`` parts and ``text()`` (reasoning content) parts, one of each open at a
    time; ``done(encrypted_content=...)``."""

    def summary(self) -> SummaryWriter:
        index = self._open_part("summary")
        part = SummaryWriter(self, index, SummaryText(text=""))
        self._parts["summary"] = part
        return part

    def text(self) -> ReasoningTextWriter:
        index = self._open_part("content")
        part = ReasoningTextWriter(self, index, ReasoningText(text=""))
        self._parts["content"] = part
        return part

    def done(self, status: str = "completed", encrypted_content: str | None = None) -> list[Event]:
        self._check_open()
        if status not in _ITEM_STATUSES:
            raise WriterError(f"an item is done as 'completed' or 'incomplete', not {status!r}")
        if encrypted_content is not None:
            return self._done_events(status, encrypted_content=encrypted_content)
        return self._done_events(status)


class SummaryWriter(PartWriter):
    """A reasoning summary part (``summary_text``)."""

    _where = "summary"

    def _added_class(self) -> Any:
        return ResponseReasoningSummaryPartAdded

    def _done_class(self) -> Any:
        return ResponseReasoningSummaryPartDone

    def _address(self) -> dict[str, Any]:
        return {
            "item_id": self._item.id,
            "output_index": self._item.output_index,
            "summary_index": self.index,
        }

    def delta(self, text: str) -> list[Event]:
        self._check_open()
        _text(text, "a delta")
        item = self._item
        event = ResponseReasoningSummaryTextDelta(
            sequence_number=self._writer._seq,
            item_id=item.id,
            output_index=item.output_index,
            summary_index=self.index,
            delta=text,
        )
        return self._writer._push(event)

    def _text_done(self, out: list[Event]) -> None:
        self._writer._emit(out, ResponseReasoningSummaryTextDone, **self._address(), text=self._built().text)


class ReasoningTextWriter(PartWriter):
    """A reasoning-text part; its events are named as the writer's ``reasoning_events`` says."""

    def delta(self, text: str) -> list[Event]:
        self._check_open()
        _text(text, "a delta")
        item = self._item
        cls = ResponseReasoningTextDelta if self._writer._seed_reasoning else ResponseReasoningDelta
        event = cls(
            sequence_number=self._writer._seq,
            item_id=item.id,
            output_index=item.output_index,
            content_index=self.index,
            delta=text,
        )
        return self._writer._push(event)

    def _text_done(self, out: list[Event]) -> None:
        cls = ResponseReasoningTextDone if self._writer._seed_reasoning else ResponseReasoningDone
        self._writer._emit(out, cls, **self._address(), text=self._built().text)


# What ``ResponseWriter.resume`` needs to know of the events and items a writer makes.
_RESUMED_ITEMS: dict[type, type[ItemWriter]] = {
    Message: MessageWriter,
    FunctionCall: FunctionCallWriter,
    ReasoningItem: ReasoningWriter,
    CustomToolCall: CustomToolCallWriter,
}
_PART_TEXT_DONE = (
    ResponseOutputTextDone,
    ResponseRefusalDone,
    ResponseReasoningDone,
    ResponseReasoningTextDone,
    ResponseReasoningSummaryTextDone,
)
_PART_DONE = (ResponseContentPartDone, ResponseReasoningSummaryPartDone)
_SUMMARY_EVENTS = (ResponseReasoningSummaryTextDone, ResponseReasoningSummaryPartDone)
