"""ChatBackend against real HTTP upstreams on loopback that replay recorded Chat Completions streams
(``tests/fixtures/upstream/chat``): the request it sends, the steps it yields, and the events the server's run
driver makes of them (checked with ``conformance.check`` and folded with an ``Accumulator``).

Regression tests carry the name of the bug they guard against in other bridges: litellm issue 20711 (argument
pieces without an id dropped), litellm issue 36327 (text dropped from a chunk that also carries reasoning),
vLLM issue 36435 (a tool call streamed as ``output_text.delta`` instead of ``function_call_arguments.delta``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from typing import Any

import pytest

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.protocol.resources import FunctionCall, Message, ReasoningItem, Response
from headwater.protocol.sse import encode_frame
from headwater.protocol.stream import iter_events
from headwater.protocol.writer import ResponseWriter
from headwater.server.backends._http import HTTPClient
from headwater.server.backends.base import (
    BackendError,
    ChatMessage,
    Finish,
    GenerationRequest,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.chat import DEFAULT_MODEL, ChatBackend, ChunkMapper, chat_request
from headwater.server.runs import Run
from test_upstream_replay import (
    Drop,
    Pause,
    ReplayUpstream,
    Reply,
    Stall,
    events_of,
    fixture,
    json_reply,
    sse_reply,
)

WEATHER = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}


def ask(text: str = "hi", **options: Any) -> GenerationRequest:
    return GenerationRequest(model=options.pop("model", "m"), messages=[ChatMessage("user", text)], **options)


async def steps_of(backend: ChatBackend, request: GenerationRequest | None = None) -> list[Step]:
    return [step async for step in backend.generate(request or ask())]


async def drive(backend: ChatBackend, request: GenerationRequest | None = None) -> tuple[list[Event], Run]:
    """The events the server's run driver makes of the backend's steps (no store), as a client decodes them."""
    request = request or ask()
    writer = ResponseWriter(Response(model=request.model))
    run = Run(writer=writer, backend=backend, request=request, store=None, owner=None, background=False)
    run.start()
    frames = [encode_frame(e.type, e.payload) async for batch in run.follow() for e in batch]
    await run.wait()
    return list(iter_events(frames)), run


def accumulate(events: list[Event]) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    return acc


async def run_fixture(
    name: str, request: GenerationRequest | None = None, **options: Any
) -> tuple[list[Step], list[Event]]:
    """The steps of one replay of ``name``, and the driver's events of a second replay."""
    data = fixture(name)
    async with ReplayUpstream([sse_reply(data), sse_reply(data)]) as upstream:
        backend = ChatBackend(upstream.url, **options)
        try:
            steps = await steps_of(backend, request)
            events, _ = await drive(backend, request)
        finally:
            await backend.aclose()
    assert check(events) == []
    return steps, events


# --- the request ----------------------------------------------------------------------------------------------


async def test_request_body_headers_and_url() -> None:
    request = GenerationRequest(
        model="qwen",
        messages=[
            ChatMessage("system", "Be brief."),
            ChatMessage("developer", "Use tools."),
            ChatMessage("user", "Weather in Paris?"),
            ChatMessage(
                "assistant",
                "",
                tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": '{"location":"Paris"}'}],
            ),
            ChatMessage("tool", "18C", tool_call_id="call_1"),
            ChatMessage("assistant", "It is 18C."),
            ChatMessage("user", "And Tokyo?"),
        ],
        tools=[{"name": "get_weather", "description": "Current weather", "parameters": WEATHER}],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=64,
        text_format={"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True},
        reasoning={"effort": "low", "summary": None},
        stop=["END"],
    )
    async with ReplayUpstream([sse_reply(fixture("chat/ollama-stop.sse"))]) as upstream:
        backend = ChatBackend(upstream.url + "/v1", "sk-test", headers={"X-Title": "headwater-tests"})
        await steps_of(backend, request)
        await backend.aclose()
    sent = upstream.requests[0]
    assert sent.method == "POST" and sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.headers["x-title"] == "headwater-tests"
    assert sent.body == {
        "model": "qwen",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "assistant", "content": "It is 18C."},
            {"role": "user", "content": "And Tokyo?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Current weather", "parameters": WEATHER},
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["END"],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
    }


