"""Tests for ResponseWriter: each method's events, the fields the spec requires, misuse, and random programs."""

from __future__ import annotations

import gc
import json
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.protocol.accumulate import Accumulator, accumulate
from headwater.protocol.codec import decode_event, encode_event, event_to_builtins
from headwater.protocol.conformance import check
from headwater.protocol.errors import WriterError
from headwater.protocol.events import (
    ErrorEvent,
    ErrorPayload,
    Event,
    FunctionCallArgumentsDone,
    ResponseCompleted,
    ResponseFailed,
    ResponseIncomplete,
    ResponseOutputItemDone,
    ResponseOutputTextDone,
)
from headwater.protocol.resources import (
    CustomToolCall,
    FunctionCall,
    FunctionCallOutput,
    LogProb,
    Message,
    OutputText,
    ReasoningItem,
    ReasoningText,
    Refusal,
    Response,
    SummaryText,
    UrlCitation,
    Usage,
)
from headwater.protocol.writer import (
    CustomToolCallWriter,
    FunctionCallWriter,
    ItemWriter,
    MessageWriter,
    PartWriter,
    ReasoningWriter,
    ResponseWriter,
    TextWriter,
)

SPEC = json.loads(
    (Path(__file__).parent / "fixtures" / "spec" / "openresponses-openapi-2026-04-24.json").read_text()
)
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]
HEX32 = "[0-9a-f]{32}"


def types(events: list[Event]) -> list[str]:
    return [event.type for event in events]


TOOL = {"type": "function", "name": "get_weather", "description": None, "parameters": None, "strict": None}


def writer(**kwargs: Any) -> ResponseWriter:
    template = Response(model="test-model", temperature=0.5, instructions="be brief", tools=[TOOL])
    return ResponseWriter(template, clock=lambda: 1_700_000_000, **kwargs)


def started(**kwargs: Any) -> tuple[ResponseWriter, list[Event]]:
    w = writer(**kwargs)
    return w, w.start()


# --- the spec's required fields -----------------------------------------------------------------------------


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _type_enum(schema: dict[str, Any]) -> list[Any]:
    schema = _resolve(schema)
    return schema.get("properties", {}).get("type", {}).get("enum", [])


