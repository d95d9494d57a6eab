"""``StepsFromEvents``: Responses events in, generation steps out. The one events->steps core, shared by the
Responses backend (an upstream's stream) and the scripted backend's capture replay.

Text, refusal and reasoning deltas become ``TextDelta``/``ReasoningDelta``; function calls ``ToolCallDelta``;
the terminal response's usage (cost included) a ``UsageStep`` and its status a ``Finish``; a failed response a
``BackendError``. Other tools' items have no step and are skipped.
"""

from __future__ import annotations

from typing import Any

from headwater.protocol.events import (
    ErrorEvent,
    Event,
    FunctionCallArgumentsDelta,
    ResponseCompleted,
    ResponseFailed,
    ResponseIncomplete,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ResponseReasoningDelta,
    ResponseReasoningSummaryTextDelta,
    ResponseReasoningTextDelta,
    ResponseRefusalDelta,
)
from headwater.protocol.resources import FunctionCall, ResponseError

from .base import (
    BackendError,
    Finish,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)

__all__ = ["StepsFromEvents"]


class StepsFromEvents:
    """Responses events in, generation steps out (the flattening ``ResponsesBackend.generate`` uses)."""

    def __init__(self, upstream: str = "upstream") -> None:
        self.upstream = upstream
        self._calls: dict[Any, int] = {}  # item id / ("at", output_index) -> call index
        self._streamed: set[Any] = set()
        self._error: ResponseError | None = None
        self._finished = False

    def feed(self, event: Event) -> list[Step]:
        out: list[Step] = []
        if isinstance(event, (ResponseOutputTextDelta, ResponseRefusalDelta)):
            self._streamed.add(("text", event.item_id, event.content_index))
            if event.delta:
                out.append(TextDelta(event.delta))
        elif isinstance(event, ResponseOutputTextDone):
            if ("text", event.item_id, event.content_index) not in self._streamed and event.text:
                out.append(TextDelta(event.text))
        elif isinstance(
            event, (ResponseReasoningSummaryTextDelta, ResponseReasoningTextDelta, ResponseReasoningDelta)
        ):
            if event.delta:
                out.append(ReasoningDelta(event.delta))
        elif isinstance(event, (ResponseOutputItemAdded, ResponseOutputItemDone)):
            item = event.item
            if isinstance(item, FunctionCall):
                index = self._call(event.output_index, item.id)
                if index is None:
                    index = len(set(self._calls.values()))
                    self._calls[("at", event.output_index)] = index
                    if item.id:
                        self._calls[item.id] = index
                    out.append(ToolCallDelta(index, "", call_id=item.call_id or None, name=item.name or None))
                if (
                    isinstance(event, ResponseOutputItemDone)
                    and index not in self._streamed
                    and item.arguments
                ):
                    self._streamed.add(index)
                    out.append(ToolCallDelta(index, item.arguments))
        elif isinstance(event, FunctionCallArgumentsDelta):
            index = self._call(event.output_index, event.item_id)
            if index is not None and event.delta:
                self._streamed.add(index)
                out.append(ToolCallDelta(index, event.delta))
        elif isinstance(event, ErrorEvent):
            self._error = ResponseError(code=event.error_code, message=event.error_message)
        elif isinstance(event, ResponseFailed):
            raise self._failure(event.response.error)
        elif isinstance(event, (ResponseCompleted, ResponseIncomplete)):
            self._finished = True
            usage = event.response.usage
            if usage is not None:
                output_details = usage.output_tokens_details
                input_details = usage.input_tokens_details
                out.append(
                    UsageStep(
                        input_tokens=usage.input_tokens,
                        output_tokens=usage.output_tokens,
                        reasoning_tokens=output_details.reasoning_tokens if output_details is not None else 0,
                        cached_tokens=input_details.cached_tokens if input_details is not None else 0,
                        cost=float(usage.cost) if isinstance(usage.cost, (float, int)) else None,
                    )
                )
            if isinstance(event, ResponseIncomplete):
                details = event.response.incomplete_details
                out.append(
                    Finish("content_filter" if details and details.reason == "content_filter" else "length")
                )
            else:
                out.append(Finish("tool_calls" if self._calls else "stop"))
        return out

    def close(self) -> list[Step]:
        """End of the events: an ``error`` event with no terminal event after it fails here."""
        if not self._finished and self._error is not None:
            raise self._failure(None)
        return []

    def _call(self, output_index: int, item_id: str | None) -> int | None:
        if item_id and item_id in self._calls:
            return self._calls[item_id]
        return self._calls.get(("at", output_index))

    def _failure(self, error: ResponseError | None) -> BackendError:
        error = error or self._error
        message = error.message if error is not None and error.message else "the response failed"
        code = error.code if error is not None and error.code else "upstream_error"
        return BackendError(f"upstream {self.upstream} failed the response: {message}", code=code)
