"""Errors as the client sees them: ``{"error": {"type", "code", "message", "param"}}`` with an HTTP status.

Route code raises ``APIError``; the handlers here turn it, Starlette's own HTTP errors and anything unexpected
into that shape. An unexpected exception is logged with its traceback and answered with a bare 500: no
traceback, path or exception text ever reaches a client. Every 4xx is logged at info level with its status,
code, param and message (``log_refusal``), never the request body, so an operator can see why a client was refused.
"""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["APIError", "error_body", "error_response", "exception_handlers", "log_refusal"]

log = logging.getLogger("headwater.server")

class APIError(Exception):
    """An error answered to the client: ``status`` and the spec's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        # OpenAI's types: its clients pick the exception class from the status; the type says client or server.
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    @classmethod
    def invalid(cls, message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
        return cls(400, message, code=code, param=param)

    @classmethod
    def not_found(cls, message: str, param: str | None = None) -> APIError:
        return cls(404, message, code="not_found", param=param)


def log_refusal(where: str, error: APIError) -> None:
    """One info line for a 4xx answer (``where``: ``POST /v1/responses``, ``WebSocket /v1/responses``)."""
    if 400 <= error.status < 500:
        param = f" (param {error.param})" if error.param else ""
        log.info("%s: %d %s%s: %s", where, error.status, error.code, param, error.message)


def error_body(error: APIError) -> bytes:
    return msgspec.json.encode(
        {"error": {"type": error.type, "code": error.code, "message": error.message, "param": error.param}}
    )


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
