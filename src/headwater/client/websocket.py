"""WebSocket mode on ``/responses`` (the spec's ``x-openresponses-websocket``) for both faces, over ``websockets``.

``client.responses.connect()`` opens one WebSocket (``ws://`` or ``wss://`` for the client's base URL, the API
key in the handshake's ``Authorization`` header); each ``create(**body)`` sends a ``response.create`` message and
returns a stream of typed events ending at the terminal event. Several responses go one after another on one
connection; ``previous_response_id`` continues any of them (a ``store: false`` response only on the connection
that made it). A ``WebSocketErrorEvent`` message (``{"type": "error", "status", "error": {...}}``) raises the
client's typed error for its status from ``create`` (``BadRequestError`` with ``.param`` and ``.code``, ...),
and the connection stays usable.

The event bookkeeping is the shared ``StreamMachine`` (``stream.py``): each message is one event's JSON, fed
with ``feed_message``; snapshot, ``output_text``, dedup, compatibility repairs and the end-of-stream
``StreamError`` are the same as over HTTP. This module only sends, receives and tells error messages apart.
``websockets`` is imported when a connection is opened (``pip install 'headwater[client-ws]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from headwater.protocol.events import Event
from headwater.protocol.resources import to_builtins

from .core import ClientOptions, RequestSpec
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    StreamInterruptedError,
    error_from_response,
)
from .faces import AsyncEventIterator, EventIterator
from .stream import StreamMachine

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection as AsyncWebSocket
    from websockets.sync.client import ClientConnection as SyncWebSocket

__all__ = [
    "AsyncResponsesConnection",
    "AsyncWebSocketStream",
    "ResponsesConnection",
    "WebSocketStream",
    "websocket_url",
]

CREATE = "response.create"

_encoder = msgspec.json.Encoder(enc_hook=lambda obj: to_builtins(obj))


class _Kind(msgspec.Struct):
    """Just enough of a message to tell a ``WebSocketErrorEvent`` from a stream's own ``error`` event."""

    type: Any = None
    status: Any = None
    sequence_number: Any = None


_kind = msgspec.json.Decoder(_Kind)


# --- the sans-I/O part, shared by both faces ----------------------------------------------------------------


def websocket_url(base_url: str) -> str:
    """``http(s)://host/v1`` -> ``ws(s)://host/v1/responses``."""
    if base_url.startswith("https://"):
        url = "wss://" + base_url.removeprefix("https://")
    elif base_url.startswith("http://"):
        url = "ws://" + base_url.removeprefix("http://")
    else:
        url = base_url
    return url.rstrip("/") + "/responses"


def _handshake(options: ClientOptions, extra_headers: Mapping[str, str] | None) -> tuple[str, dict[str, str], str]:
    """The URL, the handshake's extra headers (``Authorization`` and the client's own) and the user agent."""
    headers = options.request_headers("application/json", extra_headers)
    headers.pop("accept", None)
    user_agent = headers.pop("user-agent")
    return websocket_url(options.base_url), headers, user_agent


def error_message(data: bytes) -> APIStatusError | None:
    """The typed error a ``WebSocketErrorEvent`` message stands for; None for any other message."""
    try:
        kind = _kind.decode(data)
    except msgspec.DecodeError:
        return None  # not a JSON object: the stream machine decides (strict raises, compat drops)
    if kind.type != "error" or type(kind.status) is not int or kind.sequence_number is not None:
        return None
    return error_from_response(kind.status, {}, data)


def _create_message(body: Mapping[str, Any], extra_body: Mapping[str, Any] | None) -> bytes:
    return _encoder.encode({"type": CREATE, **body, **(extra_body or {})})


def _handshake_error(exc: Exception, url: str) -> APIError:
    """The typed error for a handshake that failed: the HTTP answer's (e.g. 401), or a connection error."""
    response = getattr(exc, "response", None)  # websockets' InvalidStatus
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        raw = getattr(response, "headers", None)
        headers = {k.lower(): v for k, v in raw.raw_items()} if raw is not None else {}
        return error_from_response(status, headers, getattr(response, "body", None) or b"")
    if isinstance(exc, TimeoutError):
        return APITimeoutError(f"timed out opening a WebSocket to {url}", url=url)
    return APIConnectionError(f"cannot open a WebSocket to {url}: {exc or type(exc).__name__}", url=url)


