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
import re

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import offload
from ..errors import APIError
from ..input_limits import shown
from ..requests import parse_compact_request
from ..runs import Run, encode_response
from ..service import Found, Service
from .auth import authenticate, read_body, service_of
from .sse import EventStreamResponse, frames

__all__ = ["routes"]

log = logging.getLogger("headwater.server")

DROPPED_TOOLS_HEADER = "x-headwater-dropped-tools"
# What of a dropped tool's type may go into that header: a plain token, a few of them (the rest are counted).
_HEADER_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_HEADER_TYPES = 16


def dropped_tools_header(types: list[str]) -> str:
    """The dropped tool types as an ASCII header value of bounded size: each distinct type that is a plain token
    (``web_search``), at most 16 of them; any other (non-ASCII, control characters, 100 kB) is only counted."""
    distinct = list(dict.fromkeys(types))
    plain = [t for t in distinct if _HEADER_TOKEN.fullmatch(t)][:_HEADER_TYPES]
    others = len(distinct) - len(plain)
    return ", ".join([*plain, *([f"{others} other type(s)"] if others else [])])


def _json(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(data, status, headers=headers, media_type="application/json")



# --- POST /v1/responses -------------------------------------------------------------------------------------


async def create_response(request: Request) -> Response | EventStreamResponse:
    service = service_of(request)
    owner = authenticate(request)
    raw = await read_body(request, service.config.max_body_bytes)
    validated = await offload.parse_request(raw, strict_tools=service.config.strict_tools,
                                              limits=service.config.input_limits)  # (big: off-loop)
    validated = await service.resolve(owner, validated)
    body = validated.body
    headers: dict[str, str] = {}
    if validated.dropped_tools:
        headers[DROPPED_TOOLS_HEADER] = dropped_tools_header(validated.dropped_tools)
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
        return _json(run.resource(), headers=headers)  # nobody reads it
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
    if not _bool_param(request, "stream", default=False):
        return _json(await service.resource(found))
    after = _int_param(request, "starting_after", default=-1, minimum=-1, maximum=_MAX_SEQUENCE)
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
        raise APIError.invalid(f"order must be 'asc' or 'desc', not {shown(order)}", "order", code="invalid_value")
    after = request.query_params.get("after") or None
    return _json(await service.input_items(found, limit=limit, after=after, order="asc" if order == "asc" else "desc"))


# --- POST /v1/responses/compact -----------------------------------------------------------------------------


async def count_input_tokens(request: Request) -> Response:
    """openai-python's ``responses.input_tokens.count``: ``{"object": "response.input_tokens", "input_tokens"}``."""
    service = service_of(request)
    owner = authenticate(request)
    raw = await read_body(request, service.config.max_body_bytes)
    validated = await offload.parse_request(raw, strict_tools=service.config.strict_tools,
                                              limits=service.config.input_limits)  # (big: off-loop)
    count = await service.count_input_tokens(owner, await service.resolve(owner, validated))
    return _json(msgspec.json.encode({"object": "response.input_tokens", "input_tokens": count}))


async def compact_response(request: Request) -> Response:
    service = service_of(request)
    owner = authenticate(request)
    validated, model = parse_compact_request(await read_body(request, service.config.max_body_bytes),
                                             strict_tools=service.config.strict_tools,
                                             limits=service.config.input_limits)
    validated = await service.resolve(owner, validated)
    compaction = await service.compact(owner, validated, model)
    if not await _wait_unless_disconnected(request, compaction.run):
        log.info("compaction %s: client disconnected; cancelling", compaction.run.id)
        compaction.run.cancel()
        raise APIError(499, "the client closed the request", code="client_closed_request")  # nobody reads it
    return _json(compaction.result())


# Query integers: plain ASCII decimals (Python's int() also takes '٣', '1_0', '+3' and ' 5'); sequence numbers
# stay within a signed 64-bit integer, as the stores keep them.
_DECIMAL = re.compile(r"-?[0-9]{1,20}")
_MAX_SEQUENCE = 2**63 - 1


def _int_param(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _DECIMAL.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise APIError.invalid(f"'{name}' must be an integer between {minimum} and {maximum}, not {shown(raw)}",
                               name, code="invalid_value")
    return int(raw)


def _bool_param(request: Request, name: str, *, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise APIError.invalid(f"'{name}' must be 'true' or 'false', not {shown(raw)}", name, code="invalid_value")
    return raw == "true"


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
