"""The client's shared core, written once for the sync and async faces: options, how each endpoint's request
is built, and the ``Call`` machine that decides, answer by answer, to return, retry or raise.

Sans-I/O in the h11 sense: nothing here sends a byte or sleeps. A face builds ``Call``s, performs the
``RequestSpec``s they hand out with its httpx client, and feeds back what came of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, Union
from urllib.parse import quote

import httpx
import msgspec

from headwater.protocol.codec import decode_event_obj
from headwater.protocol.events import ResponseCompleted
from headwater.protocol.resources import Response, to_builtins

from .errors import APIConnectionError, APIError, APIStatusError, APITimeoutError, error_from_response
from .retry import RetryPolicy, retry_after, retryable_status

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "Call",
    "ClientOptions",
    "Done",
    "Fail",
    "Model",
    "RequestSpec",
    "Retry",
    "decode_response",
]

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
# A stream may be silent while a model thinks; headwater sends keep-alives every 15 s, so 10 minutes is generous.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
USER_AGENT = "headwater-python/0.1"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("headwater")
    except Exception:  # pragma: no cover - not installed
        return "0"


@dataclass(frozen=True)
class ClientOptions:
    """What every request of one client shares. ``base_url`` ends before ``/responses`` (e.g. ``.../v1``)."""

    base_url: str
    api_key: str | None
    compat: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        compat: bool = False,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ClientOptions:
        """Arguments first, then ``HEADWATER_BASE_URL``; ``HEADWATER_API_KEY``, then ``OPENAI_API_KEY``."""
        url = base_url or os.environ.get("HEADWATER_BASE_URL") or DEFAULT_BASE_URL
        key = api_key if api_key is not None else (
            os.environ.get("HEADWATER_API_KEY") or os.environ.get("OPENAI_API_KEY") or None
        )
        return cls(url.rstrip("/"), key or None, compat, retry or RetryPolicy(), dict(headers or {}))

    def url(self, path: str) -> str:
        return self.base_url + path

    def request_headers(self, accept: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"accept": accept, "user-agent": f"{USER_AGENT} ({_version()})"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        headers.update({k.lower(): v for k, v in self.headers.items()})
        if extra:
            headers.update({k.lower(): v for k, v in extra.items()})
        return headers


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request to make, in neutral terms; the faces turn it into an ``httpx.Request``."""

    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, str] | None = None
    content: bytes | None = None
    timeout: httpx.Timeout | float | None = None

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        extensions: dict[str, Any] = {}
        if self.timeout is not None:
            timeout = self.timeout if isinstance(self.timeout, httpx.Timeout) else httpx.Timeout(self.timeout)
            extensions["timeout"] = timeout.as_dict()
        request = http.build_request(self.method, self.url, params=self.params, content=self.content,
                                     headers=self.headers)
        request.extensions.update(extensions)
        return request


_encoder = msgspec.json.Encoder(enc_hook=lambda obj: to_builtins(obj))


def json_request(
    options: ClientOptions,
    method: str,
    path: str,
    *,
    body: Any = None,
    params: Mapping[str, Any] | None = None,
    stream: bool = False,
    extra_headers: Mapping[str, str] | None = None,
    timeout: httpx.Timeout | float | None = None,
) -> RequestSpec:
    headers = options.request_headers("text/event-stream" if stream else "application/json", extra_headers)
    content = None
    if body is not None:
        content = _encoder.encode(body)
        headers["content-type"] = "application/json"
    clean = {k: _param(v) for k, v in (params or {}).items() if v is not None}
    return RequestSpec(method, options.url(path), headers, clean or None, content, timeout)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def response_path(response_id: str, suffix: str = "") -> str:
    if not response_id:
        raise ValueError("a response id is required")
    return f"/responses/{quote(response_id, safe='')}{suffix}"


# --- decoding answers ---------------------------------------------------------------------------------------

_response_decoder = msgspec.json.Decoder(Response)
_any_decoder = msgspec.json.Decoder()


def decode_response(data: bytes) -> Response:
    """A response resource from JSON; items, parts and annotations of unknown types are kept as ``Unknown*``."""
    try:
        return _response_decoder.decode(data)
    except msgspec.ValidationError:
        obj = _any_decoder.decode(data)
        # The codec's slow path knows where unknown nested types may stand: borrow it through a terminal event.
        event = decode_event_obj({"type": "response.completed", "response": obj})
        assert isinstance(event, ResponseCompleted)
        return event.response


class Model(msgspec.Struct, kw_only=True):
    """One entry of ``GET /models``."""

    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Model] = msgspec.field(default_factory=list)


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: str = "response"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    """A page of ``GET /responses/{id}/input_items``. Items stay plain dicts: input items are the caller's own."""

    object: str = "list"
    data: list[dict[str, Any]] = msgspec.field(default_factory=list)
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class CompactedResponse(msgspec.Struct, kw_only=True):
    """What ``POST /responses/compact`` answers (the spec's ``CompactResource``): ``output`` holds the items to send
    back as ``input`` to go on with the conversation (plain dicts: they go back to the server as they came)."""

    id: str = ""
    object: str = "response.compaction"
    created_at: int | float = 0
    output: list[dict[str, Any]] = msgspec.field(default_factory=list)
    usage: dict[str, Any] | None = None


