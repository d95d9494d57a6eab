"""ResponsesBackend and ResponseRelay against real HTTP upstreams on loopback that replay recorded Responses
streams: the captured OpenAI / Azure / Copilot streams (``tests/fixtures/captures/openai``) and hand-written
streams with the defects other servers were reported to have (``tests/fixtures/upstream/responses``).

Each relayed stream is SSE-encoded and decoded again (as a client sees it), checked with
``conformance.check`` (no finding at all) and folded with an ``Accumulator``. Regression tests carry the name
of the report they guard against: SGLang issues 12644 (output_index from 1) and 12652 (no output_item.done for
a function call), litellm PR 28899 (non-monotonic sequence numbers); and vLLM's reasoning and message sharing
output_index 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.codec import decode_event_obj, encode_event, event_to_builtins
from headwater.protocol.conformance import check, split_responses
from headwater.protocol.events import Event
from headwater.protocol.relay import ResponseRelay
from headwater.protocol.resources import FunctionCall, Message, ReasoningItem, Response
from headwater.protocol.sse import encode_frame
from headwater.protocol.stream import encode_sse, iter_events
from headwater.protocol.writer import ResponseWriter
from headwater.server.backends.base import (
    BackendError,
    ChatMessage,
    Finish,
    GenerationRequest,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.responses import ResponsesBackend, responses_request
from headwater.server.runs import Run
from test_upstream_replay import (
    CAPTURES,
    FIXTURES,
    Drop,
    ReplayUpstream,
    Reply,
    capture_as_sse,
    events_of,
    fixture,
    json_reply,
    pieces_of,
    sse_reply,
)

RESPONSE_ID = "resp_headwater_0001"


def ask(text: str = "hi", **options: Any) -> GenerationRequest:
    return GenerationRequest(
        model=options.pop("model", "gpt-test"), messages=[ChatMessage("user", text)], **options
    )


def as_client_sees(events: Iterable[Event]) -> list[Event]:
    return list(iter_events([b"".join(encode_sse(e) for e in events)]))


async def relay_run(
    backend: ResponsesBackend, request: GenerationRequest | None = None, *, queued: bool = False
) -> tuple[list[Event], ResponseRelay]:
    """What the run driver does with a passthrough backend (see docs/upstreams.md): write with the backend's
    relay; feed it every upstream event; close it when the events end; fail it on a BackendError."""
    request = request or ask()
    relay = backend.relay(ResponseWriter(Response(id=RESPONSE_ID, model=request.model)))
    out = relay.start(queued=queued)
    try:
        async for event in backend.events(request):
            out += relay.feed(event)
        out += relay.close()
    except BackendError as exc:
        out += relay.fail(exc.code, exc.message)
    return as_client_sees(out), relay


def relay_all(events: Iterable[Event], **options: Any) -> list[Event]:
    relay = ResponseRelay(Response(id=RESPONSE_ID, model="m"), **options)
    out = relay.start()
    for event in events:
        out += relay.feed(event)
    return as_client_sees(out + relay.close())


def accumulate(events: Iterable[Event]) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    return acc


def summary(output: Iterable[Any]) -> list[tuple[Any, ...]]:
    """What an output says, ids aside: item types, texts, calls."""
    out: list[tuple[Any, ...]] = []
    for item in output:
        if isinstance(item, Message):
            out.append(("message", [getattr(p, "text", getattr(p, "refusal", None)) for p in item.content]))
        elif isinstance(item, ReasoningItem):
            out.append(("reasoning", [p.text for p in item.summary], [p.text for p in item.content or []]))
        elif isinstance(item, FunctionCall):
            out.append(("function_call", item.call_id, item.name, item.arguments))
        else:
            out.append((getattr(item, "type", None),))
    return out


async def replay(
    data: bytes, request: GenerationRequest | None = None, **options: Any
) -> tuple[list[Event], ResponseRelay, ReplayUpstream]:
    async with ReplayUpstream([sse_reply(data)]) as upstream:
        backend = ResponsesBackend(upstream.url, "sk-up", **options)
        try:
            events, relay = await relay_run(backend, request)
        finally:
            await backend.aclose()
    return events, relay, upstream


# --- counting input tokens --------------------------------------------------------------------------------


async def test_input_tokens_are_counted_by_the_upstream() -> None:
    answer = json_reply(200, b'{"object": "response.input_tokens", "input_tokens": 42}')
    async with ReplayUpstream([answer, json_reply(404, b'{"error": {"message": "no such route"}}')]) as upstream:
        backend = ResponsesBackend(upstream.url, "sk-up", model="gpt-5-mini")
        try:
            request = ask("count me", temperature=0.2, max_output_tokens=99, verbosity="low",
                          tools=[{"name": "f", "parameters": {"type": "object"}}])
            assert await backend.count_tokens(request) == 42
            with pytest.raises(BackendError) as caught:
                await backend.count_tokens(request)
        finally:
            await backend.aclose()
    sent = upstream.requests[0]
    assert (sent.method, sent.path) == ("POST", "/v1/responses/input_tokens")
    assert sent.headers["authorization"] == "Bearer sk-up"
    # What OpenAI's endpoint takes, and nothing it would refuse (stream, store, sampling fields).
    assert set(sent.body) == {"model", "input", "tools", "text"}
    assert sent.body["text"] == {"verbosity": "low"} and sent.body["model"] == "gpt-test"
    assert "input_tokens" in caught.value.message and caught.value.status == 404


# --- the request ----------------------------------------------------------------------------------------------


async def test_the_full_input_goes_upstream_and_previous_response_id_never_does() -> None:
    request = GenerationRequest(
        model="openai/gpt-4.1-mini",
        messages=[
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Weather in Paris?"),
            ChatMessage(
                "assistant", "", tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": "{}"}]
            ),
            ChatMessage("tool", "18C", tool_call_id="call_1"),
            ChatMessage("assistant", "It is 18C."),
            ChatMessage("user", "And Tokyo?"),
        ],
        tools=[{"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}],
        tool_choice="required",
        temperature=0.5,
        max_output_tokens=100,
        text_format={"type": "json_object"},
        reasoning={"effort": "low", "summary": None},
    )
    data = capture_as_sse(CAPTURES / "issue-20047-openai-responses.jsonl")
    _, _, upstream = await replay(data, request)
    sent = upstream.requests[0]
    assert sent.path == "/v1/responses" and sent.headers["authorization"] == "Bearer sk-up"
    assert sent.body == {
        "model": "openai/gpt-4.1-mini",
        "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "message", "role": "assistant", "content": "It is 18C."},
            {"type": "message", "role": "user", "content": "And Tokyo?"},
        ],
        "stream": True,
        "store": False,
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object"},
                "strict": False,
            }
        ],
        "tool_choice": "required",
        "temperature": 0.5,
        "max_output_tokens": 100,
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low"},
    }


def test_input_items_are_sent_as_they_are_when_the_request_has_them() -> None:
    @dataclass(slots=True)
    class WithItems(GenerationRequest):
        input_items: list[dict[str, Any]] = field(default_factory=list)

    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "data:..."}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
    ]
    request = WithItems(model="m", messages=[ChatMessage("user", "(image)")], input_items=items)
    body = responses_request(
        request, model="m", store=True, extra_body={"include": ["reasoning.encrypted_content"]}
    )
    assert body["input"] == items and body["store"] is True
    assert body["include"] == ["reasoning.encrypted_content"]


# --- the captures, relayed ------------------------------------------------------------------------------------

# Recordings whose done texts disagree with their deltas (anonymized or trimmed upstream): the relay keeps
# what the deltas said, so only these differ from the recording's own final text.
DELTAS_DIFFER = {"azure-gpt5-reasoning-multi-summary-no-encryption.jsonl", "openai-shell-container.1.jsonl"}


def capture_cases() -> list[Any]:
    cases = []
    for path in sorted(CAPTURES.glob("*.jsonl")):
        count = len(split_responses(iter_events([path.read_bytes()], lenient=True)))
        for index in range(count):
            cases.append(pytest.param(path, index, id=f"{path.stem}#{index}"))
    return cases


@pytest.mark.parametrize(("path", "index"), capture_cases())
async def test_every_capture_relays_conformantly(path: Path, index: int) -> None:
    data = capture_as_sse(path, response=index)
    upstream_events = list(iter_events([data], lenient=True))
    events, _, _ = await replay(data)
    assert check(events) == []
    ours = accumulate(events)
    theirs = accumulate(upstream_events)
    theirs.end()
    assert ours.response.id == RESPONSE_ID
    assert ours.status == (theirs.status if theirs.done else "failed")
    if path.name not in DELTAS_DIFFER:
        assert summary(ours.response.output) == summary(_built_output(upstream_events))
    if theirs.response.usage is not None:
        assert ours.response.usage == theirs.response.usage
    # Fidelity, as JSON: the usage is the upstream's own, every provider extra included (cache_write_tokens...)
    # and nothing invented; each item of the terminal snapshot is what its relayed output_item.done said
    # (check()'s TERMINAL-ITEM-FIELDS), itself the upstream's done item but for the relay's rewrites.
    terminal = [event_to_builtins(e) for e in upstream_events if e.type in TERMINAL_TYPES]
    if terminal and events[-1].type == terminal[-1]["type"]:
        assert event_to_builtins(events[-1])["response"].get("usage") == terminal[-1]["response"].get("usage")


TERMINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")


def _built_output(events: list[Event]) -> list[Any]:
    """The items the upstream's events built (its own terminal output can be empty or generic)."""
    acc = Accumulator()
    for event in events:
        if event.type not in ("response.completed", "response.incomplete", "response.failed"):
            acc.feed(event)
    return [item for item in acc.response.output if item is not None]


