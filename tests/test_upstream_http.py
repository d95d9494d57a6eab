"""The upstream backends' own HTTP/1.1 client (``backends._http``): the answer framings it reads (content-length,
chunked, close-delimited, gzip), the bytes of a body in order and whole however they are cut (a large body read
slowly included: reading pauses and resumes), which connections it keeps (and which it must not), and clear errors
for what is not an HTTP answer.

Real loopback servers that write raw bytes (``RawUpstream``), so that each test decides every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import ssl
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from headwater.server.backends._http import Endpoint, HTTPClient, ProtocolError
from headwater.server.backends._upstream import Upstream
from headwater.server.backends.base import BackendError, ChatMessage, GenerationRequest, TextDelta
from headwater.server.backends.chat import ChatBackend
from headwater.server.backends.responses import ResponsesBackend
from test_upstream_replay import fixture

CHAT = fixture("chat/ollama-stop.sse")
RESPONSES = fixture("responses/bedrock-cache-write-tokens.sse")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """A loopback server that reads each request's head and body, then lets ``answer`` write what it likes."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ask() -> GenerationRequest:
    return GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])


async def chat_steps(backend: ChatBackend) -> list[object]:
    return [step async for step in backend.generate(ask())]


def sse_head(*headers: str) -> bytes:
    return ("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode()


async def _content_length_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(sse_head(f"content-length: {len(CHAT)}") + CHAT)


async def _close_delimited_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(sse_head("connection: close"))
    for i in range(0, len(CHAT), 50):  # in pieces, cut anywhere
        writer.write(CHAT[i : i + 50])
        await writer.drain()
    writer.close()


_ANSWERED: weakref.WeakKeyDictionary[asyncio.StreamWriter, int] = weakref.WeakKeyDictionary()


async def _unanswered_on_reuse_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A kept connection's second request is closed without a byte of an answer (the upstream's keep-alive
    time-out ran out as it came); any other is answered."""
    count = _ANSWERED[writer] = _ANSWERED.get(writer, 0) + 1
    if count == 2:
        writer.close()
        return
    await _content_length_answer(reader, writer)


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        pytest.param(_content_length_answer, 1, id="content-length: the connection is kept and reused"),
        pytest.param(_close_delimited_answer, 2, id="close-delimited: it ends with its connection, not reused"),
        pytest.param(_unanswered_on_reuse_answer, 2,
                     id="kept, then closed unanswered as it is reused: that request goes again, on a fresh one"),
    ],
)
async def test_a_body_is_read_to_its_end_and_its_connection_reused_only_when_kept(
    answer: Handler, connections: int
) -> None:
    async with RawUpstream(answer) as upstream:
        backend = ChatBackend(upstream.url)
        first = await chat_steps(backend)
        second = await chat_steps(backend)
        await backend.aclose()
    assert first == second and TextDelta("The") in first
    assert upstream.connections == connections


async def test_a_gzip_answer_is_decoded() -> None:
    packed = gzip.compress(RESPONSES)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head("content-encoding: gzip", "transfer-encoding: chunked"))
        for i in range(0, len(packed), 64):
            piece = packed[i : i + 64]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async with RawUpstream(answer) as upstream:
        backend = ResponsesBackend(upstream.url)
        events = [event async for event in backend.events(ask())]
        await backend.aclose()
    assert [e.type for e in events][-1] == "response.completed"
    assert len(events) == RESPONSES.count(b"\ndata: ") + RESPONSES.startswith(b"data: ")
    assert b"accept-encoding: identity" in upstream.requests[0]  # (asked for plain bytes; decoded all the same)


async def test_a_large_body_read_slowly_comes_whole_and_in_order() -> None:
    """More than the client buffers before it stops reading: reading pauses, resumes, nothing is lost."""
    body = bytes(range(256)) * (4 * 4096 + 3)  # ~4 MiB

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()

    async with RawUpstream(answer) as upstream:
        client = HTTPClient()
        got = bytearray()
        answer_ = await client.post(upstream.url + "/x", [], b"{}", connect_timeout=5, read_timeout=5)
        await asyncio.sleep(0.2)  # the server has written all it could: the client stopped reading meanwhile
        paused = answer_._connection.paused
        while chunk := await answer_.read_chunk():
            got += chunk
            await asyncio.sleep(0)
        answer_.release()
        client.close()
    assert paused
    assert bytes(got) == body


async def test_bytes_that_are_not_http_are_a_clear_error() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async with RawUpstream(answer) as upstream:
        backend = ChatBackend(upstream.url)
        with pytest.raises(BackendError) as caught:
            await chat_steps(backend)
        await backend.aclose()
    assert caught.value.status == 502
    assert caught.value.message.startswith(f"could not reach upstream {upstream.url}/v1/chat/completions: ")
    assert "ProtocolError: not an HTTP/1.1 answer" in caught.value.message


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused() -> None:
    served = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        writer.write(sse_head(f"content-length: {len(CHAT)}") + CHAT)
        await writer.drain()
        writer.close()  # (without connection: close: as a server whose keep-alive time-out passed)

    async with RawUpstream(answer) as upstream:
        backend = ChatBackend(upstream.url)
        await chat_steps(backend)
        await asyncio.sleep(0.1)
        assert await chat_steps(backend)
        await backend.aclose()
    assert served == 2 and upstream.connections == 2


@pytest.mark.parametrize(
    ("keep_alive", "idle", "connections"),
    [
        pytest.param(None, 20.0, 1, id="idle 20 s: kept (15 s was the limit once)"),
        pytest.param(None, 61.0, 2, id="idle over a minute: a fresh connection"),
        pytest.param("timeout=5", 3.0, 1, id="the upstream keeps it 5 s, idle 3 s: kept"),
        pytest.param("timeout=5, max=100", 4.5, 2, id="the upstream keeps it 5 s, idle 4.5 s: a fresh connection"),
        pytest.param("max=100", 20.0, 1, id="no time-out said: kept as long as ever"),
    ],
)
async def test_an_idle_connection_is_kept_a_minute_or_less_than_the_upstream_keeps_it(
    keep_alive: str | None, idle: float, connections: int
) -> None:
    extra = [f"keep-alive: {keep_alive}"] if keep_alive else []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head(f"content-length: {len(CHAT)}", *extra) + CHAT)

    async with RawUpstream(answer) as upstream:
        backend = ChatBackend(upstream.url)
        await chat_steps(backend)
        client = backend.upstream.client
        assert client is not None
        for idle_ones in client._idle.values():
            for connection in idle_ones:
                connection.idle_since -= idle  # (as if it had waited that long)
        assert await chat_steps(backend)
        await backend.aclose()
    assert upstream.connections == connections


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1 200 OK\r\n"], ids=["no answer", "an answer begun"])
async def test_a_closed_connection_is_not_retried_when_fresh_or_answered(partial: bytes) -> None:
    """Only a kept connection closed before any answer byte is retried: a fresh one closed unanswered (the upstream
    refuses the request itself), or a kept one closed after an answer began, is the caller's error."""
    answered: dict[asyncio.StreamWriter, int] = {}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered[writer] = answered.get(writer, 0) + 1
        if partial and answered[writer] == 1:
            writer.write(sse_head(f"content-length: {len(CHAT)}") + CHAT)
            return
        writer.write(partial)
        writer.close()

    async with RawUpstream(answer) as upstream:
        client = HTTPClient()
        if partial:  # a first answer, read to its end: the connection is kept
            first = await client.post(upstream.url + "/x", [], b"{}", connect_timeout=5, read_timeout=5)
            while await first.read_chunk():
                pass
            first.release()
        with pytest.raises(ConnectionError):
            await client.post(upstream.url + "/x", [], b"{}", connect_timeout=5, read_timeout=5)
        client.close()
    assert upstream.connections == 1


