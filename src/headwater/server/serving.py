"""Serving an app with uvicorn on a socket bound beforehand, with Headwater's connection time limits and shutdown.

``protocol_class`` (uvicorn's httptools or h11 protocol) closes a connection that sends nothing or sits idle
between requests for ``idle_timeout`` seconds, and answers 408 to a request head (request line and headers) still
incomplete ``header_timeout`` seconds after its first byte (a slowloris). Request *bodies* have their deadline
where they are read (``routes.read_body``); a connection whose body was not read to its end when the response
finished is closed after ``idle_timeout``, however slowly the client keeps sending. ``HeadwaterServer`` ends
live runs first when it stops, so every stream ends with its terminal event before connections are closed.
With httptools, a response's head goes out in one write with its first body write (``_HeadWithBody``), and the
ASGI scope offers the response's body writer for direct delivery (``_DirectBody``, ``direct``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import socket
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import h11
import msgspec
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from . import direct

__all__ = [
    "GC_THRESHOLDS",
    "HeadwaterH11Protocol",
    "HeadwaterHttpToolsProtocol",
    "HeadwaterServer",
    "bind",
    "protocol_class",
    "reserve",
    "server_config",
    "shares_ports",
    "tune_gc",
]

log = logging.getLogger("headwater.server")


def _timeout_response(message: str) -> bytes:
    body = msgspec.json.encode({"error": {"type": "invalid_request_error", "code": "request_timeout",
                                          "message": message, "param": None}})
    head = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body))
    return head + body


class _Deadlines:
    """The timers of one connection: idle (nothing in progress), request head, and the drain of a body left
    unread when its response finished. The protocol says, after each read, whether a head or a body is in
    progress; the same logic serves uvicorn's h11 and httptools protocols."""

    def __init__(self, protocol: H11Protocol | HttpToolsProtocol, header_timeout: float, idle_timeout: float) -> None:
        self.protocol = protocol
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.head: asyncio.TimerHandle | None = None
        self.linger: asyncio.TimerHandle | None = None
        # uvicorn arms its keep-alive timer only after a response: a connection that never sends is held.
        protocol.timeout_keep_alive = idle_timeout  # type: ignore[assignment]
        self._idle()

    def _idle(self) -> None:
        p = self.protocol
        p.timeout_keep_alive_task = p.loop.call_later(self.idle_timeout, p.timeout_keep_alive_handler)

    def after_data(self, *, head: bool, body: bool) -> None:
        """After bytes were read (the protocol's idle timer is cancelled by then): ``head`` whether a request
        head has begun and is not complete, ``body`` whether a request body is being read."""
        if self.protocol.transport.is_closing():
            return
        if head:
            if self.head is None:
                self.head = self.protocol.loop.call_later(self.header_timeout, self._head_timed_out)
        else:
            self._cancel_head()
        if self.linger is not None and not body:
            # The unread body ended after all: the connection can carry the next request.
            self.linger.cancel()
            self.linger = None
            self._idle()

    def after_response(self, *, body: bool) -> None:
        """A response finished; ``body``: its request body is not read to its end (413, 408, a route that
        reads none). The rest is drained for at most idle_timeout, then the connection is closed."""
        if body and not self.protocol.transport.is_closing() and self.linger is None:
            self.linger = self.protocol.loop.call_later(self.idle_timeout, self._close)

    def lost(self) -> None:
        self._cancel_head()
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None

    def _cancel_head(self) -> None:
        if self.head is not None:
            self.head.cancel()
            self.head = None

    def _head_timed_out(self) -> None:
        self.head = None
        transport = self.protocol.transport
        if transport.is_closing():
            return
        log.info("%s: request headers incomplete after %gs; closing the connection", _peer(self.protocol.client),
                 self.header_timeout)
        transport.write(_timeout_response(
            f"the request line and headers did not arrive within {self.header_timeout:g} seconds"))
        transport.close()

    def _close(self) -> None:
        self.linger = None
        if not self.protocol.transport.is_closing():
            self.protocol.transport.close()


