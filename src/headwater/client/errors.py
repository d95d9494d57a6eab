"""Typed errors of the client: one class per HTTP status family, the connection ones, and the stream ones.

Every error carries what the server said (``message``, ``code``, ``param``, ``type``) from the spec's error shape
``{"error": {"type", "code", "message", "param"}}``; ``error_from_response`` picks the class from the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from headwater.protocol.resources import Response

from .retry import retry_after

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "StreamError",
    "StreamInterruptedError",
    "UnprocessableEntityError",
    "error_from_response",
]


class APIError(Exception):
    """Base of every error the client raises. ``message`` is the server's (or the client's) own words."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.type = type


class APIConnectionError(APIError):
    """The request did not get an answer: the server could not be reached, or the connection broke."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class APITimeoutError(APIConnectionError):
    """Connecting, sending or waiting for the next bytes took longer than the configured timeout."""


class StreamInterruptedError(APIConnectionError):
    """A stream broke after events had arrived and could not be continued: the response cannot be resumed
    (not stored), or every resume attempt failed. ``snapshot`` is the response as far as it was received."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        response_id: str | None = None,
        last_sequence_number: int | None = None,
        attempts: int = 0,
        snapshot: Response | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.response_id = response_id
        self.last_sequence_number = last_sequence_number
        self.attempts = attempts
        self.snapshot = snapshot


class APIStatusError(APIError):
    """The server answered with an error status. ``status_code``, ``headers`` and the raw ``body`` are kept."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message, code=code, param=param, type=type)
        self.status_code = status_code
        self.headers: dict[str, str] = dict(headers or {})
        self.body = body

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        code = f" {self.code}" if self.code else ""
        return f"{self.status_code}{code}: {self.message}{where}"


class BadRequestError(APIStatusError):
    """400: the request is invalid; ``param`` names the offending field when the server says which."""


class AuthenticationError(APIStatusError):
    """401: no API key, or a wrong one."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: no such response (or model, or route), or it belongs to another API key."""


class ConflictError(APIStatusError):
    """409."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429. ``retry_after``: the seconds the server asked to wait (None if it did not say)."""

    retry_after: float | None = None


class ServerError(APIStatusError):
    """5xx: the server (or the provider behind it) failed."""


class StreamError(APIError):
    """The stream carried an ``error`` event. Raised once the stream has ended, so ``response`` is the final
    response (usually ``status == "failed"``) and every event before and after the error was delivered."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 response: Response | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.response = response

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

_json = msgspec.json.Decoder()


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> APIStatusError:
    """The typed error for an error answer. Reads the spec's shape, and the looser ones providers send
    (``{"error": "text"}``, ``{"message": ...}``, ``{"detail": ...}``, plain text)."""
    fields: dict[str, Any] = {}
    try:
        data = _json.decode(body) if body else None
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            fields = error
        elif isinstance(error, str):
            fields = {"message": error}
        if "message" not in fields and isinstance(data.get("detail"), str):
            fields = {**fields, "message": data["detail"]}
    message = _str_or_none(fields.get("message"))
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text else f"HTTP {status} with no body"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIStatusError)
    error = cls(
        message,
        status_code=status,
        code=_str_or_none(fields.get("code")),
        param=_str_or_none(fields.get("param")),
        type=_str_or_none(fields.get("type")),
        headers=headers,
        body=body,
    )
    if isinstance(error, RateLimitError):
        error.retry_after = retry_after(headers)
    return error
