"""How the server's SSE bytes are cut into writes, seen on the raw socket: every write (one HTTP/1.1 chunk of
the chunked body) holds whole frames only, in order; frames that are ready together share a write, bounded in
bytes; a lone frame is sent without waiting for more; the terminal batch and the body's end go in one write to
the connection. Real uvicorn, a raw loopback socket, no timing.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from headwater.protocol.conformance import check
from headwater.protocol.sse import WRITE_BYTES, join_frames
from headwater.protocol.stream import iter_events
from headwater.server import serving
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, Step, TextDelta
from headwater.server.backends.scripted import Pause, ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.http import sse
from headwater.server.store import MemoryStore, SQLiteStore

MODEL = "scripted-1"


class RawStream:
    """One HTTP/1.1 request on a plain socket; the chunked body is read one HTTP chunk at a time, exactly as
    the server wrote them (uvicorn sends one chunk per ``http.response.body`` message)."""

    def __init__(self, url: str, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {parts.netloc}\r\nconnection: close\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + payload)
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"].startswith("text/event-stream")
        assert headers.get("transfer-encoding") == "chunked"

    def chunks(self) -> Iterator[bytes]:
        while True:
            size = int(self.file.readline().split(b";")[0], 16)
            data = self.file.read(size)
            assert self.file.read(2) == b"\r\n"
            if size == 0:
                return
            yield data

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def frames_of(chunk: bytes) -> list[bytes]:
    """The frames of one write; fails unless the write is whole frames (ends on a frame boundary)."""
    assert chunk.endswith(b"\n\n"), f"a write ends inside a frame: ...{chunk[-80:]!r}"
    frames = [part + b"\n\n" for part in chunk[:-2].split(b"\n\n")]
    for frame in frames:
        assert frame.startswith((b"event: ", b": ")), f"a write starts inside a frame: {frame[:80]!r}"
    return frames


def read_all(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> list[bytes]:
    raw = RawStream(url, method, path, body)
    try:
        return list(raw.chunks())
    finally:
        raw.close()


@pytest.fixture(params=["memory", "sqlite"])
def server_with(request: pytest.FixtureRequest, serve: Callable[[Any], Any], tmp_path: Any) -> Callable[..., str]:
    def start(steps: list[Any]) -> str:
        backend = ScriptedBackend(steps, models=[MODEL])
        store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "hw.db")
        config = ServerConfig.with_keys((), store=request.param)
        return str(serve(create_app(config, backend=backend, store=store)).url)

    return start


def deltas(count: int, size: int = 8) -> list[Step]:
    return [TextDelta(f"{i:0{size}d}") for i in range(count)] + [Finish("stop")]


def check_stream(chunks: list[bytes]) -> list[Any]:
    """Every write is whole frames; together they are one conformant stream numbered 0, 1, 2, ... in order."""
    for chunk in chunks:
        frames_of(chunk)
    events = list(iter_events(chunks))
    assert check(events) == []
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


def test_live_stream_writes_end_on_frame_boundaries_in_order(server_with: Callable[..., str]) -> None:
    url = server_with(deltas(400))
    chunks = read_all(url, "POST", "/v1/responses", {"model": MODEL, "input": "hi", "stream": True})
    events = check_stream(chunks)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(f"{i:08d}" for i in range(400))


def test_replayed_stream_shares_writes_bounded_in_bytes(server_with: Callable[..., str]) -> None:
    url = server_with(deltas(400))
    live = read_all(url, "POST", "/v1/responses", {"model": MODEL, "input": "hi", "stream": True})
    events = check_stream(live)
    response_id = events[0].response.id
    replayed = read_all(url, "GET", f"/v1/responses/{response_id}?stream=true&starting_after=2")
    assert b"".join(replayed) == b"".join(live).split(b"\n\n", 3)[3]  # the same bytes after event 2
    for chunk in replayed:
        assert len(chunk) <= WRITE_BYTES or len(frames_of(chunk)) == 1
    # Ready frames go out together: far fewer writes than frames (all of them are ready at once).
    assert len(replayed) < (len(events) - 3) / 10


def test_a_follower_gets_every_ready_frame_in_one_write(
    server_with: Callable[..., str], wait_until: Callable[..., None]
) -> None:
    # 50 deltas, then the backend is silent: a follower joining the live run finds every frame so far ready,
    # and gets them all in its first write.
    url = server_with([*deltas(50)[:-1], Pause(60.0), Finish("stop")])
    created = httpx.post(f"{url}/v1/responses", json={"model": MODEL, "input": "hi", "background": True})
    path = f"/v1/responses/{created.json()['id']}?stream=true"
    last = f"{49:08d}".encode()

    def first_write_holds_every_delta() -> bool:
        raw = RawStream(url, "GET", path)
        try:
            frames = frames_of(next(raw.chunks()))
        finally:
            raw.close()
        return any(last in f for f in frames)  # (until the run reaches the pause, a later try sees more)

    wait_until(first_write_holds_every_delta)
    httpx.post(f"{url}/v1/responses/{created.json()['id']}/cancel")


def test_a_frame_bigger_than_the_bound_goes_whole_and_alone(server_with: Callable[..., str]) -> None:
    big = "x" * (WRITE_BYTES + 1000)
    url = server_with([TextDelta("a"), TextDelta(big), TextDelta("b"), Finish("stop")])
    live = read_all(url, "POST", "/v1/responses", {"model": MODEL, "input": "hi", "stream": True})
    events = check_stream(live)
    replayed = read_all(url, "GET", f"/v1/responses/{events[0].response.id}?stream=true")
    assert check_stream(replayed) == events
    for chunks in (live, replayed):
        # The delta, the .done events and the completed response each carry the big text.
        big_frames = [f for c in chunks for f in frames_of(c) if len(f) > WRITE_BYTES]
        assert len(big_frames) == 5
        assert all(c in big_frames for c in chunks if len(c) > WRITE_BYTES)  # each alone in its write


def test_a_lone_frame_is_sent_without_waiting_for_company(server_with: Callable[..., str]) -> None:
    # The script stops after one delta for far longer than the socket's timeout: the delta must arrive while
    # the backend is silent (a server holding it back for company fails this read with a timeout).
    url = server_with([TextDelta("first"), Pause(60.0), TextDelta("late"), Finish("stop")])
    raw = RawStream(url, "POST", "/v1/responses", {"model": MODEL, "input": "hi", "stream": True})
    try:
        seen: list[bytes] = []
        for chunk in raw.chunks():
            seen.extend(frames_of(chunk))
            if any(b"response.output_text.delta" in f for f in seen):
                break
        events = list(iter_events(seen))
        assert events[-1].type == "response.output_text.delta" and events[-1].delta == "first"
        assert [e.sequence_number for e in events] == list(range(len(events)))
    finally:
        raw.close()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the server's HTTP connections make to their sockets, in order (the httptools protocol's
    connection, as ``headwater serve`` runs it)."""
    made: list[bytes] = []
    write = serving._HeadWithBody.write

    def recorded(self: serving._HeadWithBody, data: bytes) -> None:
        if data:
            made.append(bytes(data))
        write(self, data)

    monkeypatch.setattr(serving._HeadWithBody, "write", recorded)
    return made


