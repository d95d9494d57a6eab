"""Typed decoding and encoding of single event payloads: the seed's vectors, the spec's types, forward
compatibility, the two error shapes, and typed decode errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from headwater.protocol import codec, wires
from headwater.protocol import events as ev
from headwater.protocol import resources as rs
from headwater.protocol.codec import (
    decode_event,
    encode_event,
    event_to_builtins,
    replace_event,
    to_camel,
    to_snake,
)
from headwater.protocol.errors import DecodeError

FIXTURES = Path(__file__).parent / "fixtures"
SEED = FIXTURES / "seed" / "openresponses-stream-event.md"
SPEC = FIXTURES / "spec" / "openresponses-openapi-2026-04-24.json"
CAPTURES = sorted((FIXTURES / "captures" / "openai").glob("*.jsonl"))


def seed_examples() -> list[tuple[str, dict]]:
    """The seed's 27 TypeScript examples, read straight from the document as camelCase objects."""
    text = SEED.read_text()
    blocks = re.findall(r"### `models\.(\w+)`\s*```typescript\n(.*?)```", text, re.S)
    out = []
    for name, body in blocks:
        literal = body[body.index("=") + 1 :].strip().rstrip(";")
        literal = re.sub(r"(\n\s*)([A-Za-z_]\w*):", r'\1"\2":', literal)  # bare keys -> JSON keys
        literal = re.sub(r",(\s*[}\]])", r"\1", literal)  # trailing commas
        out.append((name, json.loads(literal)))
    return out


SEED_EXAMPLES = seed_examples()

# The seed's model name -> the class it must decode into.
SEED_CLASSES = {
    "OpenResponsesStreamEventResponseCreated": ev.ResponseCreated,
    "OpenResponsesStreamEventResponseInProgress": ev.ResponseInProgress,
    "OpenResponsesStreamEventResponseCompleted": ev.ResponseCompleted,
    "OpenResponsesStreamEventResponseIncomplete": ev.ResponseIncomplete,
    "OpenResponsesStreamEventResponseFailed": ev.ResponseFailed,
    "OpenResponsesErrorEvent": ev.ErrorEvent,
    "OpenResponsesStreamEventResponseOutputItemAdded": ev.ResponseOutputItemAdded,
    "OpenResponsesStreamEventResponseOutputItemDone": ev.ResponseOutputItemDone,
    "OpenResponsesStreamEventResponseContentPartAdded": ev.ResponseContentPartAdded,
    "OpenResponsesStreamEventResponseContentPartDone": ev.ResponseContentPartDone,
    "OpenResponsesStreamEventResponseOutputTextDelta": ev.ResponseOutputTextDelta,
    "OpenResponsesStreamEventResponseOutputTextDone": ev.ResponseOutputTextDone,
    "OpenResponsesStreamEventResponseRefusalDelta": ev.ResponseRefusalDelta,
    "OpenResponsesStreamEventResponseRefusalDone": ev.ResponseRefusalDone,
    "OpenResponsesStreamEventResponseOutputTextAnnotationAdded": ev.ResponseOutputTextAnnotationAdded,
    "OpenResponsesStreamEventResponseFunctionCallArgumentsDelta": ev.FunctionCallArgumentsDelta,
    "OpenResponsesStreamEventResponseFunctionCallArgumentsDone": ev.FunctionCallArgumentsDone,
    "OpenResponsesReasoningDeltaEvent": ev.ResponseReasoningTextDelta,
    "OpenResponsesReasoningDoneEvent": ev.ResponseReasoningTextDone,
    "OpenResponsesReasoningSummaryPartAddedEvent": ev.ResponseReasoningSummaryPartAdded,
    "OpenResponsesStreamEventResponseReasoningSummaryPartDone": ev.ResponseReasoningSummaryPartDone,
    "OpenResponsesReasoningSummaryTextDeltaEvent": ev.ResponseReasoningSummaryTextDelta,
    "OpenResponsesReasoningSummaryTextDoneEvent": ev.ResponseReasoningSummaryTextDone,
    "OpenResponsesImageGenCallInProgress": ev.ImageGenerationCallInProgress,
    "OpenResponsesImageGenCallGenerating": ev.ImageGenerationCallGenerating,
    "OpenResponsesImageGenCallPartialImage": ev.ImageGenerationCallPartialImage,
    "OpenResponsesImageGenCallCompleted": ev.ImageGenerationCallCompleted,
}


