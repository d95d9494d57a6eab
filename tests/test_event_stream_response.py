"""``EventStreamResponse``, the ASGI response of every SSE stream, called as an ASGI server calls it: the body is
written by the request's own task (no task of its own in between, so a stream's first write waits no extra turn
of the event loop); a client that leaves stops the writing, closes the body and is reported to ``on_close``; a
cancel from outside (the server stopping) is not mistaken for the client leaving, and propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headwater.protocol.sse import encode_frame
from headwater.server.entries import Entry
from headwater.server.http.sse import KEEPALIVE, EventStreamResponse, frames


class Client:
    """The ASGI ``receive``/``send`` pair of one request: ``leave()`` makes ``receive`` say the client left."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.wrote = asyncio.Event()  # a body message was sent

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.wrote.set()

    def leave(self) -> None:
        self.gone.set()

    @property
    def body(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


class Body:
    """A body that yields ``chunks``, then waits on ``more`` (forever unless set); it notes the tasks it runs in
    and whether it was closed."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks
        self.more = asyncio.Event()
        self.tasks: set[asyncio.Task[Any] | None] = set()
        self.closed = False

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.chunks:
                self.tasks.add(asyncio.current_task())
                yield chunk
            await self.more.wait()
        finally:
            self.closed = True


async def test_the_body_is_written_by_the_request_task_itself() -> None:
    client, body = Client(), Body(b"event: a\n\n", b"event: b\n\n")
    body.more.set()
    closes: list[bool] = []

    async def request() -> asyncio.Task[Any] | None:
        response = EventStreamResponse(body(), on_close=closes.append)
        await response({"type": "http"}, client.receive, client.send)
        return asyncio.current_task()

    task = asyncio.create_task(request())
    assert body.tasks == {await task}
    assert client.sent[0]["type"] == "http.response.start" and client.sent[0]["status"] == 200
    assert client.body == [b"event: a\n\n", b"event: b\n\n", b""] and client.sent[-1]["more_body"] is False
    assert closes == [True] and body.closed


async def test_a_client_that_leaves_stops_the_writing_and_is_reported() -> None:
    client, body = Client(), Body(b"event: a\n\n")  # then it waits for more, which never comes
    closes: list[bool] = []
    response = EventStreamResponse(body(), on_close=closes.append)
    task = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
    await client.wrote.wait()
    client.leave()
    await asyncio.wait_for(task, 5)  # returns (the client's leaving is no error of the request)
    assert closes == [False] and body.closed
    assert client.body == [b"event: a\n\n"]  # no end of the body after the client went


async def test_a_cancel_from_outside_propagates_and_is_not_the_client_leaving() -> None:
    client, body = Client(), Body(b"event: a\n\n")
    closes: list[bool] = []
    response = EventStreamResponse(body(), on_close=closes.append)
    task = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
    await client.wrote.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closes == [False] and body.closed


async def test_an_error_of_the_body_propagates_after_the_stream_is_closed() -> None:
    client = Client()
    closes: list[bool] = []

    async def failing() -> AsyncIterator[bytes]:
        yield b"event: a\n\n"
        raise RuntimeError("the body broke")

    response = EventStreamResponse(failing(), on_close=closes.append)
    with pytest.raises(RuntimeError, match="the body broke"):
        await response({"type": "http"}, client.receive, client.send)
    assert closes == [False]


def entry(seq: int, size: int = 10) -> Entry:
    return Entry(seq, "response.output_text.delta", b'{"n":%d,"p":"%s"}' % (seq, b"x" * size))


class Batches:
    """Batches of entries (an empty one: a quiet interval), then a wait on ``more`` (forever unless set); notes
    whether it was closed."""

    def __init__(self, *batches: list[Entry]) -> None:
        self.batches = batches
        self.more = asyncio.Event()
        self.closed = False

    async def __call__(self) -> AsyncIterator[list[Entry]]:
        try:
            for batch in self.batches:
                yield batch
            await self.more.wait()
        finally:
            self.closed = True


async def test_frames_written_from_their_batches_are_the_bytes_the_frames_iterator_gives() -> None:
    # EventStreamResponse frames the batches of a ``frames(...)`` body itself (one async generator fewer per
    # event); what it writes is exactly what iterating ``frames(...)`` gives: a frame per lone entry, the frames
    # of a batch joined into whole-frame writes, a keep-alive comment for an empty batch.
    shapes = ([entry(0)], [], [entry(1), entry(2)], [entry(n, 4000) for n in range(3, 40)], [entry(40)])
    reference = Batches(*shapes)
    reference.more.set()
    expected = [chunk async for chunk in frames(reference())]
    assert KEEPALIVE in expected and len(expected) > len(shapes)  # (the big batch took several writes)
    client, batches = Client(), Batches(*shapes)
    batches.more.set()
    closes: list[bool] = []
    response = EventStreamResponse(frames(batches()), on_close=closes.append)
    await response({"type": "http"}, client.receive, client.send)
    assert client.body == [*expected, b""] and closes == [True] and batches.closed


async def test_a_client_that_leaves_a_frames_body_closes_its_batches() -> None:
    client, batches = Client(), Batches([entry(0)])  # then it waits for more, which never comes
    closes: list[bool] = []
    response = EventStreamResponse(frames(batches()), on_close=closes.append)
    task = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
    await client.wrote.wait()
    client.leave()
    await asyncio.wait_for(task, 5)
    assert closes == [False] and batches.closed
    assert client.body == [encode_frame(entry(0).type, entry(0).payload)]
