"""ChatBackend: any Chat Completions server (vLLM, SGLang, llama.cpp, Ollama, OpenAI, OpenRouter, DeepSeek...) as
a source of generation steps. The request becomes one streamed ``/chat/completions`` call; its chunks become
text, reasoning, tool-call, usage and finish steps, which the server's writer turns into Responses events.

Only ``choices[0]`` is read. Hosted tools, input images and reasoning items cannot be expressed in a chat
request and never reach here (the server drops or refuses them first).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import msgspec

from headwater.protocol.errors import SSEError
from headwater.protocol.sse import DONE, SSEDecoder

from ._upstream import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MODEL,
    DEFAULT_READ_TIMEOUT,
    HTTPClient,
    Push,
    UpstreamBackend,
    UpstreamStream,
)
from .base import (
    BackendError,
    ChatMessage,
    Finish,
    GenerationRequest,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)

__all__ = ["DEFAULT_MODEL", "ChatBackend", "ChunkMapper", "chat_request"]

log = logging.getLogger("headwater.server")

"""What ``models()`` lists when no model was configured; a request for it goes upstream without ``model``
(vLLM, SGLang and llama.cpp then use the model they serve)."""

FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the legacy name
}


# --- the chunk schema: only what is read; msgspec skips the rest ----------------------------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: Any = None  # a string; some servers (old Ollama) send an object


class _ToolCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | list[Any] | None = None  # a list of parts: Mistral ({"type": "thinking" | "text"})
    reasoning_content: str | None = None  # vLLM, SGLang, DeepSeek, llama.cpp
    reasoning: str | None = None  # OpenRouter, newer vLLM
    tool_calls: list[_ToolCall] | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    completion_tokens_details: _CompletionDetails | None = None
    prompt_tokens_details: _PromptDetails | None = None
    prompt_cache_hit_tokens: int | None = None  # DeepSeek
    cost: float | None = None  # OpenRouter


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None  # OpenAI, OpenRouter, newer vLLM: {"error": {"message", "code"}}
    object: str | None = None  # older vLLM: {"object": "error", "message": ...}
    message: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_json_decoder = msgspec.json.Decoder()


class ChunkMapper:
    """Chat Completions chunks in, steps out: the sans-I/O heart of the bridge, used by ``ChatBackend`` (and
    by tests and the bench directly).

    Tool-call pieces are routed by ``index`` and ``id`` together: a piece with a new ``id`` starts a new call
    even at an index already used (SGLang and some vLLM parsers put every call at index 0); a piece without
    an ``id`` (or with ``""``) continues the latest call at its index (OpenAI sends the id once: litellm issue
    20711 dropped those pieces). Each call gets its own ``ToolCallDelta.index``, 0, 1, 2... in order of
    appearance. Reasoning (``reasoning_content`` or ``reasoning``) comes before text from the same chunk.
    """

    def __init__(self) -> None:
        self.finish: FinishReason | None = None
        self.usage: UsageStep | None = None
        self.chunks = 0
        self._by_index: dict[int | None, int] = {}  # upstream index -> our call index (latest call there)
        self._by_id: dict[str, int] = {}
        self._call_ids: list[str | None] = []  # our index -> upstream id
        self._last_call: int | None = None

    # -- chunks --------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Step]:
        """The steps of one chunk (the ``data:`` of one SSE event). Raises ``ValueError`` for a chunk that is
        not JSON, ``UpstreamError`` for an error the upstream reports inside the stream."""
        self.chunks += 1
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.ValidationError:
            chunk = _loose_chunk(data)  # a field of an unexpected type somewhere: read it the slow way
        except msgspec.DecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if chunk.error is not None:
            raise UpstreamError(_stream_error(chunk.error))
        if chunk.object == "error":
            raise UpstreamError(_stream_error({"message": chunk.message}))
        out: list[Step] = []
        choices = chunk.choices
        if choices:
            choice: _Choice | None = choices[0]
            if len(choices) > 1 or choices[0].index != 0:
                choice = next((c for c in choices if c.index == 0), None)  # n > 1: the first choice only
            if choice is not None:
                delta = choice.delta
                if delta is not None:
                    reasoning = delta.reasoning_content or delta.reasoning
                    if reasoning:
                        out.append(ReasoningDelta(reasoning))
                    if isinstance(delta.content, list):
                        out.extend(_content_parts(delta.content))
                    elif delta.content:
                        out.append(TextDelta(delta.content))
                    if delta.refusal:
                        out.append(TextDelta(delta.refusal))
                    if delta.tool_calls:
                        for call in delta.tool_calls:
                            step = self._tool_call(call)
                            if step is not None:
                                out.append(step)
                reason = choice.finish_reason
                if reason is not None and self.finish is None:
                    if reason == "error":
                        raise UpstreamError("the upstream ended generation with finish_reason 'error'")
                    self.finish = _FINISH.get(reason, "stop")
                    out.append(Finish(self.finish))
        if chunk.usage is not None:
            # Kept until the end: some servers send it with every chunk. What the mapping does not name
            # (OpenRouter's cache_write_tokens, is_byok...) goes on as the upstream sent it.
            raw = _json_decoder.decode(data).get("usage")
            self.usage = _usage_step(chunk.usage, raw if isinstance(raw, dict) else {})
        return out

    def _tool_call(self, piece: _ToolCall) -> ToolCallDelta | None:
        upstream_id = piece.id or None
        index = piece.index
        ours: int | None = None
        new = False
        if upstream_id is not None:
            ours = self._by_id.get(upstream_id)
            if ours is None:
                at_index = self._by_index.get(index) if index is not None else None
                if at_index is not None and self._call_ids[at_index] is None:
                    ours = at_index  # the id comes late for a call that started without one
                    self._call_ids[ours] = upstream_id
                    self._by_id[upstream_id] = ours
                else:
                    new = True
        elif index is not None:
            ours = self._by_index.get(index)
            new = ours is None
        else:
            ours = self._last_call  # neither id nor index (SGLang issue 5661): the call being streamed
            new = ours is None
        if new:
            ours = len(self._call_ids)
            self._call_ids.append(upstream_id)
            if upstream_id is not None:
                self._by_id[upstream_id] = ours
        assert ours is not None
        self._by_index[index] = ours
        self._last_call = ours
        function = piece.function
        arguments = function.arguments if function is not None else None
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments, separators=(",", ":"))
        name = function.name if function is not None else None
        if not new:
            if not arguments:
                return None  # a repeat of the id or name: nothing new
            return ToolCallDelta(ours, arguments)
        return ToolCallDelta(ours, arguments or "", call_id=upstream_id, name=name or None)

    # -- a whole (non-streamed) completion -------------------------------------------------------------------

    def feed_completion(self, data: bytes) -> list[Step]:
        """The steps of a non-streamed ``chat.completion`` (a server that ignored ``stream: true``)."""
        obj = _json_decoder.decode(data)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        if obj.get("error") is not None:
            raise UpstreamError(_stream_error(obj["error"]))
        choices = obj.get("choices") or []
        message = (choices[0].get("message") if choices and isinstance(choices[0], dict) else None) or {}
        calls = [
            {"index": i, "id": call.get("id"), "function": call.get("function")}
            for i, call in enumerate(message.get("tool_calls") or [])
        ]
        as_chunk = {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "content": message.get("content"),
                        "reasoning_content": message.get("reasoning_content") or message.get("reasoning"),
                        "tool_calls": calls or None,
                        "refusal": message.get("refusal"),
                    },
                    "finish_reason": choices[0].get("finish_reason") if choices else None,
                }
            ],
            "usage": obj.get("usage"),
        }
        return self.feed(msgspec.json.encode(as_chunk))


class UpstreamError(Exception):
    """An error the upstream reported inside a 200 stream (an ``error`` object or ``finish_reason: error``)."""


def _loose_chunk(data: bytes) -> _Chunk:
    obj = _json_decoder.decode(data)
    if not isinstance(obj, dict):
        raise ValueError("a chunk must be a JSON object")
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                for key in ("reasoning_content", "reasoning", "refusal"):
                    if delta.get(key) is not None and not isinstance(delta[key], str):
                        delta[key] = None  # e.g. OpenRouter's reasoning objects: not text
                content = delta.get("content")
                if content is not None and not isinstance(content, (str, list)):
                    raise UpstreamError(f"the chat bridge cannot read delta.content of type {type(content).__name__}")
                calls = delta.get("tool_calls")
                if isinstance(calls, dict):
                    delta["tool_calls"] = [calls]
                elif isinstance(calls, list):
                    for call in calls:
                        if isinstance(call, dict) and call.get("id") is not None:
                            call["id"] = str(call["id"])
    for key in ("usage",):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            obj[key] = None
    try:
        return msgspec.convert(obj, _Chunk, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"unexpected chunk shape ({exc})") from None


def _stream_error(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message") or json.dumps(error)
        code = error.get("code")
        return f"{message} (code {code})" if code is not None else str(message)
    return str(error)


def _content_parts(parts: list[Any]) -> list[Step]:
    """``delta.content`` as a list of parts (Mistral's reasoning models): ``thinking`` parts (their ``thinking``
    text, or a list of text parts) are reasoning, ``text`` parts are text. A part the bridge cannot map is an
    error: its content is never dropped silently."""
    out: list[Step] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                out.append(TextDelta(part["text"]))
        elif kind == "thinking":
            thinking = part.get("thinking")
            if isinstance(thinking, list):
                text = "".join(p.get("text", "") for p in thinking if isinstance(p, dict) and p.get("type") == "text")
                if len(text) == 0 and any(not isinstance(p, dict) or p.get("type") != "text" for p in thinking):
                    raise UpstreamError(f"the chat bridge cannot map a thinking part holding {thinking!r:.120}")
            elif isinstance(thinking, str):
                text = thinking
            else:
                raise UpstreamError(f"the chat bridge cannot map a thinking part holding {thinking!r:.120}")
            if text:
                out.append(ReasoningDelta(text))
        else:
            raise UpstreamError(f"the chat bridge cannot map a content part of type {kind!r} ({part!r:.120})")
    return out


# Chat usage fields the mapping names; the others go on as extras (in the same place, Responses names).
_USAGE_MAPPED = frozenset({"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details",
                           "completion_tokens_details", "prompt_cache_hit_tokens", "cost"})


def _usage_step(usage: _Usage, raw: dict[str, Any] | None = None) -> UsageStep:
    completion = usage.completion_tokens_details
    prompt = usage.prompt_tokens_details
    cached = (prompt.cached_tokens if prompt is not None else None) or usage.prompt_cache_hit_tokens or 0
    return UsageStep(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        reasoning_tokens=(completion.reasoning_tokens if completion is not None else None) or 0,
        cached_tokens=cached,
        cost=usage.cost,
        extra=_usage_extra(raw or {}),
    )


def _usage_extra(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The upstream's usage fields the mapping does not name, where a Responses usage keeps them."""
    extra: dict[str, Any] = {key: value for key, value in raw.items() if key not in _USAGE_MAPPED}
    for chat, responses, known in (("prompt_tokens_details", "input_tokens_details", "cached_tokens"),
                                   ("completion_tokens_details", "output_tokens_details", "reasoning_tokens")):
        details = raw.get(chat)
        if isinstance(details, dict):
            rest = {key: value for key, value in details.items() if key != known}
            if rest:
                extra[responses] = rest
    return extra or None


