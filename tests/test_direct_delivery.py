"""Direct delivery (``server/direct.py``): a waiting follower whose task lends a sink is written by the append
itself; it wakes only to end, for a keep-alive, or to take a batch its sink refused; it still yields what the
sink wrote, so the layers above keep their place. Over a real server (uvicorn + httptools, which offers the
connection's body writer): streams stay byte-identical to the stored replay, the connection stays usable after
them, a paused connection (a client that does not read) loses nothing and keeps the order, quiet intervals get
keep-alive comments, and a client that leaves still cancels its run.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from headwater.protocol.conformance import check
from headwater.protocol.stream import iter_events
from headwater.server import direct
from headwater.server.app import create_app
from headwater.server.backends.base import TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.entries import Entry
from headwater.server.http import sse
from headwater.server.live.memory import MemoryLiveLog
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer


def entry(n: int, kind: str = "response.output_text.delta") -> Entry:
    return Entry(n, kind, b'{"sequence_number":%d}' % n)


class Sink:
    """A sink that records what it was handed (``accept`` False: it refuses; ``fail``: it raises)."""

    def __init__(self) -> None:
        self.written: list[list[int]] = []
        self.accept = True
        self.fail = False

    def __call__(self, entries: list[Entry]) -> bool:
        if self.fail:
            raise OSError("the connection broke")
        if not self.accept:
            return False
        self.written.append([e.sequence_number for e in entries])
        return True


class Follower:
    """``live.follow`` run in a task of its own under ``direct.lending(sink)``, its batches collected."""

    def __init__(self, live: MemoryLiveLog, sink: Sink | None, *, after: int = -1, keepalive: float = 60.0) -> None:
        self.batches: list[list[int]] = []
        self.got = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._follow(live, sink, after, keepalive))

    async def _follow(self, live: MemoryLiveLog, sink: Sink | None, after: int, keepalive: float) -> None:
        with direct.lending(sink):
            follow: AsyncIterator[list[Entry]] = live.follow("r", after, keepalive=keepalive)
            async for batch in follow:
                self.batches.append([e.sequence_number for e in batch])
                self.got.set()

    @property
    def seen(self) -> list[int]:
        return [n for batch in self.batches for n in batch]


async def settle() -> None:
    """A few turns of the event loop: every task that was woken has run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_waiting_follower_is_written_by_the_append_itself_and_still_sees_every_entry() -> None:
    live, sink = MemoryLiveLog(), Sink()
    live.append_now("r", [entry(0), entry(1)])
    follower = Follower(live, sink)
    await settle()
    assert follower.batches == [[0, 1]]  # what was there: through the follower's task (catching up)
    live.append_now("r", [entry(2)])
    assert sink.written == [[2]]  # in the append's own call, before any turn of the loop
    live.append_now("r", [entry(3), entry(4)])
    assert sink.written == [[2], [3], [4]] or sink.written == [[2], [3, 4]]
    await settle()
    assert follower.batches == [[0, 1]]  # not woken for them
    live.append_now("r", [entry(5, "response.completed")], ended=True)
    await asyncio.wait_for(follower.task, 5)
    assert [n for batch in sink.written for n in batch] == [2, 3, 4, 5]
    assert follower.seen == [0, 1, 2, 3, 4, 5]  # the written ones passed on as well, once


async def test_a_refused_batch_wakes_the_follower_which_takes_it_and_later_ones_itself() -> None:
    live, sink = MemoryLiveLog(), Sink()
    live.append_now("r", [])
    follower = Follower(live, sink)
    await settle()
    live.append_now("r", [entry(0)])
    sink.accept = False  # the connection is paused
    live.append_now("r", [entry(1)])
    live.append_now("r", [entry(2)])  # (the follower is awake now: nothing offered to the sink)
    await settle()
    assert sink.written == [[0]]
    assert follower.seen == [0, 1, 2]
    sink.accept = True  # it waits again, parked: the next append is the sink's again
    live.append_now("r", [entry(3)])
    assert sink.written == [[0], [3]]
    live.append_now("r", [entry(4, "response.completed")], ended=True)
    await asyncio.wait_for(follower.task, 5)
    assert follower.seen == [0, 1, 2, 3, 4]


async def test_a_sink_that_raises_is_a_refusal() -> None:
    live, sink = MemoryLiveLog(), Sink()
    live.append_now("r", [])
    follower = Follower(live, sink)
    await settle()
    sink.fail = True
    live.append_now("r", [entry(0)])  # the append does not raise: the follower's task takes the entry
    await settle()
    assert follower.seen == [0] and sink.written == []
    follower.task.cancel()


