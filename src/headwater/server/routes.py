"""The HTTP endpoints: ``/v1/responses`` (create, retrieve, resume, delete, cancel, input items), ``/v1/models``,
``/openapi.json`` and ``/healthz``.

Each handler authenticates, reads and validates, then hands over to a run (``runs``) or the store; it builds no
event itself. A response belongs to the API key that created it: any other key gets 404, as for an unknown id.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.protocol.writer import ResponseWriter, new_id

from .backends.base import Backend, sampling_defaults, served_model
from .config import ServerConfig, key_digest
from .conversation import build_messages
from .entries import Entry
from .errors import APIError
from .replicas import Replica
from .requests import encode_input_item, parse_request
from .runs import Run, Runs, encode_response
from .store import Store, StoredItem, StoredResponse
from .store.base import UNFINISHED_STATUSES
from .streaming import EventStreamResponse, frames, replay

__all__ = ["ServerState", "routes"]

log = logging.getLogger("headwater.server")

DROPPED_TOOLS_HEADER = "x-headwater-dropped-tools"


@dataclass(slots=True)
class ServerState:
    """What the handlers share, kept on ``app.state.headwater``."""

    config: ServerConfig
    backend: Backend
    store: Store
    runs: Runs
    # Several replicas share the store and live log: leases, takeovers, cross-replica follow and cancel.
    replica: Replica | None = None
    started_at: int = field(default_factory=lambda: int(time.time()))


def _state(request: HTTPConnection) -> ServerState:
    state: ServerState = request.app.state.headwater
    return state


def _json(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(data, status, headers=headers, media_type="application/json")


def _authenticate(request: HTTPConnection) -> str | None:
    """The owner of what this request creates or reads: the digest of its API key (None without keys)."""
    digests = _state(request).config.api_key_digests
    if not digests:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    challenge = {"www-authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key",
                       headers=challenge)
    digest = key_digest(token.strip())
    if digest not in digests:
        raise APIError(401, "invalid API key", code="invalid_api_key", headers=challenge)
    return digest


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body: 413 beyond ``limit`` bytes, 408 when it has not all arrived ``body_timeout_seconds``
    after the headers. A client that leaves mid-upload is one log line (the error answers nobody)."""
    too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    timeout = _state(request).config.body_timeout_seconds
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        log.info("%s %s: the request body did not arrive within %gs (%d bytes came)", request.method,
                 request.url.path, timeout, size)
        raise APIError(408, f"the request body did not arrive within {timeout:g} seconds",
                       code="request_timeout", headers={"connection": "close"}) from None
    except ClientDisconnect:
        log.info("%s %s: the client left during the upload (%d bytes came)", request.method, request.url.path,
                 size)
        raise APIError(400, "the client disconnected before sending the whole body",
                       code="client_disconnected") from None
    return b"".join(chunks)


# --- POST /v1/responses -------------------------------------------------------------------------------------


async def create_response(request: Request) -> Response | EventStreamResponse:
    state = _state(request)
    owner = _authenticate(request)
    validated = parse_request(await _read_body(request, state.config.max_body_bytes),
                              strict_tools=state.config.strict_tools)
    body = validated.body
    headers: dict[str, str] = {}
    if validated.dropped_tools:
        dropped = ", ".join(dict.fromkeys(validated.dropped_tools))
        headers[DROPPED_TOOLS_HEADER] = dropped
        log.info("dropped tools the backend cannot run: %s", dropped)
    model = served_model(state.backend, body.model)
    messages = await build_messages(state.store, owner, validated, max_chain_length=state.config.max_chain_length)
    template = validated.response_template(
        response_id=new_id("resp_"),
        model=model,
        created_at=int(time.time()),
        # The response reports the sampling the backend really uses when the request leaves it unset.
        **sampling_defaults(state.backend),
    )
    if body.store:
        await state.store.create(
            StoredResponse(template.id, owner, template.status, int(template.created_at), encode_response(template)),
            [StoredItem(item.id or "", encode_input_item(item)) for item in validated.items],
        )
    run = state.runs.start(
        writer=ResponseWriter(template),
        request=validated.generation_request(model, messages),
        owner=owner,
        stored=body.store,
        background=body.background,
        max_tool_calls=body.max_tool_calls,
        followed=body.stream,
    )
    keepalive = state.config.keepalive_seconds
    if body.background:
        if body.stream:
            return EventStreamResponse(frames(_follow(state, run, run.id, -1)), headers=headers)
        return _json(encode_response(template), headers=headers)
    if body.stream:
        # Hold the headers until the backend has started (or a keep-alive interval has passed), so that a
        # request the backend refuses at once gets its HTTP status rather than a failed stream.
        await run.wait_first_step(keepalive)
        if run.steps == 0 and run.finished and run.backend_error is not None:
            raise await _refused(state, run, headers)

        def on_close(finished: bool) -> None:
            if not finished:  # the client left: stop paying for tokens nobody reads (after a grace, if set)
                log.info("response %s: client disconnected; cancelling", run.id)
                run.cancel_unless_followed(state.config.disconnect_grace_seconds if body.store else 0.0)

        return EventStreamResponse(frames(_follow(state, run, run.id, -1)), headers=headers, on_close=on_close)
    if not await _wait_unless_disconnected(request, run):
        log.info("response %s: client disconnected; cancelling", run.id)
        run.cancel()
        return _json(encode_response(run.response), headers=headers)  # nobody reads it
    if run.backend_error is not None:
        raise await _refused(state, run, headers)
    return _json(encode_response(run.response), headers=headers)


