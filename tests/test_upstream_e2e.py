"""Headwater in front of an upstream, end to end: the server (``create_app``, real uvicorn on loopback) with a
``ChatBackend`` or ``ResponsesBackend`` pointed at a replaying upstream (also on loopback), called over HTTP.

Every stream received is checked with ``conformance.check``. Conversations continued with
``previous_response_id`` reach the upstream whole: Headwater resolves the chain from its own store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.codec import encode_event
from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.protocol.resources import to_builtins
from headwater.protocol.stream import aiter_events, iter_events
from headwater.server.app import create_app
from headwater.server.backends.chat import ChatBackend
from headwater.server.backends.responses import ResponsesBackend
from headwater.server.config import ServerConfig
from test_upstream_replay import CAPTURES, ReplayUpstream, capture_as_sse, fixture, json_reply, sse_reply

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}


async def stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[Event]:
    async with client.stream("POST", url + "/v1/responses", json={**body, "stream": True}) as answer:
        assert answer.status_code == 200, await answer.aread()
        return [event async for event in aiter_events(answer.aiter_bytes())]


def accumulate(events: list[Event]) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    return acc


async def test_chat_upstream_tool_calls_then_the_continued_conversation(serve: Callable[..., Any]) -> None:
    async with ReplayUpstream(
        [
            sse_reply(fixture("chat/openai-parallel-tool-calls.sse")),
            sse_reply(fixture("chat/ollama-stop.sse")),
        ]
    ) as upstream:
        backend = ChatBackend(upstream.url, "sk-upstream", model="gpt-4o")
        server = serve(create_app(ServerConfig(store="memory", backend="chat"), backend=backend))
        async with httpx.AsyncClient(timeout=30) as client:
            first = await stream(
                client, server.url, {"input": "Weather in Paris and Tokyo?", "tools": [WEATHER_TOOL]}
            )
            assert check(first) == []
            acc = accumulate(first)
            calls = acc.function_calls
            assert [c.name for c in calls] == ["get_weather", "get_weather"]
            outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": "18C"} for c in calls]
            second = await stream(
                client,
                server.url,
                {"previous_response_id": acc.response.id, "input": outputs, "tools": [WEATHER_TOOL]},
            )
        await backend.aclose()
    assert check(second) == []
    assert accumulate(second).output_text == "The sky is blue."
    sent = upstream.requests[1].body
    assert sent["model"] == "gpt-4o"
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent["messages"][1]["tool_calls"]] == ["call_Qx7Rk2", "call_Hn3Vb8"]
    assert upstream.requests[1].headers["authorization"] == "Bearer sk-upstream"


async def test_chat_upstream_refusing_gives_an_http_error(serve: Callable[..., Any]) -> None:
    async with ReplayUpstream([json_reply(503, fixture("chat/error-503.json"))]) as upstream:
        backend = ChatBackend(upstream.url)
        server = serve(create_app(ServerConfig(store="memory", backend="chat"), backend=backend))
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(server.url + "/v1/responses", json={"input": "hi", "stream": True})
        await backend.aclose()
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert "answered 503: The server is overloaded or not ready yet." in error["message"]


async def test_openai_sdk_through_headwater_to_a_chat_upstream(serve: Callable[..., Any]) -> None:
    async with ReplayUpstream([sse_reply(fixture("chat/deepseek-reasoning-content.sse"))]) as upstream:
        backend = ChatBackend(upstream.url, model="deepseek-reasoner")
        server = serve(create_app(ServerConfig(store="memory", backend="chat"), backend=backend))
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused")
        types = []
        async with client.responses.stream(model="deepseek-reasoner", input="2+2?") as events:
            async for event in events:
                types.append(event.type)
            final = await events.get_final_response()
        await client.close()
        await backend.aclose()
    assert final.output_text == "2 + 2 = **4**."
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 31
    assert types[-1] == "response.completed"


async def test_responses_upstream_with_a_continued_conversation(serve: Callable[..., Any]) -> None:
    data = capture_as_sse(CAPTURES / "issue-20047-openai-responses.jsonl")
    async with ReplayUpstream([sse_reply(data), sse_reply(data)]) as upstream:
        backend = ResponsesBackend(upstream.url, "sk-upstream")
        server = serve(create_app(ServerConfig(store="memory", backend="responses"), backend=backend))
        async with httpx.AsyncClient(timeout=30) as client:
            first = await stream(
                client, server.url, {"model": "gpt-4.1", "instructions": "Be kind.", "input": "Hello"}
            )
            assert check(first) == []
            first_acc = accumulate(first)
            second = await stream(
                client,
                server.url,
                {"model": "gpt-4.1", "previous_response_id": first_acc.response.id, "input": "More"},
            )
        await backend.aclose()
    assert check(second) == []
    assert accumulate(second).output_text == first_acc.output_text != ""
    sent = upstream.requests[1].body
    assert "previous_response_id" not in sent and sent["store"] is False and sent["stream"] is True
    assert [(i["role"], i["content"]) for i in sent["input"]] == [
        ("user", "Hello"),
        ("assistant", first_acc.output_text),
        ("user", "More"),
    ]
    assert "instructions" not in sent  # instructions are not inherited (as in OpenAI's API)
    assert upstream.requests[0].body["instructions"] == "Be kind."


async def test_responses_upstream_events_pass_through_the_server(serve: Callable[..., Any]) -> None:
    """With passthrough, what steps cannot say reaches the client: the upstream's item ids, hosted-tool items
    (MCP listing and calls) and annotations."""
    data = capture_as_sse(CAPTURES / "openai-mcp-tool-approval.4.jsonl")
    async with ReplayUpstream([sse_reply(data)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        server = serve(create_app(ServerConfig(store="memory", backend="responses"), backend=backend))
        async with httpx.AsyncClient(timeout=30) as client:
            events = await stream(client, server.url, {"model": "gpt-4.1", "input": "Use the MCP tool"})
        await backend.aclose()
    assert check(events) == []
    upstream_output = accumulate(list(iter_events([data]))).response.output
    output = accumulate(events).response.output
    assert [(item.type, item.id) for item in output] == [(item.type, item.id) for item in upstream_output]


CHAT_STREAMS = sorted(p.name for p in (Path(__file__).parent / "fixtures/upstream/chat").glob("*.sse"))
RESPONSES_STREAMS = sorted(
    p.name for p in (Path(__file__).parent / "fixtures/upstream/responses").glob("*.sse")
)


def carried(event: Event) -> dict[str, Any]:
    """The resource a lifecycle or terminal event carries, as it was sent (the upstream's extras included)."""
    resource: dict[str, Any] = json.loads(encode_event(event))["response"]
    return resource


async def _stored_equals_accumulated(server_url: str, body: dict[str, Any]) -> list[Event]:
    """Stream through the server; the stream is conformant and the stored response is what it describes: the
    resource its terminal event carried, key for key, of which what the events build is a part."""
    async with httpx.AsyncClient(timeout=30) as client:
        events = await stream(client, server_url, body)
        assert check(events) == [], [str(v) for v in check(events)]
        built = to_builtins(accumulate(events).response)
        stored = (await client.get(f"{server_url}/v1/responses/{built['id']}")).json()
    assert json.dumps(stored) == json.dumps(carried(events[-1]))  # (in order: the same bytes)
    assert {key: stored[key] for key in built} == built
    return events


@pytest.mark.parametrize("name", CHAT_STREAMS)
async def test_every_chat_upstream_stream_is_conformant_and_stored_as_streamed(
    serve: Callable[..., Any], name: str
) -> None:
    async with ReplayUpstream([sse_reply(fixture(f"chat/{name}"))]) as upstream:
        backend = ChatBackend(upstream.url, model="m")
        server = serve(create_app(ServerConfig(store="memory", backend="chat"), backend=backend))
        events = await _stored_equals_accumulated(server.url, {"input": "hi", "tools": [WEATHER_TOOL]})
        await backend.aclose()
    assert events[-1].type in ("response.completed", "response.incomplete", "response.failed")


@pytest.mark.parametrize("name", RESPONSES_STREAMS)
async def test_every_broken_responses_upstream_is_repaired_and_stored_as_streamed(
    serve: Callable[..., Any], name: str
) -> None:
    async with ReplayUpstream([sse_reply(fixture(f"responses/{name}"))]) as upstream:
        backend = ResponsesBackend(upstream.url, model="m")
        server = serve(create_app(ServerConfig(store="memory", backend="responses"), backend=backend))
        await _stored_equals_accumulated(server.url, {"input": "hi"})
        await backend.aclose()


@pytest.mark.parametrize(
    "capture",
    [
        "openai-issue-11239.1.jsonl",
        "openai-mcp-tool.1.jsonl",
        "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl",
        "openai-error.1.jsonl",
        "openai-shell-tool.1.jsonl",
    ],
)
async def test_recorded_responses_captures_relay_and_store_as_streamed(
    serve: Callable[..., Any], capture: str
) -> None:
    async with ReplayUpstream([sse_reply(capture_as_sse(CAPTURES / capture))]) as upstream:
        backend = ResponsesBackend(upstream.url, model="m")
        server = serve(create_app(ServerConfig(store="memory", backend="responses"), backend=backend))
        await _stored_equals_accumulated(server.url, {"input": "hi"})
        await backend.aclose()


async def test_the_final_resource_is_one_whatever_reads_it(serve: Callable[..., Any]) -> None:
    """A relayed response's final resource, the upstream's fields Headwater does not model included (Copilot's
    ``tool_usage``), is the same JSON as the ``stream: false`` answer, retrieved, in a resumed stream's terminal
    event, in a live stream's and in a WebSocket's: the resource the terminal event carries, encoded once."""
    data = capture_as_sse(CAPTURES / "github-copilot-id-rotation.1.jsonl")
    async with ReplayUpstream([sse_reply(data) for _ in range(3)]) as upstream:
        backend = ResponsesBackend(upstream.url, model="m")
        server = serve(create_app(ServerConfig(store="memory", backend="responses"), backend=backend))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def retrieved(response_id: str) -> bytes:
                return (await client.get(f"/v1/responses/{response_id}")).content

            answer = await client.post("/v1/responses", json={"input": "hi"})
            assert answer.status_code == 200
            response_id = answer.json()["id"]
            assert await retrieved(response_id) == answer.content
            resumed = list(iter_events([(await client.get(f"/v1/responses/{response_id}",
                                                          params={"stream": "true"})).content]))
            assert json.dumps(carried(resumed[-1])) == json.dumps(answer.json())
            assert "tool_usage" in answer.json()

            live = await stream(client, server.url, {"input": "hi"})
            assert json.dumps(json.loads(await retrieved(live[-1].response.id))) == json.dumps(  # type: ignore[union-attr]
                carried(live[-1]))

            async with connect("ws" + server.url.removeprefix("http") + "/v1/responses") as ws:
                await ws.send(json.dumps({"type": "response.create", "input": "hi"}))
                while (message := json.loads(await ws.recv()))["type"] != "response.completed":
                    pass
            assert json.dumps(json.loads(await retrieved(message["response"]["id"]))) == json.dumps(
                message["response"])
            assert "tool_usage" in message["response"]
        await backend.aclose()
