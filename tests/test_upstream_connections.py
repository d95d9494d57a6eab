"""The upstream's connections: one keep-alive connection carries stream after stream, also when the chunked
body's end comes after the event that ends the stream (a packet of its own, as real servers send it); a stream
left in the middle closes its connection, so that the upstream sees the disconnect.

Real loopback upstreams (``ReplayUpstream``) that count the connections they were opened.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headwater.server.backends import _upstream
from headwater.server.backends._upstream import UpstreamBackend
from headwater.server.backends.base import ChatMessage, GenerationRequest
from headwater.server.backends.chat import ChatBackend
from headwater.server.backends.responses import ResponsesBackend
from test_upstream_replay import Pause, ReplayUpstream, Stall, fixture, sse_reply

RESPONSES = fixture("responses/bedrock-cache-write-tokens.sse")
CHAT = fixture("chat/ollama-stop.sse")


def ask() -> GenerationRequest:
    return GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])


async def _read_all(backend: UpstreamBackend) -> int:
    """One whole stream through the backend (as a run reads it), then until its connection is settled."""
    read = 0
    if isinstance(backend, ResponsesBackend):
        async for _ in backend.events(ask()):
            read += 1
    else:
        async for _ in backend.generate(ask()):
            read += 1
    await asyncio.gather(*backend.upstream._draining)  # the body's last bytes, in the background
    return read


@pytest.mark.parametrize(("make", "body"), [(ResponsesBackend, RESPONSES), (ChatBackend, CHAT)],
                         ids=["responses", "chat"])
async def test_streams_in_a_row_share_one_connection(make: Any, body: bytes) -> None:
    # The body's end (the last chunk) comes 50 ms after the event that ends the stream.
    async with ReplayUpstream([sse_reply(body, then=[Pause(0.05)]) for _ in range(3)]) as upstream:
        backend = make(upstream.url)
        try:
            for _ in range(3):
                assert await _read_all(backend) > 0
        finally:
            await backend.aclose()
    assert len(upstream.requests) == 3
    assert upstream.connections == 1
    assert upstream.disconnects == 0


async def test_a_stream_left_in_the_middle_closes_its_connection() -> None:
    async with ReplayUpstream([sse_reply(RESPONSES, then=[Pause(30)]), sse_reply(RESPONSES)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        try:
            events = backend.events(ask())
            await anext(events)
            await events.aclose()  # the client left: the upstream must see it
            assert await _read_all(backend) > 0
        finally:
            await backend.aclose()
    assert upstream.disconnects == 1
    assert upstream.connections == 2


async def test_a_body_that_does_not_end_after_its_last_event_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream ended (its terminal event came) but the body goes on: the connection is not kept."""
    monkeypatch.setattr(_upstream, "_DRAIN_SECONDS", 0.05)
    async with ReplayUpstream([sse_reply(RESPONSES, then=[Stall()]), sse_reply(RESPONSES)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        try:
            assert await _read_all(backend) > 0
            assert await _read_all(backend) > 0
        finally:
            await backend.aclose()
    assert upstream.connections == 2
    assert upstream.disconnects == 1
