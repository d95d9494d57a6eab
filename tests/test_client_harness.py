"""Test harness for the client tests, and its own checks: a TCP proxy that cuts connections after a chosen number
of bytes, and a tiny HTTP server that answers canned responses (sloppy streams, 429s, error shapes).

Both listen on 127.0.0.1 only and run in threads, so sync and async clients can use them alike.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

# --- the cutting proxy --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """Cut a connection after ``after`` bytes from the server have been passed on. ``reset``: end it with a TCP
    RST (the client reads ECONNRESET) rather than a FIN (the client reads an early end of body)."""

    after: int
    reset: bool = False


class CutProxy:
    """Forwards loopback connections to ``upstream``; ``plan(n)`` says how the n-th connection (from 0) is cut,
    or None to leave it alone. ``drain``: after a cut keep reading what the server sends, so the server never
    learns that the client went (a drop between a middlebox and the client)."""

    def __init__(self, upstream: tuple[str, int], plan: Callable[[int], Cut | None], *, drain: bool = False) -> None:
        self.upstream = upstream
        self.plan = plan
        self.drain = drain
        self.connections = 0
        self.cuts = 0
        self.bytes_down = 0  # bytes from the server passed on to clients, all connections together
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                number = self.connections
                self.connections += 1
            cut = self.plan(number)
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: Cut | None) -> None:
        # One thread per connection, both directions through select: a socket is never closed while another
        # thread blocks on it (closing then would neither send the FIN nor the RST at once).
        if cut is not None and cut.after <= 0:
            self._cut(client, cut)
            return
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self._sockets += [client, server]
        budget = cut.after if cut is not None else None
        client_open = True
        try:
            while True:
                readable, _, _ = select.select([client, server] if client_open else [server], [], [], 30)
                if not readable:
                    break
                if client in readable and client_open:
                    data = client.recv(65536)
                    if not data:
                        client_open = False
                        server.shutdown(socket.SHUT_WR)
                    else:
                        server.sendall(data)
                if server in readable:
                    data = server.recv(65536)
                    if not data:
                        break
                    if budget is not None and len(data) >= budget:
                        with contextlib.suppress(OSError):
                            client.sendall(data[:budget])
                        assert cut is not None
                        self._cut(client, cut)
                        if self.drain:
                            while server.recv(65536):
                                pass
                        break
                    if budget is not None:
                        budget -= len(data)
                    client.sendall(data)
                    with self._lock:
                        self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _cut(self, client: socket.socket, cut: Cut) -> None:
        with self._lock:
            self.cuts += 1
        with contextlib.suppress(OSError):
            if cut.reset:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


# --- the canned HTTP server ---------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Canned:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class CannedServer:
    """Answers each request with ``answer(request, n)`` (n counts requests from 0), over HTTP/1.0: the body ends
    when the connection closes, as many streaming providers send it. Every request is kept in ``requests``."""

    def __init__(self, answer: Callable[[Recorded, int], Canned]) -> None:
        self.requests: list[Recorded] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                outer.requests.append(request)
                canned = answer(request, len(outer.requests) - 1)
                self.send_response(canned.status)
                for key, value in canned.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(canned.body)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def sse(body: bytes) -> Canned:
    return Canned(200, {"content-type": "text/event-stream"}, body)


def json_answer(status: int, body: bytes, **headers: str) -> Canned:
    return Canned(status, {"content-type": "application/json", **headers}, body)


def canned_servers() -> Iterator[Callable[[Callable[[Recorded, int], Canned]], CannedServer]]:
    """For a fixture: ``start(answer)`` starts a ``CannedServer``; every one started is closed afterwards."""
    servers: list[CannedServer] = []

    def start(answer: Callable[[Recorded, int], Canned]) -> CannedServer:
        server = CannedServer(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# --- the harness's own checks -------------------------------------------------------------------------------


def test_proxy_passes_everything_when_told_not_to_cut() -> None:
    upstream = CannedServer(lambda request, n: Canned(200, {"content-type": "text/plain"}, b"x" * 100_000))
    proxy = CutProxy(("127.0.0.1", upstream.port), lambda n: None)
    try:
        assert httpx.get(proxy.url + "/any").content == b"x" * 100_000
    finally:
        proxy.close()
        upstream.close()


@pytest.mark.parametrize("reset", [False, True])
def test_proxy_cuts_after_the_planned_bytes(reset: bool) -> None:
    upstream = CannedServer(lambda request, n: Canned(200, {"content-length": "100000"}, b"x" * 100_000))
    proxy = CutProxy(("127.0.0.1", upstream.port), lambda n: Cut(500, reset))
    try:
        with pytest.raises(httpx.TransportError):
            httpx.get(proxy.url + "/any")
        assert proxy.cuts == 1
    finally:
        proxy.close()
        upstream.close()
