"""``APIError``: an error answered to the client, with its HTTP status and the spec's error fields.

Raised anywhere below the transports (validation, the conversation, the service); rendered only by
``http.errors`` (JSON over HTTP, ``WebSocketErrorEvent`` over WebSocket). Imports no web framework.
"""

from __future__ import annotations

__all__ = ["APIError"]


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
