"""An event copied by ``codec.replace_event`` with its resources changed (the relay's terminal event: the final
response in place of the upstream's) is marked done for ``keep_wires``: its resources' wires are what its own wire
was built from, so the Accumulator does not walk and compare them again. These tests say what must still hold:
what the Accumulator shows is what the copy encodes to, provider extras and nested changes included, and a copy
whose resources were never read (an event that ``keep_wires`` has not seen) still has its wires read.
"""

from __future__ import annotations

import json
from typing import Any

from headwater.protocol import resources as rs
from headwater.protocol.accumulate import Accumulator
from headwater.protocol.codec import decode_event, encode_event, encode_response, keep_wires, replace_event
from headwater.protocol.relay import ResponseRelay
from headwater.protocol.resources import Response


def _payload(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


PART = {"type": "output_text", "text": "upstream text", "annotations": [], "part_note": "p"}
ITEM = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": [PART],
        "item_note": "i"}
USAGE = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
         "output_tokens_details": {"reasoning_tokens": 0}, "usage_note": "u"}


def _response(status: str, output: list[Any], usage: Any = None) -> dict[str, Any]:
    return {"id": "resp_up", "object": "response", "created_at": 1, "status": status, "model": "m",
            "output": output, "usage": usage, "copilot_usage": {"x": 1}}


CREATED = _payload({"type": "response.created", "sequence_number": 0, "response": _response("in_progress", [])})
ITEM_DONE = _payload({"type": "response.output_item.done", "sequence_number": 1, "output_index": 0, "item": ITEM})
COMPLETED = _payload(
    {"type": "response.completed", "sequence_number": 2, "response": _response("completed", [ITEM], USAGE)}
)


def _accumulated(*events: Any) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    return acc


def _shown(acc: Accumulator) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(encode_response(acc.response))
    return out


def test_a_copy_of_an_event_not_yet_read_still_has_its_wires_read() -> None:
    """``replace_event`` of a terminal event ``keep_wires`` has not seen, its response kept (only renumbered):
    the Accumulator reads its items' and usage's wires from the copy, the provider's extras survive."""
    completed = decode_event(COMPLETED)
    copy = replace_event(completed, sequence_number=1)  # type: ignore[arg-type]
    shown = _shown(_accumulated(decode_event(CREATED), copy))
    assert shown["output"] == [ITEM]
    assert shown["usage"] == USAGE


def test_a_renumbered_copy_of_a_read_event_shows_what_it_encodes_to() -> None:
    """The relay's path for an item event: the upstream's event read (``keep_wires``), then renumbered."""
    done = decode_event(ITEM_DONE)
    keep_wires(done)
    copy = replace_event(done, sequence_number=5)  # type: ignore[arg-type]
    acc = _accumulated(decode_event(CREATED), copy)
    assert json.loads(encode_event(copy))["item"] == ITEM
    assert rs.to_builtins(acc.item(0)) == ITEM


def _final(status: str = "completed") -> tuple[Any, Response]:
    """The upstream's terminal event (read) and a final response unlike its own: the items of another event
    (with their wires), one of them changed inside (its part's text), another with no wire, the upstream's
    usage; as the relay makes it from what it accumulated."""
    completed = decode_event(COMPLETED)
    keep_wires(completed)
    done = decode_event(ITEM_DONE)
    keep_wires(done)
    item = done.item  # type: ignore[attr-defined]
    changed = rs.replace(item, content=[rs.replace(item.content[0], text="the deltas' text")])
    plain = rs.Message(id="msg_2", status="completed", content=[rs.OutputText(text="built here")])
    final = rs.replace(
        completed.response,  # type: ignore[attr-defined]
        id="resp_mine",
        status=status,
        output=[changed, plain],
    )
    return completed, final


def test_a_terminal_event_with_its_response_replaced_shows_what_it_encodes_to() -> None:
    completed, final = _final()
    relayed = replace_event(completed, sequence_number=1, response=final)
    acc = _accumulated(decode_event(CREATED), relayed)
    sent = json.loads(encode_event(relayed))["response"]
    shown = _shown(acc)
    assert shown["output"] == sent["output"]
    assert shown["usage"] == sent["usage"] == USAGE
    assert sent["output"][0] == {**ITEM, "content": [{**PART, "text": "the deltas' text"}]}  # extras kept
    assert sent["output"][1] == rs.to_builtins(final.output[1])  # nothing invented
    # Key order too, and the same as an Accumulator that walks and compares the copy's wire.
    completed, final = _final()
    walked = replace_event(completed, sequence_number=1, response=final)
    walked.__dict__.pop("_wires", None)
    assert json.dumps(shown) == json.dumps(_shown(_accumulated(decode_event(CREATED), walked)))


def test_a_terminal_event_read_camel_case_has_its_wires_read() -> None:
    """An event that remembers a wire of its own from decoding (camelCase) is not one ``replace_event`` built:
    its resources' wires are still read from it."""
    camel = json.dumps({"type": "response.completed", "sequenceNumber": 1,
                        "response": {**_response("completed", [ITEM], USAGE), "createdAt": 1}}).encode()
    shown = _shown(_accumulated(decode_event(CREATED), decode_event(camel, camel=True)))
    assert shown["output"] == [ITEM]
    assert shown["usage"] == USAGE


def _deltas_stream() -> list[bytes]:
    """An upstream stream whose done item disagrees with its deltas (the relay takes the deltas' text) and
    whose items, parts, usage and response carry fields Headwater does not model."""
    msg = "msg_up"
    part = {**PART, "text": ""}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response("in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**ITEM, "id": msg, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", "item_id": msg, "output_index": 0, "content_index": 0, "part": part},
        {"type": "response.output_text.delta", "item_id": msg, "output_index": 0, "content_index": 0,
         "delta": "Hello", "logprobs": []},
        {"type": "response.output_text.delta", "item_id": msg, "output_index": 0, "content_index": 0,
         "delta": " there", "logprobs": []},
        {"type": "response.output_text.done", "item_id": msg, "output_index": 0, "content_index": 0,
         "text": "Hello there", "logprobs": []},
        {"type": "response.content_part.done", "item_id": msg, "output_index": 0, "content_index": 0,
         "part": {**PART, "text": "Hello there"}},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {**ITEM, "id": msg, "content": [{**PART, "text": "Hello, wrong"}]}},
        {"type": "response.completed",
         "response": _response("completed", [{**ITEM, "id": msg, "content": [PART]}], USAGE)},
    ]
    return [_payload({"type": e["type"], "sequence_number": n, **e}) for n, e in enumerate(events)]


def test_the_relayed_terminal_event_is_what_the_relay_accumulated() -> None:
    relay = ResponseRelay(Response(id="resp_mine", model="m", created_at=1), clock=lambda: 2.0)
    out = relay.start()
    for payload in _deltas_stream():
        out += relay.feed(decode_event(payload))
    assert out[-1].type == "response.completed"
    sent = json.loads(encode_event(out[-1]))["response"]
    shown = json.loads(encode_response(relay.response))
    assert json.dumps(shown["output"]) == json.dumps(sent["output"])
    assert sent["output"] == [{**ITEM, "id": "msg_up", "content": [{**PART, "text": "Hello there"}]}]
    assert shown["usage"] == sent["usage"] == USAGE
    assert sent["copilot_usage"] == {"x": 1}