def test_request_options() -> None:
    body = chat_request(
        ask(max_output_tokens=10, tools=[{"name": "f", "parameters": None}]),
        model=None,
        max_tokens_field="max_completion_tokens",
        include_usage=False,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert "model" not in body and "stream_options" not in body
    assert body["max_completion_tokens"] == 10 and "max_tokens" not in body
    assert "tool_choice" not in body  # "auto" is every server's default
    assert body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("configured", "asked", "sent"),
    [
        (None, DEFAULT_MODEL, None),
        (None, "llama3.2", "llama3.2"),
        ("qwen", "", "qwen"),
        ("qwen", "other", "other"),
    ],
)
async def test_model_names(configured: str | None, asked: str, sent: str | None) -> None:
    async with ReplayUpstream([sse_reply(fixture("chat/ollama-stop.sse"))]) as upstream:
        backend = ChatBackend(upstream.url, model=configured)
        await steps_of(backend, ask(model=asked))
        await backend.aclose()
    assert upstream.requests[0].body.get("model") == sent
    assert backend.models()[0] == (configured or DEFAULT_MODEL)


def test_upstream_url_forms() -> None:
    assert ChatBackend("http://h:8000").upstream.url == "http://h:8000/v1/chat/completions"
    assert ChatBackend("http://h:8000/v1/").upstream.url == "http://h:8000/v1/chat/completions"
    assert (
        ChatBackend("https://openrouter.ai/api/v1").upstream.url
        == "https://openrouter.ai/api/v1/chat/completions"
    )
    assert ChatBackend("http://h/v1/chat/completions").upstream.url == "http://h/v1/chat/completions"
    with pytest.raises(ValueError, match="not an http"):
        ChatBackend("localhost:8000")


# --- tool calls -----------------------------------------------------------------------------------------------


async def test_litellm_20711_argument_pieces_without_an_id_continue_their_call() -> None:
    """OpenAI sends a call's id once, with its first piece; every later piece has only the index."""
    steps, events = await run_fixture("chat/openai-parallel-tool-calls.sse")
    calls = [s for s in steps if isinstance(s, ToolCallDelta)]
    assert calls[0] == ToolCallDelta(0, "", call_id="call_Qx7Rk2", name="get_weather")
    assert [c.arguments for c in calls if c.index == 0][1:] == [
        '{"lo',
        "cation",
        '": "Pa',
        "ris, F",
        'rance"}',
    ]
    assert calls[6] == ToolCallDelta(1, "", call_id="call_Hn3Vb8", name="get_weather")
    assert "".join(c.arguments for c in calls if c.index == 1) == '{"location": "Tokyo, Japan"}'
    extra = {"input_tokens_details": {"audio_tokens": 0},  # what the mapping does not name goes on as sent
             "output_tokens_details": {"audio_tokens": 0, "accepted_prediction_tokens": 0,
                                       "rejected_prediction_tokens": 0}}
    assert steps[-2:] == [Finish("tool_calls"), UsageStep(82, 52, reasoning_tokens=0, cached_tokens=64, extra=extra)]
    # Downstream every piece is its own delta event, as it came (not held back until the end).
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) == 10
    acc = accumulate(events)
    assert acc.status == "completed"
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in acc.function_calls] == [
        ("call_Qx7Rk2", "get_weather", {"location": "Paris, France"}),
        ("call_Hn3Vb8", "get_weather", {"location": "Tokyo, Japan"}),
    ]
    usage = acc.response.usage
    assert usage is not None and usage.input_tokens == 82 and usage.input_tokens_details.cached_tokens == 64