def test_seed_has_27_examples_and_all_are_mapped() -> None:
    assert len(SEED_EXAMPLES) == 27
    assert {name for name, _ in SEED_EXAMPLES} == set(SEED_CLASSES)


@pytest.mark.parametrize(("name", "obj"), SEED_EXAMPLES, ids=[name for name, _ in SEED_EXAMPLES])
def test_seed_example_decodes_in_camel_mode_and_round_trips(name: str, obj: dict) -> None:
    event = decode_event(json.dumps(obj).encode(), camel=True)
    assert type(event) is SEED_CLASSES[name]
    assert event.type == obj["type"]
    assert event.sequence_number == obj["sequenceNumber"]
    # camelCase in, the wire's snake_case out, and back to the same camelCase object.
    wire = json.loads(encode_event(event))
    assert "sequence_number" in wire and "sequenceNumber" not in wire
    assert to_camel(wire) == obj
    # The snake_case wire form decodes on the fast path into an equal event.
    again = decode_event(encode_event(event))
    assert again == event


def test_seed_numbers_typed_number_accept_fractions() -> None:
    by_name = dict(SEED_EXAMPLES)
    image = decode_event(json.dumps(by_name["OpenResponsesImageGenCallPartialImage"]).encode(), camel=True)
    assert isinstance(image, ev.ImageGenerationCallPartialImage)
    assert image.output_index == 4078.33 and image.partial_image_index == 6154.36
    created = decode_event(json.dumps(by_name["OpenResponsesStreamEventResponseCreated"]).encode(), camel=True)
    assert isinstance(created, ev.ResponseCreated)
    assert created.response.max_tool_calls == 6635.84
    usage = created.response.usage
    assert usage is not None and usage.cost == 0.0012 and usage.is_byok is False
    assert isinstance(usage.cost_details, rs.CostDetails)
    assert usage.cost_details.upstream_inference_input_cost == 0.0008


def test_spec_event_types_all_have_classes() -> None:
    spec = json.loads(SPEC.read_text())
    schemas = spec["components"]["schemas"]
    spec_types = set()
    for name, schema in schemas.items():
        if name.endswith("StreamingEvent"):
            spec_types.update(schema["properties"]["type"]["enum"])
    assert len(spec_types) == 24
    assert spec_types <= ev.ALL_EVENT_TYPES
    assert {"response.queued", "response.reasoning.delta", "response.reasoning.done"} <= spec_types


def test_every_capture_event_decodes_typed_and_reencodes_byte_for_byte() -> None:
    count = 0
    for path in CAPTURES:
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            event = decode_event(line)
            assert not isinstance(event, ev.UnknownEvent), (path.name, event.type)
            assert encode_event(event) == line
            count += 1
    assert count == 3928


def test_provider_extras_survive_decode_then_encode() -> None:
    payload = (
        b'{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,'
        b'"content_index":0,"delta":"Hi","logprobs":[],"obfuscation":"a1b2","copilot_usage":{"n":1}}'
    )
    event = decode_event(payload)
    assert isinstance(event, ev.ResponseOutputTextDelta)
    assert event.obfuscation == "a1b2"
    assert encode_event(event) == payload
    renumbered = replace_event(event, sequence_number=9)
    out = json.loads(encode_event(renumbered))
    assert out["sequence_number"] == 9
    assert out["copilot_usage"] == {"n": 1} and out["obfuscation"] == "a1b2"
    assert {k: v for k, v in out.items() if k != "sequence_number"} == {
        k: v for k, v in json.loads(payload).items() if k != "sequence_number"
    }


