"""``StepWriter``: a backend's generation steps in, protocol events out, through a ``ResponseWriter``. Pure: no
asyncio, no store; the run feeds it each step and sends what it returns to the logs.

It opens and closes the message, reasoning and function-call items the steps imply (a text delta after
reasoning closes the reasoning item first), drops calls beyond ``max_tool_calls``, and makes the terminal
events from the finish reason and the usage, which may come after the finish (as in Chat Completions streams).
"""

from __future__ import annotations

import logging

import msgspec
from msgspec import UNSET

from headwater.protocol.events import Event
from headwater.protocol.resources import (
    InputTokensDetails,
    OutputTokensDetails,
    Usage,
    keep_wire,
    to_builtins,
)
from headwater.protocol.writer import (
    FunctionCallWriter,
    MessageWriter,
    ReasoningTextWriter,
    ReasoningWriter,
    ResponseWriter,
    TextWriter,
)

from ..backends.base import (
    Finish,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)

__all__ = ["StepWriter", "usage_of"]

log = logging.getLogger("headwater.server")


class StepWriter:
    """Steps to events for one response (``feed`` each step, ``close`` at the end), the same face as the
    ``ResponseRelay`` that a passthrough backend's events go through."""

    def __init__(self, writer: ResponseWriter, *, max_tool_calls: int | None = None) -> None:
        self.writer = writer
        self.usage: Usage | None = None  # the latest usage step, as the response's usage
        self._max_tool_calls = max_tool_calls
        # What is open in the writer while steps arrive.
        self._message: MessageWriter | None = None
        self._text: TextWriter | None = None
        self._reasoning: ReasoningWriter | None = None
        self._reasoning_text: ReasoningTextWriter | None = None
        self._calls: dict[int, FunctionCallWriter] = {}
        self._ignored_calls: set[int] = set()
        self._finish: str | None = None

    def feed(self, step: Step) -> list[Event]:
        """The events one step makes (none for usage, a finish, or a call beyond ``max_tool_calls``)."""
        out: list[Event] = []
        if self._finish is not None and not isinstance(step, UsageStep):
            log.warning(
                "response %s: the backend sent %s after its finish; ignored", self.writer.id, type(step).__name__
            )
        elif isinstance(step, TextDelta):
            if step.text:
                self._close_reasoning(out)
                out.extend(self._text_part(out).delta(step.text))
        elif isinstance(step, ReasoningDelta):
            if step.text:
                self._close_message(out)
                out.extend(self._reasoning_part(out).delta(step.text))
        elif isinstance(step, ToolCallDelta):
            call = self._calls.get(step.index)
            if call is None:
                if step.index in self._ignored_calls or (
                    self._max_tool_calls is not None and len(self._calls) >= self._max_tool_calls
                ):
                    self._ignored_calls.add(step.index)  # max_tool_calls: later calls are not made
                    return out
                self._close_message(out)
                self._close_reasoning(out)
                call = self._calls[step.index] = self.writer.function_call(step.name or "", step.call_id)
                out.extend(call.events)
            if step.arguments:
                out.extend(call.delta(step.arguments))
        elif isinstance(step, UsageStep):
            self.usage = usage_of(step)
        elif isinstance(step, Finish):
            # The terminal event waits for the end of the iterator: usage may come after the finish (as in
            # Chat Completions streams).
            self._finish = step.reason
        return out

    def close(self) -> list[Event]:
        """The end of the steps: the terminal events the finish reason calls for (usage included)."""
        if self._finish == "length":
            return self.writer.incomplete("max_output_tokens", self.usage)
        if self._finish == "content_filter":
            return self.writer.incomplete("content_filter", self.usage)
        return self.writer.complete(self.usage)

    def _text_part(self, out: list[Event]) -> TextWriter:
        if self._text is None:
            if self._message is None:
                self._message = self.writer.message()
                out.extend(self._message.events)
            self._text = self._message.text()
            out.extend(self._text.events)
        return self._text

    def _reasoning_part(self, out: list[Event]) -> ReasoningTextWriter:
        if self._reasoning_text is None:
            if self._reasoning is None:
                self._reasoning = self.writer.reasoning()
                out.extend(self._reasoning.events)
            self._reasoning_text = self._reasoning.text()
            out.extend(self._reasoning_text.events)
        return self._reasoning_text

    def _close_message(self, out: list[Event]) -> None:
        if self._message is not None:
            out.extend(self._message.done())
            self._message = self._text = None

    def _close_reasoning(self, out: list[Event]) -> None:
        if self._reasoning is not None:
            out.extend(self._reasoning.done())
            self._reasoning = self._reasoning_text = None


def usage_of(step: UsageStep) -> Usage:
    """A backend's usage as the response's: its counts, and what else its upstream said (``step.extra``, kept
    as sent through ``keep_wire``)."""
    usage = Usage(
        input_tokens=step.input_tokens,
        output_tokens=step.output_tokens,
        total_tokens=step.input_tokens + step.output_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=step.cached_tokens),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=step.reasoning_tokens),
        cost=UNSET if step.cost is None else step.cost,  # e.g. OpenRouter's, passed on as reported
    )
    if not step.extra:
        return usage
    wire = to_builtins(usage)
    for key, value in step.extra.items():
        if isinstance(value, dict) and isinstance(wire.get(key), dict):
            wire[key] = {**wire[key], **value}  # the upstream's (the mapped counts are never among them)
        elif key not in wire:
            wire[key] = value
    try:
        kept = msgspec.convert(wire, Usage)
    except msgspec.ValidationError as exc:  # an extra that clashes with a field Headwater declares
        log.warning("usage extras %s do not fit Responses usage (%s); the counts are kept without them",
                    sorted(step.extra), exc)
        return usage
    keep_wire(kept, wire)
    return kept
