"""A small HTTP/1.1 client for the upstream backends: one POST, then its streamed answer, over keep-alive
connections (``HTTPClient``), parsed by httptools (llhttp, the C parser uvicorn uses; in the ``server`` extra).

Why not a general client (aiohttp, httpx): a relay spends most of its CPU per relayed event on the upstream
side, and a general client's layers cost it on every chunk (aiohttp: a read-timeout timer rescheduled per chunk,
a stream-reader buffer, a payload pipeline) and on every request (aiohttp's POST: 200-550 µs of CPU, 0.9-1.2 ms
to the answer's head here, against 0.36 ms for the bare request). Here a chunk is parsed in the protocol's
``data_received`` and handed to the one reader waiting for it; the read time-out is one timer per time-out
period, not one per chunk; a request is one write of head and body. Measured in ``bench/bench_gateway.py``.

What it does: ``http`` and ``https`` (the default TLS context: certificates verified), a ``host`` header and a
``content-length`` body; answers with a ``content-length``, a chunked or a close-delimited body, ``gzip`` and
``deflate`` decoded. Connections are pooled per (scheme, host, port) with no caps: every open stream holds its
own, and one whose answer was read to its end (and that the upstream keeps alive) is kept ``keepalive`` seconds
for the next request (60 by default, as Go's client keeps them 90: a create after a quiet minute reuses its
connection instead of paying a connect, and for https a TLS handshake, before its first event), or a second less
than the upstream's own ``keep-alive: timeout=N`` when it says one. A request on a kept connection that the
upstream closes before any byte of an answer (its keep-alive time-out ran out as the request went: a server
closes an idle connection without reading what is on its way) is sent once more, on a fresh connection; nothing
else is retried. What it does not:
redirects, proxies, HTTP/2, ``Expect: 100-continue``, request bodies other than bytes. Errors are the standard ones: ``ConnectTimeout`` (a ``TimeoutError``) when connecting takes
too long, ``TimeoutError`` when the upstream sends nothing for ``read_timeout`` seconds, ``ConnectionError``
when the connection drops before the answer's end, ``OSError`` when the upstream cannot be reached,
``ProtocolError`` (a ``ConnectionError``) for bytes that are not HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httptools

__all__ = ["Answer", "ConnectTimeout", "Endpoint", "HTTPClient", "Posted", "ProtocolError"]

# Buffered and unread answer bytes above which the connection stops reading (until the reader catches up).
_HIGH_WATER = 1 << 20
_DEFAULT_PORTS = {"http": 80, "https": 443}
_tls: ssl.SSLContext | None = None


class ConnectTimeout(TimeoutError):
    """The connection was not made within the connect time-out."""


class ProtocolError(ConnectionError):
    """The upstream sent bytes that are not an HTTP/1.1 answer (or one this client cannot read)."""


def _tls_context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


_Key = tuple[str, str, int]


class Endpoint:
    """Where requests go and the head they all share: the request line, ``host`` and ``headers``, encoded once
    (an upstream backend makes one for its endpoint). Each request is then that head, its ``content-length`` and
    its body: no URL parsed and no header formatted again per request, on the path of every create."""

    __slots__ = ("head", "key")

    def __init__(self, url: str | SplitResult, headers: Iterable[tuple[str, str]]) -> None:
        parts = urlsplit(url) if isinstance(url, str) else url
        scheme, host = parts.scheme, parts.hostname
        if scheme not in _DEFAULT_PORTS or not host:
            raise ValueError(f"{parts.geturl()!r} is not an http:// or https:// URL")
        port = parts.port or _DEFAULT_PORTS[scheme]
        self.key: _Key = (scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = host if ":" not in host else f"[{host}]"
        if parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]:
            authority += f":{port}"
        head = [f"POST {target} HTTP/1.1\r\nhost: {authority}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in headers)
        self.head = "".join(head).encode("latin-1")  # (the content-length follows, per request)


class HTTPClient:
    """Keep-alive connections to upstreams, for ``post``. Belongs to the event loop it is first used in;
    ``close()`` closes the idle connections (those in use close when their answers do). ``tls``: the context
    for ``https`` upstreams (a private CA's, say); by default the system's, certificates and names verified."""

    def __init__(self, *, keepalive: float = 60.0, tls: ssl.SSLContext | None = None) -> None:
        self.keepalive = keepalive
        self.tls = tls
        self.closed = False
        self._idle: dict[_Key, list[_Connection]] = {}

    async def post(
        self,
        url: str | SplitResult,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Answer:
        """POST ``body`` to ``url``: the answer once its status line and headers have come (the body unread)."""
        return await self.post_now(url, headers, body, connect_timeout=connect_timeout, read_timeout=read_timeout)

    def post_now(
        self,
        url: str | SplitResult,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Posted:
        """``post``, its request written now, in this call, when a kept connection is idle: the answer is awaited
        later (``Posted``), and the upstream works on it meanwhile. Without an idle connection the connection is
        made (and the request written) when the ``Posted`` is first awaited (``Posted.written`` tells which)."""
        return self.send_now(Endpoint(url, headers), body, connect_timeout=connect_timeout, read_timeout=read_timeout)

    def send_now(self, endpoint: Endpoint, body: bytes, *, connect_timeout: float, read_timeout: float) -> Posted:
        """``post_now`` to an ``Endpoint``: its head as it was made, then the body's length and the body."""
        if self.closed:
            raise RuntimeError("the HTTP client is closed")
        request = b"%bcontent-length: %d\r\n\r\n%b" % (endpoint.head, len(body), body)
        posted = Posted(self, endpoint.key, request, connect_timeout, read_timeout)
        connection = self._idle_connection(endpoint.key)
        if connection is not None:
            connection.write(request, read_timeout)
            posted.connection = connection
        return posted

    def _idle_connection(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(self, key: _Key, timeout: float) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = (self.tls or _tls_context()) if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, key), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {host}:{port} within {timeout:g} s") from None
        return connection

    def _keep(self, connection: _Connection) -> None:
        """An answer read to its end, on a connection the upstream keeps alive: kept for the next request."""
        if self.closed:
            connection.close()
        else:
            self._idle.setdefault(connection.key, []).append(connection)

    def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


class _Connection(asyncio.Protocol):
    """One connection and the answer being read on it (httptools' callbacks fill it as bytes come)."""

    def __init__(self, client: HTTPClient, key: _Key) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self.keep_for = client.keepalive  # how long it may stay idle in the pool (``release``)
        self.answered = False  # a byte of an answer has come on this connection since its last request went
        self._loop = asyncio.get_running_loop()
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.header_list: list[tuple[bytes, bytes]] = []
        self.headed = False  # the status line and headers have come
        self.complete = False  # the answer's body has come to its end
        self.close_delimited = False  # the body ends when the connection does (no length, not chunked)
        self.keep_alive = False  # the upstream keeps the connection open after this answer
        self.error: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        # A listener (``Answer.listen``) is called instead of waking the waiter: once per ``data_received`` in
        # which anything came (after the parser's callbacks), and for the end, a drop or a time-out.
        self.listener: Callable[[], None] | None = None
        self.feeding = False  # within the parser's feed: a listener is called once it returns
        self.woken = False  # something came during this feed
        self.last = self._loop.time()  # when bytes last came (or the request went)
        self.read_timeout = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # --- asyncio ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last = self._loop.time()
        self.answered = True
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"not an HTTP/1.1 answer: {exc}"))
        finally:
            self.feeding = False
        if self.woken:
            self.woken = False
            listener = self.listener
            if listener is not None:
                listener()

    def eof_received(self) -> bool | None:
        return None  # (the transport closes; connection_lost says the rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headed and self.close_delimited and not self.complete and exc is None:
            self.complete = True
        elif not self.complete and self.error is None:
            self.error = ConnectionResetError(
                f"the connection was closed{f' ({exc})' if exc else ''} before the answer's end"
            )
        self._stop_timer()
        self._wake()

    # --- httptools ----------------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer (103 Early Hints...): the real one follows
            self.header_list = []
            return
        self.headed = True
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp knows it here; not after the body's end)
        names = {name.lower() for name, _ in self.header_list}
        self.close_delimited = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headed:
            self.complete = True
            self._stop_timer()
            self._wake()

    # --- the request --------------------------------------------------------------------------------------

    async def send(self, request: bytes, read_timeout: float) -> Answer:
        self.write(request, read_timeout)
        return await self.answer()

    def write(self, request: bytes, read_timeout: float) -> None:
        """Write ``request`` (the read time-out counts from now); ``answer()`` then waits for its head."""
        assert self.transport is not None
        self.read_timeout = read_timeout
        self.answered = False
        self.last = self._loop.time()
        self.timer = self._loop.call_at(self.last + read_timeout, self._check)
        self.transport.write(request)

    async def answer(self) -> Answer:
        """The answer to the request ``write`` wrote, once its head has come (the connection is closed if it
        fails or the wait is cancelled)."""
        try:
            while not self.headed:
                if self.error is not None:
                    raise self.error
                await self.waiting()
        except BaseException:
            self.close()
            raise
        return Answer(self)

    def waiting(self) -> asyncio.Future[None]:
        """A future that is done when something next comes on the connection (the head, a chunk, the end, an
        error): the one reader awaits it itself, with no coroutine of its own in between."""
        waiter = self.waiter = self._loop.create_future()
        return waiter

    def _wake(self) -> None:
        if self.listener is not None:
            if self.feeding:
                self.woken = True  # (called once the feed returns, for all that this read brought)
            else:
                self.listener()
            return
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _check(self) -> None:
        """The read time-out's timer: nothing came for ``read_timeout`` seconds, or look again when it would."""
        self.timer = None
        if self.complete or self.error is not None:
            return
        due = self.last + self.read_timeout
        if self.paused or due > self._loop.time():
            self.timer = self._loop.call_at(max(due, self._loop.time() + 0.001), self._check)
            return
        self._fail(TimeoutError(f"nothing came for {self.read_timeout:g} s"))

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    @property
    def closed_unanswered(self) -> bool:
        """The connection was closed (by the upstream or the network, not for bytes that are not HTTP) before any
        byte of an answer to the last request came."""
        return self.lost and not self.answered and not isinstance(self.error, ProtocolError)

    def reusable(self, now: float) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing() and (
            now - self.idle_since <= self.keep_for
        )

    def release(self) -> None:
        """The answer is done with: the connection back to the pool if its body was read to the end and the
        upstream keeps it alive; closed otherwise."""
        if self.complete and not self.chunks and not self.lost and self.keep_alive:
            keep_for = _kept_for(self.header_list, self.client.keepalive)
            self._stop_timer()
            self._reset()
            self.idle_since = self._loop.time()
            self.keep_for = keep_for
            self.client._keep(self)
        else:
            self.close()

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.lost = True