async def test_an_unknown_content_encoding_is_refused() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head("content-encoding: br", f"content-length: {len(CHAT)}") + CHAT)

    async with RawUpstream(answer) as upstream:
        client = HTTPClient()
        with pytest.raises(ProtocolError, match="content-encoding 'br'"):
            await client.post(upstream.url + "/x", [], b"{}", connect_timeout=5, read_timeout=5)
        client.close()


def test_header_values_cannot_break_the_request() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        Upstream("http://h", "responses", headers={"x-tag": "a\r\nx-evil: 1"})
    with pytest.raises(ValueError, match="line breaks"):
        Upstream("http://h", "responses", api_key="sk-1\nx")


def test_an_upstream_without_a_host_is_refused_when_it_is_made() -> None:
    # (its requests' head is made with it, once: not at the first create, which would fail instead)
    with pytest.raises(ValueError, match="not an http"):
        Upstream("http://:8080", "responses")


async def test_a_request_to_an_endpoint_is_the_same_bytes_as_a_post_to_its_url() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head(f"content-length: {len(CHAT)}") + CHAT)

    headers = [("content-type", "application/json"), ("authorization", "Bearer sk-1")]
    async with RawUpstream(answer) as upstream:
        client = HTTPClient()
        url = upstream.url + "/v1/responses?x=1"
        endpoint = Endpoint(url, headers)
        for send in (lambda: client.post_now(url, headers, b'{"a":1}', connect_timeout=5, read_timeout=5),
                     lambda: client.send_now(endpoint, b'{"a":1}', connect_timeout=5, read_timeout=5),
                     lambda: client.send_now(endpoint, b'{"b":22}', connect_timeout=5, read_timeout=5)):
            answered = await send()
            while await answered.read_chunk():
                pass
            answered.release()
        client.close()
    port = upstream.url.rsplit(":", 1)[1]
    first = (f"POST /v1/responses?x=1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
             "authorization: Bearer sk-1\r\ncontent-length: 7\r\n\r\n").encode()
    assert upstream.requests == [first + b'{"a":1}', first + b'{"a":1}',
                                 first.replace(b"length: 7", b"length: 8") + b'{"b":22}']
    assert upstream.connections == 1  # (kept and reused alike)


