"""The HTTP endpoints: ``/v1/responses`` (create, retrieve, resume, delete, cancel, input items, compact),
``/v1/models``, ``/openapi.json`` and ``/healthz``.

Each handler authenticates, reads and validates, calls one ``service`` operation and renders its answer (JSON
or SSE); it touches neither store nor backend. A response belongs to the API key that created it: any other
key gets 404, as for an unknown id.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import offload
from ..errors import APIError
from ..requests import parse_compact_request
from ..runs import Run, encode_response
from ..service import Found, Service
from .auth import authenticate, read_body, service_of
from .sse import EventStreamResponse, frames

__all__ = ["routes"]

log = logging.getLogger("headwater.server")

DROPPED_TOOLS_HEADER = "x-headwater-dropped-tools"


def _json(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(data, status, headers=headers, media_type="application/json")



# --- POST /v1/responses -------------------------------------------------------------------------------------


async def create_response(request: Request) -> Response | EventStreamResponse:
    service = service_of(request)
    owner = authenticate(request)
    raw = await read_body(request, service.config.max_body_bytes)
    validated = await offload.parse_request(raw, strict_tools=service.config.strict_tools)  # (big: off-loop)
    validated = await service.resolve(owner, validated)
    body = validated.body
    headers: dict[str, str] = {}
    if validated.dropped_tools:
        headers[DROPPED_TOOLS_HEADER] = ", ".join(dict.fromkeys(validated.dropped_tools))
    try:
        run = await service.create(owner, validated, streamed=body.stream)
    except APIError as error:
        raise _with_headers(error, headers) from None
    if body.background:
        if body.stream:
            return EventStreamResponse(frames(service.follow(run)), headers=headers)
        return _json(encode_response(run.template), headers=headers)
    if body.stream:

        def on_close(finished: bool) -> None:
            if not finished:
                service.client_left(run)

        return EventStreamResponse(frames(service.follow(run)), headers=headers, on_close=on_close)
    if not await _wait_unless_disconnected(request, run):
        service.client_left(run)
        return _json(encode_response(run.response), headers=headers)  # nobody reads it
    try:
        return _json(await service.result(run), headers=headers)
    except APIError as error:
        raise _with_headers(error, headers) from None


def _with_headers(error: APIError, headers: dict[str, str]) -> APIError:
    if headers:
        error.headers = {**(error.headers or {}), **headers}
    return error


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


async def _find(request: Request) -> tuple[Service, Found]:
    service = service_of(request)
    return service, await service.find(authenticate(request), request.path_params["response_id"])


async def get_response(request: Request) -> Response | EventStreamResponse:
    service, found = await _find(request)
    if request.query_params.get("stream", "").lower() not in ("true", "1"):
        return _json(found.data)
    after = _int_param(request, "starting_after", default=-1, minimum=-1)
    return EventStreamResponse(frames(service.events(found, after)))


async def delete_response(request: Request) -> Response:
    service, found = await _find(request)
    return _json(await service.delete(found))


async def cancel_response(request: Request) -> Response:
    service, found = await _find(request)
    return _json(await service.cancel(found))


async def list_input_items(request: Request) -> Response:
    service, found = await _find(request)
    limit = _int_param(request, "limit", default=20, minimum=1, maximum=100)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError.invalid("order must be 'asc' or 'desc'", "order", code="invalid_value")
    after = request.query_params.get("after") or None
    return _json(await service.input_items(found, limit=limit, after=after, order="asc" if order == "asc" else "desc"))


# --- POST /v1/responses/compact -----------------------------------------------------------------------------


async def count_input_tokens(request: Request) -> Response:
    """openai-python's ``responses.input_tokens.count``: ``{"object": "response.input_tokens", "input_tokens"}``."""
    service = service_of(request)
    owner = authenticate(request)
    raw = await read_body(request, service.config.max_body_bytes)
    validated = await offload.parse_request(raw, strict_tools=service.config.strict_tools)  # (big: off-loop)
    count = await service.count_input_tokens(owner, await service.resolve(owner, validated))
    return _json(msgspec.json.encode({"object": "response.input_tokens", "input_tokens": count}))


async def compact_response(request: Request) -> Response:
    service = service_of(request)
    owner = authenticate(request)
    validated, model = parse_compact_request(await read_body(request, service.config.max_body_bytes),
                                             strict_tools=service.config.strict_tools)
    validated = await service.resolve(owner, validated)
    compaction = await service.compact(owner, validated, model)
    if not await _wait_unless_disconnected(request, compaction.run):
        log.info("compaction %s: client disconnected; cancelling", compaction.run.id)
        compaction.run.cancel()
        raise APIError(499, "the client closed the request", code="client_closed_request")  # nobody reads it
    return _json(compaction.result())


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
    service = service_of(request)
    authenticate(request)
    return _json(service.models())


_OPENAPI: bytes | None = None


async def openapi(request: Request) -> Response:
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = importlib.resources.files("headwater.server").joinpath("openapi.json").read_bytes()
    return _json(_OPENAPI)


async def healthz(request: Request) -> Response:
    """Liveness for anyone; with API keys configured, the backend and store only for a caller with a key."""
    service = service_of(request)
    if service.config.api_key_digests:
        try:
            authenticate(request)
        except APIError:
            return _json(service.health(detailed=False))
    return _json(service.health())


routes = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/compact", compact_response, methods=["POST"]),
    Route("/v1/responses/input_tokens", count_input_tokens, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/cancel", cancel_response, methods=["POST"]),
    Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
