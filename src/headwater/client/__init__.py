"""Headwater's client for any Open Responses endpoint: ``Client`` and ``AsyncClient`` over httpx, one shared
sans-I/O core (``core``, ``stream``, ``compat``, ``retry``), typed events and errors.

Streams survive dropped connections: a stored response is resumed from the last ``sequence_number`` seen, and
the caller sees one unbroken stream. ``compat=True`` repairs sloppy provider streams and reports each repair.
"""

from .asynchronous import AsyncClient, AsyncStream
from .core import DEFAULT_BASE_URL, CompactedResponse, DeletedResponse, InputItemList, Model, ModelList
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StreamError,
    StreamInterruptedError,
    UnprocessableEntityError,
)
from .retry import RetryPolicy
from .sync import Client, Stream
from .websocket import AsyncResponsesConnection, AsyncWebSocketStream, ResponsesConnection, WebSocketStream

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncResponsesConnection",
    "AsyncStream",
    "AsyncWebSocketStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "CompactedResponse",
    "ConflictError",
    "DeletedResponse",
    "InputItemList",
    "Model",
    "ModelList",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponsesConnection",
    "RetryPolicy",
    "ServerError",
    "Stream",
    "StreamError",
    "StreamInterruptedError",
    "UnprocessableEntityError",
    "WebSocketStream",
]
