"""Errors as the client sees them: ``{"error": {"type", "code", "message", "param"}}`` with an HTTP status, or
the spec's ``WebSocketErrorEvent`` on a WebSocket. The one place an ``APIError`` is rendered.

Server code raises ``APIError`` (``server.errors``); the handlers here turn it, Starlette's own HTTP errors and
anything unexpected into that shape. An unexpected exception is logged with its traceback and answered with a bare 500: no
traceback, path or exception text ever reaches a client. Every 4xx is logged at info level with its status,
code, param and message (``log_refusal``), never the request body, so an operator can see why a client was refused.
"""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import APIError

__all__ = ["error_body", "error_message", "error_response", "exception_handlers", "log_refusal"]

log = logging.getLogger("headwater.server")

def log_refusal(where: str, error: APIError) -> None:
    """One info line for a 4xx answer (``where``: ``POST /v1/responses``, ``WebSocket /v1/responses``)."""
    if 400 <= error.status < 500:
        param = f" (param {error.param})" if error.param else ""
        log.info("%s: %d %s%s: %s", where, error.status, error.code, param, error.message)


def error_body(error: APIError) -> bytes:
    return msgspec.json.encode(
        {"error": {"type": error.type, "code": error.code, "message": error.message, "param": error.param}}
    )


def error_message(error: APIError) -> bytes:
    """An ``APIError`` as the spec's ``WebSocketErrorEvent``."""
    code = error.code or ("server_error" if error.status >= 500 else "invalid_request")
    return msgspec.json.encode({
        "type": "error",
        "status": error.status,
        "error": {"type": error.type, "code": code, "message": error.message, "param": error.param},
    })


def error_response(error: APIError) -> Response:
    return Response(error_body(error), error.status, headers=error.headers, media_type="application/json")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    log_refusal(f"{request.method} {request.url.path}", exc)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = APIError(404, f"no route for {request.method} {request.url.path}", code="not_found")
    elif exc.status_code == 405:
        error = APIError(405, f"method {request.method} is not allowed on {request.url.path}", code="method_not_allowed")
    else:
        error = APIError(exc.status_code, str(exc.detail))
    error.headers = dict(exc.headers) if exc.headers else None
    log_refusal(f"{request.method} {request.url.path}", error)
    return error_response(error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(APIError(500, "the server had an error while processing the request", code="server_error"))


exception_handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _unexpected}
