"""Who is calling, and the body they sent: API-key authentication and bounded body reading, for both
transports (a WebSocket is authenticated on its handshake with the same header).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect, HTTPConnection, Request

from .. import direct
from ..config import key_digest
from ..errors import APIError
from ..service import Service

__all__ = ["authenticate", "key_owner", "read_body", "service_of"]

log = logging.getLogger("headwater.server")


def service_of(request: HTTPConnection) -> Service:
    """The service this app was built with (``app.create_app``)."""
    service: Service = request.app.state.headwater
    return service


def authenticate(request: HTTPConnection) -> str | None:
    """The owner of what this request creates or reads: the digest of its API key (None without keys)."""
    return key_owner(request, service_of(request).config.api_key_digests)


def key_owner(request: HTTPConnection, digests: frozenset[str]) -> str | None:
    """The digest of the request's bearer key when it is one of ``digests`` (None when ``digests`` is empty);
    401 ``missing_api_key`` / ``invalid_api_key`` otherwise."""
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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body: 413 beyond ``limit`` bytes, 408 when it has not all arrived ``body_timeout_seconds``
    after the headers. A client that leaves mid-upload is one log line (the error answers nobody)."""
    too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = getattr(request.scope.get("extensions", {}).get(direct.EXTENSION), "request_body", None)
    whole = body() if body is not None else None
    if whole is not None:  # all of it came with the head: no deadline to arm
        if len(whole) > limit:
            raise too_large
        return whole
    timeout = service_of(request).config.body_timeout_seconds
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