async def test_a_conformant_upstream_passes_through_byte_for_byte() -> None:
    path = CAPTURES / "openai-reasoning-encrypted-content.1.jsonl"
    data = capture_as_sse(path, response=0)
    payloads = [line.removeprefix(b"data: ") for line in data.splitlines() if line.startswith(b"data: ")]
    events, relay, _ = await replay(data)
    assert relay.repairs == []
    # Ours: created and in_progress (from the template); then every upstream event after the upstream's
    # created / in_progress, unchanged; then the terminal event, which carries this response.
    assert [encode_event(e) for e in events[2:-1]] == payloads[2:-1]
    terminal = json.loads(encode_event(events[-1]))
    assert terminal["response"]["id"] == RESPONSE_ID
    assert all(b"resp_0" not in encode_event(e) for e in events)  # the upstream's response id never shows


async def test_provider_extras_are_kept() -> None:
    data = capture_as_sse(CAPTURES / "github-copilot-id-rotation.1.jsonl")
    events, _, _ = await replay(data)
    assert check(events) == []
    terminal = json.loads(encode_event(events[-1]))
    assert "copilot_usage" in terminal  # an extra of the event
    assert (
        "tool_usage" in terminal["response"] and "prompt_cache_retention" in terminal["response"]
    )  # of the response
    assert terminal["response"]["id"] == RESPONSE_ID
    # Copilot gives every event a new item id: the relay routes them by output_index, under one id each.
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {item.id for item in accumulate(events).response.output}