def http_chunks(write: bytes) -> list[bytes]:
    """The HTTP/1.1 chunks one write holds (after the response's head, if it holds that too); fails unless it
    holds whole chunks only."""
    chunks, at = [], write.index(b"\r\n\r\n") + 4 if write.startswith(b"HTTP/1.1 ") else 0
    while at < len(write):
        end = write.index(b"\r\n", at)
        size = int(write[at:end], 16)
        assert write[end + 2 + size:end + 4 + size] == b"\r\n", "a write ends inside a chunk"
        chunks.append(write[end + 2:end + 2 + size])
        at = end + 4 + size
    return chunks


@pytest.mark.parametrize("resumed", [False, True], ids=["live", "resumed"])
def test_the_terminal_batch_goes_with_the_body_end_in_one_write(
    server_with: Callable[..., str], writes: list[bytes], monkeypatch: pytest.MonkeyPatch, resumed: bool
) -> None:
    # Live, the stream waits for a delta and for the terminal batch (the pauses): the publish writes the delta
    # itself (direct delivery) and leaves the terminal batch to the stream's task, which writes it with the body's end
    # and completes the response in the same call; resumed from the store, the task writes everything. Either
    # way the body's end (the chunked terminator) is no write of its own.
    direct: list[str] = []  # the last event of each batch the publish wrote
    deliver = sse.DirectFrames.__call__

    def delivered(self: sse.DirectFrames, entries: list[Any]) -> bool:
        done = deliver(self, entries)
        if done:
            direct.append(entries[-1].type)
        return done

    monkeypatch.setattr(sse.DirectFrames, "__call__", delivered)
    url = server_with([*deltas(20)[:-1], Pause(0.2), TextDelta("late"), Pause(0.2), Finish("stop")])
    live = read_all(url, "POST", "/v1/responses", {"model": MODEL, "input": "hi", "stream": True})
    events = check_stream(live)
    if resumed:
        writes.clear()
        read_all(url, "GET", f"/v1/responses/{events[0].response.id}?stream=true&starting_after=10")
    else:
        assert direct and "response.completed" not in direct
    last = http_chunks(writes[-1])
    assert last[-1] == b""  # the body's end
    frames = [frame for chunk in last[:-1] for frame in frames_of(chunk)]
    assert [e.type for e in iter_events(frames)][-4:] == [  # (with more before them, if they were ready too)
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    assert all(http_chunks(write)[-1:] != [b""] for write in writes[:-1])


def test_join_frames_takes_whole_frames_up_to_the_bound() -> None:
    frames = [b"a" * 10, b"b" * 10, b"c" * 25, b"d" * 5]
    assert join_frames(frames, 0, 20) == (b"a" * 10 + b"b" * 10, 2)
    assert join_frames(frames, 2, 20) == (b"c" * 25, 3)  # bigger than the bound: alone, whole
    assert join_frames(frames, 3, 20) == (b"d" * 5, 4)
    assert join_frames(frames, 0) == (b"".join(frames), 4)
