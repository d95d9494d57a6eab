"""WebSocket mode on ``/v1/responses`` (the spec's ``x-openresponses-websocket``).

A client opens a WebSocket to ``/v1/responses`` (authenticated on the handshake, with the same
``Authorization: Bearer`` header as HTTP) and sends ``response.create`` messages: the create body plus
``"type": "response.create"``. Each is answered with the same events an SSE stream carries, one JSON text
message per event, ending with the terminal event; then the connection takes the next ``response.create``.
Failures that happen before a response starts are ``WebSocketErrorEvent`` messages
(``{"type": "error", "status", "error": {"type", "code", "message", "param"}}``), and the connection stays open.

A message goes through the same validation (``requests.parse_request``) and the same ``service.create`` as
``POST /v1/responses``; this module only reads messages, keeps connection state and writes events.

Where the spec is silent this follows OpenAI's WebSocket mode:

- one response in flight per connection: a ``response.create`` that arrives while one runs gets a 409
  ``response_already_in_flight`` error (the running response goes on);
- ``stream``, ``stream_options`` and ``background`` are HTTP transport fields (the spec says a client must not
  send them); as OpenAI's service does, what agrees with the mode is accepted and ignored (``stream: true``,
  which the Agents SDK always sends, any ``stream_options``, ``background: false``) and only a value that
  contradicts it is a 400 naming the field (``stream: false``, ``background: true``); ``generate: false``
  (OpenAI's warm-up) is refused as unsupported;
- the connection remembers its most recent successful response in memory, with the whole conversation up to
  and including its output, so ``previous_response_id`` naming it needs no store (this is how a
  ``store: false`` response is continued; its state lives as long as the connection). Any other id is looked
  up in the store; one found in neither is a 400 ``previous_response_not_found``;
- a continuation that fails (an error before the response starts, or ``response.failed``) forgets the
  response it named; a client that disconnects or cancels forgets nothing;
- a connection lasts at most ``MAX_CONNECTION_SECONDS`` (60 minutes): a ``response.create`` after that gets
  ``websocket_connection_limit_reached`` and the server closes the connection;
- closing the connection while a response runs cancels it, as a client leaving a non-background SSE stream
  does. There is no ``response.cancel`` message (the spec defines none): a stored response can be cancelled
  with ``POST /v1/responses/{id}/cancel`` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from headwater.protocol.events import TERMINAL_EVENT_TYPES

from .. import offload
from ..conversation import check_call_outputs
from ..errors import APIError
from ..input_limits import decode_object, shown
from ..requests import StoredItem, ValidatedRequest, item_from_output
from ..runs import Run
from ..service import Service
from .auth import authenticate, service_of
from .errors import error_message, error_response, log_refusal

__all__ = ["MAX_CONNECTION_SECONDS", "responses_websocket", "routes"]

log = logging.getLogger("headwater.server")

MAX_CONNECTION_SECONDS = 60 * 60
CREATE = "response.create"
# HTTP transport fields a response.create message may carry only with the value the mode implies.
MODE_VALUES = {"stream": True, "background": False}



@dataclass(slots=True)
class _Latest:
    """The connection's most recent successful response and its whole conversation (every input item of the
    chain, then the response's own output)."""

    response_id: str
    items: list[StoredItem]