async def _refused(state: ServerState, run: Run, headers: dict[str, str]) -> APIError:
    """The backend's error as the HTTP answer. The client never learns the response id, so the failed
    response is not kept."""
    await run.wait()
    error = run.backend_error
    assert error is not None
    with contextlib.suppress(Exception):
        await state.store.delete(run.id)
    return APIError(error.status, error.message, code=error.code, param=error.param, headers=headers or None)


async def _wait_unless_disconnected(request: Request, run: Run) -> bool:
    """Wait for the run to finish; False if the client went away first."""
    finished = asyncio.ensure_future(run.wait())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (finished, gone):
            task.cancel()
    return run.finished


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- /v1/responses/{id} -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Found:
    run: Run | None
    record: StoredResponse | None

    @property
    def data(self) -> bytes:
        if self.run is not None:
            return encode_response(self.run.response)
        assert self.record is not None
        return self.record.data

    @property
    def status(self) -> str:
        if self.run is not None:
            return self.run.response.status
        assert self.record is not None
        return self.record.status


async def _find(request: Request) -> tuple[ServerState, str, _Found]:
    state = _state(request)
    owner = _authenticate(request)
    response_id = request.path_params["response_id"]
    run = state.runs.get(response_id)
    if run is not None:
        if run.owner == owner:
            return state, response_id, _Found(run, None)
    else:
        record = await state.store.get(response_id)
        if record is not None and record.owner == owner:
            return state, response_id, _Found(None, record)
    raise APIError.not_found(f"response '{response_id}' not found")


async def get_response(request: Request) -> Response | EventStreamResponse:
    state, response_id, found = await _find(request)
    if request.query_params.get("stream", "").lower() not in ("true", "1"):
        return _json(found.data)
    after = _int_param(request, "starting_after", default=-1, minimum=-1)
    if found.run is not None or (state.replica is not None and found.status in UNFINISHED_STATUSES):
        body = frames(_follow(state, found.run, response_id, after))
    else:
        body = replay(await state.store.events(response_id, after))
    return EventStreamResponse(body)


def _follow(state: ServerState, run: Run | None, response_id: str, after: int) -> AsyncIterator[list[Entry]]:
    """A live stream: the run's own when it runs here; with several replicas, on from the store and the shared
    live log wherever the run is (``replicas``)."""
    keepalive = state.config.keepalive_seconds
    if state.replica is None:
        assert run is not None
        return run.follow(after, keepalive)
    return state.replica.follow(run, response_id, after, keepalive)


async def delete_response(request: Request) -> Response:
    state, response_id, found = await _find(request)
    if found.run is not None:
        found.run.cancel()
        await found.run.wait()
    elif state.replica is not None and found.status in UNFINISHED_STATUSES:
        await state.replica.cancel_elsewhere(response_id)
    await state.store.delete(response_id)
    return _json(msgspec.json.encode({"id": response_id, "object": "response", "deleted": True}))


async def cancel_response(request: Request) -> Response:
    state, response_id, found = await _find(request)
    if found.run is not None:
        found.run.cancel()
        await found.run.wait()
    elif state.replica is not None and found.status in UNFINISHED_STATUSES:  # it runs on another replica
        record = await state.replica.cancel_elsewhere(response_id)
        if record is None:
            raise APIError.not_found(f"response '{response_id}' not found")
        return _json(record.data)
    elif found.status != "cancelled":
        raise APIError.invalid(
            f"response '{response_id}' is already {found.status}; only a queued or in_progress response can be "
            "cancelled",
            code="response_not_cancellable",
        )
    return _json(found.data)


async def list_input_items(request: Request) -> Response:
    state, response_id, _ = await _find(request)
    limit = _int_param(request, "limit", default=20, minimum=1, maximum=100)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError.invalid("order must be 'asc' or 'desc'", "order", code="invalid_value")
    after = request.query_params.get("after") or None
    page = await state.store.input_items(response_id, limit=limit, after=after, order=_order(order))
    return _json(msgspec.json.encode({
        "object": "list",
        "data": [msgspec.Raw(item.data) for item in page.items],
        "first_id": page.items[0].id if page.items else None,
        "last_id": page.items[-1].id if page.items else None,
        "has_more": page.has_more,
    }))


def _order(value: str) -> Literal["asc", "desc"]:
    return "asc" if value == "asc" else "desc"


def _int_param(request: Request, name: str, *, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError.invalid(f"'{name}' must be an integer, not {raw!r}", name, code="invalid_value") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise APIError.invalid(f"'{name}' must be {bounds}", name, code="invalid_value")
    return value


# --- the rest -----------------------------------------------------------------------------------------------


async def list_models(request: Request) -> Response:
    state = _state(request)
    _authenticate(request)
    models: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": state.started_at, "owned_by": state.backend.name}
        for name in state.backend.models()
    ]
    return _json(msgspec.json.encode({"object": "list", "data": models}))


_OPENAPI: bytes | None = None


async def openapi(request: Request) -> Response:
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = importlib.resources.files("headwater.server").joinpath("openapi.json").read_bytes()
    return _json(_OPENAPI)


async def healthz(request: Request) -> Response:
    """Liveness for anyone; with API keys configured, the backend and store only for a caller with a key."""
    state = _state(request)
    if state.config.api_key_digests:
        try:
            _authenticate(request)
        except APIError:
            return _json(b'{"status":"ok"}')
    return _json(msgspec.json.encode({"status": "ok", "backend": state.backend.name, "store": state.store.describe()}))


routes = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/cancel", cancel_response, methods=["POST"]),
    Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
