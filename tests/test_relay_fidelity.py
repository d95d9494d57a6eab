"""Relay fidelity, end to end: recordings with rich items, annotations and usage replayed by a loopback upstream
through ``headwater serve``'s two upstream backends, and every place the server shows the response (the
terminal event's snapshot, ``GET /v1/responses/{id}``, ``stream: false``) compared field by field, as JSON,
with what the upstream itself said in its ``output_item.done`` events and its usage.

The rule (docs/upstreams.md, "Fidelity"): whatever the upstream sent survives unless the server rewrites it on
purpose (ids, sequence numbers); nothing is invented. The recordings without a provider capture in the
fixtures (xAI, OpenRouter, Bedrock, Mistral) are hand-made after the providers' documented shapes
(``tests/fixtures/upstream/SOURCES.md``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from headwater.protocol.codec import event_to_builtins
from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.protocol.stream import aiter_events
from headwater.server.app import create_app
from headwater.server.backends.chat import ChatBackend
from headwater.server.backends.responses import ResponsesBackend
from headwater.server.config import ServerConfig
from test_upstream_replay import CAPTURES, ReplayUpstream, capture_as_sse, fixture, sse_reply

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def upstream_said(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The upstream's own done items (in order) and the usage of its terminal event, as JSON."""
    done: list[dict[str, Any]] = []
    usage = None
    for block in data.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                if event["type"] == "response.output_item.done":
                    done.append(event["item"])
                elif event["type"] in TERMINAL:
                    usage = event["response"].get("usage")
    return done, usage


async def shown(data: bytes, serve: Callable[..., Any], body: dict[str, Any] | None = None,
                backend: str = "responses") -> dict[str, Any]:
    """Serve ``data`` (an upstream's SSE body) through Headwater three times (streamed, then GET; then
    ``stream: false``) and give back every view of the response, as JSON."""
    async with ReplayUpstream([sse_reply(data), sse_reply(data)]) as upstream:
        upstream_backend: Any = (
            ResponsesBackend(upstream.url, "sk-up") if backend == "responses" else ChatBackend(upstream.url, "sk-up")
        )
        server = serve(create_app(ServerConfig(store="memory", backend=backend), backend=upstream_backend))
        request = {"model": "m", "input": "hi", **(body or {})}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            async with client.stream("POST", "/v1/responses", json={**request, "stream": True}) as answer:
                assert answer.status_code == 200, await answer.aread()
                events: list[Event] = [e async for e in aiter_events(answer.aiter_bytes())]
            terminal = event_to_builtins(events[-1])["response"]
            got = (await client.get(f"/v1/responses/{terminal['id']}")).json()
            plain = (await client.post("/v1/responses", json=request)).json()
        await upstream_backend.aclose()
    return {"events": events, "terminal": terminal, "get": got, "json": plain}


def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


RICH = [
    "responses/xai-web-search-citations.sse",  # web_search_call arguments/call_id/name; citations w/o title
    "responses/openrouter-reasoning-format-image-prompt.sse",  # reasoning format; image prompt; cost extras
    "responses/bedrock-cache-write-tokens.sse",  # cache_write_tokens
]
CAPTURED = [
    "programmatic-tool-calling.3.jsonl",  # caller fields, cache_write_tokens (OpenAI)
    "openai-file-search-tool.2.jsonl",  # file_citation annotations, file search results
    "openai-image-generation-tool.1.jsonl",
    "github-copilot-id-rotation.1.jsonl",  # ids that change from event to event (rewritten on purpose)
]


@pytest.mark.parametrize("data", [pytest.param(fixture(name), id=name) for name in RICH]
                         + [pytest.param(capture_as_sse(CAPTURES / name, response=0), id=name) for name in CAPTURED])
async def test_responses_relay_shows_what_the_upstream_sent_everywhere(data: bytes, serve: Callable[..., Any]) -> None:
    views = await shown(data, serve)
    assert check(views["events"]) == []
    done, usage = upstream_said(data)
    relayed_done = [event_to_builtins(e)["item"] for e in views["events"] if e.type == "response.output_item.done"]
    # The relayed done events are the upstream's, ids aside (kept unless missing or taken: Copilot's change).
    assert without_ids(relayed_done) == without_ids(done)
    for view in ("terminal", "get", "json"):
        output = views[view]["output"]
        assert without_ids(output) == without_ids(done), view
        if view != "json":  # another response: fresh ids where the relay had to give some
            assert [item["id"] for item in output] == [item["id"] for item in relayed_done], view
        assert views[view]["usage"] == usage, view


async def test_xai_extras_survive_and_citations_gain_nothing(serve: Callable[..., Any]) -> None:
    views = await shown(fixture("responses/xai-web-search-citations.sse"), serve)
    for view in ("terminal", "get", "json"):
        search, message = views[view]["output"]
        assert (search["call_id"], search["name"], search["arguments"]) == (
            "call_xai_01", "web_search", '{"query":"capital of Australia"}')
        assert message["content"][0]["annotations"] == [
            {"type": "url_citation", "url": "https://en.wikipedia.org/wiki/Canberra"},
            {"type": "url_citation", "url": "https://www.australia.gov.au/"},
        ]
        usage = views[view]["usage"]
        assert (usage["num_sources_used"], usage["cost_in_usd_ticks"]) == (2, 2450000)
        assert usage["server_side_tool_usage_details"]["web_search_calls"] == 1


# --- the chat backend ----------------------------------------------------------------------------------------


async def test_chat_content_parts_become_reasoning_and_text(serve: Callable[..., Any]) -> None:
    # Mistral's reasoning models stream delta.content as [{"type": "thinking" | "text"}] parts.
    views = await shown(fixture("chat/mistral-thinking-parts.sse"), serve, backend="chat")
    assert check(views["events"]) == []
    for view in ("terminal", "get", "json"):
        reasoning, message = views[view]["output"]
        assert reasoning["type"] == "reasoning"
        assert reasoning["content"][0]["text"] == "The user asks for 2+2. That is 4."
        assert message["content"][0]["text"] == "2 + 2 = 4."
        assert views[view]["usage"]["output_tokens"] == 46


async def test_a_chat_part_the_bridge_cannot_map_fails_the_response_visibly(serve: Callable[..., Any]) -> None:
    views = await shown(fixture("chat/mistral-unmappable-part.sse"), serve, backend="chat")
    events = views["events"]
    assert check(events) == []
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert "'reference'" in views["terminal"]["error"]["message"]


async def test_chat_usage_extras_survive_in_the_responses_shape(serve: Callable[..., Any]) -> None:
    views = await shown(fixture("chat/openrouter-usage-extras.sse"), serve, backend="chat")
    for view in ("terminal", "get", "json"):
        usage = views[view]["usage"]
        assert usage["input_tokens_details"] == {"cached_tokens": 10, "cache_write_tokens": 8, "audio_tokens": 0}
        assert usage["output_tokens_details"] == {"reasoning_tokens": 0, "image_tokens": 0}
        assert (usage["cost"], usage["is_byok"]) == (0.00004, False)
        assert usage["cost_details"]["upstream_inference_input_cost"] == 0.00003
        assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (20, 2, 22)