def test_replace_keeps_nested_provider_fields() -> None:
    payload = (
        b'{"type":"response.completed","sequence_number":3,"response":{"id":"resp_1","object":"response",'
        b'"created_at":1,"status":"completed","model":"m","output":[],"moderation":{"flagged":false}}}'
    )
    event = replace_event(decode_event(payload), sequence_number=7)  # type: ignore[arg-type]
    out = json.loads(encode_event(event))
    assert out["response"]["moderation"] == {"flagged": False}
    assert out["sequence_number"] == 7


def test_unknown_event_type_keeps_type_and_payload() -> None:
    payload = b'{"type":"response.audio.delta","sequence_number":5,"delta":"AAAA","extra":[1,2]}'
    event = decode_event(payload)
    assert isinstance(event, ev.UnknownEvent)
    assert event.type == "response.audio.delta"
    assert event.sequence_number == 5
    assert event.data == json.loads(payload)
    assert event.problem is None
    assert encode_event(event) == payload


def test_unknown_item_and_part_types_decode_to_unknown_stand_ins() -> None:
    payload = json.dumps(
        {
            "type": "response.output_item.done",
            "sequence_number": 3,
            "output_index": 0,
            "item": {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "a", "annotations": [{"type": "page_ref", "page": 3}]},
                    {"type": "output_audio", "transcript": "hi"},
                ],
            },
        }
    ).encode()
    event = decode_event(payload)
    assert isinstance(event, ev.ResponseOutputItemDone)
    assert isinstance(event.item, rs.Message)
    first, second = event.item.content
    assert isinstance(first, rs.OutputText) and first.text == "a"
    assert isinstance(first.annotations[0], rs.UnknownAnnotation)
    assert first.annotations[0].data == {"type": "page_ref", "page": 3}
    assert isinstance(second, rs.UnknownPart) and second.type == "output_audio"
    assert encode_event(event) == payload
    # Built without raw bytes, the unknown objects still encode as they came.
    assert json.loads(msgspec.json.encode(event_to_builtins(replace_event(event, sequence_number=3)))) == (
        json.loads(payload)
    )


def test_unknown_item_in_real_capture() -> None:
    last = (FIXTURES / "captures/openai/programmatic-tool-calling.1.jsonl").read_bytes().splitlines()[-1]
    event = decode_event(last)
    assert isinstance(event, ev.ResponseCompleted)
    kinds = [type(item).__name__ for item in event.response.output]
    assert "UnknownItem" in kinds
    unknown = next(i for i in event.response.output if isinstance(i, rs.UnknownItem))
    assert unknown.type == "program" and unknown.id and unknown.call_id.startswith("call_")


def test_error_event_top_level_shape() -> None:
    event = decode_event(
        b'{"type":"error","code":"rate_limit_exceeded","message":"Slow down","param":null,"sequence_number":2}'
    )
    assert isinstance(event, ev.ErrorEvent)
    assert (event.error_code, event.error_message, event.error_param) == ("rate_limit_exceeded", "Slow down", None)


def test_error_event_nested_shape_from_openai() -> None:
    line = next(
        line
        for line in (FIXTURES / "captures/openai/openai-error.1.jsonl").read_bytes().splitlines()
        if b'"type":"error"' in line
    )
    event = decode_event(line)
    assert isinstance(event, ev.ErrorEvent)
    assert event.error_code == "insufficient_quota"
    assert event.error_message.startswith("You exceeded your current quota")
    assert isinstance(event.error, ev.ErrorPayload) and event.error.type == "insufficient_quota"


