"""A real HTTP upstream on loopback that replays recorded streams, for the upstream backends' tests (imported by
``test_upstream_chat.py`` and ``test_upstream_responses.py``), and the tests of that server itself.

``ReplayUpstream`` is a raw asyncio HTTP/1.1 server (keep-alive, chunked bodies) so that a test controls every
byte and every pause: it can send a stream an event per chunk or a few bytes at a time, stop mid-stream
(``Drop``: no terminating chunk), stall (``Stall``), or answer with an error status. Each request it gets is
recorded (``requests``), JSON body decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "openai"


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection without ending the chunked body (a dropped upstream)."""


@dataclass(frozen=True)
class Stall:
    """Send nothing more and hold the connection open (until the client gives up)."""


Action = bytes | Pause | Drop | Stall


@dataclass
class Reply:
    """An answer: ``status`` 0 sends nothing at all (not even headers) until the client leaves."""

    status: int = 200
    body: Sequence[Action] = ()
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events_of(data: bytes) -> list[bytes]:
    """An SSE body cut into its events (each with its blank line), one chunk each."""
    pieces = data.split(b"\n\n")
    return [piece + b"\n\n" for piece in pieces if piece]


def pieces_of(data: bytes, size: int) -> list[bytes]:
    """An SSE body cut every ``size`` bytes, wherever that falls (inside lines, inside UTF-8 sequences)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def capture_as_sse(path: Path, response: int | None = None) -> bytes:
    """A JSONL capture (one event payload a line) as the SSE body its server sent: ``event:`` + ``data:``.
    ``response``: only that response of a capture holding several (cut at each ``response.created``)."""
    groups: list[list[str]] = [[]]
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        kind = json.loads(line)["type"]
        if kind == "response.created" and groups[-1]:
            groups.append([])
        groups[-1].append(f"event: {kind}\ndata: {line}\n\n")
    chosen = groups if response is None else [groups[response]]
    return "".join("".join(g) for g in chosen).encode()


def sse_reply(data: bytes, *, size: int | None = None, then: Sequence[Action] = ()) -> Reply:
    return Reply(200, [*(pieces_of(data, size) if size else events_of(data)), *then])


def json_reply(status: int, body: bytes) -> Reply:
    return Reply(status, [body], content_type="application/json")


class ReplayUpstream:
    """Serves ``reply(request)`` (or the queued replies, in order) on 127.0.0.1, in the test's event loop."""

    def __init__(self, replies: Iterable[Reply] | Callable[[Recorded], Reply] = ()) -> None:
        self._replies: list[Reply] = [] if callable(replies) else list(replies)
        self._reply_for = replies if callable(replies) else None
        self.requests: list[Recorded] = []
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""
        self.disconnects = 0  # connections the client closed while a reply was being sent
        self.connections = 0  # connections the client opened

    def queue(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    async def __aenter__(self) -> ReplayUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                reply = self._reply_for(request) if self._reply_for is not None else self._next()
                if not await self._send(reader, writer, reply):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnects += 1
        except asyncio.CancelledError:
            pass  # the server is stopping (ending normally keeps asyncio's connection callback quiet)
        finally:
            self._tasks.discard(task)
            writer.close()

    def _next(self) -> Reply:
        if not self._replies:
            return json_reply(500, b'{"error": {"message": "the replay upstream has no reply queued"}}')
        return self._replies.pop(0)

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
        line = await reader.readline()
        if not line:
            return None
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body: Any = json.loads(raw) if raw else None
        return Recorded(method, target, headers, body)

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        """Write one reply; False when the connection is gone (or was meant to go)."""
        if reply.status == 0:
            await reader.read()
            self.disconnects += 1
            return False
        head = [f"HTTP/1.1 {reply.status} X", f"content-type: {reply.content_type}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        for action in reply.body:
            if isinstance(action, Pause):
                # Sleep, but notice the client leaving meanwhile (it sends nothing else while it reads a reply).
                try:
                    async with asyncio.timeout(action.seconds):
                        await reader.read()
                except TimeoutError:
                    continue
                self.disconnects += 1
                return False
            elif isinstance(action, Drop):
                writer.transport.abort()
                return False
            elif isinstance(action, Stall):
                await reader.read()  # until the client closes the connection (its read time-out)
                self.disconnects += 1
                return False
            elif action:
                writer.write(b"%x\r\n%s\r\n" % (len(action), action))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


# --- tests of the replay server itself -------------------------------------------------------------------------


async def test_replays_a_stream_in_chunks_and_records_the_request() -> None:
    body = fixture("chat/ollama-stop.sse")
    async with ReplayUpstream([sse_reply(body, size=7)]) as upstream, httpx.AsyncClient() as client:
        answer = await client.post(upstream.url + "/v1/chat/completions", json={"model": "m"})
    assert answer.status_code == 200
    assert answer.content == body
    assert upstream.requests[0].path == "/v1/chat/completions"
    assert upstream.requests[0].body == {"model": "m"}


async def test_a_dropped_stream_is_an_incomplete_body() -> None:
    body = fixture("chat/ollama-stop.sse")
    async with (
        ReplayUpstream([sse_reply(body[:100], then=[Drop()])]) as upstream,
        httpx.AsyncClient() as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(upstream.url + "/v1/chat/completions", json={})


def test_capture_as_sse_cuts_responses() -> None:
    path = CAPTURES / "openai-reasoning-encrypted-content.1.jsonl"
    whole = capture_as_sse(path)
    second = capture_as_sse(path, response=1)
    assert whole.count(b"event: response.created\n") == 4
    assert second.count(b"event: response.created\n") == 1
    assert second in whole