class _Connection:
    """One accepted WebSocket: reads messages, runs one response at a time, remembers the latest one."""

    def __init__(self, websocket: WebSocket, state: Service, owner: str | None) -> None:
        self.websocket = websocket
        self.state = state
        self.owner = owner
        self.opened = time.monotonic()
        self.latest: _Latest | None = None
        self.in_flight = False  # from an accepted response.create until its terminal event is sent
        self.run: Run | None = None
        self.turn: asyncio.Task[None] | None = None
        self.gone = False
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        try:
            while not self.gone:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                data = text.encode() if isinstance(text, str) else message.get("bytes") or b""
                await self._on_message(data)
        finally:
            self.gone = True
            if self.run is not None and not self.run.finished:
                log.info("response %s: WebSocket client disconnected; cancelling", self.run.id)
                self.run.cancel()
            if self.turn is not None and not self.turn.done():
                self.turn.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.turn

    # --- messages -----------------------------------------------------------------------------------------

    async def _on_message(self, data: bytes) -> None:
        limit = self.state.config.max_body_bytes
        if len(data) > limit:
            await self._error(APIError(413, f"the message is larger than {limit} bytes", code="request_too_large"))
            return
        try:
            obj = decode_object(data, "the message", limits=self.state.config.input_limits)
        except APIError as bad:
            await self._error(bad)
            return
        kind = obj.get("type")
        if kind != CREATE:
            if kind is None:
                error = APIError.invalid("missing required parameter 'type'", "type",
                                         code="missing_required_parameter")
            else:
                error = APIError.invalid(f"unsupported message type {shown(kind)}: a client sends '{CREATE}' messages",
                                         "type", code="invalid_value")
            await self._error(error)
            return
        if self.in_flight:
            await self._error(APIError(
                409, "a response is already in flight on this connection; send the next 'response.create' after "
                "its terminal event", code="response_already_in_flight"))
            return
        if time.monotonic() - self.opened >= MAX_CONNECTION_SECONDS:
            await self._error(APIError.invalid(
                f"this connection has reached its limit of {MAX_CONNECTION_SECONDS // 60} minutes; open a new "
                "one to continue", code="websocket_connection_limit_reached"))
            self.gone = True
            with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
                await self.websocket.close(1000, "connection limit reached")
            return
        previous = obj.get("previous_response_id")
        self.in_flight = True
        self.turn = asyncio.get_running_loop().create_task(
            self._turn(data, obj, previous if isinstance(previous, str) else None)
        )

    async def _turn(self, data: bytes, obj: dict[str, Any], previous: str | None) -> None:
        """One response.create: start the run (or answer an error), then send its events."""
        try:
            run, items = await self._start(data, obj)
        except APIError as error:
            self._forget(previous)
            self.in_flight = False
            await self._error(error)
            return
        except Exception as exc:
            log.error("WebSocket response.create failed", exc_info=exc)
            self._forget(previous)
            self.in_flight = False
            await self._error(APIError(500, "the server had an error while processing the request",
                                       code="server_error"))
            return
        try:
            async for batch in run.follow(-1, self.state.config.keepalive_seconds):
                for entry in batch:  # (an empty batch is a keep-alive: WebSocket has its own pings)
                    if entry.type in TERMINAL_EVENT_TYPES:
                        # Ready for the next response.create before the client can see this one end.
                        self._finished(run, previous, items)
                    if not await self._send(entry.payload):
                        return
        finally:
            self.in_flight = False

    async def _start(self, data: bytes, obj: dict[str, Any]) -> tuple[Run, list[StoredItem]]:
        """Validate, build the conversation, create the stored response and start its run, as
        ``POST /v1/responses`` does. Returns the run and the conversation's items before its output."""
        state = self.state
        for name, implied in MODE_VALUES.items():
            if name in obj and obj[name] is not None and obj[name] != implied:
                raise APIError.invalid(f"'{name}': {shown(obj[name], quote=False)} contradicts WebSocket "
                                       f"mode, where every response is streamed on the connection in the "
                                       f"foreground; leave '{name}' out", name, code="unsupported_parameter")
        if obj.get("generate") is False:
            raise APIError.invalid("warm-up requests ('generate': false) are not supported by this server",
                                   "generate", code="unsupported_parameter")
        validated = await offload.parse_request(data, strict_tools=state.config.strict_tools,
                                                limits=state.config.input_limits)  # (big: off-loop)
        validated = await state.resolve(self.owner, validated)
        items = await self._conversation(validated)
        run = self.run = await state.create(self.owner, validated, streamed=True, conversation=items)
        return run, items

    async def _conversation(self, validated: ValidatedRequest) -> list[StoredItem]:
        """Every input item the model should see, from this connection's memory or from the store."""
        previous = validated.body.previous_response_id
        if previous is None:
            return list(validated.items)
        if self.latest is not None and self.latest.response_id == previous:
            check_call_outputs(self.latest.items, validated.items, validated.referenced)
            return [*self.latest.items, *validated.items]
        try:
            return await self.state.conversation(self.owner, validated)
        except APIError as error:
            if error.status == 404 and error.param == "previous_response_id":
                raise APIError.invalid(
                    f"previous response '{previous}' not found: it is neither stored nor the latest response of "
                    "this connection", "previous_response_id", code="previous_response_not_found") from None
            raise

    # --- connection state ---------------------------------------------------------------------------------

    def _finished(self, run: Run, previous: str | None, items: list[StoredItem]) -> None:
        response = run.response
        if response.status == "failed":
            self._forget(previous)
        else:  # completed, incomplete, cancelled: it can be continued
            output = [item for item in map(item_from_output, response.output) if item is not None]
            self.latest = _Latest(response.id, [*items, *output])
        self.in_flight = False

    def _forget(self, response_id: str | None) -> None:
        if response_id is not None and self.latest is not None and self.latest.response_id == response_id:
            self.latest = None

    # --- sending ------------------------------------------------------------------------------------------

    async def _error(self, error: APIError) -> None:
        log_refusal("WebSocket /v1/responses", error)
        await self._send(error_message(error))

    async def _send(self, data: bytes) -> bool:
        """Send one JSON text message; False once the client has gone."""
        if self.gone:
            return False
        async with self._send_lock:
            try:
                await self.websocket.send_text(data.decode())
            except (WebSocketDisconnect, WebSocketDisconnected):
                self.gone = True
                return False
        return True


async def responses_websocket(websocket: WebSocket) -> None:
    state = service_of(websocket)
    try:
        owner = authenticate(websocket)
    except APIError as error:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(error_response(error))  # a plain 401 on the handshake
        else:
            await websocket.accept()
            await websocket.send_text(error_message(error).decode())
            await websocket.close(1008, error.message)
        return
    await websocket.accept()
    await _Connection(websocket, state, owner).serve()


routes = [WebSocketRoute("/v1/responses", responses_websocket)]