def test_wrong_field_type_is_a_typed_error_naming_type_sequence_and_path() -> None:
    payload = (
        b'{"type":"response.output_text.delta","sequence_number":12,"item_id":"m","output_index":"zero",'
        b'"content_index":0,"delta":"x"}'
    )
    with pytest.raises(DecodeError) as info:
        decode_event(payload)
    err = info.value
    assert err.event_type == "response.output_text.delta"
    assert err.sequence_number == 12
    assert "$.output_index" in str(err)
    assert "response.output_text.delta" in str(err) and "12" in str(err)


def test_nested_wrong_field_type_names_the_nested_path() -> None:
    payload = json.dumps(
        {
            "type": "response.completed",
            "sequence_number": 9,
            "response": {"id": "r", "usage": {"input_tokens": "many"}},
        }
    ).encode()
    with pytest.raises(DecodeError, match=r"\$\.response\.usage\.input_tokens"):
        decode_event(payload)


def test_lenient_mode_keeps_a_misfit_event_raw() -> None:
    payload = (
        b'{"type":"response.output_text.delta","sequence_number":12,"item_id":"m","output_index":"zero",'
        b'"content_index":0,"delta":"x"}'
    )
    event = decode_event(payload, lenient=True)
    assert isinstance(event, ev.UnknownEvent)
    assert event.type == "response.output_text.delta"
    assert event.problem is not None and "$.output_index" in event.problem
    assert event.data == json.loads(payload)
    assert encode_event(event) == payload


def test_invalid_json_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_event(b'{"type": "response.created", ')


@pytest.mark.parametrize("payload", [b"[1, 2]", b'{"sequence_number": 1}', b'{"type": 7}'])
def test_payload_without_a_string_type_is_rejected(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event(payload)


def test_missing_sequence_number_decodes_as_none() -> None:
    event = decode_event(b'{"type":"response.output_item.added","output_index":0,"item":{"type":"message"}}')
    assert isinstance(event, ev.ResponseOutputItemAdded)
    assert event.sequence_number is None


def test_camel_conversion_leaves_free_form_maps_alone() -> None:
    obj = {"metadata": {"userId": "a"}, "maxToolCalls": 3, "tools": [{"parameters": {"someField": 1}}]}
    snake = to_snake(obj)
    assert snake == {"metadata": {"userId": "a"}, "max_tool_calls": 3, "tools": [{"parameters": {"someField": 1}}]}
    assert to_camel(snake) == obj


def test_events_are_immutable() -> None:
    event = decode_event(
        b'{"type":"response.refusal.delta","sequence_number":1,"item_id":"m","output_index":0,'
        b'"content_index":0,"delta":"no"}'
    )
    with pytest.raises(AttributeError):
        event.sequence_number = 2  # type: ignore[misc]


def test_camel_mode_keeps_user_owned_keys_and_reads_acronyms() -> None:
    payload = {
        "type": "response.output_item.added",
        "outputIndex": 0,
        "sequenceNumber": 1,
        "item": {
            "type": "mcp_list_tools",
            "id": "mcpl_1",
            "serverLabel": "files",
            "tools": [{"name": "read", "inputSchema": {"properties": {"fileName": {"type": "string"}}}}],
        },
    }
    event = decode_event(json.dumps(payload).encode(), camel=True)
    assert isinstance(event, ev.ResponseOutputItemAdded) and isinstance(event.item, rs.McpListTools)
    assert event.item.server_label == "files"
    assert event.item.tools[0]["input_schema"]["properties"] == {"fileName": {"type": "string"}}
    shell = decode_event(
        b'{"type":"response.output_item.added","outputIndex":0,"sequenceNumber":1,"item":{"type":"local_shell_call",'
        b'"callId":"c","action":{"type":"exec","command":["ls"],"env":{"myVar":"1"}}}}',
        camel=True,
    )
    assert json.loads(encode_event(shell))["item"]["action"]["env"] == {"myVar": "1"}
    acronym = decode_event(
        b'{"type":"response.refusal.delta","outputIndex":0,"itemID":"m","contentIndex":0,"delta":"no","sequenceNumber":2}',
        camel=True,
    )
    assert isinstance(acronym, ev.ResponseRefusalDelta) and acronym.item_id == "m"


# --- fidelity: resources remember the JSON they came from ------------------------------------------------------


def test_a_resource_from_a_provider_encodes_as_it_was_sent() -> None:
    from headwater.protocol.resources import (
        Message,
        UrlCitation,
        Usage,
        has_wire,
        keep_wire,
        replace,
        to_builtins,
    )

    wire = {"type": "url_citation", "url": "https://x.example", "provider_rank": 3}
    citation = msgspec.convert(wire, UrlCitation)
    assert msgspec.to_builtins(citation)["title"] == ""  # what a Struct alone would invent
    keep_wire(citation, wire)
    assert to_builtins(citation) == wire  # no title/start_index/end_index invented, the extra kept
    moved = replace(citation, url="https://y.example", title="Y")  # changed on purpose: shown
    assert to_builtins(moved) == {"type": "url_citation", "url": "https://y.example", "provider_rank": 3, "title": "Y"}
    message_wire = {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "hi", "annotations": [wire]}], "phase_hint": "x"}
    message = msgspec.convert(message_wire, Message)
    keep_wire(message, message_wire)
    assert has_wire(message) and to_builtins(message) == message_wire
    usage_wire = {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4,
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 2}, "num_sources_used": 1}
    usage = msgspec.convert(usage_wire, Usage)
    keep_wire(usage, usage_wire)
    assert to_builtins(usage) == usage_wire  # no output_tokens_details invented either
    plain = msgspec.convert(usage_wire, Usage)
    assert not has_wire(plain) and "num_sources_used" not in to_builtins(plain)


