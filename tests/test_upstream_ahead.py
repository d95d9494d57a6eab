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
from headwater.server.backends._http import Posted
from headwater.server.backends.base import ChatMessage, GenerationRequest
from headwater.server.backends.chat import ChatBackend
from headwater.server.backends.responses import ResponsesBackend
from headwater.server.config import ServerConfig
from headwater.server.entries import Entry
from headwater.server.live.memory import MemoryLiveLog
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


class _RecordingResponses(ResponsesBackend):
    """A Responses backend that notes, for each request sent ahead, whether a task makes its connection and whether
    its request was written within ``send_ahead`` itself."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.ahead: list[tuple[bool, bool]] = []  # (a task connects, written in the call)

    def send_ahead(self, request: GenerationRequest, *, connect: bool = True) -> None:
        super().send_ahead(request, connect=connect)
        sent = self._ahead[id(request)][1]
        self.ahead.append((isinstance(sent, asyncio.Task), isinstance(sent, Posted) and sent.written))


@pytest.mark.parametrize(("store", "stored"), [(MemoryStore, True), (_StoreWaitingForTheUpstream, False)],
                         ids=["in-process store", "not stored"])
async def test_with_nothing_to_overlap_no_connection_is_made_ahead(serve: Callable[..., Any], store: Any,
                                                                   stored: bool) -> None:
    """The in-process store never waits, and a response that is not stored has no store write: no task makes a
    connection ahead (the run makes it: one task and one turn of the loop fewer). Once a connection is kept, the
    next request is written on it within the create, before the run starts; both streams are whole."""
    async with ReplayUpstream([sse_reply(RESPONSES), sse_reply(RESPONSES)]) as upstream:
        backend = _RecordingResponses(upstream.url)
        made = store() if store is MemoryStore else store(threading.Event())
        server = serve(create_app(ServerConfig(store="memory"), backend=backend, store=made))
        streams = []
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(2):
                async with client.stream("POST", server.url + "/v1/responses",
                                         json={"model": "m", "input": "hi", "stream": True, "store": stored}) as answer:
                    assert answer.status_code == 200
                    streams.append([event async for event in aiter_events(answer.aiter_bytes())])
        await backend.aclose()
    assert backend.ahead == [(False, False), (False, True)]
    assert len(upstream.requests) == 2 and upstream.connections == 1 and backend._ahead == {}
    for events in streams:
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


async def _kept(backend: ResponsesBackend) -> None:
    """One whole stream read, so that its connection is kept (idle) for the next request."""
    assert [e async for e in backend.events(_ask())]


async def test_on_a_kept_connection_the_request_is_written_in_the_call() -> None:
    """``send_ahead`` writes the request on an idle kept connection at once: no task, and the upstream has it
    before anything awaits the answer; the run's read of the request then takes that answer."""
    async with ReplayUpstream([sse_reply(RESPONSES), sse_reply(RESPONSES)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        await _kept(backend)
        request = _ask()
        tasks = asyncio.all_tasks()
        backend.send_ahead(request, connect=False)
        assert asyncio.all_tasks() == tasks
        await _until(lambda: len(upstream.requests) == 2)
        events = [e async for e in backend.events(request)]
        await backend.aclose()
    assert events[-1].type == "response.completed" and upstream.connections == 1 and backend._ahead == {}


async def test_without_a_kept_connection_a_task_connects_only_when_asked_to() -> None:
    async with ReplayUpstream([sse_reply(RESPONSES), sse_reply(RESPONSES)]) as upstream:
        backend = ResponsesBackend(upstream.url)
        first, second = _ask(), _ask()
        tasks = asyncio.all_tasks()
        backend.send_ahead(first, connect=False)
        assert asyncio.all_tasks() == tasks  # the run connects when it reads
        backend.send_ahead(second, connect=True)
        assert len(asyncio.all_tasks() - tasks) == 1
        assert [e async for e in backend.events(second)][-1].type == "response.completed"
        assert len(upstream.requests) == 1  # (the first not yet: nothing has read it)
        assert [e async for e in backend.events(first)][-1].type == "response.completed"
        await backend.aclose()
    assert len(upstream.requests) == 2 and backend._ahead == {}


@pytest.mark.parametrize("forget", [True, False], ids=["forgotten", "never read"])
async def test_a_request_written_ahead_and_not_read_closes_its_connection(monkeypatch: pytest.MonkeyPatch,
                                                                          forget: bool) -> None:
    monkeypatch.setattr(_upstream, "AHEAD_SECONDS", 0.05)
    async with ReplayUpstream([sse_reply(RESPONSES), sse_reply(RESPONSES[:200], then=[Pause(30)])]) as upstream:
        backend = ResponsesBackend(upstream.url)
        await _kept(backend)
        request = _ask()
        backend.send_ahead(request, connect=False)
        await _until(lambda: len(upstream.requests) == 2)
        if forget:
            backend.forget_ahead(request)
        await _until(lambda: upstream.disconnects == 1)
        await backend.aclose()
    assert backend._ahead == {}


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.01)


class _LiveLogWaitingToOpen(MemoryLiveLog):
    """Opens each response's live log only once ``opened`` is set: the run is held before it generates."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()

    async def append(self, response_id: str, entries: Sequence[Entry], *, ended: bool = False) -> None:
        await self.opened.wait()
        await super().append(response_id, entries, ended=ended)


async def test_a_run_cancelled_before_it_generates_closes_what_was_sent_ahead(serve: Callable[..., Any]) -> None:
    """The create wrote the request ahead on a kept connection; the run is cancelled before its first step, so
    nothing reads that answer: it is closed when the run ends, not ``AHEAD_SECONDS`` later."""
    live = _LiveLogWaitingToOpen()
    live.opened.set()
    async with ReplayUpstream([sse_reply(RESPONSES), sse_reply(RESPONSES[:200], then=[Pause(30)])]) as upstream:
        backend = _RecordingResponses(upstream.url)
        app = create_app(ServerConfig(store="memory"), backend=backend, live=live)
        server = serve(app)
        async with httpx.AsyncClient(timeout=30) as client:
            first = await client.post(server.url + "/v1/responses", json={"model": "m", "input": "hi"})
            assert first.status_code == 200 and first.json()["status"] == "completed"  # (a kept connection)
            live.opened.clear()
            created = await client.post(server.url + "/v1/responses",
                                        json={"model": "m", "input": "hi", "background": True})
            assert created.status_code == 200
            await _until(lambda: len(upstream.requests) == 2)
            run = app.state.headwater.runs.get(created.json()["id"])
            assert run is not None and run.steps == 0
            # (the cancel answers once the run has ended, so it is sent first and the run let go once it has
            # been asked to stop: it then ends without generating)
            cancel = asyncio.ensure_future(client.post(server.url + f"/v1/responses/{created.json()['id']}/cancel"))
            await _until(lambda: run._stop is not None)
            live.opened.set()
            cancelled = await cancel
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            assert run.steps == 0
            await _until(lambda: upstream.disconnects == 1, timeout=5)
        await backend.aclose()
    assert backend.ahead[-1] == (False, True) and backend._ahead == {}
