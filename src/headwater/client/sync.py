"""The synchronous face: ``Client`` over an ``httpx.Client``. Every decision is the shared core's (``core``,
``stream``); this module only sends requests, reads bodies and sleeps."""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from headwater.protocol.events import Event
from headwater.protocol.resources import Response

from .core import (
    DEFAULT_TIMEOUT,
    Call,
    CallOptions,
    ClientOptions,
    CompactedResponse,
    DeletedResponse,
    Done,
    Fail,
    InputItemList,
    ModelList,
    Retry,
    compact_request,
    create_request,
    decode_response,
    decoder_for,
    input_items_request,
    response_path,
    retrieve_request,
    simple_request,
    store_hint,
)
from .errors import APIError
from .faces import EventIterator
from .retry import RetryPolicy
from .stream import Finish, StreamMachine
from .websocket import ResponsesConnection

__all__ = ["Client", "Stream"]

T = TypeVar("T")


class Client:
    """An Open Responses client. ``base_url`` defaults to ``$HEADWATER_BASE_URL`` or a local ``headwater serve``
    (``http://127.0.0.1:8080/v1``); ``api_key`` to ``$HEADWATER_API_KEY``, then ``$OPENAI_API_KEY``.

    ``compat=True`` repairs sloppy provider streams (see ``headwater.client.compat``). ``max_retries`` bounds
    new attempts before the first event, ``max_resumes`` reconnects in a row without progress mid-stream.
    Pass ``http_client`` (kept open: it is yours) or ``transport`` to control the HTTP layer."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        max_resumes: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        compat: bool = False,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        policy = RetryPolicy(max_retries, max_resumes, backoff, backoff_max, max_retry_after)
        self.options = ClientOptions.from_env(base_url=base_url, api_key=api_key, compat=compat, retry=policy,
                                              headers=headers)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout, transport=transport)
        self.responses = Responses(self)
        self.models = Models(self)

    @property
    def base_url(self) -> str:
        return self.options.base_url

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def _call(self, call: Call[T]) -> T:
        while True:
            step: Done[T] | Retry | Fail
            spec = call.request()
            try:
                answer = self._http.send(spec.build(self._http))
            except httpx.TransportError as exc:
                step = call.on_transport_error(exc)
            else:
                step = call.on_answer(answer.status_code, answer.headers, answer.content)
            if isinstance(step, Done):
                return step.value
            if isinstance(step, Fail):
                raise step.error
            self._sleep(step.delay)

    def _stream(self, spec: Any, call: CallOptions, **state: Any) -> Stream:
        compat = self.options.compat if call.compat is None else call.compat
        return Stream(self, StreamMachine(spec, self.options, compat=compat, **state))


class Responses:
    """``client.responses``: create, stream, retrieve, delete, cancel; ``input_items.list``."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.input_items = InputItems(client)

    @overload
    def create(self, *, stream: Literal[False] = False, compat: bool | None = None,
               extra_headers: Mapping[str, str] | None = None, extra_body: Mapping[str, Any] | None = None,
               timeout: httpx.Timeout | float | None = None, **body: Any) -> Response: ...

    @overload
    def create(self, *, stream: Literal[True], compat: bool | None = None,
               extra_headers: Mapping[str, str] | None = None, extra_body: Mapping[str, Any] | None = None,
               timeout: httpx.Timeout | float | None = None, **body: Any) -> Stream: ...

    def create(self, *, stream: bool = False, compat: bool | None = None,
               extra_headers: Mapping[str, str] | None = None, extra_body: Mapping[str, Any] | None = None,
               timeout: httpx.Timeout | float | None = None, **body: Any) -> Response | Stream:
        """``POST /responses`` with ``body`` (model, input, instructions, tools, ...). The typed ``Response``, or
        with ``stream=True`` a ``Stream`` of typed events, already connected (HTTP errors raise here)."""
        call = CallOptions(compat, extra_headers, extra_body, timeout)
        if stream:
            return self.stream(compat=compat, extra_headers=extra_headers, extra_body=extra_body, timeout=timeout,
                               **body)._connect_now()
        options = self._client.options
        return self._client._call(Call(create_request(options, body, call, stream=False), options.retry,
                                       decode_response))

    def connect(self, *, compat: bool | None = None,
                extra_headers: Mapping[str, str] | None = None) -> ResponsesConnection:
        """Open a WebSocket to ``/responses`` (WebSocket mode): ``with client.responses.connect() as connection:``
        then ``connection.create(**body)`` one response after another. Needs ``websockets``."""
        return ResponsesConnection(self._client.options, self._client._http.timeout, compat=compat,
                                   extra_headers=extra_headers)

    def stream(self, *, compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
               extra_body: Mapping[str, Any] | None = None, timeout: httpx.Timeout | float | None = None,
               **body: Any) -> Stream:
        """A streamed ``POST /responses`` as a context manager; the request is sent on entering (or on the first
        iteration)."""
        call = CallOptions(compat, extra_headers, extra_body, timeout)
        spec = create_request(self._client.options, body, call, stream=True)
        return self._client._stream(spec, call, store=store_hint({**body, **(extra_body or {})}))

    @overload
    def retrieve(self, response_id: str, *, stream: Literal[False] = False, starting_after: int | None = None,
                 compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
                 timeout: httpx.Timeout | float | None = None) -> Response: ...

    @overload
    def retrieve(self, response_id: str, *, stream: Literal[True], starting_after: int | None = None,
                 compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
                 timeout: httpx.Timeout | float | None = None) -> Stream: ...

    def retrieve(self, response_id: str, *, stream: bool = False, starting_after: int | None = None,
                 compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
                 timeout: httpx.Timeout | float | None = None) -> Response | Stream:
        """``GET /responses/{id}``; with ``stream=True`` its events after ``starting_after`` (all when None), live
        while it is still generating, resumed like any stream if the connection drops."""
        call = CallOptions(compat, extra_headers, None, timeout)
        options = self._client.options
        spec = retrieve_request(options, response_id, call, stream=stream, starting_after=starting_after)
        if stream:
            return self._client._stream(spec, call, response_id=response_id,
                                        starting_after=starting_after)._connect_now()
        return self._client._call(Call(spec, options.retry, decode_response))

    def delete(self, response_id: str, *, extra_headers: Mapping[str, str] | None = None) -> DeletedResponse:
        options = self._client.options
        spec = simple_request(options, "DELETE", response_path(response_id), CallOptions(extra_headers=extra_headers))
        return self._client._call(Call(spec, options.retry, decoder_for(DeletedResponse)))

    def cancel(self, response_id: str, *, extra_headers: Mapping[str, str] | None = None) -> Response:
        options = self._client.options
        spec = simple_request(options, "POST", response_path(response_id, "/cancel"),
                              CallOptions(extra_headers=extra_headers))
        return self._client._call(Call(spec, options.retry, decode_response))

    def compact(self, *, extra_headers: Mapping[str, str] | None = None,
                extra_body: Mapping[str, Any] | None = None, timeout: httpx.Timeout | float | None = None,
                **body: Any) -> CompactedResponse:
        """``POST /responses/compact`` with ``body`` (model, and input and/or previous_response_id): the
        conversation shrunk to items to send back as ``input``."""
        call = CallOptions(None, extra_headers, extra_body, timeout)
        options = self._client.options
        return self._client._call(Call(compact_request(options, body, call), options.retry,
                                       decoder_for(CompactedResponse)))