class HeadwaterH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with ``_Deadlines``; ``protocol_class`` sets the two limits."""

    header_timeout: float = 10.0
    idle_timeout: float = 5.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadlines = _Deadlines(self, self.header_timeout, self.idle_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        self.deadlines.after_data(head=state is h11.IDLE and bool(self.conn.trailing_data[0]),
                                  body=state is h11.SEND_BODY)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.deadlines.after_response(body=self.conn.their_state is h11.SEND_BODY)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.lost()
        super().connection_lost(exc)


class _HeadWithBody:
    """The connection as one response writes to it. uvicorn writes a response's head (status line and headers)
    alone, then its body, each write a packet of its own; the head is held here until the response's first body
    write (or the end of the event loop's current turn, if none comes in it), so that head and body go out in one
    write: one packet and one wake-up of the client fewer for each response (a stream's first event arrives
    with its headers)."""

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._first = True
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._first:  # the head (or a 100 Continue, held the same way)
            self._first = False
            self._held = data
            self._loop.call_soon(self._flush)
            return
        held, self._held = self._held, None
        self._transport.write(data if held is None else held + data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _DirectBody:
    """``direct.DirectBody`` for one of uvicorn's httptools response cycles: body chunks written to the
    connection as its ``send`` writes those of a chunked response (``<size in hex>\\r\\n<chunk>\\r\\n``), without
    a message or the ASGI send chain per chunk. Only while the cycle's own ``send`` would write them at once:
    the response has begun chunked (not a HEAD, not a content-length), has not ended, the connection is there
    and its writing is not paused (``send`` would wait for it to drain). The response's end, with its
    terminating chunk and the cycle's bookkeeping (``response_complete``, the next pipelined request, the
    keep-alive timer), is still ``send``'s.

    It holds the cycle by a weak reference: the cycle's scope holds this body, so a strong one would make each
    request's cycle, scope and body a reference cycle, left for the cyclic collector (~13 objects a request)
    instead of freed by reference counting when the request ends. While the response is written the cycle is
    alive (the protocol and the app's task hold it); a body that outlives it writes nothing.

    ``on_disconnect(callback)`` calls ``callback()`` from the protocol's ``connection_lost``: how a streamed
    response learns that its client left without a task of its own reading ``receive`` for ``http.disconnect``
    (one task fewer per stream: its creation, its first step, its cancel and the await of it at the end)."""

    __slots__ = ("_cycle", "_watched", "gone")

    def __init__(self, cycle: RequestResponseCycle, watched: set[_DirectBody]) -> None:
        self._cycle = weakref.ref(cycle)
        self._watched = watched  # the connection's bodies with a ``gone`` callback (``connection_lost`` calls them)
        self.gone: Callable[[], None] | None = None

    def on_disconnect(self, callback: Callable[[], None] | None) -> bool:
        """Call ``callback()`` (it must not raise) once the client's connection is lost; None: no more. False,
        with nothing registered, when it cannot say (the cycle is gone, or the client has left already: the
        caller then reads ``receive``, which says ``http.disconnect`` at once)."""
        if callback is None:
            self.gone = None
            self._watched.discard(self)
            return True
        cycle = self._cycle()
        if cycle is None or cycle.disconnected or cycle.transport.is_closing():
            return False
        self.gone = callback
        self._watched.add(self)
        return True

    def serves(self, receive: object, send: object) -> bool:
        cycle = self._cycle()
        return cycle is not None and receive == cycle.receive and send == cycle.send

    def request_body(self) -> bytes | None:
        cycle = self._cycle()
        if cycle is None or cycle.more_body or cycle.disconnected or cycle.response_complete:
            return None
        body = bytes(cycle.body)
        cycle.body = bytearray()  # (taken, as ``receive`` takes it: a later ``receive`` reads an empty end)
        return body

    def write(self, chunks: list[bytes]) -> bool:
        cycle = self._cycle()
        if cycle is None:
            return False
        transport = cycle.transport
        if (not cycle.chunked_encoding or cycle.response_complete or cycle.disconnected or cycle.flow.write_paused
                or transport.is_closing()):
            return False
        if len(chunks) == 1:
            transport.write(b"%x\r\n%b\r\n" % (len(chunks[0]), chunks[0]))
        else:
            transport.write(b"".join([b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in chunks]))
        return True


class HeadwaterHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``_Deadlines``; ``protocol_class`` sets the two limits. Each response
    cycle's scope offers a ``direct.DirectBody`` (``_DirectBody``) in its ``extensions``."""

    header_timeout: float = 10.0
    idle_timeout: float = 5.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = self._in_body = False
        self._watched: set[_DirectBody] = set()
        super().connection_made(transport)
        self.deadlines = _Deadlines(self, self.header_timeout, self.idle_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.deadlines.after_data(head=self._in_head, body=self._in_body)

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:  # (none for a WebSocket upgrade)
            self.cycle.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]
            extensions: dict[str, Any] = self.cycle.scope.setdefault("extensions", {})
            extensions[direct.EXTENSION] = _DirectBody(self.cycle, self._watched)

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.deadlines.after_response(body=self._in_body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.lost()
        super().connection_lost(exc)
        watched = list(self._watched)
        self._watched.clear()
        for body in watched:
            gone, body.gone = body.gone, None
            if gone is not None:
                gone()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"


def protocol_class(http: str = "auto", *, header_timeout: float, idle_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol ``http`` (``auto``: httptools when installed, else h11) with these limits
    (seconds), for ``uvicorn.Config(http=...)``."""
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    base: type[HeadwaterH11Protocol | HeadwaterHttpToolsProtocol]
    if http == "h11":
        base = HeadwaterH11Protocol
    elif http == "httptools":
        base = HeadwaterHttpToolsProtocol
    else:
        raise ValueError(f"unknown HTTP protocol {http!r}: auto, h11 or httptools")
    return type(base.__name__, (base,), {"header_timeout": header_timeout, "idle_timeout": idle_timeout})


# The cyclic garbage collector's thresholds in a serving process. With many runs live at once (each a writer, its
# snapshot, an accumulator, a follower: tens of thousands of long-lived objects), the default (700, 10, 10)
# collects the young generations every few hundred allocations and keeps re-scanning those objects as they age:
# about a quarter of the CPU per event at 1,000 concurrent streams (bench/README.md, bench_pipeline
# --concurrent). Almost everything here is freed by reference counting; cycles wait a little longer.
# (5,000 was tried in session 23: young pauses a quarter as long, but in a 30 s run at 1,000 paced streams 8x the
# young collections, middle ones of 58-92 ms and a worse gap p99: bench/README.md, "Scale lane, session 23".)
GC_THRESHOLDS = (20_000, 20, 10)


def tune_gc() -> None:
    """Set ``GC_THRESHOLDS`` and move everything allocated so far (imports, the app) out of the collector's
    sight (``gc.freeze``): it lives as long as the process, so scanning it again is wasted."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class HeadwaterServer(uvicorn.Server):
    """A uvicorn server that, when it stops, first stops accepting, then awaits ``before_shutdown`` (the app
    ending its live runs), then closes connections as uvicorn does; ``on_started`` runs once it listens."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        before_shutdown: Callable[[], Awaitable[None]] | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown
        self.on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn raises the signal again once it has shut down (the process then dies of it); a server
            # that shut down cleanly on SIGINT/SIGTERM exits with 0 instead.
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        tune_gc()
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in getattr(self, "servers", []):
            server.close()  # no new connections while live runs end
        if self.before_shutdown is not None:
            try:
                await self.before_shutdown()
            except Exception as exc:
                log.error("stopping live runs failed", exc_info=exc)
        await super().shutdown(sockets)


def bind(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one). Raises ``OSError`` (port taken, ...).
    ``shared``: with ``SO_REUSEPORT``, as one of the sockets of ``--workers`` processes on the port that
    ``reserve`` holds (``shares_ports``)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048, reuse_port=shared)


def shares_ports() -> bool:
    """Whether worker processes can each listen on a socket of their own on one port, the kernel spreading new
    connections evenly over them (Linux's ``SO_REUSEPORT``). Where they cannot, they share one listening
    socket, and whichever worker wakes first accepts everything that is waiting: under a burst of connections
    one worker may get most of them (measured: 738 of 1,000 streams, and the gaps of an overloaded process)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free one) with ``SO_REUSEPORT`` that does NOT listen: it holds the
    port while each worker process listens on a socket of its own there (``bind(..., shared=True)``), and no
    connection ever waits in it. Set up as ``socket.create_server`` sets up its sockets, so that theirs may
    join. Raises ``OSError`` (port taken, ...)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def server_config(
    app: Any, *, header_timeout: float, idle_timeout: float, http: str = "auto", **options: Any
) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` served by uvicorn's ``http`` protocol with these limits. Above ``info``
    (``log_level`` warning, error, ...) uvicorn's access log is off unless ``access_log`` says otherwise: its
    lines are info and would be dropped, but uvicorn builds their arguments (the client, the path with its query
    string quoted) for every response while the access logger has a handler."""
    protocol = protocol_class(http, header_timeout=header_timeout, idle_timeout=idle_timeout)
    level = options.get("log_level")
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    if isinstance(level, int) and level > logging.INFO:
        options.setdefault("access_log", False)
    return uvicorn.Config(app, http=protocol,
                          timeout_keep_alive=max(1, round(idle_timeout)), lifespan="on", **options)
