"""The asynchronous face: ``AsyncClient`` over an ``httpx.AsyncClient``. The same core as ``Client`` (``core``,
``stream``); only sending, reading and sleeping are awaited here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
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
from .faces import AsyncEventIterator
from .retry import RetryPolicy
from .stream import Finish, StreamMachine
from .websocket import AsyncResponsesConnection

__all__ = ["AsyncClient", "AsyncStream"]

T = TypeVar("T")


class AsyncClient:
    """The async twin of ``Client``: same arguments, same behaviour, awaited."""

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
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        policy = RetryPolicy(max_retries, max_resumes, backoff, backoff_max, max_retry_after)
        self.options = ClientOptions.from_env(base_url=base_url, api_key=api_key, compat=compat, retry=policy,
                                              headers=headers)
        self._owns_http = http_client is None
        self._http = (http_client if http_client is not None
                      else httpx.AsyncClient(timeout=timeout, transport=transport))
        self.responses = AsyncResponses(self)
        self.models = AsyncModels(self)

    @property
    def base_url(self) -> str:
        return self.options.base_url

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _call(self, call: Call[T]) -> T:
        while True:
            step: Done[T] | Retry | Fail
            spec = call.request()
            try:
                answer = await self._http.send(spec.build(self._http))
            except httpx.TransportError as exc:
                step = call.on_transport_error(exc)
            else:
                step = call.on_answer(answer.status_code, answer.headers, answer.content)
            if isinstance(step, Done):
                return step.value
            if isinstance(step, Fail):
                raise step.error
            await self._sleep(step.delay)

    def _stream(self, spec: Any, call: CallOptions, **state: Any) -> AsyncStream:
        compat = self.options.compat if call.compat is None else call.compat
        return AsyncStream(self, StreamMachine(spec, self.options, compat=compat, **state))


class AsyncResponses:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.input_items = AsyncInputItems(client)

    @overload
    async def create(self, *, stream: Literal[False] = False, compat: bool | None = None,
                     extra_headers: Mapping[str, str] | None = None, extra_body: Mapping[str, Any] | None = None,
                     timeout: httpx.Timeout | float | None = None, **body: Any) -> Response: ...

    @overload
    async def create(self, *, stream: Literal[True], compat: bool | None = None,
                     extra_headers: Mapping[str, str] | None = None, extra_body: Mapping[str, Any] | None = None,
                     timeout: httpx.Timeout | float | None = None, **body: Any) -> AsyncStream: ...

    async def create(self, *, stream: bool = False, compat: bool | None = None,
                     extra_headers: Mapping[str, str] | None = None, extra_body: Mapping[str, Any] | None = None,
                     timeout: httpx.Timeout | float | None = None, **body: Any) -> Response | AsyncStream:
        """``POST /responses``: the typed ``Response``, or with ``stream=True`` a connected ``AsyncStream``."""
        call = CallOptions(compat, extra_headers, extra_body, timeout)
        if stream:
            return await self.stream(compat=compat, extra_headers=extra_headers, extra_body=extra_body,
                                     timeout=timeout, **body)._connect_now()
        options = self._client.options
        return await self._client._call(Call(create_request(options, body, call, stream=False), options.retry,
                                             decode_response))

    def connect(self, *, compat: bool | None = None,
                extra_headers: Mapping[str, str] | None = None) -> AsyncResponsesConnection:
        """WebSocket mode: ``async with client.responses.connect() as connection:``, then
        ``await connection.create(**body)``. Opened on entering (or by the first ``create``). Needs ``websockets``."""
        return AsyncResponsesConnection(self._client.options, self._client._http.timeout, compat=compat,
                                        extra_headers=extra_headers)

    def stream(self, *, compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
               extra_body: Mapping[str, Any] | None = None, timeout: httpx.Timeout | float | None = None,
               **body: Any) -> AsyncStream:
        """A streamed ``POST /responses`` for ``async with``; the request is sent on entering (or first ``anext``)."""
        call = CallOptions(compat, extra_headers, extra_body, timeout)
        spec = create_request(self._client.options, body, call, stream=True)
        return self._client._stream(spec, call, store=store_hint({**body, **(extra_body or {})}))

    @overload
    async def retrieve(self, response_id: str, *, stream: Literal[False] = False, starting_after: int | None = None,
                       compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
                       timeout: httpx.Timeout | float | None = None) -> Response: ...

    @overload
    async def retrieve(self, response_id: str, *, stream: Literal[True], starting_after: int | None = None,
                       compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
                       timeout: httpx.Timeout | float | None = None) -> AsyncStream: ...

    async def retrieve(self, response_id: str, *, stream: bool = False, starting_after: int | None = None,
                       compat: bool | None = None, extra_headers: Mapping[str, str] | None = None,
                       timeout: httpx.Timeout | float | None = None) -> Response | AsyncStream:
        call = CallOptions(compat, extra_headers, None, timeout)
        options = self._client.options
        spec = retrieve_request(options, response_id, call, stream=stream, starting_after=starting_after)
        if stream:
            return await self._client._stream(spec, call, response_id=response_id,
                                              starting_after=starting_after)._connect_now()
        return await self._client._call(Call(spec, options.retry, decode_response))

    async def delete(self, response_id: str, *, extra_headers: Mapping[str, str] | None = None) -> DeletedResponse:
        options = self._client.options
        spec = simple_request(options, "DELETE", response_path(response_id), CallOptions(extra_headers=extra_headers))
        return await self._client._call(Call(spec, options.retry, decoder_for(DeletedResponse)))

    async def cancel(self, response_id: str, *, extra_headers: Mapping[str, str] | None = None) -> Response:
        options = self._client.options
        spec = simple_request(options, "POST", response_path(response_id, "/cancel"),
                              CallOptions(extra_headers=extra_headers))
        return await self._client._call(Call(spec, options.retry, decode_response))

    async def compact(self, *, extra_headers: Mapping[str, str] | None = None,
                      extra_body: Mapping[str, Any] | None = None, timeout: httpx.Timeout | float | None = None,
                      **body: Any) -> CompactedResponse:
        """``POST /responses/compact`` with ``body`` (model, and input and/or previous_response_id): the
        conversation shrunk to items to send back as ``input``."""
        call = CallOptions(None, extra_headers, extra_body, timeout)
        options = self._client.options
        return await self._client._call(Call(compact_request(options, body, call), options.retry,
                                             decoder_for(CompactedResponse)))


class AsyncInputItems:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, response_id: str, *, limit: int | None = None, after: str | None = None,
                   order: Literal["asc", "desc"] | None = None,
                   extra_headers: Mapping[str, str] | None = None) -> InputItemList:
        options = self._client.options
        spec = input_items_request(options, response_id, CallOptions(extra_headers=extra_headers), limit=limit,
                                   after=after, order=order)
        return await self._client._call(Call(spec, options.retry, decoder_for(InputItemList)))


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, extra_headers: Mapping[str, str] | None = None) -> ModelList:
        options = self._client.options
        spec = simple_request(options, "GET", "/models", CallOptions(extra_headers=extra_headers))
        return await self._client._call(Call(spec, options.retry, decoder_for(ModelList)))


class AsyncStream(AsyncEventIterator):
    """The async twin of ``Stream``: ``async for`` its events; ``await get_final_response()``."""

    def __init__(self, client: AsyncClient, machine: StreamMachine) -> None:
        self._client = client
        self._machine = machine
        self._response: httpx.Response | None = None
        self._finish: Finish | None = None
        self._iterator: AsyncIterator[Event] | None = None
        self._raised: APIError | None = None
        self._exhausted = False

    async def _connect(self) -> Finish | None:
        machine, http = self._machine, self._client._http
        while True:
            spec = machine.request()
            try:
                answer = await http.send(spec.build(http), stream=True)
            except httpx.TransportError as exc:
                step = machine.on_transport_error(exc)
            else:
                if machine.on_status(answer.status_code, answer.headers):
                    self._response = answer
                    return None
                try:
                    body = await answer.aread()
                except httpx.TransportError as exc:
                    step = machine.on_transport_error(exc)
                else:
                    step = machine.on_error_body(answer.status_code, answer.headers, body)
                finally:
                    await answer.aclose()
            if isinstance(step, Finish):
                return step
            if isinstance(step, Fail):
                raise step.error
            await self._client._sleep(step.delay)

    async def _connect_now(self) -> AsyncStream:
        if self._response is None and self._finish is None and self._iterator is None:
            self._finish = await self._connect()
        return self

    async def _events(self) -> AsyncIterator[Event]:
        machine = self._machine
        while True:
            if self._response is None:
                finish = self._finish or await self._connect()
                self._finish = None
                if finish is not None:
                    for event in finish.events:
                        yield event
                    break
            answer = self._response
            assert answer is not None
            try:
                async for chunk in answer.aiter_bytes():
                    for event in machine.feed(chunk):
                        yield event
                for event in machine.end_of_body():
                    yield event
                step = machine.on_eof()
            except httpx.TransportError as exc:
                step = machine.on_transport_error(exc)
            finally:
                await answer.aclose()
                self._response = None
            if isinstance(step, Finish):
                for event in step.events:
                    yield event
                break
            if isinstance(step, Fail):
                raise step.error
            await self._client._sleep(step.delay)
        error = machine.final_error()
        if error is not None:
            raise error

    async def aclose(self) -> None:
        if self._iterator is not None:
            aclose = getattr(self._iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if self._response is not None:
            await self._response.aclose()
            self._response = None

    async def __aenter__(self) -> AsyncStream:
        return await self._connect_now()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