class InputItems:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, response_id: str, *, limit: int | None = None, after: str | None = None,
             order: Literal["asc", "desc"] | None = None,
             extra_headers: Mapping[str, str] | None = None) -> InputItemList:
        """One page of the input items of a response (``has_more``/``last_id`` for the next: ``after=last_id``)."""
        options = self._client.options
        spec = input_items_request(options, response_id, CallOptions(extra_headers=extra_headers), limit=limit,
                                   after=after, order=order)
        return self._client._call(Call(spec, options.retry, decoder_for(InputItemList)))


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, extra_headers: Mapping[str, str] | None = None) -> ModelList:
        options = self._client.options
        spec = simple_request(options, "GET", "/models", CallOptions(extra_headers=extra_headers))
        return self._client._call(Call(spec, options.retry, decoder_for(ModelList)))


class Stream(EventIterator):
    """A streamed response: iterate it for typed events (one unbroken stream, across reconnects); read
    ``snapshot``, ``output_text``, ``function_calls`` at any moment; ``get_final_response()`` at the end.

    ``incomplete`` and ``failed`` responses are answers (see ``status``); an ``error`` event raises
    ``StreamError`` once the stream is over, with the final response on it."""

    def __init__(self, client: Client, machine: StreamMachine) -> None:
        self._client = client
        self._machine = machine
        self._response: httpx.Response | None = None
        self._finish: Finish | None = None
        self._iterator: Generator[Event, None, None] | None = None
        self._raised: APIError | None = None
        self._exhausted = False

    # -- connection

    def _connect(self) -> Finish | None:
        """Until an answer carries the event stream (None) or the stream is over (a ``Finish``); raises on
        ``Fail``."""
        machine, http = self._machine, self._client._http
        while True:
            spec = machine.request()
            try:
                answer = http.send(spec.build(http), stream=True)
            except httpx.TransportError as exc:
                step = machine.on_transport_error(exc)
            else:
                if machine.on_status(answer.status_code, answer.headers):
                    self._response = answer
                    return None
                try:
                    body = answer.read()
                except httpx.TransportError as exc:
                    step = machine.on_transport_error(exc)
                else:
                    step = machine.on_error_body(answer.status_code, answer.headers, body)
                finally:
                    answer.close()
            if isinstance(step, Finish):
                return step
            if isinstance(step, Fail):
                raise step.error
            self._client._sleep(step.delay)

    def _connect_now(self) -> Stream:
        if self._response is None and self._finish is None and self._iterator is None:
            self._finish = self._connect()
        return self

    def _events(self) -> Generator[Event, None, None]:
        machine = self._machine
        while True:
            if self._response is None:
                finish = self._finish or self._connect()
                self._finish = None
                if finish is not None:
                    yield from finish.events
                    break
            answer = self._response
            assert answer is not None
            try:
                for chunk in answer.iter_bytes():
                    yield from machine.feed(chunk)
                yield from machine.end_of_body()
                step = machine.on_eof()
            except httpx.TransportError as exc:
                step = machine.on_transport_error(exc)
            finally:
                answer.close()
                self._response = None
            if isinstance(step, Finish):
                yield from step.events
                break
            if isinstance(step, Fail):
                raise step.error
            self._client._sleep(step.delay)
        error = machine.final_error()
        if error is not None:
            raise error

    # -- iteration

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
        if self._response is not None:
            self._response.close()
            self._response = None

    def __enter__(self) -> Stream:
        return self._connect_now()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