async def test_vllm_calls_sharing_index_0_are_told_apart_by_id() -> None:
    """vLLM's parsers put consecutive calls at index 0; continuation pieces carry ``"id": ""``."""
    steps, events = await run_fixture("chat/vllm-tool-calls-one-index.sse")
    calls = [s for s in steps if isinstance(s, ToolCallDelta)]
    assert {c.index for c in calls} == {0, 1}
    acc = accumulate(events)
    assert [(c.call_id, c.name, c.arguments) for c in acc.function_calls] == [
        ("chatcmpl-tool-4c1e9a", "get_weather", '{"location": "Paris"}'),
        ("chatcmpl-tool-77b0d2", "get_time", '{"zone": "Asia/Tokyo"}'),
    ]


async def test_vllm_36435_tool_call_pieces_become_argument_deltas_never_text() -> None:
    """vLLM's Responses API streamed a tool call as ``output_text.delta``; the bridge turns every tool-call
    piece into ``function_call_arguments.delta`` of its call and writes no text for it."""
    for name in ("chat/vllm-tool-calls-one-index.sse", "chat/openai-parallel-tool-calls.sse"):
        _, events = await run_fixture(name)
        kinds = {e.type for e in events}
        assert "response.output_text.delta" not in kinds and "response.content_part.added" not in kinds
        deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        calls = accumulate(events).function_calls
        assert "".join(e.delta for e in deltas) == "".join(c.arguments for c in calls)
        assert [item.type for item in accumulate(events).response.output] == ["function_call"] * len(calls)


async def test_sglang_calls_repeating_their_id_at_index_0() -> None:
    _, events = await run_fixture("chat/sglang-tool-calls-repeated-ids.sse")
    acc = accumulate(events)
    assert [(c.call_id, c.arguments) for c in acc.function_calls] == [
        ("0", '{"query": "open responses"}'),
        ("1", '{"query": "sse framing"}'),
    ]
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1]


def test_tool_call_routing_edge_cases() -> None:
    mapper = ChunkMapper()

    def chunk(*calls: dict[str, Any]) -> bytes:
        return json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": list(calls)}}]}).encode()

    # Two calls opened in one chunk, then pieces for each by index only.
    assert mapper.feed(
        chunk(
            {"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}},
            {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}},
        )
    ) == [
        ToolCallDelta(0, "", call_id="a", name="f"),
        ToolCallDelta(1, "{", call_id="b", name="g"),
    ]
    assert mapper.feed(
        chunk({"index": 1, "function": {"arguments": "}"}}, {"index": 0, "function": {"arguments": "{}"}})
    ) == [
        ToolCallDelta(1, "}"),
        ToolCallDelta(0, "{}"),
    ]
    # A repeat of the id and name with no arguments adds nothing; arguments sent as an object become JSON.
    assert mapper.feed(chunk({"index": 0, "id": "a", "function": {"name": "f"}})) == []
    assert mapper.feed(chunk({"index": 0, "function": {"arguments": {"x": 1}}})) == [
        ToolCallDelta(0, '{"x":1}')
    ]
    # Neither id nor index (SGLang issue 5661): the call being streamed.
    assert mapper.feed(chunk({"function": {"arguments": " "}})) == [ToolCallDelta(0, " ")]
    # A first piece with neither id nor name still opens a call.
    assert mapper.feed(chunk({"index": 2, "function": {"arguments": "{}"}})) == [ToolCallDelta(2, "{}")]


# --- reasoning ------------------------------------------------------------------------------------------------


async def test_reasoning_and_message_get_their_own_output_index() -> None:
    steps, events = await run_fixture("chat/deepseek-reasoning-content.sse")
    assert [type(s).__name__ for s in steps] == ["ReasoningDelta"] * 4 + ["TextDelta"] * 2 + [
        "Finish",
        "UsageStep",
    ]
    assert steps[-1] == UsageStep(13, 40, reasoning_tokens=31, cached_tokens=0,
                                  extra={"prompt_cache_miss_tokens": 13})
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message")]
    acc = accumulate(events)
    reasoning, message = acc.response.output
    assert isinstance(reasoning, ReasoningItem) and isinstance(message, Message)
    assert reasoning.content is not None and reasoning.content[0].text == "The user asks 2+2. That is 4."
    assert acc.output_text == "2 + 2 = **4**."


