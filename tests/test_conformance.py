"""Tests for the conformance checker: one fires/silent pair per rule, the capture corpus, and garbage orders.

Streams are built as JSON dicts and decoded with ``decode_event``; ``seq`` numbers them. The corpus test pins
the exact error-rule ids each capture gives (untouched recordings: none).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.protocol.codec import decode_event, decode_event_obj
from headwater.protocol.conformance import (
    RULES,
    RULES_BY_ID,
    Checker,
    Rule,
    Violation,
    check,
    split_responses,
)
from headwater.protocol.events import ALL_EVENT_TYPES, Event

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "openai"

# --- building streams ---------------------------------------------------------------------------------------

NO_SEQ = "__no_seq__"  # a key that makes ``seq`` leave sequence_number out of that event


def ev(d: dict[str, Any]) -> Event:
    """One event from a JSON dict, through the real decoder (lenient: a misfit becomes UnknownEvent)."""
    return decode_event(msgspec.json.encode(d), lenient=True)


def seq(dicts: list[dict[str, Any]], start: int = 0) -> list[Event]:
    """Number the events 0, 1, 2, ... (unless they carry their own) and decode them."""
    out = []
    for n, d in enumerate(dicts):
        d = dict(d)
        if d.pop(NO_SEQ, False):
            d.pop("sequence_number", None)
        else:
            d.setdefault("sequence_number", start + n)
        out.append(ev(d))
    return out


def resp(
    status: str = "in_progress", output: list[dict[str, Any]] | None = None, rid: str = "resp_1", **extra: Any
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "m",
        "output": output or [],
        **extra,
    }


RS, MSG, FC = "rs_1", "msg_1", "fc_1"
ANN = {"type": "url_citation", "url": "https://example.com", "title": "Ex", "start_index": 0, "end_index": 5}
RS_DONE = {"type": "reasoning", "id": RS, "summary": [{"type": "summary_text", "text": "Think"}]}
MSG_DONE = {
    "type": "message",
    "id": MSG,
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "Hello", "annotations": [ANN]}],
}
FC_DONE = {
    "type": "function_call",
    "id": FC,
    "call_id": "call_1",
    "name": "f",
    "arguments": '{"a":1}',
    "status": "completed",
}


def _at(item_id: str, output_index: int, **kw: Any) -> dict[str, Any]:
    return {"item_id": item_id, "output_index": output_index, **kw}


def valid() -> list[dict[str, Any]]:
    """A conformant stream: a reasoning item with a summary, a message with an annotated text, a function call."""
    return [
        {"type": "response.created", "response": resp()},
        {"type": "response.in_progress", "response": resp()},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "reasoning", "id": RS, "summary": []},
        },
        {
            "type": "response.reasoning_summary_part.added",
            **_at(RS, 0, summary_index=0),
            "part": {"type": "summary_text", "text": ""},
        },
        {"type": "response.reasoning_summary_text.delta", **_at(RS, 0, summary_index=0), "delta": "Thi"},
        {"type": "response.reasoning_summary_text.delta", **_at(RS, 0, summary_index=0), "delta": "nk"},
        {"type": "response.reasoning_summary_text.done", **_at(RS, 0, summary_index=0), "text": "Think"},
        {
            "type": "response.reasoning_summary_part.done",
            **_at(RS, 0, summary_index=0),
            "part": {"type": "summary_text", "text": "Think"},
        },
        {"type": "response.output_item.done", "output_index": 0, "item": RS_DONE},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {
                "type": "message",
                "id": MSG,
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            },
        },
        {
            "type": "response.content_part.added",
            **_at(MSG, 1, content_index=0),
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        {"type": "response.output_text.delta", **_at(MSG, 1, content_index=0), "delta": "Hel"},
        {"type": "response.output_text.delta", **_at(MSG, 1, content_index=0), "delta": "lo"},
        {
            "type": "response.output_text.annotation.added",
            **_at(MSG, 1, content_index=0),
            "annotation_index": 0,
            "annotation": ANN,
        },
        {"type": "response.output_text.done", **_at(MSG, 1, content_index=0), "text": "Hello"},
        {
            "type": "response.content_part.done",
            **_at(MSG, 1, content_index=0),
            "part": {"type": "output_text", "text": "Hello", "annotations": [ANN]},
        },
        {"type": "response.output_item.done", "output_index": 1, "item": MSG_DONE},
        {
            "type": "response.output_item.added",
            "output_index": 2,
            "item": {**FC_DONE, "arguments": "", "status": "in_progress"},
        },
        {"type": "response.function_call_arguments.delta", **_at(FC, 2), "delta": '{"a":'},
        {"type": "response.function_call_arguments.delta", **_at(FC, 2), "delta": "1}"},
        {"type": "response.function_call_arguments.done", **_at(FC, 2), "arguments": '{"a":1}'},
        {"type": "response.output_item.done", "output_index": 2, "item": FC_DONE},
        {"type": "response.completed", "response": resp("completed", [RS_DONE, MSG_DONE, FC_DONE])},
    ]


def failed_stream(error: Any = "default") -> list[dict[str, Any]]:
    err = {"code": "server_error", "message": "boom"} if error == "default" else error
    return [
        {"type": "response.created", "response": resp()},
        {
            "type": "error",
            "error": {"type": "server_error", "code": "server_error", "message": "boom", "param": None},
        },
        {"type": "response.failed", "response": resp("failed", error=err)},
    ]


def incomplete_stream(details: Any = "default") -> list[dict[str, Any]]:
    s = valid()
    s[-1] = {
        "type": "response.incomplete",
        "response": resp(
            "incomplete",
            [RS_DONE, MSG_DONE, FC_DONE],
            incomplete_details={"reason": "max_output_tokens"} if details == "default" else details,
        ),
    }
    return s


def cancelled_stream() -> list[dict[str, Any]]:
    """A stream stopped on request: response.incomplete, status cancelled, no incomplete_details."""
    s = incomplete_stream(details=None)
    s[-1]["response"]["status"] = "cancelled"
    return s


def invented_annotation() -> dict[str, Any]:
    message = copy.deepcopy(MSG_DONE)
    message["content"][0]["annotations"] = [{**ANN, "extra_title": ""}]
    return message


SH = "sh_1"


def shell_stream(done_command: str = "ls -la", item_command: str = "ls -la") -> list[dict[str, Any]]:
    action: dict[str, Any] = {"commands": [], "max_output_length": None, "timeout_ms": None}
    done = {
        "type": "shell_call",
        "id": SH,
        "call_id": "c",
        "status": "completed",
        "action": {**action, "commands": [item_command]},
    }
    return [
        {"type": "response.created", "response": resp()},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {
                "type": "shell_call",
                "id": SH,
                "call_id": "c",
                "status": "in_progress",
                "action": action,
            },
        },
        {"type": "response.shell_call_command.added", "output_index": 0, "command_index": 0, "command": ""},
        {"type": "response.shell_call_command.delta", "output_index": 0, "command_index": 0, "delta": "ls"},
        {"type": "response.shell_call_command.delta", "output_index": 0, "command_index": 0, "delta": " -la"},
        {
            "type": "response.shell_call_command.done",
            "output_index": 0,
            "command_index": 0,
            "command": done_command,
        },
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {"type": "response.completed", "response": resp("completed", [done])},
    ]


IG = "ig_1"


def image_stream(first_partial: int = 0) -> list[dict[str, Any]]:
    item = {"type": "image_generation_call", "id": IG, "status": "in_progress"}
    return [
        {"type": "response.created", "response": resp()},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.image_generation_call.in_progress", **_at(IG, 0)},
        {
            "type": "response.image_generation_call.partial_image",
            **_at(IG, 0),
            "partial_image_index": first_partial,
            "partial_image_b64": "AAAA",
        },
        {
            "type": "response.image_generation_call.partial_image",
            **_at(IG, 0),
            "partial_image_index": first_partial + 1,
            "partial_image_b64": "BBBB",
        },
        {"type": "response.image_generation_call.completed", **_at(IG, 0)},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {**item, "status": "completed", "result": "BBBB"},
        },
        {"type": "response.completed", "response": resp("completed", [{**item, "status": "completed", "result": "BBBB"}])},
    ]


# --- mutations on a list of event dicts ---------------------------------------------------------------------


def find(s: list[dict[str, Any]], etype: str, nth: int = 0, **match: Any) -> int:
    hits = [i for i, d in enumerate(s) if d["type"] == etype and all(d.get(k) == v for k, v in match.items())]
    return hits[nth]


def edit(
    s: list[dict[str, Any]], etype: str, nth: int = 0, match: dict[str, Any] | None = None, **changes: Any
) -> list[dict[str, Any]]:
    s = copy.deepcopy(s)
    s[find(s, etype, nth, **(match or {}))].update(changes)
    return s


def drop(s: list[dict[str, Any]], etype: str, nth: int = 0, **match: Any) -> list[dict[str, Any]]:
    s = copy.deepcopy(s)
    del s[find(s, etype, nth, **match)]
    return s


def insert_before(
    s: list[dict[str, Any]], etype: str, new: dict[str, Any], nth: int = 0, **match: Any
) -> list[dict[str, Any]]:
    s = copy.deepcopy(s)
    s.insert(find(s, etype, nth, **match), new)
    return s


def duplicate(s: list[dict[str, Any]], etype: str, nth: int = 0, **match: Any) -> list[dict[str, Any]]:
    s = copy.deepcopy(s)
    at = find(s, etype, nth, **match)
    s.insert(at + 1, copy.deepcopy(s[at]))
    return s


def reindex(s: list[dict[str, Any]], item_id: str, output_index: int) -> list[dict[str, Any]]:
    s = copy.deepcopy(s)
    for d in s:
        if d.get("item_id") == item_id or d.get("item", {}).get("id") == item_id:
            d["output_index"] = output_index
    return s


def with_sse_name(events: list[Event], at: int, name: str) -> list[Event]:
    events[at].__dict__["_sse_event"] = name
    return events


def completed_output(s: list[dict[str, Any]], output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    s = copy.deepcopy(s)
    s[-1]["response"]["output"] = output
    return s


FC_DELTA = {"type": "response.function_call_arguments.delta", **_at(FC, 2), "delta": "x"}
TEXT_DELTA = {"type": "response.output_text.delta", **_at(MSG, 1, content_index=0), "delta": "x"}


# --- one fires/silent pair per rule -------------------------------------------------------------------------

Build = Callable[[], list[Event]]

# (rule id, what is broken, the bad stream, the fixed stream)
# fmt: off
CASES: list[tuple[str, str, Build, Build]] = [
    ("SSE-NAME", "event: name differs from type",
     lambda: with_sse_name(seq(valid()), 3, "response.output_text.delta"), lambda: seq(valid())),
    ("TYPE-UNKNOWN", "an event type nobody defines",
     lambda: seq(insert_before(valid(), "response.completed", {"type": "response.future.thing"})),
     lambda: seq(valid())),
    ("TYPE-SCHEMA", "delta is a number",
     lambda: seq(edit(valid(), "response.output_text.delta", delta=5)), lambda: seq(valid())),
    ("SEQ-PRESENT", "an event without sequence_number",
     lambda: seq(edit(valid(), "response.output_text.delta", __no_seq__=True)), lambda: seq(valid())),
    ("SEQ-START", "numbering starts at 1", lambda: seq(valid(), start=1), lambda: seq(valid())),
    ("SEQ-STEP", "a gap in the numbering",
     lambda: seq(edit(valid(), "response.output_text.delta", sequence_number=99)), lambda: seq(valid())),
    ("START-CREATED", "the stream starts with in_progress",
     lambda: seq(valid()[1:]), lambda: seq(valid())),
    ("CREATED-ONCE", "two response.created",
     lambda: seq(insert_before(valid(), "response.output_item.added", {"type": "response.created",
                                                                        "response": resp()})),
     lambda: seq(valid())),
    ("RESPONSE-ID", "in_progress names another response",
     lambda: seq(edit(valid(), "response.in_progress", response=resp(rid="resp_2"))), lambda: seq(valid())),
    ("LIFECYCLE-STATUS", "in_progress says completed",
     lambda: seq(edit(valid(), "response.in_progress", response=resp("completed"))), lambda: seq(valid())),
    ("TERMINAL-ONCE", "two response.completed",
     lambda: seq(duplicate(valid(), "response.completed")), lambda: seq(valid())),
    ("AFTER-TERMINAL", "an event after response.completed",
     lambda: seq([*valid(), {"type": "response.in_progress", "response": resp()}]), lambda: seq(valid())),
    ("END-TERMINAL", "the stream stops before its terminal event",
     lambda: seq(valid()[:-1]), lambda: seq(valid())),
    ("ERROR-THEN-FAILED", "error followed by response.completed",
     lambda: seq(insert_before(valid(), "response.completed", failed_stream()[1])),
     lambda: seq(failed_stream())),
    ("ERROR-THEN-FAILED", "stream ends on error",
     lambda: seq(failed_stream()[:-1]), lambda: seq(failed_stream())),
    ("TERMINAL-STATUS", "response.completed with status incomplete",
     lambda: seq(edit(valid(), "response.completed", response=resp("incomplete", [RS_DONE, MSG_DONE, FC_DONE]))),
     lambda: seq(valid())),
    ("FAILED-ERROR", "response.failed without response.error",
     lambda: seq(failed_stream(error=None)), lambda: seq(failed_stream())),
    ("TERMINAL-STATUS", "response.incomplete with status completed (cancelled is allowed)",
     lambda: seq(edit(incomplete_stream(), "response.incomplete", response=resp("completed", [RS_DONE, MSG_DONE, FC_DONE]))),
     lambda: seq(cancelled_stream())),
    ("INCOMPLETE-DETAILS", "response.incomplete without incomplete_details",
     lambda: seq(incomplete_stream(details=None)), lambda: seq(incomplete_stream())),
    ("INCOMPLETE-DETAILS", "response.incomplete without incomplete_details (a cancelled one needs none)",
     lambda: seq(incomplete_stream(details=None)), lambda: seq(cancelled_stream())),
    ("TERMINAL-ITEM-FIELDS", "the snapshot's message lost a field its output_item.done carried",
     lambda: seq(edit(valid(), "response.output_item.done", nth=1, item={**MSG_DONE, "phase": "final_answer"})),
     lambda: seq(valid())),
    ("TERMINAL-ITEM-FIELDS", "the snapshot's annotation gained fields the event did not carry",
     lambda: seq(completed_output(valid(), [RS_DONE, invented_annotation(), FC_DONE])), lambda: seq(valid())),
    ("TERMINAL-ITEM-FIELDS", "the snapshot's function call has other arguments",
     lambda: seq(completed_output(valid(), [RS_DONE, MSG_DONE, {**FC_DONE, "arguments": "{}"}])),
     lambda: seq(valid())),
    ("TERMINAL-OUTPUT", "response.output misses an item",
     lambda: seq(completed_output(valid(), [RS_DONE, MSG_DONE])), lambda: seq(valid())),
    ("TERMINAL-OUTPUT", "response.output in the wrong order",
     lambda: seq(completed_output(valid(), [MSG_DONE, RS_DONE, FC_DONE])), lambda: seq(valid())),
    ("TERMINAL-OUTPUT", "response.incomplete output misses an item",
     lambda: seq(completed_output(incomplete_stream(), [RS_DONE])), lambda: seq(incomplete_stream())),
    ("ITEM-INDEX-NEXT", "the function call skips output_index 2",
     lambda: seq(completed_output(reindex(valid(), FC, 3), [RS_DONE, MSG_DONE, FC_DONE])),
     lambda: seq(valid())),
    ("ITEM-ID-UNIQUE", "two items with one id",
     lambda: seq(edit(valid(), "response.output_item.added", 2,
                      item={**FC_DONE, "id": MSG, "arguments": "", "status": "in_progress"})),
     lambda: seq(valid())),
    ("ITEM-ADDED-FIRST", "arguments before the function call is added",
     lambda: seq(insert_before(valid(), "response.output_item.added", FC_DELTA, 2)), lambda: seq(valid())),
    ("ITEM-INDEX-ID", "a delta names the message's id at the function call's index",
     lambda: seq(edit(valid(), "response.function_call_arguments.delta", item_id=MSG)), lambda: seq(valid())),
    ("ITEM-DONE-ONCE", "output_item.done twice",
     lambda: seq(duplicate(valid(), "response.output_item.done", 2)), lambda: seq(valid())),
    ("ITEM-AFTER-DONE", "a delta after the function call is done",
     lambda: seq(insert_before(valid(), "response.completed", FC_DELTA)), lambda: seq(valid())),
    ("ITEM-UNCLOSED", "the function call is never done",
     lambda: seq(completed_output(drop(valid(), "response.output_item.done", 2), [RS_DONE, MSG_DONE])),
     lambda: seq(valid())),
    ("ITEM-DONE-MATCH", "done arguments differ from the deltas",
     lambda: seq(edit(valid(), "response.output_item.done", 2, item={**FC_DONE, "arguments": '{"a":2}'})),
     lambda: seq(valid())),
    ("ITEM-DONE-MATCH", "done message text differs from the deltas",
     lambda: seq(edit(valid(), "response.output_item.done", 1, item={
         **MSG_DONE, "content": [{"type": "output_text", "text": "Help", "annotations": [ANN]}]})),
     lambda: seq(valid())),
    ("ITEM-DONE-MATCH", "done message has a part the stream never added",
     lambda: seq(edit(valid(), "response.output_item.done", 1, item={
         **MSG_DONE, "content": [*MSG_DONE["content"], {"type": "output_text", "text": "", "annotations": []}]})),
     lambda: seq(valid())),
    ("ITEM-DONE-MATCH", "done summary differs from the deltas",
     lambda: seq(edit(valid(), "response.output_item.done", 0, item={
         **RS_DONE, "summary": [{"type": "summary_text", "text": "Thought"}]})),
     lambda: seq(valid())),
    ("ITEM-DONE-MATCH", "done item has another type",
     lambda: seq(edit(valid(), "response.output_item.done", 2, item={
         "type": "custom_tool_call", "id": FC, "call_id": "call_1", "name": "f", "input": ""})),
     lambda: seq(valid())),
    ("ITEM-DONE-MATCH", "done shell command differs from the deltas",
     lambda: seq(shell_stream(item_command="ls")), lambda: seq(shell_stream())),
    ("ITEM-DONE-STATUS", "message done while in_progress",
     lambda: seq(edit(valid(), "response.output_item.done", 1, item={**MSG_DONE, "status": "in_progress"})),
     lambda: seq(valid())),
    ("EVENT-KIND", "function-call arguments on a message",
     lambda: seq(insert_before(valid(), "response.output_text.done", {
         "type": "response.function_call_arguments.delta", **_at(MSG, 1), "delta": "x"})),
     lambda: seq(valid())),
    ("EVENT-KIND", "a refusal delta into an output_text part",
     lambda: seq(insert_before(valid(), "response.output_text.done", {
         "type": "response.refusal.delta", **_at(MSG, 1, content_index=0), "delta": "no"})),
     lambda: seq(valid())),
    ("PART-INDEX-NEXT", "the first content part takes content_index 1",
     lambda: seq([{**d, "content_index": 1} if "content_index" in d else d for d in valid()]),
     lambda: seq(valid())),
    ("PART-INDEX-NEXT", "a part added twice",
     lambda: seq(duplicate(valid(), "response.reasoning_summary_part.added")), lambda: seq(valid())),
    ("PART-ADDED-FIRST", "text deltas without content_part.added",
     lambda: seq(drop(valid(), "response.content_part.added")), lambda: seq(valid())),
    ("PART-DONE-ONCE", "content_part.done twice",
     lambda: seq(duplicate(valid(), "response.content_part.done")), lambda: seq(valid())),
    ("PART-AFTER-DONE", "a text delta after content_part.done",
     lambda: seq(insert_before(valid(), "response.output_item.done", TEXT_DELTA, 1)), lambda: seq(valid())),
    ("PART-UNCLOSED", "the summary part is never done",
     lambda: seq(drop(valid(), "response.reasoning_summary_part.done")), lambda: seq(valid())),
    ("PART-DONE-MATCH", "content_part.done text differs",
     lambda: seq(edit(valid(), "response.content_part.done",
                      part={"type": "output_text", "text": "Hullo", "annotations": [ANN]})),
     lambda: seq(valid())),
    ("PART-DONE-MATCH", "content_part.done has another type",
     lambda: seq(edit(valid(), "response.content_part.done", part={"type": "refusal", "refusal": "Hello"})),
     lambda: seq(valid())),
    ("PART-DONE-MATCH", "content_part.done lost the annotation",
     lambda: seq(edit(valid(), "response.content_part.done",
                      part={"type": "output_text", "text": "Hello", "annotations": []})),
     lambda: seq(valid())),
    ("PART-DONE-MATCH", "summary part done text differs",
     lambda: seq(edit(valid(), "response.reasoning_summary_part.done",
                      part={"type": "summary_text", "text": "Thin"})),
     lambda: seq(valid())),
    ("ANNOTATION-INDEX-NEXT", "the first annotation takes index 1",
     lambda: seq(edit(valid(), "response.output_text.annotation.added", annotation_index=1)),
     lambda: seq(valid())),
    ("DONE-TEXT", "output_text.done differs from the deltas",
     lambda: seq(edit(valid(), "response.output_text.done", text="Hellx")), lambda: seq(valid())),
    ("DONE-TEXT", "function_call_arguments.done differs from the deltas",
     lambda: seq(edit(valid(), "response.function_call_arguments.done", arguments='{"a":12}')),
     lambda: seq(valid())),
    ("DONE-TEXT", "reasoning_summary_text.done differs from the deltas",
     lambda: seq(edit(valid(), "response.reasoning_summary_text.done", text="Thin")), lambda: seq(valid())),
    ("DONE-TEXT", "shell_call_command.done differs from the deltas",
     lambda: seq(shell_stream(done_command="ls -l")), lambda: seq(shell_stream())),
    ("STREAM-AFTER-DONE", "a text delta after output_text.done",
     lambda: seq(insert_before(valid(), "response.content_part.done", TEXT_DELTA)), lambda: seq(valid())),
    ("STREAM-AFTER-DONE", "function_call_arguments.done twice",
     lambda: seq(duplicate(valid(), "response.function_call_arguments.done")), lambda: seq(valid())),
    ("STREAM-UNCLOSED", "text deltas never closed by output_text.done",
     lambda: seq(drop(valid(), "response.output_text.done")), lambda: seq(valid())),
    ("STREAM-UNCLOSED", "argument deltas never closed",
     lambda: seq(drop(valid(), "response.function_call_arguments.done")), lambda: seq(valid())),
    ("PARTIAL-IMAGE-INDEX", "partial images numbered from 1",
     lambda: seq(image_stream(first_partial=1)), lambda: seq(image_stream())),
]
# fmt: on


def rule_ids(found: list[Violation]) -> set[str]:
    return {v.rule_id for v in found}


@pytest.mark.parametrize(("rule_id", "what", "bad", "good"), CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_rule_fires_on_bad_stream_and_not_on_fixed(rule_id: str, what: str, bad: Build, good: Build) -> None:
    found = check(bad())
    assert rule_id in rule_ids(found), f"{rule_id} silent on: {what}\n" + "\n".join(map(str, found))
    hit = next(v for v in found if v.rule_id == rule_id)
    assert hit.severity == RULES_BY_ID[rule_id].severity
    assert rule_id not in rule_ids(check(good()))


def test_every_rule_has_a_case() -> None:
    assert {rule.id for rule in RULES} == {case[0] for case in CASES}


@pytest.mark.parametrize("build", [valid, failed_stream, incomplete_stream, shell_stream, image_stream])
def test_conformant_streams_have_no_findings(build: Callable[[], list[dict[str, Any]]]) -> None:
    assert check(seq(build())) == []


# --- the table itself ---------------------------------------------------------------------------------------


def test_rules_table_is_well_formed() -> None:
    ids = [rule.id for rule in RULES]
    assert len(ids) == len(set(ids))
    for rule in RULES:
        assert isinstance(rule, Rule)
        assert rule.severity in ("error", "warning")
        assert rule.statement and "\n" not in rule.statement
        assert rule.source
    assert {rule.id: rule for rule in RULES} == RULES_BY_ID


def test_docs_list_every_rule() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "conformance.md").read_text(encoding="utf-8")
    for rule in RULES:
        assert f"| `{rule.id}` | {rule.severity} |" in docs, rule.id


# --- API details --------------------------------------------------------------------------------------------


def test_violation_str_and_fields() -> None:
    events = seq(edit(valid(), "response.output_text.done", text="Hellx"))
    found = check(events)
    (hit,) = [v for v in found if v.rule_id == "DONE-TEXT"]
    at = find(valid(), "response.output_text.done")
    assert hit.index == at
    assert hit.sequence_number == at
    assert str(hit).startswith(f"{at}: DONE-TEXT ")
    assert MSG in hit.message and "content_index 0" in hit.message
    with pytest.raises(AttributeError):
        hit.index = 0


def test_feed_reports_per_event_and_finish_reports_end_of_stream() -> None:
    events = seq(valid()[:-1])
    checker = Checker()
    per_event = [checker.feed(e) for e in events]
    assert all(found == [] for found in per_event)
    end = checker.finish()
    assert [v.rule_id for v in end] == ["END-TERMINAL"]
    assert end[0].index == len(events) and end[0].sequence_number is None


def test_sse_name_reads_the_sse_layer_attribute() -> None:
    events = seq(valid())
    events[0].__dict__["_sse_event"] = None  # None: the name matched or was absent
    assert check(events) == []
    events[0].__dict__["_sse_event"] = "response.in_progress"
    (hit,) = check(events)
    assert hit.rule_id == "SSE-NAME" and hit.index == 0 and "response.in_progress" in hit.message


def test_unknown_event_types_are_warnings_only() -> None:
    found = check(seq(insert_before(valid(), "response.completed", {"type": "response.future.thing"})))
    assert [(v.rule_id, v.severity) for v in found] == [("TYPE-UNKNOWN", "warning")]


def test_split_responses() -> None:
    one, two = seq(valid()), seq(failed_stream())
    assert split_responses([*one, *two]) == [one, two]
    stray = seq(failed_stream())[1:2]
    assert split_responses([*stray, *one]) == [stray, one]
    assert split_responses([]) == []


def test_concatenated_responses_need_splitting() -> None:
    both = [*seq(valid()), *seq(valid())]
    assert "CREATED-ONCE" in rule_ids(check(both))
    assert all(check(part) == [] for part in split_responses(both))


# --- the capture corpus -------------------------------------------------------------------------------------

# Per capture: how SOURCES.md says it was obtained, and the exact error-severity rule ids the checker gives.
# Untouched recordings must give none. A real provider that breaks the spec would be listed in
# PROVIDER_BREAKS below instead (with the reason), and in docs/conformance.md.
UNTOUCHED = "untouched"
# fmt: off
EXPECTED_ERRORS: dict[str, tuple[str, frozenset[str]]] = {
    # Azure: the assistant text's deltas were replaced by "X"s and the done text by a placeholder when anonymized.
    "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl": (
        "id-sanitized", frozenset({"DONE-TEXT", "PART-DONE-MATCH", "ITEM-DONE-MATCH"})),
    # Every id replaced by a fresh capture-id-N, so item_id (and response.id) differ on every event.
    "github-copilot-id-rotation.1.jsonl": (
        "id-sanitized", frozenset({"RESPONSE-ID", "ITEM-INDEX-ID", "TERMINAL-OUTPUT"})),
    # Trimmed: no sequence_number, the `program` item's added left out, most response fields left out.
    "issue-18970-programmatic-approval.1.jsonl": (
        "trimmed", frozenset({"SEQ-PRESENT", "ITEM-ADDED-FIRST", "ITEM-INDEX-NEXT", "RESPONSE-ID",
                              "TERMINAL-STATUS", "TERMINAL-OUTPUT"})),
    # Hand-written: no sequence_number, response.completed has an empty output.
    "issue-19067-parallel-tool-call-wrapper.jsonl": ("hand-written", frozenset({"SEQ-PRESENT", "TERMINAL-OUTPUT"})),
    "issue-20047-openai-responses.jsonl": ("id-sanitized", frozenset()),
    "openai-apply-patch-tool-delete.1.jsonl": ("hand-edited", frozenset()),
    "openai-apply-patch-tool.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-client-tool-search.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-client-tool-search.2.jsonl": (UNTOUCHED, frozenset()),
    "openai-compaction.1.jsonl": (UNTOUCHED, frozenset()),
    # Trimmed: sequence gaps, response.in_progress and output_index 0 cut, no custom_tool_call_input.done.
    "openai-custom-text-tool.1.jsonl": (
        "trimmed", frozenset({"SEQ-STEP", "ITEM-INDEX-NEXT", "STREAM-UNCLOSED"})),
    # Hand-written: no sequence_number, no custom_tool_call_input.done.
    "openai-custom-tool.1.jsonl": ("hand-written", frozenset({"SEQ-PRESENT", "STREAM-UNCLOSED"})),
    # Fragments: one `error` event cut from the middle of a stream.
    "openai-error-null-code.1.jsonl": (
        "fragment", frozenset({"SEQ-START", "START-CREATED", "ERROR-THEN-FAILED", "END-TERMINAL"})),
    "openai-error-null-code.jsonl": (
        "fragment", frozenset({"SEQ-START", "START-CREATED", "ERROR-THEN-FAILED", "END-TERMINAL"})),
    "openai-error.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-file-search-tool.2.jsonl": (UNTOUCHED, frozenset()),
    "openai-image-generation-tool.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-issue-11239.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-issue-11239.2.jsonl": (UNTOUCHED, frozenset()),
    "openai-local-shell-tool.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-mcp-tool-approval.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-mcp-tool-approval.2.jsonl": (UNTOUCHED, frozenset()),
    "openai-mcp-tool-approval.4.jsonl": (UNTOUCHED, frozenset()),
    "openai-mcp-tool.1.jsonl": (UNTOUCHED, frozenset()),
    # Trimmed: 17 of 130 events kept, so sequence gaps, output_index 1 missing, most text deltas missing.
    "openai-phase.1.jsonl": (
        "trimmed", frozenset({"SEQ-STEP", "ITEM-INDEX-NEXT", "DONE-TEXT", "PART-DONE-MATCH", "ITEM-DONE-MATCH"})),
    "openai-reasoning-encrypted-content.1.jsonl": ("concatenated", frozenset()),
    "openai-response-failed-only.1.jsonl": ("hand-written", frozenset()),
    "openai-shell-container-multiturn.1.jsonl": (UNTOUCHED, frozenset()),
    # Fabricated ids; the message's text deltas stop after "The command ran successfully." (hand-edited).
    "openai-shell-container.1.jsonl": (
        "hand-edited", frozenset({"DONE-TEXT", "PART-DONE-MATCH", "ITEM-DONE-MATCH"})),
    "openai-shell-local-multiturn.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-shell-skills.1.jsonl": (UNTOUCHED, frozenset()),
    "openai-shell-tool.1.jsonl": ("concatenated", frozenset()),
    "openai-tool-search.1.jsonl": (UNTOUCHED, frozenset()),
    "programmatic-tool-calling.1.jsonl": (UNTOUCHED, frozenset()),
    "programmatic-tool-calling.2.jsonl": (UNTOUCHED, frozenset()),
    "programmatic-tool-calling.3.jsonl": (UNTOUCHED, frozenset()),
}
# fmt: on

# Real (untouched) recordings whose provider breaks an error-severity rule: file -> rule ids. None so far.
PROVIDER_BREAKS: dict[str, frozenset[str]] = {}

# Warnings the corpus gives (all files not listed: none).
EXPECTED_WARNINGS: dict[str, frozenset[str]] = {
    # OpenAI ends function calls that a `program` item makes with status "in_progress" at output_item.done.
    "programmatic-tool-calling.1.jsonl": frozenset({"ITEM-DONE-STATUS"}),
    "programmatic-tool-calling.2.jsonl": frozenset({"ITEM-DONE-STATUS"}),
    "issue-18970-programmatic-approval.1.jsonl": frozenset({"ITEM-DONE-STATUS"}),
}

CONCATENATED = {"openai-reasoning-encrypted-content.1.jsonl": 4, "openai-shell-tool.1.jsonl": 2}


def load_capture(name: str) -> list[Event]:
    lines = (CAPTURES / name).read_bytes().splitlines()
    return [decode_event(line) for line in lines if line.strip()]


def capture_findings(name: str) -> list[Violation]:
    events = load_capture(name)
    groups = split_responses(events) if name in CONCATENATED else [events]
    if name in CONCATENATED:
        assert len(groups) == CONCATENATED[name]
    return [v for group in groups for v in check(group)]


def test_corpus_table_covers_every_capture() -> None:
    assert {p.name for p in CAPTURES.glob("*.jsonl")} == set(EXPECTED_ERRORS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_corpus(name: str) -> None:
    kind, expected = EXPECTED_ERRORS[name]
    found = capture_findings(name)
    errors = {v.rule_id for v in found if v.severity == "error"}
    warnings = {v.rule_id for v in found if v.severity == "warning"}
    if kind in (UNTOUCHED, "concatenated"):
        assert expected == frozenset()
        expected = PROVIDER_BREAKS.get(name, frozenset())
    assert errors == expected, "\n".join(str(v) for v in found if v.severity == "error")
    assert warnings == EXPECTED_WARNINGS.get(name, frozenset())


def test_trimmed_phase_capture_names_its_gaps() -> None:
    found = capture_findings("openai-phase.1.jsonl")
    gaps = [v for v in found if v.rule_id == "SEQ-STEP"]
    assert [(v.index, v.sequence_number) for v in gaps] == [(6, 41), (9, 49), (13, 126)]
    assert "expected 6" in gaps[0].message


def test_concatenated_capture_unsplit_is_flagged() -> None:
    ids = rule_ids(check(load_capture("openai-shell-tool.1.jsonl")))
    assert {"CREATED-ONCE", "AFTER-TERMINAL", "SEQ-STEP"} <= ids


# --- garbage in, violations out (never an exception) --------------------------------------------------------

_SOURCES = [
    "openai-file-search-tool.2.jsonl",
    "openai-mcp-tool-approval.4.jsonl",
    "openai-shell-container.1.jsonl",
    "openai-image-generation-tool.1.jsonl",
    "openai-error.1.jsonl",
    "issue-18970-programmatic-approval.1.jsonl",
]
_EVENTS = {name: load_capture(name) for name in _SOURCES}
_EVENTS["synthetic"] = [*seq(valid()), *seq(shell_stream()), *seq(image_stream())]


def _assert_well_formed(found: list[Violation], n: int) -> None:
    assert isinstance(found, list)
    for v in found:
        assert isinstance(v, Violation)
        assert v.rule_id in RULES_BY_ID and v.severity == RULES_BY_ID[v.rule_id].severity
        assert 0 <= v.index <= n
        assert isinstance(v.message, str) and v.message
        str(v)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), source=st.sampled_from(sorted(_EVENTS)))
def test_reordered_deleted_duplicated_events_never_raise(data: st.DataObject, source: str) -> None:
    events = _EVENTS[source]
    picks = data.draw(st.lists(st.integers(0, len(events) - 1), max_size=2 * len(events) + 2))
    stream = [events[i] for i in picks]
    _assert_well_formed(check(stream), len(stream))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), source=st.sampled_from(sorted(_EVENTS)))
def test_permutations_never_raise_and_are_flagged(data: st.DataObject, source: str) -> None:
    events = _EVENTS[source]
    stream = data.draw(st.permutations(events))
    found = check(stream)
    _assert_well_formed(found, len(stream))
    if len(stream) > 1 and stream[0].type != "response.created":
        assert "START-CREATED" in rule_ids(found)


_small = st.integers(-1, 3)
_ids = st.sampled_from(["a", "b", "c", ""])
_text = st.text(max_size=3)
_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["output_text", "refusal", "summary_text", "reasoning_text", "mystery"])},
    optional={"text": _text, "refusal": _text, "annotations": st.just([])},
)
_items = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["message", "function_call", "reasoning", "shell_call", "mcp_call", "program"]
        ),
        "id": _ids,
    },
    optional={
        "content": st.lists(_parts, max_size=2),
        "summary": st.lists(_parts, max_size=2),
        "arguments": _text,
        "status": st.sampled_from(["in_progress", "completed"]),
        "action": st.fixed_dictionaries({"commands": st.lists(_text, max_size=2)}),
    },
)
_responses = st.fixed_dictionaries(
    {"id": _ids, "status": st.sampled_from(["in_progress", "completed", "failed", "incomplete", "queued"])},
    optional={"output": st.lists(_items, max_size=2), "error": st.none()},
)
_event_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(ALL_EVENT_TYPES | {"response.unheard_of"}))},
    optional={
        "sequence_number": _small,
        "output_index": _small,
        "item_id": _ids,
        "content_index": _small,
        "summary_index": _small,
        "command_index": _small,
        "annotation_index": _small,
        "partial_image_index": _small,
        "delta": _text,
        "text": _text,
        "arguments": _text,
        "refusal": _text,
        "command": _text,
        "item": _items,
        "part": _parts,
        "response": _responses,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event_dicts, max_size=25))
def test_random_events_never_raise(dicts: list[dict[str, Any]]) -> None:
    stream = [decode_event_obj(d, lenient=True) for d in dicts]
    _assert_well_formed(check(stream), len(stream))


def test_non_events_never_raise() -> None:
    found = check([None, 3, "response.created", {"type": "response.created"}, object()])
    assert {v.rule_id for v in found} <= {"TYPE-SCHEMA", "END-TERMINAL"}
    assert "TYPE-SCHEMA" in rule_ids(found)