async def test_obfuscation_fields_pass_through() -> None:
    data = capture_as_sse(CAPTURES / "openai-issue-11239.2.jsonl")
    events, _, _ = await replay(data)
    deltas = [json.loads(encode_event(e)) for e in events if e.type == "response.output_text.delta"]
    upstream = [
        json.loads(line) for line in (CAPTURES / "openai-issue-11239.2.jsonl").read_text().splitlines()
    ]
    upstream_deltas = [e for e in upstream if e["type"] == "response.output_text.delta"]
    assert deltas == upstream_deltas
    assert any("obfuscation" in d for d in deltas) or all("obfuscation" not in d for d in upstream_deltas)


async def test_keep_alive_comments_and_done_are_skipped() -> None:
    data = capture_as_sse(CAPTURES / "issue-20047-openai-responses.jsonl")
    chunks = events_of(data)
    body = [
        b": keep-alive\n\n",
        *[c for chunk in chunks for c in (chunk, b": keep-alive\n\n")],
        b"data: [DONE]\n\n",
    ]
    async with ReplayUpstream([Reply(200, body)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        events, relay = await relay_run(backend)
        await backend.aclose()
    assert check(events) == [] and relay.repairs == []
    assert accumulate(events).status == "completed"


async def _upstream_events(body: list[Any]) -> list[Event]:
    async with ReplayUpstream([Reply(200, body)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        try:
            return [event async for event in backend.events(ask())]
        finally:
            await backend.aclose()


@pytest.mark.parametrize("size", [None, 1, 7, 300, 1 << 20], ids=lambda s: f"cut-{s}")
async def test_the_events_are_the_same_however_the_stream_is_cut(size: int | None) -> None:
    """One event a chunk, a byte a chunk, anywhere, the whole stream in one chunk (decoded as one batch), with
    keep-alives, a blank data line and [DONE] among them: the same events, each with the bytes it came as."""
    data = capture_as_sse(CAPTURES / "openai-reasoning-encrypted-content.1.jsonl", response=0)
    noisy = data.replace(b"\n\n", b"\n\n: keep-alive\n\n", 3) + b"data:\n\ndata: [DONE]\n\n"
    body = events_of(noisy) if size is None else pieces_of(noisy, size)
    events = await _upstream_events(body)
    payloads = [line.removeprefix(b"data: ") for line in data.splitlines() if line.startswith(b"data: ")]
    assert [encode_event(e) for e in events] == payloads
    assert events[-1].type == "response.completed"


@pytest.mark.parametrize("whole", [False, True], ids=["an-event-a-chunk", "one-chunk"])
async def test_a_payload_that_is_not_json_fails_the_stream_naming_it(whole: bool) -> None:
    chunks = events_of(capture_as_sse(CAPTURES / "openai-issue-11239.2.jsonl"))
    body = [*chunks[:4], b"data: {not json\n\n", *chunks[4:]]
    with pytest.raises(BackendError) as caught:
        await _upstream_events([b"".join(body)] if whole else body)
    assert caught.value.code == "upstream_malformed"
    assert "sent a malformed event (#5): payload is not valid JSON" in caught.value.message
    assert caught.value.message.endswith(": {not json")


async def test_what_follows_the_terminal_event_in_its_chunk_is_not_read() -> None:
    """The stream ends at its terminal event, also when the same chunk goes on with something unreadable."""
    data = capture_as_sse(CAPTURES / "openai-issue-11239.2.jsonl")
    events = await _upstream_events([data + b"data: {not json\n\n"])
    assert events[-1].type == "response.completed"
    assert len(events) == data.count(b"\ndata: ") + data.startswith(b"data: ")


# --- known upstream defects -----------------------------------------------------------------------------------


async def test_sglang_12644_output_index_counting_from_1() -> None:
    events, relay, _ = await replay(fixture("responses/sglang-12644-output-index-from-1.sse"))
    assert check(events) == []
    assert {e.output_index for e in events if hasattr(e, "output_index")} == {0}
    assert accumulate(events).output_text == "Tokyo is the capital."
    assert "upstream output_index 1 relayed as 0" in relay.repairs


async def test_vllm_reasoning_and_message_sharing_output_index_0() -> None:
    events, _, _ = await replay(fixture("responses/vllm-shared-output-index.sse"))
    assert check(events) == []
    added = [
        (e.output_index, e.item.type, e.item.id) for e in events if e.type == "response.output_item.added"
    ]
    assert added == [(0, "reasoning", "rs_51aa"), (1, "message", "msg_51ab")]
    # vLLM's reasoning_part events are the spec's content_part events; its content_index 1 is part 0.
    assert not any(e.type.startswith("response.reasoning_part") for e in events)
    acc = accumulate(events)
    assert summary(acc.response.output) == [
        ("reasoning", [], ["User greets; reply."]),
        ("message", ["Hello!"]),
    ]
    assert acc.response.usage is not None and acc.response.usage.output_tokens_details.reasoning_tokens == 6


async def test_litellm_28899_non_monotonic_sequence_numbers() -> None:
    data = fixture("responses/litellm-28899-sequence-numbers.sse")
    assert [e.sequence_number for e in iter_events([data])][:6] == [0, 1, 2, 0, 0, 5]
    events, _, _ = await replay(data)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert check(events) == []
    acc = accumulate(events)
    assert acc.output_text == "Looking it up."
    assert [(c.name, c.arguments) for c in acc.function_calls] == [("lookup", '{"q":"hw"}')]


async def test_sglang_12652_missing_output_item_done_for_a_function_call() -> None:
    events, relay, _ = await replay(fixture("responses/sglang-12652-missing-item-done.sse"))
    assert check(events) == []
    types = [e.type for e in events]
    done_at = types.index("response.function_call_arguments.done")
    assert types[done_at + 1 :] == ["response.output_item.done", "response.completed"]
    acc = accumulate(events)
    # The terminal output is what the stream built, not the upstream's generic empty message.
    assert summary(acc.response.output) == [
        ("reasoning", [], ["Need the weather."]),
        ("function_call", "call_sg1", "get_weather", '{"city": "Paris"}'),
    ]
    assert acc.response.output[1].status == "completed"
    assert any("never done" in r for r in relay.repairs)


async def test_an_upstream_that_ends_without_a_terminal_event_fails_clearly() -> None:
    events, _, upstream = await replay(fixture("responses/no-terminal-event.sse"))
    assert check(events) == []
    acc = accumulate(events)
    assert acc.status == "failed" and acc.error is not None
    assert acc.error.message == (
        f"upstream {upstream.url}/v1/responses ended the stream after 5 events without a terminal event "
        "(response.completed / incomplete / failed)"
    )
    assert acc.output_text == "Half a sent"  # kept, closed as incomplete
    assert acc.response.output[0].status == "incomplete"


def test_a_source_that_just_stops_is_closed_by_the_relay() -> None:
    data = fixture("responses/no-terminal-event.sse")
    events = relay_all(iter_events([data]))
    assert check(events) == []
    assert accumulate(events).error.message.startswith("the upstream ended the stream after 5 events")
    incomplete = relay_all(iter_events([data]), truncated="incomplete")
    assert check(incomplete) == []
    assert accumulate(incomplete).response.incomplete_details.reason == "upstream_truncated"


async def test_a_connection_dropped_mid_stream() -> None:
    chunks = events_of(capture_as_sse(CAPTURES / "openai-issue-11239.2.jsonl"))
    async with ReplayUpstream([Reply(200, [*chunks[:6], Drop()])]) as upstream:
        backend = ResponsesBackend(upstream.url)
        events, _ = await relay_run(backend)
        await backend.aclose()
    assert check(events) == []
    acc = accumulate(events)
    assert acc.status == "failed" and "closed the connection mid-stream after 6 chunks" in acc.error.message


@pytest.mark.parametrize(
    "name", ["openai-error.1.jsonl", "openai-error-null-code.jsonl", "openai-response-failed-only.1.jsonl"]
)
async def test_upstream_failures(name: str) -> None:
    events, _, _ = await replay(capture_as_sse(CAPTURES / name))
    assert check(events) == []
    acc = accumulate(events)
    upstream = accumulate(iter_events([(CAPTURES / name).read_bytes()]))
    assert acc.status == "failed"
    assert acc.error is not None and upstream.error is not None
    assert acc.error.message == upstream.error.message


def test_an_error_followed_by_other_events_gets_its_failed_at_once() -> None:
    data = capture_as_sse(CAPTURES / "openai-error.1.jsonl")
    upstream = list(iter_events([data]))
    error = next(e for e in upstream if e.type == "error")
    events = relay_all([*upstream[:2], error, upstream[0], upstream[-1]])
    assert check(events) == []
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]


async def test_a_queued_response_renumbers_everything() -> None:
    data = capture_as_sse(CAPTURES / "issue-20047-openai-responses.jsonl")
    async with ReplayUpstream([sse_reply(data)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        events, _ = await relay_run(backend, queued=True)
        await backend.aclose()
    assert [e.type for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert check(events) == []


@pytest.mark.parametrize("after", [3, 5])
def test_cancel_and_failure_mid_stream_close_what_is_open(after: int) -> None:
    upstream = list(
        iter_events([capture_as_sse(CAPTURES / "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl")])
    )
    for end in ("cancel", "fail"):
        relay = ResponseRelay(Response(id=RESPONSE_ID))
        out = relay.start()
        for event in upstream[: after + 40]:
            out += relay.feed(event)
        out += relay.cancelled() if end == "cancel" else relay.fail("server_shutdown", "stopping")
        events = as_client_sees(out)
        assert check(events) == []
        assert accumulate(events).status == ("cancelled" if end == "cancel" else "failed")


def test_a_relay_is_made_from_the_writer_it_replaces() -> None:
    writer = ResponseWriter(Response(id=RESPONSE_ID, model="m"), reasoning_events="seed")
    relay = ResponseRelay.from_writer(writer, upstream="u")
    assert relay.id == RESPONSE_ID and relay.response.model == "m"
    writer.start()
    with pytest.raises(ValueError, match="before start"):
        ResponseRelay.from_writer(writer)


def test_repairs_of_missing_parts_and_items() -> None:
    """Deltas with no item or part added before them, a done whose text is the deltas' plus a tail, a
    duplicated done: all made conformant."""
    lines = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {"id": "r", "status": "in_progress", "output": []},
        },
        {
            "type": "response.output_text.delta",
            "item_id": "m1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
        },
        {
            "type": "response.output_text.done",
            "item_id": "m1",
            "output_index": 0,
            "content_index": 0,
            "text": "Hello",
        },
        {
            "type": "response.output_text.done",
            "item_id": "m1",
            "output_index": 0,
            "content_index": 0,
            "text": "Hello",
        },
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""},
        },
        {"type": "response.function_call_arguments.delta", "item_id": "", "output_index": 1, "delta": "{}"},
        {"type": "response.completed", "response": {"id": "r", "status": "completed", "output": []}},
    ]
    events = relay_all(iter_events([("\n".join(json.dumps(x) for x in lines) + "\n").encode()]))
    assert check(events) == []
    acc = accumulate(events)
    assert acc.output_text == "Hello"
    call = acc.function_calls[0]
    assert call.arguments == "{}" and call.id and call.id.startswith("fc_")


# --- the flattened path (today's run driver) ------------------------------------------------------------------


async def test_generate_flattens_the_events_into_steps() -> None:
    data = capture_as_sse(CAPTURES / "openai-reasoning-encrypted-content.1.jsonl", response=0)
    async with ReplayUpstream([sse_reply(data)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        steps = [s async for s in backend.generate(ask())]
        await backend.aclose()
    calls = [s for s in steps if isinstance(s, ToolCallDelta)]
    assert calls and calls[0].call_id and calls[0].name
    assert isinstance(steps[-2], UsageStep) and steps[-1] == Finish("tool_calls")


async def test_generate_through_the_run_driver() -> None:
    data = capture_as_sse(CAPTURES / "issue-20047-openai-responses.jsonl")
    async with ReplayUpstream(
        [sse_reply(data), sse_reply(capture_as_sse(CAPTURES / "openai-error.1.jsonl"))]
    ) as upstream:
        backend = ResponsesBackend(upstream.url)
        runs = []
        for _ in range(2):
            request = ask()
            run = Run(
                writer=ResponseWriter(Response(model="m")),
                backend=backend,
                request=request,
                store=None,
                owner=None,
                background=False,
            )
            run.start()
            frames = [encode_frame(e.type, e.payload) async for batch in run.follow() for e in batch]
            await run.wait()
            runs.append(list(iter_events(frames)))
        await backend.aclose()
    ok, failed = runs
    assert check(ok) == [] and check(failed) == []
    assert accumulate(ok).output_text == accumulate(iter_events([data])).output_text
    assert accumulate(failed).status == "failed"


async def test_error_status_from_a_responses_upstream() -> None:
    body = json.dumps(
        {"error": {"message": "previous_response_id is not supported", "code": "invalid_prompt"}}
    ).encode()
    async with ReplayUpstream([json_reply(400, body)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        with pytest.raises(BackendError) as caught:
            await relay_run_raising(backend)
        await backend.aclose()
    assert caught.value.status == 400 and caught.value.code == "invalid_prompt"
    assert "answered 400: previous_response_id is not supported" in caught.value.message


async def relay_run_raising(backend: ResponsesBackend) -> None:
    async for _ in backend.events(ask()):
        pass


# --- whatever the upstream sends ------------------------------------------------------------------------------

_MUTABLE = [
    [event_to_builtins(e) for e in group]
    for path in sorted([*CAPTURES.glob("*.jsonl"), *(FIXTURES / "responses").glob("*.sse")])
    for group in split_responses(iter_events([path.read_bytes()], lenient=True))
]
_RETYPES = [
    "response.output_text.delta",
    "response.output_item.done",
    "response.content_part.added",
    "response.function_call_arguments.delta",
    "response.reasoning_summary_text.delta",
    "error",
    "response.completed",
    "response.output_item.added",
]


MANGLINGS = ("drop", "dup", "swap", "cut", "index", "item_id", "part", "seq", "field", "type")


def mangled(data: st.DataObject, rounds: int, manglings: Iterable[str] = MANGLINGS) -> list[dict[str, Any]]:
    """One of the ``_MUTABLE`` streams, mangled up to ``rounds`` times: events dropped, repeated (anywhere
    after), swapped, cut short, re-addressed (output index, item id, content index), renumbered, stripped of
    a field or given another type."""
    ops = sorted(manglings)
    events = [dict(e) for e in data.draw(st.sampled_from(_MUTABLE))]
    for _ in range(data.draw(st.integers(1, rounds))):
        if not events:
            break
        i = data.draw(st.integers(0, len(events) - 1))
        op = data.draw(st.sampled_from(ops))
        event = events[i]
        if op == "drop":
            del events[i]
        elif op == "dup":
            events.insert(data.draw(st.integers(i, len(events))), dict(event))
        elif op == "swap" and i + 1 < len(events):
            events[i], events[i + 1] = events[i + 1], event
        elif op == "cut":
            del events[i:]
        elif op == "index" and "output_index" in event:
            event["output_index"] = data.draw(st.integers(0, 3))
        elif op == "item_id" and "item_id" in event:
            event["item_id"] = data.draw(st.sampled_from(["", "other", event["item_id"] + "x"]))
        elif op == "part" and "content_index" in event:
            event["content_index"] = data.draw(st.integers(0, 2))
        elif op == "seq":
            event["sequence_number"] = data.draw(st.integers(0, 5))
        elif op == "field" and len(event) > 1:
            del event[data.draw(st.sampled_from(sorted(k for k in event if k != "type")))]
        elif op == "type":
            event["type"] = data.draw(st.sampled_from(_RETYPES))
    return events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mangling_of_a_stream_relays_conformantly(data: st.DataObject) -> None:
    """Events dropped, repeated, swapped, cut short, renumbered, re-addressed, stripped of fields or of
    another type: the relay never raises and what it writes breaks no rule."""
    events = mangled(data, rounds=10)
    relayed = relay_all(decode_event_obj(e, lenient=True) for e in events)
    assert check(relayed) == []
    assert accumulate(relayed).done