async def test_entries_at_or_before_starting_after_are_not_written() -> None:
    live, sink = MemoryLiveLog(), Sink()
    live.append_now("r", [entry(0)])
    follower = Follower(live, sink, after=2)  # resumed ahead of what the live log has yet
    await settle()
    live.append_now("r", [entry(1), entry(2), entry(3)])
    assert sink.written == [[3]]
    live.append_now("r", [entry(4, "response.completed")], ended=True)
    await asyncio.wait_for(follower.task, 5)
    assert follower.seen == [3, 4]


async def test_a_parked_follower_gets_its_keep_alive_and_stays_written() -> None:
    live, sink = MemoryLiveLog(), Sink()
    live.append_now("r", [])
    follower = Follower(live, sink, keepalive=0.05)
    await asyncio.wait_for(follower.got.wait(), 5)
    assert follower.batches[0] == []  # the quiet interval's empty batch
    live.append_now("r", [entry(0)])
    assert sink.written == [[0]]  # parked again after the keep-alive
    follower.task.cancel()


async def test_a_follower_cancelled_while_parked_is_written_no_more() -> None:
    live, sink = MemoryLiveLog(), Sink()
    live.append_now("r", [])
    follower = Follower(live, sink)
    await settle()
    follower.task.cancel()
    await settle()
    live.append_now("r", [entry(0)])
    assert sink.written == []


async def test_a_log_that_goes_wakes_its_parked_follower() -> None:
    live, sink = MemoryLiveLog(), Sink()
    live.append_now("r", [entry(0)])
    follower = Follower(live, sink)
    await settle()
    await live.expire("r", 0.0)
    await asyncio.wait_for(follower.task, 5)
    assert follower.seen == [0]


async def test_without_a_sink_the_follower_is_woken_for_every_batch() -> None:
    live = MemoryLiveLog()
    live.append_now("r", [])
    follower = Follower(live, None)
    await settle()
    for n in range(3):
        live.append_now("r", [entry(n)])
        await settle()
    assert follower.batches == [[0], [1], [2]]
    follower.task.cancel()


# --- over a real server -------------------------------------------------------------------------------------


class CountedFrames(sse.DirectFrames):
    """``DirectFrames`` that counts the entries it wrote (the class the server's streams use, while patched in)."""

    entries = 0

    def __call__(self, entries: list[Entry]) -> bool:
        if not super().__call__(entries):
            return False
        CountedFrames.entries += len(entries)
        return True


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> type[CountedFrames]:
    CountedFrames.entries = 0
    monkeypatch.setattr(sse, "DirectFrames", CountedFrames)
    return CountedFrames


def test_streams_written_directly_match_the_stored_replay_and_leave_the_connection_usable(
    counted: type[CountedFrames],
) -> None:
    backend = ScriptedBackend([TextDelta(f"w{i} ") for i in range(40)], delay=0.002)
    with LiveServer(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())) as live:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=live.url, timeout=30, limits=limits) as client:
            for _ in range(2):  # one connection for everything: each stream's chunked end leaves it usable
                with client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as response:
                    raw = b"".join(response.iter_raw())
                events = list(iter_events([raw]))
                assert events[-1].type == "response.completed"
                assert check(events) == []
                replay = client.get(f"/v1/responses/{events[0].response.id}",  # type: ignore[union-attr]
                                    params={"stream": "true"})
                assert replay.content == raw
            assert client.get("/healthz").status_code == 200
    assert counted.entries > 40  # the deltas were written by the publish, not each by the stream's task


