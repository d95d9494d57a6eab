"""ResponsesBackend: an upstream that speaks Responses (OpenAI, OpenRouter, another Headwater); its events are
re-served as Headwater's own response by ``protocol.relay.ResponseRelay``.

The backend sends the whole conversation each time (Headwater resolves ``previous_response_id`` from its own
store and never forwards it) with ``stream: true`` and ``store: false``. It can be read two ways:
``events(request)`` yields the upstream's decoded events, which a ``ResponseRelay`` passes through (item
ids, provider extras, hosted-tool items, summaries and annotations kept); ``generate(request)`` flattens them
into steps for a run driver that only knows steps.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from itertools import repeat
from typing import Any

import msgspec
from msgspec.structs import force_setattr

from headwater.protocol.codec import decode_event, fast_decoder
from headwater.protocol.errors import DecodeError, SSEError
from headwater.protocol.events import (
    TERMINAL_EVENT_TYPES,
    ErrorEvent,
    Event,
)
from headwater.protocol.relay import ResponseRelay
from headwater.protocol.sse import DONE, SSEDecoder
from headwater.protocol.writer import ResponseWriter

from ._events import StepsFromEvents
from ._upstream import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    HTTPClient,
    Push,
    UpstreamBackend,
    UpstreamStream,
)
from .base import (
    BackendError,
    ChatMessage,
    GenerationRequest,
    Step,
)

__all__ = ["ResponseRelay", "ResponsesBackend", "StepsFromEvents", "responses_request"]

log = logging.getLogger("headwater.server")



# What OpenAI's POST /responses/input_tokens takes (it refuses the generation-only fields).
_COUNT_FIELDS = frozenset({"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
                           "reasoning", "truncation"})


# --- the request ----------------------------------------------------------------------------------------------


def responses_request(
    request: GenerationRequest,
    *,
    model: str | None,
    store: bool = False,
    extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The streamed ``/responses`` body for ``request``: the full input, never ``previous_response_id``.

    A leading system message becomes ``instructions``. When the request carries the resolved input as
    Responses items (an ``input_items`` attribute: images, files and reasoning items included), those go as
    they are; otherwise the chat-shaped ``messages`` are turned back into items.
    """
    messages = list(request.messages)
    body: dict[str, Any] = {}
    if model:
        body["model"] = model
    items = getattr(request, "input_items", None)
    if messages and messages[0].role in ("system", "developer") and not messages[0].tool_calls:
        body["instructions"] = messages[0].content
        messages = messages[1:]
    body["input"] = list(items) if items is not None else _input_items(messages)
    body["stream"] = True
    body["store"] = store
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        if request.tool_choice not in (None, "auto"):
            body["tool_choice"] = request.tool_choice
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.max_output_tokens is not None:
        body["max_output_tokens"] = request.max_output_tokens
    if request.text_format:
        body["text"] = {"format": request.text_format}
    if request.verbosity is not None:
        body.setdefault("text", {})["verbosity"] = request.verbosity
    if request.reasoning:
        reasoning = {k: v for k, v in request.reasoning.items() if v is not None}
        if reasoning:
            body["reasoning"] = reasoning
    if extra_body:
        body.update(extra_body)
    return body


