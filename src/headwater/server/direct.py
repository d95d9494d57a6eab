"""Direct delivery: a caught-up follower's new entries written to its connection by the publish itself.

Woken for every event, the task that writes a stream costs each event a turn of the event loop, a step of
every generator between the live log and the transport (the live log's follow, the run's, the replica's, the
service's) and the ASGI send chain (Starlette's middleware wrappers, uvicorn's ``send``): 9-17 % of a
server's instructions per paced event, 8-10 µs of user CPU per relayed event at 64 streams (bench/README.md,
"Delivery lane, session 19"). Instead, while a follower
has written everything there is and waits, the task that writes the stream lends the live log a ``Sink``,
and each publish hands its new entries to every waiting follower's sink at once, in the publisher's own call:
the SSE transport frames them and writes them to the connection (``http/sse``), through the ``DirectBody`` the
server offers in the ASGI scope (``serving.py``: ``scope["extensions"][EXTENSION]``). The follower's task
wakes only for what it must do itself: the log ended (it ends the response), a keep-alive is due, the sink
refused a batch (the connection is paused, that is backpressure, or gone), the log is gone. Where the server
offers no ``DirectBody`` (h11, an ASGI test transport, WebSocket), or middleware stands between the app and
the connection (``app.HeadwaterApp`` then drops it), nothing changes: the task writes every event.

The layers in between pass no sink along: it is the writing task's, set with ``lending`` around its iteration
of the chain (a context variable: the generators of that chain run in that task's context), and the live log
reads it when a follower starts (``live/memory.py``). On waking, the follower still yields what its sink wrote,
so that every layer keeps its place in the stream (the last sequence number, whether the terminal event came);
the transport skips the entries at or below the last sequence number it has written.

This module is a leaf: the transports (``http/``) and the live logs (``live/``) both import it, and not each
other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

from .entries import Entry

__all__ = ["EXTENSION", "DirectBody", "Sink", "lending", "lent"]

# The key of the ``DirectBody`` in the ASGI scope's ``extensions``.
EXTENSION = "headwater.direct_body"


class DirectBody(Protocol):
    """The running response's body, written straight to its connection without the ASGI ``send``."""

    def write(self, chunks: list[bytes]) -> bool:
        """Write ``chunks`` (none empty) as the body's next chunks, in one write to the connection; False, with
        nothing written, when the connection cannot take them now (its writing is paused, it is gone, the
        response has not begun, has ended or is not chunked): the caller then writes them with ``send``."""


    def request_body(self) -> bytes | None:
        """The request's whole body, taken, when all of it has arrived and none of it was read (``receive`` then
        reads its empty end); None otherwise (it is still coming, or the client left): read it with
        ``receive``. A create's body has mostly come with its head, and reading it here costs no ASGI messages,
        no generator and no deadline."""

    def serves(self, receive: object, send: object) -> bool:
        """Whether ``receive`` and ``send`` are the connection's own, so that nothing stands between the app and
        it. An ASGI middleware wrapping them (a recorder, a compressor, an application embedding Headwater)
        passes the scope on with this body in it: writing to the connection, or taking the request's body,
        past that middleware would hide from it what it wraps ``send`` and ``receive`` to see; the app then
        drops the body from the scope (``app.HeadwaterApp``)."""


class Sink(Protocol):
    """Where a waiting follower's new entries go, in the publisher's call."""

    def __call__(self, entries: list[Entry], /) -> bool:
        """Write ``entries`` (the follower's next, in order) now, whole; False, with nothing written, when it
        cannot (the follower's task then takes them)."""


_sink: ContextVar[Sink | None] = ContextVar("headwater_direct_sink", default=None)


@contextlib.contextmanager
def lending(sink: Sink | None) -> Iterator[None]:
    """Within this block, the followers this task starts may be written by ``sink`` while they wait."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


def lent() -> Sink | None:
    """The sink this task lends its followers, if any (``lending``)."""
    return _sink.get()