# --- the request ----------------------------------------------------------------------------------------------


def chat_request(
    request: GenerationRequest,
    *,
    model: str | None,
    include_usage: bool = True,
    max_tokens_field: str = "max_tokens",
    extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The streamed ``/chat/completions`` body for ``request`` (``model`` None: no ``model`` field)."""
    body: dict[str, Any] = {}
    if model:
        body["model"] = model
    body["messages"] = [_message(m) for m in request.messages]
    body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        choice = _tool_choice(request.tool_choice)
        if choice is not None and choice != "auto":  # "auto" is every server's default when tools are given
            body["tool_choice"] = choice
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.max_output_tokens is not None:
        body[max_tokens_field] = request.max_output_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    response_format = _response_format(request.text_format)
    if response_format is not None:
        body["response_format"] = response_format
    if request.verbosity not in (None, "medium"):  # OpenAI's chat parameter; "medium" is everyone's default
        body["verbosity"] = request.verbosity
    effort = (request.reasoning or {}).get("effort")
    if effort:
        body["reasoning_effort"] = effort
    if extra_body:
        body.update(extra_body)
    return body


def _message(message: ChatMessage) -> dict[str, Any]:
    role = "system" if message.role == "developer" else message.role  # many chat templates know no developer
    if role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": message.content}
    out: dict[str, Any] = {"role": role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {
                "id": call.get("id", ""),
                "type": "function",
                "function": {"name": call.get("name", ""), "arguments": call.get("arguments", "") or "{}"},
            }
            for call in message.tool_calls
        ]
    return out


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    """Responses' ``tool_choice`` in the chat shape: the strings are the same; a named function nests."""
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        return {"type": "function", "function": {"name": name}}
    return None  # allowed_tools and hosted-tool choices have no chat form: the upstream decides


def _response_format(text_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not text_format:
        return None
    kind = text_format.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema: dict[str, Any] = {
            "name": text_format.get("name") or "response",
            "schema": text_format.get("schema"),
        }
        if text_format.get("strict") is not None:
            schema["strict"] = text_format["strict"]
        if text_format.get("description"):
            schema["description"] = text_format["description"]
        return {"type": "json_schema", "json_schema": schema}
    return None


# --- the backend ----------------------------------------------------------------------------------------------


class ChatBackend(UpstreamBackend):
    """Generation from a Chat Completions upstream.

    ``upstream``: the server (``http://localhost:8000``), its API root (``https://openrouter.ai/api/v1``) or
    the endpoint URL. ``api_key``: sent as a bearer token. ``model``: the model when a request names none (and
    the first of ``models()``); ``models``: more names to list. ``connect_timeout``/``read_timeout``: seconds
    to connect, and the longest silence allowed inside a stream. ``max_tokens_field``: ``max_tokens``
    (vLLM, SGLang, llama.cpp, Ollama, OpenRouter) or ``max_completion_tokens`` (OpenAI's o-series).
    ``include_usage``: ask for the usage chunk (``stream_options``). ``headers``/``extra_body``: added to every
    upstream request (e.g. OpenRouter's ``HTTP-Referer``, vLLM's ``chat_template_kwargs``). ``client``: an
    ``HTTPClient`` (``backends._http``) to use instead of an own one (and not close).
    """

    name = "chat"
    pushes = True  # ``batches(request, push=True)`` (the run driver takes the reads in ``data_received``)

    def __init__(
        self,
        upstream: str,
        api_key: str | None = None,
        *,
        model: str | None = None,
        models: Sequence[str] = (),
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        include_usage: bool = True,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        client: HTTPClient | None = None,
    ) -> None:
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                f"max_tokens_field must be max_tokens or max_completion_tokens, not {max_tokens_field!r}"
            )
        super().__init__(
            upstream,
            "chat/completions",
            api_key,
            model=model,
            models=models,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            headers=headers,
            extra_body=extra_body,
            client=client,
        )
        self.max_tokens_field = max_tokens_field
        self.include_usage = include_usage

    def describe(self) -> str:
        model = self.model or "the upstream's own model (none configured)"
        return (
            f"chat: Chat Completions upstream {self.upstream.url}, model {model}; text, reasoning "
            "(reasoning_content / reasoning), function calls and usage; no hosted tools, no input images"
        )

    def request_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The streamed ``/chat/completions`` body for ``request`` (``chat_request``, with this backend's model
        and settings)."""
        return chat_request(
            request,
            model=self.model_for(request),
            include_usage=self.include_usage,
            max_tokens_field=self.max_tokens_field,
            extra_body=self.extra_body,
        )

    async def batches(self, request: GenerationRequest, *, push: bool = False) -> AsyncIterator[list[Step] | Push]:
        """The upstream's chunks as steps, one list per read of the body that made any (the run takes them in one
        turn), then the usage. Read in this one generator, which takes the body from the answer itself
        (``take``/``wait``): a read's frames framed together, no generator per frame and no coroutine per read
        between the socket and the run. With ``push``, whenever nothing of the body is buffered it yields a
        ``Push`` instead of waiting: the consumer takes the reads that come next in the connection's
        ``data_received`` (the same ``step``), until the body's end, ``[DONE]``, an error in the stream or a
        chunk that is not JSON (those come back here, the steps before them first, and end as if read here)."""
        sent = self._sent_ahead(request)
        body = None if sent is not None else self.request_body(request)
        mapper = ChunkMapper()
        async with self.upstream.stream(body, sent=sent) as stream:
            if stream.is_json:
                yield _completion_steps(stream, mapper, await stream.read())
            else:
                done = False
                failure: BackendError | None = None
                framer = SSEDecoder(mode="sse")
                columns, feed = framer.feed_columns, mapper.feed
                take, wait = stream.response.take, stream.response.wait

                def step(chunk: bytes) -> tuple[list[Step], bool]:
                    """A read's steps (b"": the body's end), and whether it ended the stream (``[DONE]``) or
                    failed (``failure``): then the steps before are the response's all the same."""
                    nonlocal done, failure
                    payloads = columns(chunk)[1] if chunk else [frame.data for frame in framer.close()]
                    steps: list[Step] = []
                    for data in payloads:
                        stream.frames_seen += 1
                        if data == DONE:
                            done = True
                            break
                        if not data.strip():
                            continue
                        try:
                            steps += feed(data)
                        except ValueError as exc:
                            failure = stream.malformed(data, str(exc))
                            break
                        except UpstreamError as exc:
                            failure = BackendError(
                                f"upstream {stream.url} reported an error mid-stream after "
                                f"{stream.frames_seen} chunks: {exc}",
                                code="upstream_error",
                            )
                            break
                    return steps, done or failure is not None

                pusher = Push(stream.response, step) if push and stream.response.plain else None
                try:
                    while not done:
                        chunk = take()
                        if chunk is None:
                            if pusher is None:
                                await wait()
                                continue
                            yield pusher
                            taken = pusher.taken()
                            if taken is None:
                                continue
                            steps, chunk = taken, b"pushed"  # (a read, not the body's end)
                        else:
                            steps = step(chunk)[0]
                        if steps:
                            yield steps
                        if failure is not None:
                            raise failure
                        if not chunk:
                            break
                except SSEError as exc:
                    raise BackendError(f"upstream {stream.url} sent an unreadable event stream: {exc}") from None
                except OSError as exc:
                    raise stream.transport_error(exc) from None
                if not done and mapper.finish is None:
                    raise stream.dropped()
                if mapper.finish is None:
                    yield [Finish("stop")]  # [DONE] without a finish_reason: the upstream says it is done
        if mapper.usage is not None:
            yield [mapper.usage]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        """The upstream's chunks as steps, one by one (``batches``, flattened)."""
        async for steps in self.batches(request):
            assert not isinstance(steps, Push)  # (only with ``push``)
            for step in steps:
                yield step


def _completion_steps(stream: UpstreamStream, mapper: ChunkMapper, data: bytes) -> list[Step]:
    try:
        steps = mapper.feed_completion(data)
    except (ValueError, msgspec.DecodeError) as exc:
        raise stream.malformed(data, str(exc), what="JSON answer") from None
    except UpstreamError as exc:
        raise BackendError(
            f"upstream {stream.url} answered with an error: {exc}", code="upstream_error"
        ) from None
    if mapper.finish is None:
        steps.append(Finish("stop"))
    return steps