def _input_items(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.tool_call_id or "",
                    "output": message.content,
                }
            )
            continue
        if message.content or not message.tool_calls:
            items.append({"type": "message", "role": message.role, "content": message.content})
        for call in message.tool_calls:
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id", ""),
                    "name": call.get("name", ""),
                    "arguments": call.get("arguments", ""),
                }
            )
    return items


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "name": tool["name"]}
    if tool.get("description"):
        out["description"] = tool["description"]
    out["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    # OpenAI's Responses API makes function tools strict unless told otherwise, which refuses loose schemas.
    out["strict"] = bool(tool.get("strict", False))
    return out


# --- the events -------------------------------------------------------------------------------------------------

_fast_decode = fast_decoder.decode
# The event types a pushed read hands back to ``batches`` (it ends the stream, or it is noted there).
_SPECIAL = TERMINAL_EVENT_TYPES | {"error"}
_RAW = repeat("_raw")  # endless and shared: map() stops at its finite iterables


def _decode(stream: UpstreamStream, payloads: list[bytes]) -> list[Event]:
    """The events of one chunk's frames (``stream.frames_seen`` counts the frames). The common case in C: one
    typed decode mapped over the payloads, each kept on its event as ``_raw`` (as ``codec.decode_event`` keeps
    it: an unchanged event is relayed as those bytes). A chunk with anything else (``[DONE]``, a blank payload,
    an unknown type, a field that does not fit, bytes that are not JSON) goes frame by frame."""
    if not payloads:
        return []
    try:
        events: list[Event] = list(map(_fast_decode, payloads))
    except msgspec.MsgspecError:
        return _decode_each(stream, payloads)
    any(map(force_setattr, events, _RAW, payloads))  # (force_setattr returns None: any() runs it on every one)
    stream.frames_seen += len(payloads)
    return events


def _decode_each(stream: UpstreamStream, payloads: list[bytes]) -> list[Event]:
    out: list[Event] = []
    for data in payloads:
        stream.frames_seen += 1
        if data == DONE or not data.strip():
            continue
        try:
            event = decode_event(data, lenient=True)
        except DecodeError as exc:
            raise stream.malformed(data, str(exc), what="event") from None
        out.append(event)
        if event.type in TERMINAL_EVENT_TYPES:
            break  # (whatever follows it is never read, as if it came in a chunk of its own)
    return out


# --- the backend ----------------------------------------------------------------------------------------------


class ResponsesBackend(UpstreamBackend):
    """Generation by a Responses upstream.

    ``upstream``: the server (``http://localhost:8080``), its API root (``https://api.openai.com/v1``,
    ``https://openrouter.ai/api/v1``) or the endpoint URL; ``api_key`` is sent as a bearer token. ``model``
    and ``models``: as for ``ChatBackend``. ``store``: the ``store`` flag sent upstream (Headwater keeps its
    own copy; False keeps nothing upstream). ``headers``/``extra_body``: added to every upstream request.

    ``passthrough`` tells the run driver to read ``events()`` through a ``relay()`` rather than
    ``generate()``'s steps.
    """

    name = "responses"
    passthrough = True
    pushes = True  # ``batches(request, push=True)`` (the run driver takes the chunks in ``data_received``)

    def __init__(
        self,
        upstream: str,
        api_key: str | None = None,
        *,
        model: str | None = None,
        models: Sequence[str] = (),
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        store: bool = False,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        client: HTTPClient | None = None,
    ) -> None:
        super().__init__(
            upstream,
            "responses",
            api_key,
            model=model,
            models=models,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            headers=headers,
            extra_body=extra_body,
            client=client,
        )
        self.store = store

    def describe(self) -> str:
        model = self.model or "whatever model each request names"
        return (
            f"responses: Responses upstream {self.upstream.url}, model {model}; the whole conversation is "
            "sent each time (previous_response_id is resolved here, never forwarded)"
        )

    def relay(self, writer: ResponseWriter) -> ResponseRelay:
        """The relay the run driver writes with instead of ``writer`` (same response id and template)."""
        return ResponseRelay.from_writer(writer, upstream=self.upstream.url)

    async def batches(self, request: GenerationRequest, *, push: bool = False) -> AsyncIterator[list[Event] | Push]:
        """The upstream's events, decoded (leniently: a payload that does not fit its schema comes as an
        ``UnknownEvent`` with ``problem`` set), one list per chunk read (never an empty one): the run takes a
        chunk's events in one turn and logs them as one batch. Ends with the terminal event (whatever follows it
        is never read). Raises ``BackendError`` for an error status, a connection or time-out failure, a
        payload that is not JSON, or a stream that ends with neither a terminal event nor an ``error`` event.

        A chunk's events are framed and decoded together (``_decode``), in this one generator, which takes the
        body's chunks from the answer itself (``take``/``wait``): between the socket and the run there is no
        generator per frame and no coroutine per chunk. With ``push``, whenever nothing of the body is buffered
        it yields a ``Push`` instead of waiting: the consumer takes the chunks that come next in the connection's
        ``data_received`` (the same framing and decoding, ``_step``), until the stream's end, an error, an
        ``error`` or terminal event (those come back here, and are read as if taken here)."""
        sent = self._sent_ahead(request)
        body = None if sent is not None else self.request_body(request)
        async with self.upstream.stream(body, sent=sent) as stream:
            if stream.is_json:
                data = await stream.read()
                raise stream.malformed(data, "a JSON document instead of an event stream", what="answer")
            errored = False
            framer = SSEDecoder(mode="sse")
            columns, take, wait = framer.feed_columns, stream.response.take, stream.response.wait
            pusher = None
            if push and stream.response.plain:

                def step(chunk: bytes) -> tuple[list[Event], bool]:
                    events = _decode(stream, columns(chunk)[1])
                    for event in events:
                        if event.type in _SPECIAL:
                            return events, True
                    return events, False

                pusher = Push(stream.response, step)
            try:
                while True:
                    chunk = take()
                    if chunk is None:
                        if pusher is None:
                            await wait()
                            continue
                        yield pusher
                        taken = pusher.taken()
                        if taken is None:
                            continue
                        events, chunk = taken, b"pushed"  # (a read, not the body's end: the generator reads on)
                    else:
                        payloads = columns(chunk)[1] if chunk else [frame.data for frame in framer.close()]
                        events = _decode(stream, payloads)
                    for at, event in enumerate(events):
                        if event.type in TERMINAL_EVENT_TYPES:
                            yield events[: at + 1]
                            return
                        errored = errored or type(event) is ErrorEvent
                    if events:
                        yield events
                    if not chunk:
                        break
            except SSEError as exc:
                raise BackendError(f"upstream {stream.url} sent an unreadable event stream: {exc}") from None
            except OSError as exc:
                raise stream.transport_error(exc) from None
            if not errored:
                raise BackendError(
                    f"upstream {stream.url} ended the stream after {stream.frames_seen} events without a "
                    "terminal event (response.completed / incomplete / failed)",
                    code="upstream_disconnected",
                )

    async def events(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """The upstream's events one by one (``batches``, flattened): for readers that take them singly."""
        async for batch in self.batches(request):
            assert not isinstance(batch, Push)  # (only with ``push``)
            for event in batch:
                yield event

    def request_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The streamed ``/responses`` body for ``request`` (``responses_request``, with this backend's model,
        ``store`` flag and ``extra_body``)."""
        return responses_request(request, model=self.model_for(request), store=self.store, extra_body=self.extra_body)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The upstream's own count (``POST .../responses/input_tokens``, as OpenAI answers it) of the input
        tokens ``request`` would take. An upstream without the endpoint answers 404/405: a ``BackendError``."""
        body = {key: value for key, value in self.request_body(request).items() if key in _COUNT_FIELDS}
        url = self.upstream.url + "/input_tokens"
        async with self.upstream.stream(body, url=url) as answer:
            data = await answer.read()
        try:
            count = msgspec.json.decode(data).get("input_tokens")
        except (msgspec.DecodeError, AttributeError):
            count = None
        if not isinstance(count, int) or isinstance(count, bool):
            raise answer.malformed(data, "no integer input_tokens", what="answer")
        return count

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        """The upstream's events flattened into steps (text, reasoning, function calls, usage, finish); other
        items (hosted tools) are left out. For drivers that do not relay events."""
        flatten = StepsFromEvents(self.upstream.url)
        async for event in self.events(request):
            for step in flatten.feed(event):
                yield step
        for step in flatten.close():
            yield step