async def test_litellm_36327_a_chunk_with_reasoning_and_text_yields_both_reasoning_first() -> None:
    steps, events = await run_fixture("chat/vllm-reasoning-and-text-one-chunk.sse")
    at = steps.index(ReasoningDelta(".\n"))
    assert steps[at + 1] == TextDelta("17 \u00d7 3")
    acc = accumulate(events)
    assert acc.output_text == "17 \u00d7 3 = 51."
    reasoning = acc.response.output[0]
    assert isinstance(reasoning, ReasoningItem) and reasoning.content is not None
    assert reasoning.content[0].text == "Okay, 17 * 3 = 51.\n"
    usage = acc.response.usage
    assert usage is not None and usage.output_tokens_details.reasoning_tokens == 28


async def test_openrouter_reasoning_field_comments_and_cost() -> None:
    steps, events = await run_fixture("chat/openrouter-reasoning.sse")
    assert [s.text for s in steps if isinstance(s, ReasoningDelta)] == [
        "Hello is",
        " a greeting;",
        " answer in kind.",
    ]
    assert [s.text for s in steps if isinstance(s, TextDelta)] == ["Hi", " there!"]
    assert steps[-1] == UsageStep(9, 25, reasoning_tokens=19, cached_tokens=0, cost=0.0000642,
                                  extra={"is_byok": False, "cost_details": {"upstream_inference_cost": None}})
    assert accumulate(events).output_text == "Hi there!"


# --- finish reasons -------------------------------------------------------------------------------------------


async def test_finish_length_makes_the_response_incomplete() -> None:
    steps, events = await run_fixture("chat/llamacpp-finish-length.sse")
    assert Finish("length") in steps and steps[-1] == UsageStep(21, 4)
    acc = accumulate(events)
    assert acc.status == "incomplete" and acc.response.incomplete_details is not None
    assert acc.response.incomplete_details.reason == "max_output_tokens"
    assert acc.output_text == "Once upon a time"


async def test_finish_content_filter_makes_the_response_incomplete() -> None:
    steps, events = await run_fixture("chat/azure-content-filter.sse")
    assert steps == [TextDelta("Here is"), TextDelta(" how"), Finish("content_filter")]
    acc = accumulate(events)
    assert acc.status == "incomplete" and acc.response.incomplete_details is not None
    assert acc.response.incomplete_details.reason == "content_filter"


async def test_finish_stop_completes_with_usage() -> None:
    steps, events = await run_fixture("chat/ollama-stop.sse")
    assert steps[-2:] == [Finish("stop"), UsageStep(30, 6)]
    acc = accumulate(events)
    assert acc.status == "completed" and acc.output_text == "The sky is blue."


async def test_a_stream_cut_into_small_pieces_gives_the_same_steps() -> None:
    data = fixture("chat/openrouter-reasoning.sse")
    async with ReplayUpstream([sse_reply(data), sse_reply(data, size=5)]) as upstream:
        backend = ChatBackend(upstream.url)
        whole = await steps_of(backend)
        pieces = await steps_of(backend)
        await backend.aclose()
    assert pieces == whole


async def test_a_done_without_finish_reason_is_a_stop() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\ndata: [DONE]\n\n'
    async with ReplayUpstream([Reply(200, [body])]) as upstream:
        backend = ChatBackend(upstream.url)
        assert await steps_of(backend) == [TextDelta("ok"), Finish("stop")]
        await backend.aclose()


