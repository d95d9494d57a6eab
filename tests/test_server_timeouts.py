"""Connection time limits through real sockets: request heads sent a byte at a time, bodies that never end or
stop short, connections that send nothing or sit idle, and a client that leaves mid-upload; with each of
uvicorn's HTTP protocols (httptools, what ``headwater serve`` runs, and h11)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from headwater.server.app import create_app
from headwater.server.backends.base import TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer

LIMIT = 0.5  # seconds: every limit of the server under test


@pytest.fixture(params=["httptools", "h11"])
def live(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    config = ServerConfig(store="memory", header_timeout_seconds=LIMIT, body_timeout_seconds=LIMIT,
                          idle_timeout_seconds=LIMIT, max_body_bytes=10_000)
    app = create_app(config, backend=ScriptedBackend([TextDelta("hi")]), store=MemoryStore())
    with LiveServer(app, http=request.param) as server:
        yield server


def connect(live: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    return sock


def keep_sending(sock: socket.socket, pieces: Iterator[bytes], seconds: float = 8.0) -> bool:
    """Send ``pieces`` a little at a time for at most ``seconds``; True once the server has closed the
    connection (a send fails, or the server's answer and end are read)."""
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    try:
        for piece in pieces:
            if time.monotonic() > deadline:
                return False
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                return True
            time.sleep(0.02)
    finally:
        sock.setblocking(True)
    return False


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset after the answer counts)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def error_of(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def forever(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def test_a_request_head_sent_a_byte_at_a_time_gets_408_and_the_connection_closes(live: LiveServer) -> None:
    sock = connect(live)
    head = b"POST /v1/responses HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100_000
    closed = keep_sending(sock, (bytes([b]) for b in head))
    answer = read_all(sock)
    assert closed or answer  # the server ended it, not the client's patience
    status, error = error_of(answer)
    assert status == 408 and error["code"] == "request_timeout" and error["type"] == "invalid_request_error"


def test_a_connection_that_sends_nothing_is_closed(live: LiveServer) -> None:
    sock = connect(live)
    assert read_all(sock) == b""


def test_an_idle_keep_alive_connection_is_closed_after_its_response(live: LiveServer) -> None:
    sock = connect(live)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    answer = read_all(sock)  # returns only once the server closes the connection
    assert answer.startswith(b"HTTP/1.1 200")


def chunked_head(path: bytes = b"/v1/responses") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def test_a_body_that_never_ends_gets_408_and_the_connection_closes(live: LiveServer) -> None:
    sock = connect(live)
    sock.sendall(chunked_head() + b"1\r\n{\r\n")
    closed = keep_sending(sock, forever(b"1\r\n \r\n"))
    assert closed
    status, error = error_of(read_all(sock))
    assert status == 408 and error["code"] == "request_timeout"


def test_a_body_that_never_ends_past_the_size_limit_gets_413_and_the_connection_closes(live: LiveServer) -> None:
    sock = connect(live)
    sock.sendall(chunked_head())
    closed = keep_sending(sock, forever(b"400\r\n" + b" " * 1024 + b"\r\n"))
    assert closed
    status, error = error_of(read_all(sock))
    assert status == 413 and error["code"] == "request_too_large"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def test_a_whole_chunked_body_past_the_size_limit_sent_with_its_head_gets_413(live: LiveServer) -> None:
    # (All of it has come when the route reads it: read at once, without the deadline, and measured all the same.)
    sock = connect(live)
    sock.sendall(chunked_head() + chunk(b" " * 10_001) + b"0\r\n\r\n")
    status, error = error_of(read_all(sock))
    assert status == 413 and error["code"] == "request_too_large"


def test_bodies_sent_whole_with_their_heads_are_read_request_after_request(live: LiveServer) -> None:
    # Two creates in one write on one connection, each body whole with its head (the second pipelined): each is
    # read as sent, the second after the first's response, and the connection stays usable.
    first, second = (json.dumps({"input": "hi", "metadata": {"n": n}}).encode() for n in ("first", "second"))
    one = (b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n%b" % (len(first), first))
    sock = connect(live)
    sock.sendall(one + chunked_head() + chunk(second[:5]) + chunk(second[5:]) + b"0\r\n\r\n")
    answer = read_all(sock)  # (the idle limit closes the connection after both)
    assert answer.count(b"HTTP/1.1 200") == 2
    assert answer.index(b'"metadata":{"n":"first"}') < answer.index(b'"metadata":{"n":"second"}')


def test_a_body_shorter_than_its_content_length_gets_408(live: LiveServer) -> None:
    sock = connect(live)
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 100\r\n\r\n{\"input\": \"hi\"")
    status, error = error_of(read_all(sock))
    assert status == 408 and error["code"] == "request_timeout"


def test_a_client_that_leaves_mid_upload_is_one_quiet_log_line(
    live: LiveServer, caplog: pytest.LogCaptureFixture, wait_until: object
) -> None:
    caplog.set_level(logging.INFO)
    sock = connect(live)
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 5000\r\n\r\n{\"input\": ")
    time.sleep(0.1)  # let the server start reading the body
    sock.close()

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "left during the upload" in r.getMessage()]

    assert callable(wait_until)
    wait_until(lambda: logged())
    time.sleep(0.2)  # anything else the drop logs would be logged by now
    assert len(logged()) == 1
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