def _closed(machine: StreamMachine, exc: Exception) -> APIError:
    """The connection broke (or timed out) before the terminal event; WebSocket streams are not resumed."""
    url = machine.first.url
    reason = str(exc) or type(exc).__name__
    if machine.events_received == 0:
        if isinstance(exc, TimeoutError):
            return APITimeoutError(f"timed out waiting for {url}", url=url)
        return APIConnectionError(f"the WebSocket to {url} closed before any event: {reason}", url=url)
    where = f"response {machine.response_id}" if machine.response_id else "the response"
    return StreamInterruptedError(
        f"the WebSocket stream of {where} broke after sequence_number {machine.last_sequence_number} "
        f"({machine.events_received} events received): {reason}",
        url=url, response_id=machine.response_id, last_sequence_number=machine.last_sequence_number,
        snapshot=machine.accumulator.response,
    )


def _read_timeout(timeout: httpx.Timeout) -> tuple[float | None, float | None]:
    return timeout.connect, timeout.read


def _missing() -> ImportError:
    return ImportError("WebSocket mode needs the `websockets` package: pip install 'headwater[client-ws]'")


class _Turn:
    """One ``create`` on a connection: its machine, and the first message kept for the first iteration."""

    def __init__(self, options: ClientOptions, url: str, headers: dict[str, str], compat: bool,
                 body: Mapping[str, Any]) -> None:
        store = body.get("store")
        spec = RequestSpec("POST", url, headers)  # only named in errors: nothing is ever sent from it
        self.machine = StreamMachine(spec, options, compat=compat, store=store if isinstance(store, bool) else None)
        self.pending: bytes | None = None

    def take(self, data: bytes) -> Iterator[Event]:
        """The events of one message; raises the typed error of a ``WebSocketErrorEvent``."""
        error = error_message(data)
        if error is not None:
            raise error
        return self.machine.feed_message(data)


# --- the synchronous face -----------------------------------------------------------------------------------


class ResponsesConnection:
    """One WebSocket to ``/responses`` (``client.responses.connect()``): ``create(**body)`` one response after
    another, ``close()`` (or leave the ``with`` block) at the end."""

    def __init__(self, options: ClientOptions, timeout: httpx.Timeout, *, compat: bool | None = None,
                 extra_headers: Mapping[str, str] | None = None) -> None:
        try:
            from websockets.exceptions import InvalidHandshake, InvalidURI
            from websockets.sync.client import connect
        except ImportError as exc:  # pragma: no cover - websockets is a dependency of the test setup
            raise _missing() from exc
        self.options = options
        self.compat = self.options.compat if compat is None else compat
        self.url, self._headers, user_agent = _handshake(self.options, extra_headers)
        open_timeout, self._timeout = _read_timeout(timeout)
        try:
            self._ws: SyncWebSocket = connect(self.url, additional_headers=self._headers,
                                              user_agent_header=user_agent, open_timeout=open_timeout,
                                              max_size=None)
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
            raise _handshake_error(exc, self.url) from None
        self._current: WebSocketStream | None = None

    def create(self, *, compat: bool | None = None, extra_body: Mapping[str, Any] | None = None,
               **body: Any) -> WebSocketStream:
        """Send ``response.create`` with ``body`` (model, input, previous_response_id, store, ...; not ``stream``
        or ``background``) and wait for its first message: a ``WebSocketErrorEvent`` raises here, typed by its
        status. A previous stream on this connection not yet read to its end is read out first."""
        if self._current is not None and not self._current.done:
            with contextlib.suppress(APIError):  # that stream keeps its own error for its reader
                self._current.until_done()
        turn = _Turn(self.options, self.url, self._headers, self.compat if compat is None else compat,
                     {**body, **(extra_body or {})})
        stream = WebSocketStream(self, turn)
        try:
            self._ws.send(_create_message(body, extra_body), text=True)
        except Exception as exc:
            raise _closed(turn.machine, exc) from None
        data = self._receive(turn.machine)
        error = error_message(data)
        if error is not None:
            raise error
        turn.pending = data
        self._current = stream
        return stream

    def _receive(self, machine: StreamMachine) -> bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            return self._ws.recv(timeout=self._timeout, decode=False)
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            raise _closed(machine, exc) from None

    def close(self) -> None:
        """Close the connection (a response still running on it is cancelled by the server)."""
        self._ws.close()

    def __enter__(self) -> ResponsesConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebSocketStream(EventIterator):
    """One response on a connection: iterate it for typed events, up to and including the terminal event; the
    same ``snapshot``, ``output_text``, ``function_calls``, ``get_final_response()`` as ``Stream``. An ``error``
    event raises ``StreamError`` once the stream is over. The connection is not closed by this stream."""

    def __init__(self, connection: ResponsesConnection, turn: _Turn) -> None:
        self._connection = connection
        self._turn = turn
        self._machine = turn.machine
        self._iterator: Iterator[Event] | None = None
        self._raised: APIError | None = None
        self._exhausted = False

    def _events(self) -> Iterator[Event]:
        turn, machine = self._turn, self._machine
        while machine.terminal is None:
            data = turn.pending
            turn.pending = None
            yield from turn.take(data if data is not None else self._connection._receive(machine))
        error = machine.final_error()
        if error is not None:
            raise error

    def __enter__(self) -> WebSocketStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass


# --- the asynchronous face ----------------------------------------------------------------------------------


class AsyncResponsesConnection:
    """The async twin of ``ResponsesConnection``: ``async with aclient.responses.connect() as connection``
    (or ``await connection.open()``), ``await connection.create(**body)``, ``await connection.close()``."""

    def __init__(self, options: ClientOptions, timeout: httpx.Timeout, *, compat: bool | None = None,
                 extra_headers: Mapping[str, str] | None = None) -> None:
        self.options = options
        self.compat = self.options.compat if compat is None else compat
        self.url, self._headers, self._user_agent = _handshake(self.options, extra_headers)
        self._open_timeout, self._timeout = _read_timeout(timeout)
        self._ws: AsyncWebSocket | None = None
        self._current: AsyncWebSocketStream | None = None

    async def open(self) -> AsyncResponsesConnection:
        if self._ws is not None:
            return self
        try:
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidHandshake, InvalidURI
        except ImportError as exc:  # pragma: no cover
            raise _missing() from exc
        try:
            self._ws = await connect(self.url, additional_headers=self._headers, user_agent_header=self._user_agent,
                                     open_timeout=self._open_timeout, max_size=None)
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
            raise _handshake_error(exc, self.url) from None
        return self

    async def create(self, *, compat: bool | None = None, extra_body: Mapping[str, Any] | None = None,
                     **body: Any) -> AsyncWebSocketStream:
        """As ``ResponsesConnection.create``, awaited."""
        ws = (await self.open())._ws
        assert ws is not None
        if self._current is not None and not self._current.done:
            with contextlib.suppress(APIError):
                await self._current.until_done()
        turn = _Turn(self.options, self.url, self._headers, self.compat if compat is None else compat,
                     {**body, **(extra_body or {})})
        stream = AsyncWebSocketStream(self, turn)
        try:
            await ws.send(_create_message(body, extra_body), text=True)
        except Exception as exc:
            raise _closed(turn.machine, exc) from None
        data = await self._receive(turn.machine)
        error = error_message(data)
        if error is not None:
            raise error
        turn.pending = data
        self._current = stream
        return stream

    async def _receive(self, machine: StreamMachine) -> bytes:
        from websockets.exceptions import ConnectionClosed

        assert self._ws is not None
        try:
            async with asyncio.timeout(self._timeout):
                return await self._ws.recv(decode=False)
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            raise _closed(machine, exc) from None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def __aenter__(self) -> AsyncResponsesConnection:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncWebSocketStream(AsyncEventIterator):
    """The async twin of ``WebSocketStream``: ``async for event in stream``, ``await get_final_response()``."""

    def __init__(self, connection: AsyncResponsesConnection, turn: _Turn) -> None:
        self._connection = connection
        self._turn = turn
        self._machine = turn.machine
        self._iterator: AsyncIterator[Event] | None = None
        self._raised: APIError | None = None
        self._exhausted = False

    async def _events(self) -> AsyncIterator[Event]:
        turn, machine = self._turn, self._machine
        while machine.terminal is None:
            data = turn.pending
            turn.pending = None
            for event in turn.take(data if data is not None else await self._connection._receive(machine)):
                yield event
        error = machine.final_error()
        if error is not None:
            raise error

    async def __aenter__(self) -> AsyncWebSocketStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        pass