async def test_a_json_answer_instead_of_a_stream() -> None:
    completion = {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "Need data.",
                    "tool_calls": [
                        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
    }
    async with ReplayUpstream([json_reply(200, json.dumps(completion).encode())]) as upstream:
        backend = ChatBackend(upstream.url)
        assert await steps_of(backend) == [
            ReasoningDelta("Need data."),
            TextDelta("Checking."),
            ToolCallDelta(0, "{}", call_id="call_9", name="f"),
            Finish("tool_calls"),
            UsageStep(5, 7),
        ]
        await backend.aclose()


# --- upstream trouble -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "sent", "code", "words"),
    [
        ("chat/error-503.json", 503, 502, "upstream_error", "The server is overloaded"),
        (
            "chat/vllm-error-400-context-length.json",
            400,
            400,
            "BadRequestError",
            "maximum context length is 4096",
        ),
        ("chat/ollama-error-404-model.json", 404, 404, "api_error", 'model "llama9" not found'),
    ],
)
async def test_error_statuses(name: str, status: int, sent: int, code: str, words: str) -> None:
    async with ReplayUpstream([json_reply(status, fixture(name))]) as upstream:
        backend = ChatBackend(upstream.url)
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
        await backend.aclose()
    error = caught.value
    assert error.message.startswith(f"upstream {upstream.url}/v1/chat/completions answered {status}: ")
    assert words in error.message
    assert (error.status, error.code) == (sent, code)


@pytest.mark.parametrize(
    ("status", "sent", "code"),
    [
        (404, 502, "upstream_error"),
        (401, 502, "upstream_auth_failed"),
        (429, 429, "rate_limit_exceeded"),
        (504, 504, "upstream_timeout"),
    ],
)
async def test_error_statuses_without_a_json_body(status: int, sent: int, code: str) -> None:
    async with ReplayUpstream(
        [Reply(status, [b"<html><body>Bad  gateway\n</body></html>"], content_type="text/html")]
    ) as upstream:
        backend = ChatBackend(upstream.url)
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
        await backend.aclose()
    assert f"answered {status}: <html><body>Bad gateway </body></html>" in caught.value.message
    assert (caught.value.status, caught.value.code) == (sent, code)


async def test_a_connection_dropped_mid_stream() -> None:
    chunks = events_of(fixture("chat/openai-parallel-tool-calls.sse"))
    drop = Reply(200, [*chunks[:4], Drop()])
    async with ReplayUpstream([drop, drop]) as upstream:
        backend = ChatBackend(upstream.url)
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
        assert "closed the connection mid-stream after 4 chunks" in caught.value.message
        assert caught.value.status == 502
        events, run = await drive(backend)
        await backend.aclose()
    assert run.backend_error is not None
    assert check(events) == []
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    acc = accumulate(events)
    assert acc.status == "failed" and acc.error is not None
    assert "mid-stream after 4 chunks" in acc.error.message
    call = acc.response.output[0]  # what came before the drop is kept, closed as incomplete
    assert (
        isinstance(call, FunctionCall)
        and call.arguments == '{"location": "Pa'
        and call.status == "incomplete"
    )


async def test_a_stream_that_ends_without_done_or_finish() -> None:
    chunks = events_of(fixture("chat/ollama-stop.sse"))
    async with ReplayUpstream([Reply(200, chunks[:3])]) as upstream:
        backend = ChatBackend(upstream.url)
        with pytest.raises(BackendError, match="closed the connection mid-stream after 3 chunks"):
            await steps_of(backend)
        await backend.aclose()


async def test_a_malformed_chunk() -> None:
    async with ReplayUpstream([sse_reply(fixture("chat/malformed-chunk.sse"))]) as upstream:
        backend = ChatBackend(upstream.url)
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
        await backend.aclose()
    assert "sent a malformed chunk (#2): not JSON" in caught.value.message
    assert '{"id":"chatcmpl-412"' in caught.value.message
    assert caught.value.status == 502


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("chat/openrouter-midstream-error.sse", "Provider disconnected unexpectedly (code server_error)"),
        ("chat/vllm-midstream-error.sse", "The engine loop has stopped."),
    ],
)
async def test_an_error_reported_inside_the_stream(name: str, words: str) -> None:
    async with ReplayUpstream([sse_reply(fixture(name))]) as upstream:
        backend = ChatBackend(upstream.url)
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
        await backend.aclose()
    assert "reported an error mid-stream" in caught.value.message and words in caught.value.message


