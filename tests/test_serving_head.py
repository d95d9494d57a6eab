"""``serving._HeadWithBody``, the connection as one response writes to it (httptools protocol): uvicorn writes a
response's head alone and then its body; the head is held until the first body write and goes out with it in one
write, or at the end of the event loop's turn when no body write comes in it; closing sends what is held first.
A transport that records its writes; the real server's responses are covered by the HTTP tests."""

from __future__ import annotations

import asyncio

from headwater.server.serving import _HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
FRAME = b"1c\r\nevent: response.created\ndata: {}\n\n\r\n"


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_the_head_goes_out_with_the_first_body_write() -> None:
    transport = Recording()
    response = _HeadWithBody(transport, asyncio.get_running_loop())
    response.write(HEAD)
    assert transport.writes == []
    response.write(FRAME)
    response.write(b"0\r\n\r\n")
    assert transport.writes == [HEAD + FRAME, b"0\r\n\r\n"]
    await asyncio.sleep(0)  # (the end of the turn finds nothing held)
    assert transport.writes == [HEAD + FRAME, b"0\r\n\r\n"]


async def test_a_head_whose_body_does_not_come_in_the_same_turn_goes_out_alone_at_its_end() -> None:
    transport = Recording()
    response = _HeadWithBody(transport, asyncio.get_running_loop())
    response.write(HEAD)
    await asyncio.sleep(0)
    assert transport.writes == [HEAD]
    response.write(FRAME)
    assert transport.writes == [HEAD, FRAME]


async def test_closing_sends_the_held_head_first() -> None:
    transport = Recording()
    response = _HeadWithBody(transport, asyncio.get_running_loop())
    response.write(HEAD)
    response.close()
    assert transport.writes == [HEAD] and transport.closed and response.is_closing()
    await asyncio.sleep(0)
    assert transport.writes == [HEAD]