def missing_required(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every place in ``value`` where a field the spec's schema requires is absent (required keys only)."""
    schema = _resolve(schema)
    found: list[str] = []
    for sub in schema.get("allOf", []):
        found += missing_required(value, sub, path)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        if value is None:
            return found
        if isinstance(value, dict) and "type" in value:
            tagged = [o for o in options if _type_enum(o)]
            fitting = [o for o in tagged if value["type"] in _type_enum(o)]
            if tagged and not fitting:  # a type the spec does not define (custom_tool_call): nothing to check
                return found
            options = fitting or options
        results = [missing_required(value, option, path) for option in options]
        return found + (min(results, key=len) if results else [])
    if isinstance(value, dict):
        found += [f"{path}.{name}" for name in schema.get("required", []) if name not in value]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += missing_required(value[name], sub, f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for index, element in enumerate(value):
            found += missing_required(element, schema["items"], f"{path}[{index}]")
    return found


EVENT_SCHEMAS = {
    schema["properties"]["type"]["enum"][0]: schema
    for name, schema in SCHEMAS.items()
    if name.endswith("StreamingEvent") and "properties" in schema
}


def test_the_required_checker_finds_what_is_missing() -> None:
    # Without this, a checker that never finds anything would make the tests below pass.
    bad = {
        "type": "response.completed",
        "sequence_number": 0,
        "response": {"id": "x", "output": [{"type": "message"}]},
    }
    found = missing_required(bad, EVENT_SCHEMAS["response.completed"])
    assert "$.response.completed_at" in found and "$.response.output[0].role" in found


def full_program(w: ResponseWriter) -> list[Event]:
    events = w.start(queued=True)
    r = w.reasoning()
    s = r.summary()
    t = r.text()
    m = w.message(phase="final_answer")
    x = m.text()
    f = w.function_call("get_weather")
    c = w.custom_tool_call("run")
    events += r.events + s.events + t.events + m.events + x.events + f.events + c.events
    events += s.delta("sum") + t.delta("think") + x.delta("Hi", [LogProb(token="Hi", logprob=-0.1)])
    events += x.annotate(UrlCitation(url="https://e.x", title="E", start_index=0, end_index=2))
    events += f.delta('{"city":') + c.delta("ls") + x.done()
    events += m.refusal().events + f.done() + r.done(encrypted_content="enc")
    events += w.add_item(FunctionCallOutput(call_id=f.call_id, output="sunny"))
    return events


@pytest.mark.parametrize(
    "finish",
    [
        lambda w: w.complete(Usage(input_tokens=1, output_tokens=2, total_tokens=3)),
        lambda w: w.incomplete("max_output_tokens"),
        lambda w: w.fail("server_error", "boom"),
    ],
    ids=["complete", "incomplete", "fail"],
)
def test_every_event_has_every_field_the_spec_requires(
    finish: Callable[[ResponseWriter], list[Event]],
) -> None:
    w = writer()
    events = full_program(w) + finish(w)
    checked = 0
    for event in events:
        schema = EVENT_SCHEMAS.get(event.type)
        if schema is None:  # custom tool call events are not in the spec
            continue
        checked += 1
        assert missing_required(event_to_builtins(event), schema) == [], event.type
    assert checked >= len(events) - 4


def test_lifecycle_responses_carry_every_required_field() -> None:
    required = SCHEMAS["ResponseResource"]["required"]
    assert "completed_at" in required and "prompt_cache_key" in required
    w = writer()
    events = full_program(w) + w.complete()
    lifecycle = [e for e in events if e.type.startswith("response.") and hasattr(e, "response")]
    assert types(lifecycle) == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
    ]
    for event in lifecycle:
        wire = event_to_builtins(event)["response"]
        assert [name for name in required if name not in wire] == []


def test_seed_fields_too() -> None:
    w = writer()
    events = full_program(w) + w.complete()
    wire = [event_to_builtins(e) for e in events]
    text_events = [
        e for e in wire if e["type"] in ("response.output_text.delta", "response.output_text.done")
    ]
    assert text_events and all(isinstance(e["logprobs"], list) for e in text_events)
    (args_done,) = [e for e in wire if e["type"] == "response.function_call_arguments.done"]
    assert args_done["name"] == "get_weather"


# --- each method --------------------------------------------------------------------------------------------


def test_start_and_ids() -> None:
    w, events = started()
    assert types(events) == ["response.created", "response.in_progress"]
    assert [e.sequence_number for e in events] == [0, 1]
    assert re.fullmatch(f"resp_{HEX32}", w.id)
    created = events[0].response
    assert created.id == w.id and created.model == "test-model" and created.created_at == 1_700_000_000
    assert created.temperature == 0.5 and created.instructions == "be brief" and created.tools == [TOOL]
    assert created.status == "in_progress" and created.output == []
    assert w.sequence_number == 2 and not w.finished


def test_start_queued_and_template_id_kept() -> None:
    w = ResponseWriter(Response(id="resp_given", created_at=5))
    events = w.start(queued=True)
    assert types(events) == ["response.created", "response.queued", "response.in_progress"]
    assert [e.response.status for e in events] == ["queued", "queued", "in_progress"]
    assert {e.response.id for e in events} == {"resp_given"}
    assert events[0].response.created_at == 5


def test_message_with_text() -> None:
    w, _ = started()
    m = w.message()
    assert types(m.events) == ["response.output_item.added"]
    added = m.events[0]
    assert added.output_index == 0 and re.fullmatch(f"msg_{HEX32}", added.item.id)
    assert added.item == Message(id=m.id, role="assistant", status="in_progress", content=[])
    t = m.text()
    assert types(t.events) == ["response.content_part.added"]
    assert t.events[0].part == OutputText(text="", annotations=[], logprobs=[])
    first = t.delta("Hel")
    assert types(first) == ["response.output_text.delta"] and first[0].logprobs == []
    t.delta("lo", [LogProb(token="lo", logprob=-1.0)])
    assert w.response.output[0].content[0].text == "Hello"
    done = t.done()
    assert types(done) == ["response.output_text.done", "response.content_part.done"]
    assert isinstance(done[0], ResponseOutputTextDone) and done[0].text == "Hello"
    assert [lp.token for lp in done[0].logprobs] == ["lo"]
    assert done[1].part.text == "Hello"
    item_done = m.done()
    assert types(item_done) == ["response.output_item.done"]
    item = item_done[0].item
    assert isinstance(item, Message) and item.status == "completed" and item.content[0].text == "Hello"
    assert item.id == m.id


def test_a_finished_item_is_freed_without_the_cyclic_collector() -> None:
    """A done item lets its parts go, so nothing of it is a reference cycle: with the collector off, the item's
    and its parts' writers go as soon as the caller drops them (while the response's writer lives on)."""
    w, _ = started()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        m, r = w.message(), w.reasoning()
        t = m.text()
        t.delta("Hi")
        s = r.summary()
        s.delta("Plan")
        rt = r.text()
        rt.delta("because")
        r.done()  # closes its open parts itself
        t.done()
        m.done()
        refs = [weakref.ref(x) for x in (m, t, r, s, rt)]
        del m, t, r, s, rt
        assert [ref() for ref in refs] == [None] * 5
        assert w.response.output[0].content[0].text == "Hi"
    finally:
        if gc_was_enabled:
            gc.enable()


def test_annotations_are_numbered() -> None:
    w, _ = started()
    t = w.message().text()
    t.delta("see here")
    first = t.annotate(UrlCitation(url="a", start_index=0, end_index=3))
    second = t.annotate(UrlCitation(url="b", start_index=4, end_index=8))
    assert [e.annotation_index for e in first + second] == [0, 1]
    done = t.done()
    assert [a.url for a in done[1].part.annotations] == ["a", "b"]


def test_message_phase_and_second_part() -> None:
    w, _ = started()
    m = w.message(phase="commentary")
    assert m.events[0].item.phase == "commentary"
    t = m.text()
    t.delta("a")
    t.done()
    r = m.refusal()
    assert r.events[0].content_index == 1 and r.events[0].part == Refusal(refusal="")
    r.delta("no")
    r.delta("pe")
    done = r.done()
    assert types(done) == ["response.refusal.done", "response.content_part.done"]
    assert done[0].refusal == "nope"
    item = m.done()[0].item
    assert [type(p) for p in item.content] == [OutputText, Refusal]


def test_function_call() -> None:
    w, _ = started()
    w.message().done()
    f = w.function_call("get_weather", call_id="call_1")
    added = f.events[0]
    assert added.output_index == 1
    assert added.item == FunctionCall(
        id=f.id, call_id="call_1", name="get_weather", arguments="", status="in_progress"
    )
    assert re.fullmatch(f"fc_{HEX32}", f.id)
    f.delta('{"city": ')
    f.delta('"Paris"}')
    done = f.done()
    assert types(done) == ["response.function_call_arguments.done", "response.output_item.done"]
    assert isinstance(done[0], FunctionCallArgumentsDone)
    assert (done[0].arguments, done[0].name) == ('{"city": "Paris"}', "get_weather")
    assert done[1].item.arguments == '{"city": "Paris"}' and done[1].item.status == "completed"
    assert re.fullmatch(f"call_{HEX32}", w.function_call("f").call_id)


@pytest.mark.parametrize(
    ("mode", "delta", "done"),
    [
        ("spec", "response.reasoning.delta", "response.reasoning.done"),
        ("seed", "response.reasoning_text.delta", "response.reasoning_text.done"),
    ],
)
def test_reasoning(mode: Any, delta: str, done: str) -> None:
    w, _ = started(reasoning_events=mode)
    r = w.reasoning()
    assert re.fullmatch(f"rs_{HEX32}", r.id)
    s = r.summary()
    assert types(s.events) == ["response.reasoning_summary_part.added"]
    assert types(s.delta("Plan")) == ["response.reasoning_summary_text.delta"]
    assert types(s.done()) == ["response.reasoning_summary_text.done", "response.reasoning_summary_part.done"]
    s2 = r.summary()
    assert s2.events[0].summary_index == 1
    s2.delta("Act")
    t = r.text()
    assert types(t.events) == ["response.content_part.added"]
    assert types(t.delta("because")) == [delta]
    assert types(t.done()) == [done, "response.content_part.done"]
    events = r.done(encrypted_content="gAAA")
    assert types(events) == [
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    item = events[-1].item
    assert isinstance(item, ReasoningItem)
    assert item.summary == [SummaryText(text="Plan"), SummaryText(text="Act")]
    assert item.content == [ReasoningText(text="because")]
    assert item.encrypted_content == "gAAA"


def test_custom_tool_call() -> None:
    w, _ = started()
    c = w.custom_tool_call("shell", call_id="call_9")
    assert re.fullmatch(f"ctc_{HEX32}", c.id)
    assert types(c.delta("ls ")) == ["response.custom_tool_call_input.delta"]
    c.delta("-la")
    done = c.done()
    assert types(done) == ["response.custom_tool_call_input.done", "response.output_item.done"]
    assert done[0].input == "ls -la"
    assert done[1].item == CustomToolCall(
        id=c.id, call_id="call_9", name="shell", input="ls -la", status="completed"
    )


def test_add_item() -> None:
    w, _ = started()
    given_item = FunctionCallOutput(call_id="call_1", output="42")
    events = w.add_item(given_item)
    assert types(events) == ["response.output_item.added", "response.output_item.done"]
    assert events[0].item == events[1].item
    item = events[1].item
    assert re.fullmatch(f"fco_{HEX32}", item.id) and item.status == "completed" and item.output == "42"
    assert given_item.id is None and given_item.status is None  # the caller's object is left alone
    kept = w.add_item(Message(id="msg_mine", status="completed", content=[OutputText(text="whole")]))
    assert kept[0].item.id == "msg_mine" and kept[0].output_index == 1
    assert w.response.output[1].content[0].text == "whole"


def test_complete() -> None:
    w, _ = started()
    t = w.message().text()
    t.delta("open")
    events = w.complete(Usage(input_tokens=5, output_tokens=1, total_tokens=6))
    # What was open is closed first, as completed.
    assert types(events) == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]
    assert isinstance(final, ResponseCompleted)
    assert final.response.status == "completed" and final.response.completed_at == 1_700_000_000
    assert final.response.usage is not None and final.response.usage.total_tokens == 6
    assert final.response.output[0].status == "completed"
    assert final.response.output[0].content[0].text == "open"
    assert w.finished and w.response == final.response


def test_incomplete_closes_open_items_as_incomplete() -> None:
    w, _ = started()
    f = w.function_call("f")
    f.delta("{")
    events = w.incomplete("max_output_tokens")
    assert types(events) == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    final = events[-1]
    assert isinstance(final, ResponseIncomplete)
    assert final.response.status == "incomplete" and final.response.completed_at is None
    assert final.response.incomplete_details is not None
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.output[0].status == "incomplete"


def test_fail_emits_error_then_failed_with_both_error_shapes() -> None:
    w, _ = started()
    w.message().text().delta("par")
    events = w.fail("rate_limit_exceeded", "slow down", param="model")
    assert types(events)[-2:] == ["error", "response.failed"]
    error = events[-2]
    assert isinstance(error, ErrorEvent)
    assert (error.code, error.message, error.param) == ("rate_limit_exceeded", "slow down", "model")
    assert error.error == ErrorPayload(
        type="server_error", code="rate_limit_exceeded", message="slow down", param="model"
    )
    wire = event_to_builtins(error)
    assert wire["code"] == wire["error"]["code"] == "rate_limit_exceeded"
    final = events[-1]
    assert isinstance(final, ResponseFailed)
    assert final.response.status == "failed" and final.response.error is not None
    assert (final.response.error.code, final.response.error.message) == ("rate_limit_exceeded", "slow down")
    assert final.response.output[0].status == "incomplete"
    # A null param is still sent, at the top and in the nested object.
    w2, _ = started()
    wire = event_to_builtins(w2.fail(None, "x")[0])
    assert wire["param"] is None and wire["error"]["param"] is None and wire["code"] is None


def test_snapshot_mid_stream_and_sequence_numbers() -> None:
    w, events = started()
    m = w.message()
    t = m.text()
    events += m.events + t.events + t.delta("a") + t.delta("b")
    assert w.response.output[0].content[0].text == "ab"
    assert w.response.status == "in_progress"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert w.sequence_number == len(events)


# --- misuse: WriterError at once, nothing emitted -----------------------------------------------------------


def assert_refused(w: ResponseWriter, act: Callable[[], object]) -> None:
    before = w.sequence_number
    snapshot = w.response
    with pytest.raises(WriterError):
        act()
    assert w.sequence_number == before
    assert w.response == snapshot


def test_nothing_before_start() -> None:
    w = writer()
    for act in (
        w.message,
        lambda: w.function_call("f"),
        w.reasoning,
        w.complete,
        lambda: w.fail("c", "m"),
        lambda: w.incomplete("r"),
        lambda: w.add_item(FunctionCallOutput(call_id="c")),
    ):
        assert_refused(w, act)


@pytest.mark.parametrize("bad", [5, None, b"bytes"])
def test_a_delta_that_is_not_text_is_refused(bad: object) -> None:
    w, _ = started()
    text = w.message().text()
    call = w.function_call("f")
    summary = w.reasoning().summary()
    for delta in (text.delta, call.delta, summary.delta):
        assert_refused(w, lambda delta=delta: delta(bad))  # type: ignore[misc]
    text.delta("fine")
    text.done()  # the writer is not stuck


def test_second_start() -> None:
    w, _ = started()
    assert_refused(w, w.start)


def test_delta_after_part_done() -> None:
    w, _ = started()
    m = w.message()
    t = m.text()
    t.done()
    assert_refused(w, lambda: t.delta("late"))
    assert_refused(w, lambda: t.annotate(UrlCitation(url="u")))
    assert_refused(w, t.done)
    s = w.reasoning().summary()
    s.done()
    assert_refused(w, lambda: s.delta("late"))


def test_writing_to_a_closed_item() -> None:
    w, _ = started()
    m = w.message()
    t = m.text()
    m.done()  # closes the open part too
    assert t.closed
    assert_refused(w, m.text)
    assert_refused(w, m.refusal)
    assert_refused(w, lambda: t.delta("x"))
    assert_refused(w, m.done)
    f = w.function_call("f")
    f.done()
    assert_refused(w, lambda: f.delta("{}"))
    assert_refused(w, f.done)
    r = w.reasoning()
    r.done()
    assert_refused(w, r.summary)
    assert_refused(w, r.text)


def test_one_open_part_at_a_time() -> None:
    w, _ = started()
    m = w.message()
    m.text()
    assert_refused(w, m.text)
    assert_refused(w, m.refusal)


def test_bad_item_status() -> None:
    w, _ = started()
    m = w.message()
    assert_refused(w, lambda: m.done(status="in_progress"))


@pytest.mark.parametrize("first", ["complete", "incomplete", "fail"])
def test_nothing_after_the_terminal_event(first: str) -> None:
    w, _ = started()
    m = w.message()
    t = m.text()
    getattr(w, first)(*{"complete": (), "incomplete": ("r",), "fail": ("c", "m")}[first])
    assert w.finished
    for act in (
        w.complete,
        lambda: w.incomplete("r"),
        lambda: w.fail("c", "m"),
        w.message,
        w.reasoning,
        lambda: w.custom_tool_call("c"),
        lambda: w.add_item(FunctionCallOutput(call_id="c")),
        lambda: t.delta("x"),
        m.done,
        m.text,
    ):
        assert_refused(w, act)


def test_bad_reasoning_events_option() -> None:
    with pytest.raises(ValueError):
        ResponseWriter(reasoning_events="other")


# --- random programs ----------------------------------------------------------------------------------------

TEXT = st.text(max_size=12)


def run_program(data: st.DataObject, reasoning_events: str) -> tuple[ResponseWriter, list[Event]]:
    """Random valid writer calls: items opened and interleaved, parts and deltas, ending at a random point."""
    w = ResponseWriter(Response(model="m"), reasoning_events=reasoning_events)
    events = w.start(queued=data.draw(st.booleans(), label="queued"))
    items: list[ItemWriter] = []
    parts: list[PartWriter] = []

    def open_items() -> list[ItemWriter]:
        return [i for i in items if not i.closed]

    def open_parts() -> list[PartWriter]:
        return [p for p in parts if not p.closed and not p._item.closed]

    def openers(item: ItemWriter) -> list[Callable[[], Any]]:
        """What can be written on an open item now: a delta (calls) or a new part (one per kind open)."""
        if isinstance(item, (FunctionCallWriter, CustomToolCallWriter)):
            return [lambda: item.delta(data.draw(TEXT, label="text"))]
        kinds = {p._where for p in open_parts() if p._item is item}
        if isinstance(item, MessageWriter) and not kinds:
            return [item.text, item.refusal]
        if isinstance(item, ReasoningWriter):
            return ([item.summary] if "summary" not in kinds else []) + (
                [item.text] if "content" not in kinds else []
            )
        return []

    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        # Weighted: what writes into open things comes first (and more often) than what opens new ones.
        choices: list[str] = []
        if open_parts():
            choices += ["part_delta"] * 4 + ["part_done"]
        if any(openers(i) for i in open_items()):
            choices += ["item_write"] * 3
        if open_items():
            choices += ["item_done"]
        if len(open_items()) < 4:
            choices += ["message", "function_call", "reasoning", "custom_tool_call", "add_item"]
        action = data.draw(st.sampled_from(choices), label="action")
        if action == "part_delta":
            part = data.draw(st.sampled_from(open_parts()), label="part")
            if isinstance(part, TextWriter) and data.draw(st.integers(0, 4), label="annotate") == 4:
                events += part.annotate(UrlCitation(url="https://e.x", start_index=0, end_index=1))
            elif isinstance(part, TextWriter):
                logprob = st.builds(LogProb, token=TEXT, logprob=st.floats(-20, 0))
                events += part.delta(data.draw(TEXT, label="text"), data.draw(st.lists(logprob, max_size=2)))
            else:
                events += part.delta(data.draw(TEXT, label="text"))
        elif action == "part_done":
            events += data.draw(st.sampled_from(open_parts()), label="part").done()
        elif action == "item_write":
            target = data.draw(st.sampled_from([i for i in open_items() if openers(i)]), label="item")
            result = data.draw(st.sampled_from(openers(target)), label="write")()
            if isinstance(result, PartWriter):
                parts.append(result)
                result = result.events
            events += result
        elif action == "item_done":
            target = data.draw(st.sampled_from(open_items()), label="item")
            events += target.done(status=data.draw(st.sampled_from(["completed", "incomplete"])))
        elif action == "add_item":
            events += w.add_item(FunctionCallOutput(call_id="call_x", output=data.draw(TEXT, label="text")))
        else:
            if action == "message":
                phase = data.draw(st.sampled_from([None, "commentary", "final_answer"]), label="phase")
                item: ItemWriter = w.message(phase=phase)
            elif action == "function_call":
                item = w.function_call("get_weather")
            elif action == "reasoning":
                item = w.reasoning()
            else:
                item = w.custom_tool_call("tool")
            items.append(item)
            events += item.events
    ending = data.draw(st.sampled_from(["complete", "incomplete", "fail"]), label="ending")
    if ending == "complete":
        events += w.complete(Usage(input_tokens=1, output_tokens=2, total_tokens=3))
    elif ending == "incomplete":
        events += w.incomplete("max_output_tokens")
    else:
        events += w.fail("server_error", "boom")
    return w, events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), reasoning_events=st.sampled_from(["spec", "seed"]))
