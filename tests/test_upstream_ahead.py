"""An upstream backend is asked before the response is stored and its run starts (``send_ahead``): the
upstream's time to its first event overlaps the create path. What is sent ahead and never read (the create
failed, the run never generated) is closed, so that the upstream stops.

A real server (uvicorn on loopback) in front of real loopback upstreams; the stores are real ``MemoryStore``s
that wait for, or fail at, their ``create``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from headwater.protocol.conformance import check
from headwater.protocol.stream import aiter_events
from headwater.server.app import create_app
from headwater.server.backends import _upstream
from headwater.server.backends.base import ChatMessage, GenerationRequest
from headwater.server.backends.chat import ChatBackend
from headwater.server.backends.responses import ResponsesBackend
from headwater.server.config import ServerConfig
from headwater.server.store import StoredItem, StoredResponse
from headwater.server.store.memory import MemoryStore
from test_upstream_replay import Pause, Recorded, ReplayUpstream, Reply, fixture, sse_reply

RESPONSES = fixture("responses/bedrock-cache-write-tokens.sse")
CHAT = fixture("chat/ollama-stop.sse")


class _StoreWaitingForTheUpstream(MemoryStore):
    """Stores a response only once the upstream has been asked for it (or after 10 s), and says which."""

    def __init__(self, asked: threading.Event) -> None:
        super().__init__()
        self.asked = asked
        self.asked_first: list[bool] = []

    async def create(self, response: StoredResponse, items: Sequence[StoredItem]) -> None:
        self.asked_first.append(await asyncio.to_thread(self.asked.wait, 10))
        await super().create(response, items)


class _StoreFailingOnceTheUpstreamIsAsked(_StoreWaitingForTheUpstream):
    async def create(self, response: StoredResponse, items: Sequence[StoredItem]) -> None:
        self.asked_first.append(await asyncio.to_thread(self.asked.wait, 10))
        raise RuntimeError("the disk is full")


def _upstream_signalling(asked: threading.Event, reply: Reply) -> Callable[[Recorded], Reply]:
    def answer(request: Recorded) -> Reply:
        asked.set()
        return reply

    return answer


@pytest.mark.parametrize(("make", "body"), [(ResponsesBackend, RESPONSES), (ChatBackend, CHAT)],
                         ids=["responses", "chat"])
async def test_the_upstream_is_asked_before_the_response_is_stored(serve: Callable[..., Any], make: Any,
                                                                   body: bytes) -> None:
    asked = threading.Event()
    store = _StoreWaitingForTheUpstream(asked)
    async with ReplayUpstream(_upstream_signalling(asked, sse_reply(body))) as upstream:
        backend = make(upstream.url)
        server = serve(create_app(ServerConfig(store="memory"), backend=backend, store=store))
        async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", server.url + "/v1/responses", json={"model": "m", "input": "hi", "stream": True}
        ) as answer:
            assert answer.status_code == 200
            events = [event async for event in aiter_events(answer.aiter_bytes())]
        await backend.aclose()
    assert store.asked_first == [True]
    assert check(events) == [] and events[-1].type == "response.completed"
    assert len(upstream.requests) == 1


class _CountingResponses(ResponsesBackend):
    """A Responses backend that counts the requests it was asked to send ahead."""

    sent_ahead = 0

    def send_ahead(self, request: GenerationRequest) -> None:
        self.sent_ahead += 1
        super().send_ahead(request)


@pytest.mark.parametrize(("store", "stored"), [(MemoryStore, True), (_StoreWaitingForTheUpstream, False)],
                         ids=["in-process store", "not stored"])
async def test_with_nothing_to_overlap_the_run_asks_the_upstream_itself(serve: Callable[..., Any], store: Any,
                                                                        stored: bool) -> None:
    """The in-process store never waits, and a response that is not stored has no store write: nothing is sent
    ahead (the run's own request is one task fewer), and the stream is whole."""
    async with ReplayUpstream([sse_reply(RESPONSES)]) as upstream:
        backend = _CountingResponses(upstream.url)
        made = store() if store is MemoryStore else store(threading.Event())
        server = serve(create_app(ServerConfig(store="memory"), backend=backend, store=made))
        async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", server.url + "/v1/responses", json={"model": "m", "input": "hi", "stream": True,
                                                        "store": stored}
        ) as answer:
            assert answer.status_code == 200
            events = [event async for event in aiter_events(answer.aiter_bytes())]
        await backend.aclose()
    assert backend.sent_ahead == 0 and len(upstream.requests) == 1
    assert check(events) == [] and events[-1].type == "response.completed"


async def test_a_create_that_fails_closes_what_was_sent_ahead(serve: Callable[..., Any]) -> None:
    asked = threading.Event()
    store = _StoreFailingOnceTheUpstreamIsAsked(asked)
    reply = sse_reply(RESPONSES[:200], then=[Pause(30)])
    async with ReplayUpstream(_upstream_signalling(asked, reply)) as upstream:
        backend = ResponsesBackend(upstream.url)
        server = serve(create_app(ServerConfig(store="memory"), backend=backend, store=store))
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(server.url + "/v1/responses", json={"model": "m", "input": "hi",
                                                                          "stream": True})
        assert answer.status_code == 500
        await _until(lambda: upstream.disconnects == 1)
        await backend.aclose()
    assert store.asked_first == [True]
    assert len(upstream.requests) == 1 and backend._ahead == {}


def _ask() -> GenerationRequest:
    return GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])


async def test_an_answer_nobody_reads_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_upstream, "AHEAD_SECONDS", 0.05)
    async with ReplayUpstream([sse_reply(RESPONSES[:200], then=[Pause(30)])]) as upstream:
        backend = ResponsesBackend(upstream.url)
        backend.send_ahead(_ask())  # the run that would read it never comes
        await _until(lambda: upstream.disconnects == 1)
        await backend.aclose()
    assert backend._ahead == {}


async def test_only_the_request_sent_ahead_reads_its_answer() -> None:
    """Another request (even an equal one) posts its own; the one sent ahead takes the answer it got."""
    async with ReplayUpstream([sse_reply(RESPONSES), sse_reply(RESPONSES)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        ahead, other = _ask(), _ask()
        backend.send_ahead(ahead)
        assert [e async for e in backend.events(other)]
        assert [e async for e in backend.events(ahead)]
        await backend.aclose()
    assert len(upstream.requests) == 2 and backend._ahead == {}


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.01)
