"""SSE delivery: ``frames`` turns batches of log entries into writes of whole SSE frames (a keep-alive comment
for each quiet interval), and ``EventStreamResponse``, an ASGI response, writes them one write per chunk and
notices the client leaving. The terminal batch goes out with the body's end (the chunked terminator) in one write.

Starlette's ``StreamingResponse`` may leave the body iterator suspended when the client goes; this class
always closes it, and tells its ``on_close`` callback whether the body ran to its end, which is how a dropped
non-background stream cancels its run. Where the server offers the connection's body writer, the response lends
its followers a ``DirectFrames`` sink: while a follower waits, the publish writes its events (``direct``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping

from starlette.types import Receive, Scope, Send

from headwater.protocol.events import TERMINAL_EVENT_TYPES
from headwater.protocol.sse import encode_comment, encode_frame, join_frames

from .. import direct
from ..entries import Entry

__all__ = ["KEEPALIVE", "DirectFrames", "EventStreamResponse", "Frames", "frames", "replay"]

KEEPALIVE = encode_comment("keep-alive")


class Frames:
    """``frames(batches)``: each entry as an SSE frame (``event:`` its type, ``data:`` its JSON as stored), the
    frames of a batch joined into writes of whole frames up to ``WRITE_BYTES`` (``join_frames``: a follower that
    fell behind catches up in few writes, a lone frame goes at once); an empty batch as a keep-alive comment.

    An async iterator of those writes; ``EventStreamResponse`` instead reads ``batches`` itself and frames each
    batch as it writes it, one async generator fewer between a published event and its socket write (one per
    event per stream: with 1,000 streams that layer was a few percent of a worker's CPU)."""

    __slots__ = ("_writes", "batches")

    def __init__(self, batches: AsyncIterable[list[Entry]]) -> None:
        self.batches = batches
        self._writes: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> Frames:
        return self

    async def __anext__(self) -> bytes:
        if self._writes is None:
            self._writes = _frames(self.batches)
        return await anext(self._writes)

    async def aclose(self) -> None:
        for closable in (self._writes, self.batches):
            aclose = getattr(closable, "aclose", None)
            if aclose is not None:
                await aclose()


def frames(batches: AsyncIterable[list[Entry]]) -> Frames:
    """The SSE writes of ``batches`` (``Frames``)."""
    return Frames(batches)


async def _frames(batches: AsyncIterable[list[Entry]]) -> AsyncIterator[bytes]:
    async for batch in batches:
        if not batch:
            yield KEEPALIVE
            continue
        for chunk in _writes(batch):
            yield chunk


async def replay(entries: Iterable[Entry]) -> AsyncIterator[bytes]:
    """Stored entries as SSE frames, several to a write (as a live run's followers get them)."""
    for chunk in _writes(list(entries)):
        yield chunk


def _writes(entries: list[Entry]) -> list[bytes]:
    encoded = [encode_frame(entry.type, entry.payload) for entry in entries]
    if len(encoded) == 1:
        return encoded
    writes, index = [], 0
    while index < len(encoded):
        chunk, index = join_frames(encoded, index)
        writes.append(chunk)
    return writes


class EventStreamResponse:
    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes] | Frames,
        *,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[bool], None] | None = None,
    ) -> None:
        self.body = body
        self.on_close = on_close
        raw = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # nginx: do not buffer the stream
        }
        raw.update({k.lower(): v for k, v in (headers or {}).items()})
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in raw.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The body is written by this task itself (a task of its own would cost every stream one more hop of the
        # event loop before its first write). When the client leaves, this task's writing is cancelled: told by
        # the connection's body writer (``on_disconnect``, called when the connection is lost), or, where the
        # server offers none, by a watcher task that reads ``receive`` until ``http.disconnect``.
        task = asyncio.current_task()
        assert task is not None
        writing = True
        left = False

        def client_left() -> None:
            nonlocal left
            if writing:
                left = True
                task.cancel()

        def watcher_done(watcher: asyncio.Task[None]) -> None:
            if not watcher.cancelled() and watcher.exception() is None:
                client_left()

        watch = getattr(scope.get("extensions", {}).get(direct.EXTENSION), "on_disconnect", None)
        watching = watch is not None and bool(watch(client_left))
        watcher = None
        if not watching:
            watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
            watcher.add_done_callback(watcher_done)
        finished = False
        try:
            await self._write(scope, send)
            finished = True
        except asyncio.CancelledError:
            if not left or task.uncancel() > 0:
                raise  # (not the client's leaving: the server is stopping)
        finally:
            writing = False
            if watch is not None and watching:
                watch(None)
            elif watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            aclose = getattr(self.body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if self.on_close is not None:
                self.on_close(finished)

    async def _write(self, scope: Scope, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        body = self.body
        ended = False
        if isinstance(body, Frames) and body._writes is None:  # (the batches framed here: ``Frames``)
            connection = scope.get("extensions", {}).get(direct.EXTENSION)
            if connection is None:
                ended = await _write_batches(body.batches, send)
            else:  # the publish may write this stream's events itself while it waits (``direct``)
                sink = DirectFrames(connection)
                with direct.lending(sink):
                    ended = await _write_batches(body.batches, send, sink)
        else:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _write_batches(batches: AsyncIterable[list[Entry]], send: Send, sink: DirectFrames | None = None) -> bool:
    """Each batch as SSE frames (an empty one as a keep-alive), but the entries ``sink`` wrote already; a batch
    that ends with the terminal event is sent as the body's end, its last write carrying the chunked terminator.
    True once this task ended the body so (nothing after the terminal event is written)."""
    ended = False
    async for batch in batches:
        if ended:
            continue  # (the stream is over: the layers above only finish)
        if sink is not None and batch:
            if batch[0].sequence_number <= sink.last:
                batch = [entry for entry in batch if entry.sequence_number > sink.last]
                if not batch:
                    continue
            sink.last = batch[-1].sequence_number
        ended = bool(batch) and batch[-1].type in TERMINAL_EVENT_TYPES
        if len(batch) == 1:  # (the common case: one event)
            entry = batch[0]
            await send({"type": "http.response.body", "body": encode_frame(entry.type, entry.payload),
                        "more_body": not ended})
            continue
        chunks = _writes(batch) if batch else [KEEPALIVE]
        for chunk in chunks[:-1]:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": chunks[-1], "more_body": not ended})
    return ended


class DirectFrames:
    """The sink (``direct.Sink``) that ``EventStreamResponse`` lends its live log's followers: their entries as
    SSE frames (several to a write, as ``_writes`` joins them), written through the connection's ``DirectBody``;
    a batch that ends with the terminal event is refused, for the stream's task to write it with the body's end
    (in one write, the response completed in the same call: the client's next request on the connection finds
    it free). ``last``: the sequence number of the last entry this stream has written, either way."""

    __slots__ = ("_connection", "last")

    def __init__(self, connection: direct.DirectBody) -> None:
        self._connection = connection
        self.last = -1

    def __call__(self, entries: list[Entry]) -> bool:
        if entries[-1].type in TERMINAL_EVENT_TYPES:
            return False
        if len(entries) == 1:
            entry = entries[0]
            chunks = [encode_frame(entry.type, entry.payload)]
        else:
            chunks = _writes(entries)
        if not self._connection.write(chunks):
            return False
        self.last = entries[-1].sequence_number
        return True


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