def test_a_client_that_does_not_read_pauses_the_connection_and_loses_nothing(counted: type[CountedFrames]) -> None:
    # 300 deltas of 16 KiB (about 5 MB) into a receive buffer of a few KiB that is not read until the run
    # ended: the server's connection pauses its writing, the sink refuses, the stream's task waits for the
    # drain; then everything arrives, in order, byte-identical to the stored replay.
    text = "x" * 16_384
    backend = ScriptedBackend([TextDelta(text) for _ in range(300)], delay=0.001)
    with LiveServer(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())) as live:
        host, port = live.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        body = b'{"input":"hi","stream":true}'
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        sock.settimeout(30)
        received = bytearray()
        while b'"id":"resp_' not in received:  # the head and the first event: the response's id
            received += sock.recv(1024)
        response_id = re.search(rb'"id":"(resp_[^"]+)"', received)[1].decode()  # type: ignore[index]
        with httpx.Client(base_url=live.url, timeout=30) as client:
            deadline = time.monotonic() + 30
            while client.get(f"/v1/responses/{response_id}").json()["status"] == "in_progress":
                # (the run goes on to its end while the stream's connection is held up)
                assert time.monotonic() < deadline, "the run did not finish"
                time.sleep(0.05)
            while not received.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(1 << 20)
                assert chunk, "the connection closed before the stream's end"
                received += chunk
            sock.close()
            head, _, chunked = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
            raw = dechunk(chunked)
            events = list(iter_events([raw]))
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert events[-1].type == "response.completed" and check(events) == []
            replay = client.get(f"/v1/responses/{events[0].response.id}",  # type: ignore[union-attr]
                                params={"stream": "true"})
            assert replay.content == raw
    assert counted.entries > 0  # written directly until the connection paused


def dechunk(data: bytes) -> bytes:
    out, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        assert data[end + 2 + size:end + 4 + size] == b"\r\n"
        at = end + 4 + size


def test_a_quiet_directly_written_stream_gets_keep_alive_comments(counted: type[CountedFrames]) -> None:
    backend = ScriptedBackend([TextDelta(f"w{i} ") for i in range(6)], delay=0.15)
    config = ServerConfig(store="memory", keepalive_seconds=0.1)
    with LiveServer(create_app(config, backend=backend, store=MemoryStore())) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client, \
            client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as response:
        raw = b"".join(response.iter_raw())
    assert sse.KEEPALIVE in raw
    events = list(iter_events([raw]))
    assert events[-1].type == "response.completed" and check(events) == []
    assert counted.entries > 0


def test_a_client_that_leaves_a_directly_written_stream_cancels_its_run(counted: type[CountedFrames]) -> None:
    backend = ScriptedBackend([TextDelta(f"w{i} ") for i in range(2000)], delay=0.005)  # 10 s to play
    with LiveServer(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:
        with client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as response:
            events = iter_events(response.iter_raw())
            response_id = next(events).response.id  # type: ignore[union-attr]
            for event in events:
                if event.sequence_number >= 20:
                    break
        deadline = time.monotonic() + 15
        while client.get(f"/v1/responses/{response_id}").json()["status"] == "in_progress":
            assert time.monotonic() < deadline, "the run was not cancelled"
            time.sleep(0.05)
        assert client.get(f"/v1/responses/{response_id}").json()["status"] == "cancelled"
    assert backend.closed_early
    assert counted.entries > 0


class Wiretap:
    """ASGI middleware keeping the bodies of the requests it passes on and of the responses it sends back, as
    it sees them through ``receive`` and ``send`` (what a recorder, a compressor or an embedding app sees).
    ``made``: every one made, last last (Starlette makes those added with ``add_middleware``)."""

    made: list[Wiretap] = []

    def __init__(self, app: Any) -> None:
        Wiretap.made.append(self)
        self.app = app
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request, response = bytearray(), bytearray()

        async def receiving() -> Any:
            message = await receive()
            request.extend(message.get("body", b""))
            return message

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.body":
                response.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, receiving, sending)
        self.requests.append(bytes(request))
        self.responses.append(bytes(response))


@pytest.mark.parametrize("where", ["around the app", "added to the app"])
def test_middleware_between_app_and_connection_sees_every_body_byte(
    counted: type[CountedFrames], where: str,
) -> None:
    backend = ScriptedBackend([TextDelta(f"w{i} ") for i in range(40)], delay=0.002)
    app = create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())
    served: Any = Wiretap(app) if where == "around the app" else app
    if where == "added to the app":
        app.add_middleware(Wiretap)
    with LiveServer(served) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        body = json.dumps({"input": "hi", "stream": True}).encode()
        with client.stream("POST", "/v1/responses", content=body,
                           headers={"content-type": "application/json"}) as response:
            raw = b"".join(response.iter_bytes())
        events = list(iter_events([raw]))
        assert events[-1].type == "response.completed"
        replay = client.get(f"/v1/responses/{events[0].response.id}", params={"stream": "true"})  # type: ignore[union-attr]
        assert replay.content == raw
    tap = Wiretap.made[-1]
    assert tap.requests[0] == body  # the create's body came through its ``receive``
    assert tap.responses == [raw, raw]  # every event through its ``send``
    assert counted.entries == 0  # none written to the connection past it