async def test_the_request_is_one_http11_post_with_host_and_length() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head(f"content-length: {len(CHAT)}") + CHAT)

    async with RawUpstream(answer) as upstream:
        backend = ChatBackend(upstream.url, api_key="sk-test")
        await chat_steps(backend)
        await backend.aclose()
    head, _, body = upstream.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    port = upstream.url.rsplit(":", 1)[1]
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert f"host: 127.0.0.1:{port}" in lines
    assert "authorization: Bearer sk-test" in lines
    assert f"content-length: {len(body)}" in lines


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), signed by itself."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "headwater test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "upstream.pem", tmp_path / "upstream.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_an_https_upstream_is_verified_and_read(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head(f"content-length: {len(CHAT)}") + CHAT)

    upstream = RawUpstream(answer)
    upstream._server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0, ssl=served)
    url = f"https://127.0.0.1:{upstream._server.sockets[0].getsockname()[1]}"
    try:
        # The system's trust store does not know this certificate: refused, and said so.
        refusing = ChatBackend(url)
        with pytest.raises(BackendError) as caught:
            await chat_steps(refusing)
        await refusing.aclose()
        assert caught.value.status == 502 and "SSLCertVerificationError" in caught.value.message
        # Trusted through the client's own context: the stream is read, twice on one connection.
        trusting = ssl.create_default_context(cafile=str(cert))
        client = HTTPClient(tls=trusting)
        backend = ChatBackend(url, client=client)
        first, second = await chat_steps(backend), await chat_steps(backend)
        await backend.aclose()
        client.close()
    finally:
        await upstream.__aexit__()
    assert first == second and TextDelta("The") in first
    assert upstream.connections == 1  # (the trusted one: the refused handshake never got to the server)