async def test_a_stalled_stream_times_out() -> None:
    chunks = events_of(fixture("chat/ollama-stop.sse"))
    async with ReplayUpstream([Reply(200, [*chunks[:2], Stall()])]) as upstream:
        backend = ChatBackend(upstream.url, read_timeout=0.3)
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
        await backend.aclose()
    assert caught.value.status == 504 and caught.value.code == "upstream_timeout"
    assert "sent nothing for 0.3 s after 2 chunks (read timeout)" in caught.value.message


async def test_an_upstream_that_never_answers_times_out() -> None:
    async with ReplayUpstream([Reply(0), Reply(200, [Stall()])]) as upstream:
        backend = ChatBackend(upstream.url, read_timeout=0.2)
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
        assert (
            caught.value.message
            == f"upstream {upstream.url}/v1/chat/completions sent no answer within 0.2 s (read timeout)"
        )
        assert caught.value.status == 504
        # Headers at once, the first byte never: the stream's read time-out.
        with pytest.raises(BackendError, match=r"sent nothing for 0.2 s after 0 chunks \(read timeout\)"):
            await steps_of(backend)
        await backend.aclose()


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue")
async def test_an_upstream_that_does_not_accept_connections_times_out() -> None:
    """A listening socket whose accept queue is full: the SYN goes unanswered, the connect times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    backend = ChatBackend(f"http://127.0.0.1:{port}", connect_timeout=0.3)
    try:
        with pytest.raises(BackendError) as caught:
            await steps_of(backend)
    finally:
        await backend.aclose()
        for sock in [server, *fillers]:
            sock.close()
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
    assert caught.value.message == (
        f"could not connect to upstream http://127.0.0.1:{port}/v1/chat/completions within 0.3 s (connect timeout)"
    )


async def test_an_unreachable_upstream() -> None:
    async with ReplayUpstream() as upstream:
        url = upstream.url
    backend = ChatBackend(url)  # nothing listens there any more
    with pytest.raises(BackendError) as caught:
        await steps_of(backend)
    await backend.aclose()
    assert caught.value.message.startswith(f"could not reach upstream {url}/v1/chat/completions: ")
    assert caught.value.status == 502


async def test_closing_the_steps_closes_the_upstream_connection() -> None:
    chunks = events_of(fixture("chat/ollama-stop.sse"))
    async with ReplayUpstream([Reply(200, [*chunks[:2], Pause(30), *chunks[2:]])]) as upstream:
        backend = ChatBackend(upstream.url)
        steps = backend.generate(ask())
        assert await anext(steps) == TextDelta("The")
        assert await anext(steps) == TextDelta(" sky")
        await steps.aclose()
        await backend.aclose()
        async with asyncio.timeout(10):
            while not upstream.disconnects:
                await asyncio.sleep(0.01)


async def test_an_own_client_is_used_and_left_open() -> None:
    client = HTTPClient()
    async with ReplayUpstream([sse_reply(fixture("chat/ollama-stop.sse"))] * 2) as upstream:
        backend = ChatBackend(upstream.url, client=client)
        assert (await steps_of(backend))[0] == TextDelta("The")
        await asyncio.gather(*backend.upstream._draining)  # (the body's end, read in the background)
        await backend.aclose()
        assert not client.closed
        other = ChatBackend(upstream.url, client=client)  # the same client, its kept connection
        assert (await steps_of(other))[0] == TextDelta("The")
        await other.aclose()
        client.close()
    assert upstream.connections == 1