def _kept_for(headers: list[tuple[bytes, bytes]], most: float) -> float:
    """How long a connection may wait in the pool after an answer with ``headers``: ``most`` seconds, or a second
    less than the upstream said it keeps an idle one (``keep-alive: timeout=N``), so that a request is not on its
    way as the upstream closes the connection (read off the answer as it is released, not on its way in)."""
    for name, value in headers:
        if name.lower() == b"keep-alive":
            for param in value.split(b","):
                key, _, number = param.partition(b"=")
                if key.strip().lower() == b"timeout":
                    try:
                        return min(most, float(number.strip()) - 1.0)
                    except ValueError:
                        pass
    return most


class Posted:
    """A POST under way (``HTTPClient.post_now``): await it (once) for the ``Answer``; ``close()`` if nobody will.
    ``written``: its request is on a kept connection already. A kept connection that the upstream closed as the
    request went (before any byte of an answer: its keep-alive time-out ran out meanwhile) is replaced by a fresh
    one, once, as ``post`` does."""

    __slots__ = ("_client", "_connect_timeout", "_key", "_read_timeout", "_request", "closed", "connection")

    def __init__(self, client: HTTPClient, key: _Key, request: bytes, connect_timeout: float,
                 read_timeout: float) -> None:
        self._client = client
        self._key = key
        self._request = request
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.connection: _Connection | None = None
        self.closed = False

    @property
    def written(self) -> bool:
        return self.connection is not None

    def __await__(self) -> Generator[Any, None, Answer]:
        return self._answer().__await__()

    async def _answer(self) -> Answer:
        if self.closed:
            raise ConnectionResetError("the request was given up before its answer was read")
        connection = self.connection
        if connection is not None:
            try:
                return await connection.answer()
            except ConnectionError:
                if not connection.closed_unanswered:
                    raise
            # The upstream closed the kept connection just as it was reused (its keep-alive time-out ran out
            # while the request was on its way): it closed it idle, before any byte of an answer. Once more, on
            # a fresh connection; a fresh connection's failure is the caller's.
        connection = self.connection = await self._client._connect(self._key, self._connect_timeout)
        return await connection.send(self._request, self._read_timeout)

    def close(self) -> None:
        """Nobody will read the answer: the connection it was written on is closed (the upstream sees the
        disconnect and stops)."""
        self.closed = True
        if self.connection is not None:
            self.connection.close()