def _keep_wires_eagerly(event: ev.Event) -> None:
    """``codec.keep_wires`` as it was before the wires were read lazily: decode the payload, ``keep_wire`` now."""
    if type(event) is ev.UnknownEvent or "_wires" in event.__dict__:
        return
    names = [name for name in ("item", "part", "annotation", "response") if getattr(event, name, None) is not None]
    event.__dict__["_wires"] = True
    wire = event_to_builtins(event)
    for name in names:
        value = getattr(event, name)
        if name == "response":
            raw = wire.get("response")
            if isinstance(raw, dict):
                rs.keep_wire(value.output, raw.get("output"))
                if value.usage is not None:
                    rs.keep_wire(value.usage, raw.get("usage"))
        else:
            rs.keep_wire(value, wire.get(name))


def _resources(event: ev.Event) -> list[object]:
    """Every resource inside an event (items, parts, annotations, usage, and what they hold), depth first."""
    out: list[object] = []

    def walk(obj: object) -> None:
        if isinstance(obj, list):
            for value in obj:
                walk(value)
        elif isinstance(obj, msgspec.Struct):
            out.append(obj)
            for name in obj.__struct_fields__:
                walk(getattr(obj, name))

    for name in ("item", "part", "annotation"):
        walk(getattr(event, name, None))
    response = getattr(event, "response", None)
    if response is not None:
        walk(response.output)
        walk(response.usage)
    return out


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_wires_read_lazily_are_the_wires_kept_eagerly(path: Path) -> None:
    """Every resource of every captured event remembers, through ``keep_wires``, what ``keep_wire`` would have
    made it remember, read first on a copy (``replace``, as the Accumulator takes them) or on the resource."""
    from headwater.protocol.codec import keep_wires

    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        lazy, eager = decode_event(line), decode_event(line)
        keep_wires(lazy)
        _keep_wires_eagerly(eager)
        pairs = list(zip(_resources(lazy), _resources(eager), strict=True))
        copies = [(rs.replace(mine), theirs) for mine, theirs in pairs[::2]]  # read through a copy first
        for mine, theirs in copies + pairs:
            assert rs.has_wire(mine) == rs.has_wire(theirs)
            assert rs.to_builtins(mine) == rs.to_builtins(theirs)
            assert json.dumps(rs.to_builtins(mine)) == json.dumps(rs.to_builtins(theirs))  # key order too