def test_random_programs_make_conformant_streams(data: st.DataObject, reasoning_events: str) -> None:
    w, events = run_program(data, reasoning_events)
    assert w.finished
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # (a) the conformance checker finds nothing
    assert check(events) == []
    # (b) a fresh Accumulator folds the stream into exactly the writer's final snapshot, with no problem;
    # and what the deltas built before the terminal event is what the terminal event says
    acc = Accumulator()
    for event in events[:-1]:
        acc.feed(event)
    assert acc.response.output == w.response.output
    acc.feed(events[-1])
    acc.end()
    assert acc.problems == []
    assert acc.response == w.response
    assert accumulate(events).response == events[-1].response
    # (c) every event survives the codec
    for event in events:
        assert decode_event(encode_event(event)) == event


def test_item_done_payload_is_what_was_built() -> None:
    # The output_item.done item is the accumulator's snapshot: a text written in deltas reaches it whole.
    w, _ = started()
    m = w.message()
    t = m.text()
    for piece in ("a", "b", "c"):
        t.delta(piece)
    (done,) = [e for e in m.done() if isinstance(e, ResponseOutputItemDone)]
    assert done.item.content[0].text == "abc"


# --- resume: a writer that goes on after a stream's beginning ---------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), reasoning_events=st.sampled_from(["spec", "seed"]))
def test_a_stream_cut_anywhere_and_resumed_ends_conformant(data: st.DataObject, reasoning_events: str) -> None:
    _, events = run_program(data, reasoning_events)
    cut = data.draw(st.integers(1, len(events) - 1), label="cut")  # anywhere before the terminal event
    logged = [decode_event(encode_event(e)) for e in events[:cut]]  # as a store gives them back
    w = ResponseWriter.resume(logged)
    assert w.sequence_number == cut
    ending = data.draw(st.sampled_from(["complete", "fail", "cancelled"]), label="resumed ending")
    if any(e.type == "error" for e in logged):  # cut between error and response.failed: it can only fail
        with pytest.raises(WriterError, match="only fail"):
            w.complete()
        ending = "fail"
    rest = w.fail("server_lost", "gone") if ending == "fail" else w.complete() if ending == "complete" else w.cancelled()
    stream = logged + rest
    assert check(stream) == []
    assert [e.sequence_number for e in stream] == list(range(len(stream)))
    assert accumulate(stream).response == w.response == rest[-1].response
    assert w.response.id == events[0].response.id
    if ending == "fail":
        assert [e.type for e in stream].count("error") == 1
        assert w.response.status == "failed" and w.response.error.code == "server_lost"


def test_resume_refuses_what_is_not_an_unfinished_beginning() -> None:
    w, events = started()
    m = w.message()
    events += m.events + m.text().events + w.complete()
    with pytest.raises(WriterError, match="finished"):
        ResponseWriter.resume(events)
    with pytest.raises(WriterError, match="begins with"):
        ResponseWriter.resume(events[1:3])
    with pytest.raises(WriterError, match="numbered"):
        ResponseWriter.resume([events[0], events[2]])
    with pytest.raises(WriterError, match="begins"):
        ResponseWriter.resume([])


def test_a_resumed_writer_closes_what_was_open_as_the_first_writer_would() -> None:
    w, events = started()
    m = w.message()
    t = m.text()
    events += m.events + t.events + t.delta("half ")
    rest = ResponseWriter.resume(events).fail("server_lost", "gone")
    assert [e.type for e in rest] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "error",
        "response.failed",
    ]
    assert rest[0].sequence_number == len(events)
    assert rest[-1].response.output[0].content[0].text == "half "
    assert rest[-1].response.output[0].status == "incomplete"
    assert check(events + rest) == []