def compact_request(options: ClientOptions, body: Mapping[str, Any], call: CallOptions) -> RequestSpec:
    return json_request(options, "POST", "/responses/compact", body={**body, **(call.extra_body or {})},
                        extra_headers=call.extra_headers, timeout=call.timeout)


def decoder_for(cls: type[T]) -> Callable[[bytes], T]:
    decoder = msgspec.json.Decoder(cls)
    return decoder.decode


# --- the call machine ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """Sleep ``delay`` seconds, then ask for the next request."""

    delay: float
    reason: str


@dataclass(frozen=True)
class Fail:
    error: APIError


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


def transport_error(exc: Exception, url: str) -> APIConnectionError:
    """The typed error for an httpx transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"timed out talking to {url} ({type(exc).__name__})", url=url)
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return APIConnectionError(f"cannot connect to {url}: {detail}", url=url)
    return APIConnectionError(f"connection to {url} failed: {detail}", url=url)


class Call(Generic[T]):
    """One request-response exchange with retries: ``request()``, perform it, then ``on_answer`` or
    ``on_transport_error``; the step says what to do next (``Done``, ``Retry`` then ``request()`` again, ``Fail``)."""

    def __init__(self, spec: RequestSpec, policy: RetryPolicy, parse: Callable[[bytes], T]) -> None:
        self.spec = spec
        self.policy = policy
        self.parse = parse
        self.attempts = 0  # retries made so far

    def request(self) -> RequestSpec:
        return self.spec

    def on_answer(self, status: int, headers: Mapping[str, str], body: bytes) -> Done[T] | Retry | Fail:
        if 200 <= status < 300:
            return Done(self.parse(body))
        return self.on_status_error(error_from_response(status, headers, body))

    def on_status_error(self, error: APIStatusError) -> Retry | Fail:
        return retry_or_fail(self, error)

    def on_transport_error(self, exc: Exception) -> Retry | Fail:
        error = transport_error(exc, self.spec.url)
        if self.attempts >= self.policy.max_retries:
            return Fail(error)
        self.attempts += 1
        return Retry(self.policy.delay(self.attempts), str(error))


class _Attempting(Protocol):
    policy: RetryPolicy
    attempts: int


def retry_or_fail(state: _Attempting, error: APIStatusError, limit: int | None = None) -> Retry | Fail:
    """Retry a 408/429/5xx while attempts remain (waiting what ``Retry-After`` asks, if it asks for no more than
    ``max_retry_after``); any other status, or the last attempt, fails with ``error``."""
    limit = state.policy.max_retries if limit is None else limit
    if not retryable_status(error.status_code) or state.attempts >= limit:
        return Fail(error)
    wait = retry_after(error.headers)
    if wait is not None and wait > state.policy.max_retry_after:
        return Fail(error)
    state.attempts += 1
    return Retry(state.policy.delay(state.attempts, wait), str(error))


Step = Union[Done[T], Retry, Fail]


# --- the endpoints, as requests -----------------------------------------------------------------------------
# Both faces call these; each returns what to send, and (for streams) the machine that will follow the answer.


@dataclass(frozen=True)
class CallOptions:
    """Per-call settings: ``compat`` overrides the client's; ``extra_headers``/``extra_body`` are sent as is."""

    compat: bool | None = None
    extra_headers: Mapping[str, str] | None = None
    extra_body: Mapping[str, Any] | None = None
    timeout: httpx.Timeout | float | None = None


def create_request(options: ClientOptions, body: Mapping[str, Any], call: CallOptions, *, stream: bool) -> RequestSpec:
    payload = {**body, **(call.extra_body or {})}
    if stream:
        payload["stream"] = True
    else:
        payload.pop("stream", None)
    return json_request(options, "POST", "/responses", body=payload, stream=stream,
                        extra_headers=call.extra_headers, timeout=call.timeout)


def retrieve_request(options: ClientOptions, response_id: str, call: CallOptions, *, stream: bool = False,
                     starting_after: int | None = None) -> RequestSpec:
    params: dict[str, Any] = {}
    if stream:
        params["stream"] = "true"
        if starting_after is not None:
            params["starting_after"] = starting_after
    return json_request(options, "GET", response_path(response_id), params=params, stream=stream,
                        extra_headers=call.extra_headers, timeout=call.timeout)


def input_items_request(options: ClientOptions, response_id: str, call: CallOptions, *, limit: int | None,
                        after: str | None, order: str | None) -> RequestSpec:
    params = {"limit": limit, "after": after, "order": order}
    return json_request(options, "GET", response_path(response_id, "/input_items"), params=params,
                        extra_headers=call.extra_headers, timeout=call.timeout)


def simple_request(options: ClientOptions, method: str, path: str, call: CallOptions) -> RequestSpec:
    return json_request(options, method, path, extra_headers=call.extra_headers, timeout=call.timeout)


def store_hint(body: Mapping[str, Any]) -> bool | None:
    store = body.get("store")
    return store if isinstance(store, bool) else None