def _kept_eagerly(line: bytes) -> ev.Event:
    event = decode_event(line)
    _keep_wires_eagerly(event)  # marks the event as done (``_wires``): the Accumulator's keep_wires leaves it
    assert "_wires" in event.__dict__ or not codec._nested_of(type(event))
    return event


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_the_accumulated_response_is_the_same_with_lazy_wires(path: Path) -> None:
    # (The eager wires are kept before each event is fed, not by patching the Accumulator's keep_wires: compiled,
    # it calls the compiled one natively, which no patch of a module attribute reaches.)
    from headwater.protocol import accumulate
    from headwater.protocol.codec import encode_response

    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    lazy = accumulate.accumulate(decode_event(line) for line in lines)
    eager = accumulate.accumulate(_kept_eagerly(line) for line in lines)
    assert encode_response(lazy.response) == encode_response(eager.response)
    assert lazy.problems == eager.problems


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_decoding_and_accumulating_a_capture_makes_no_reference_cycle(path: Path) -> None:
    """Everything a decoded, accumulated stream built is freed by reference counting as soon as it is dropped
    (the lazy wires hold a copy of their object, not the object): none of it waits for the cyclic GC."""
    import gc

    from headwater.protocol.accumulate import accumulate
    from headwater.protocol.codec import encode_response

    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    encode_response(accumulate(decode_event(line) for line in lines).response)  # fills caches (msgspec's own
    gc.collect()  # introspection of a class, once, makes cycles)
    gc.disable()
    try:
        acc = accumulate(decode_event(line) for line in lines)
        encode_response(acc.response)  # the lazy wires resolved too
        del acc
        assert gc.collect() == 0
    finally:
        gc.enable()


def _builtins_field_by_field(obj: object) -> object:
    """``resources.to_builtins`` as it was written first (every field of every object walked in Python): the
    reference the one-walk conversion must equal, key order included."""
    if isinstance(obj, list):
        return [_builtins_field_by_field(value) for value in obj]
    if isinstance(obj, dict):
        return {key: _builtins_field_by_field(value) for key, value in obj.items()}
    if not isinstance(obj, msgspec.Struct):
        return msgspec.to_builtins(obj, enc_hook=rs._enc_hook)
    cls = type(obj)
    wire = rs._wire_of(obj)
    out: dict[str, object] = {}
    tag = cls.__struct_config__.tag
    if tag is not None:
        out[cls.__struct_config__.tag_field or "type"] = tag
    defaults = wires.defaults_of(cls) if wire is not None else {}
    for name in cls.__struct_fields__:
        value = getattr(obj, name)
        if value is msgspec.UNSET:
            continue
        if wire is not None and name not in wire and name in defaults and value == defaults[name]:
            continue
        out[name] = _builtins_field_by_field(value) if isinstance(value, (msgspec.Struct, list, dict)) else value
    if wire is not None:
        fields = cls.__struct_fields__
        merged = {key: out.get(key, value) for key, value in wire.items() if key in out or key not in fields}
        merged.update((key, value) for key, value in out.items() if key not in merged)
        return merged
    return out


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_to_builtins_is_the_field_by_field_walk(path: Path) -> None:
    """On every captured event's resources and on the accumulated response (wires at every depth, and none)."""
    from headwater.protocol import accumulate
    from headwater.protocol.codec import keep_wires

    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    built = accumulate.accumulate(decode_event(line) for line in lines).response
    objects: list[object] = [built, built.output, rs.replace(built, output=[])]
    for line in lines:
        event = decode_event(line)
        keep_wires(event)
        objects.extend(_resources(event))
    for obj in objects:
        assert json.dumps(rs.to_builtins(obj)) == json.dumps(_builtins_field_by_field(obj))
