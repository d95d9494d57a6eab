"""``runs.steps.StepWriter`` alone, without a run or an event loop: steps in, a conformant event stream out."""

from __future__ import annotations

from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.protocol.resources import Response
from headwater.protocol.writer import ResponseWriter
from headwater.server.backends.base import Finish, ReasoningDelta, Step, TextDelta, ToolCallDelta, UsageStep
from headwater.server.runs.steps import StepWriter


def events_of(steps: list[Step], **options: object) -> list[Event]:
    writer = ResponseWriter(Response(model="m"))
    translate = StepWriter(writer, **options)  # type: ignore[arg-type]
    events = writer.start()
    for step in steps:
        events += translate.feed(step)
    events += translate.close()
    assert check(events) == []
    return events


def test_reasoning_then_text_are_two_items_in_order() -> None:
    events = events_of([ReasoningDelta("hmm"), TextDelta("Hi"), Finish("stop")])
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.status == "completed"


def test_calls_beyond_max_tool_calls_are_not_made() -> None:
    steps: list[Step] = [ToolCallDelta(0, "{}", call_id="c0", name="f"), ToolCallDelta(1, "{}", call_id="c1", name="g"),
                         Finish("tool_calls")]
    final = events_of(steps, max_tool_calls=1)[-1].response  # type: ignore[union-attr]
    assert [item.call_id for item in final.output] == ["c0"]


def test_a_length_finish_is_incomplete_and_usage_after_the_finish_counts() -> None:
    final = events_of([TextDelta("abc"), Finish("length"), UsageStep(5, 3)])[-1].response  # type: ignore[union-attr]
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.input_tokens == 5 and final.usage.output_tokens == 3


def test_steps_after_the_finish_are_ignored() -> None:
    final = events_of([TextDelta("a"), Finish("stop"), TextDelta("late")])[-1].response  # type: ignore[union-attr]
    assert final.output[0].content[0].text == "a"