class Answer:
    """An upstream's answer: ``status``, ``headers`` (lower-case names; repeated ones joined by ", "), and its
    body through ``read_chunk`` (whatever has come, in one piece; b"" at its end), or, on a reader's hot path,
    ``take()`` and ``wait()`` (the same without a coroutine per read). ``release()`` or ``close()`` when done
    with it."""

    __slots__ = ("_connection", "_inflate", "headers", "status")

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = connection.status
        headers: dict[str, str] = {}
        for name, value in connection.header_list:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        encoding = headers.get("content-encoding", "identity").strip().lower()
        self._inflate: Any = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by the header
        elif encoding not in ("", "identity"):
            connection.close()
            raise ProtocolError(f"the answer's content-encoding {encoding!r} cannot be read")

    async def read_chunk(self) -> bytes:
        """Whatever of the body has come, in one piece, once something has; b"" at its end."""
        while (data := self.take()) is None:
            await self.wait()
        return data

    def take(self) -> bytes | None:
        """Whatever of the body has come, in one piece; b"" at its end; None when nothing has come yet (await
        ``wait()``, then take again). Raises the connection's error (a time-out, a drop) once its bytes are read."""
        connection = self._connection
        chunks = connection.chunks
        while chunks:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            connection.buffered = 0
            if connection.paused and connection.transport is not None:
                connection.paused = False
                connection.transport.resume_reading()
            if self._inflate is not None:
                data = self._inflate.decompress(data)
                if not data:
                    continue
            return data
        if connection.error is not None:
            raise connection.error
        if connection.complete:
            return b""
        return None

    def wait(self) -> asyncio.Future[None]:
        """A future done when more of the body (or its end, or an error) has come: for ``take()``."""
        return self._connection.waiting()

    @property
    def plain(self) -> bool:
        """The body comes as it is sent (no content-encoding to undo): ``take()`` returns every chunk as it came."""
        return self._inflate is None

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Call ``listener()`` (it must not raise) whenever more of the body, its end or an error has come, in the
        connection's own ``data_received`` (once per read of the socket, after the read is parsed) or
        ``connection_lost``, instead of waking ``wait()``'s future; None to stop."""
        self._connection.listener = listener

    def pending(self) -> bool:
        """Whether ``take()`` has something to return now (a chunk, the end, an error)."""
        connection = self._connection
        return bool(connection.chunks) or connection.complete or connection.error is not None

    def at_eof(self) -> bool:
        connection = self._connection
        return connection.complete and not connection.chunks

    def release(self) -> None:
        self._connection.release()

    def close(self) -> None:
        self._connection.close()
