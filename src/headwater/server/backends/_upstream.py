"""The HTTP plumbing the upstream backends share: endpoint URLs, one HTTP client (``_http.HTTPClient``) with its
time-outs, the POST that opens a stream, and its body chunk by chunk (the backends frame it with ``protocol.sse``).

The client is Headwater's own (httptools, keep-alive, no pool caps), not a general one, by measurement
(bench/bench_gateway.py, "upstream HTTP clients"): httpx/httpcore spent several times aiohttp's CPU per chunk, and
aiohttp's per-chunk and per-request layers were still a large part of what a relayed event and a create cost.
Every open stream holds its connection; idle ones are kept alive. A stream whose consumer stopped at its end
(the terminal event, ``[DONE]``) gives its connection back to the pool once the body's last bytes have come (the
chunked body's end often comes in a packet of its own); a stream left in the middle is closed, so that the
upstream sees the disconnect and stops generating.

Every transport trouble becomes a ``BackendError`` naming the upstream: an error status (with the upstream's
own message), a refused connection, a time-out (504), a connection dropped mid-stream (502). No retries: a
stream that has started cannot be replayed, and a refused request is the caller's to retry. (The client's one
exception: a kept connection that the upstream closed as it was reused, before any byte of an answer, is
replaced by a fresh one for that request; ``_http``.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ._http import Answer, ConnectTimeout, Endpoint, HTTPClient, Posted
from .base import BackendError, GenerationRequest

__all__ = [
    "AHEAD_SECONDS",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MODEL",
    "DEFAULT_READ_TIMEOUT",
    "HTTPClient",
    "Push",
    "Upstream",
    "UpstreamBackend",
    "UpstreamStream",
    "endpoint_url",
    "error_from_status",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
# Between two reads of the stream (not the whole response): a long prompt can take a while to its first token.
DEFAULT_READ_TIMEOUT = 300.0
_ERROR_BODY_LIMIT = 64 * 1024
# What a stream whose consumer has seen its end may still send before the connection goes back to the pool (the
# chunked body's last chunk, a trailing ``[DONE]``); beyond either bound the connection is closed instead.
_DRAIN_BYTES = 64 * 1024
_DRAIN_SECONDS = 2.0
_USER_AGENT = "headwater"

# Upstream statuses that say the *request* was wrong (and so are the client's to see as they are), when the
# upstream explained itself in JSON; a bare 404 from a wrong URL is Headwater's misconfiguration: 502.
_CLIENT_STATUSES = frozenset({400, 404, 409, 413, 422})
_STATUS_CODES = {
    400: "invalid_request",
    404: "not_found",
    409: "conflict",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limit_exceeded",
}


def endpoint_url(base: str, path: str) -> str:
    """The URL to POST to. ``base`` may be the server (``http://host:8000``: ``/v1`` is added), its API root
    (``http://host:8000/v1``, ``https://openrouter.ai/api/v1``) or the endpoint itself; ``path`` is the
    endpoint below the API root (``chat/completions`` or ``responses``)."""
    url = base.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"upstream URL {base!r} is not an http:// or https:// URL")
    if url.endswith("/" + path):
        return url
    if not parts.path:
        url += "/v1"
    return f"{url}/{path}"


def error_from_status(url: str, status: int, body: bytes) -> BackendError:
    """The ``BackendError`` for an upstream's error answer: its message, and the status the client gets."""
    message, code, explained = _error_details(body)
    text = f"upstream {url} answered {status}: {message or '(no message)'}"
    if status in _CLIENT_STATUSES and explained:
        return BackendError(text, code=code or _STATUS_CODES[status], status=status, param=_error_param(body))
    if status == 429:
        return BackendError(text, code=code or "rate_limit_exceeded", status=429)
    if status in (408, 504):
        return BackendError(text, code="upstream_timeout", status=504)
    if status in (401, 403):
        return BackendError(text, code="upstream_auth_failed", status=502)
    return BackendError(text, code="upstream_error", status=502)


def _error_details(body: bytes) -> tuple[str, str | None, bool]:
    """(message, code, whether the body was a JSON error) from the error shapes servers use: OpenAI / vLLM /
    llama.cpp ``{"error": {"message", "code"}}``, Ollama ``{"error": "..."}``, old vLLM ``{"message"}``,
    FastAPI ``{"detail"}``; anything else is shown as text."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error", obj)
        if isinstance(error, str):
            return error, None, True
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or obj.get("detail")
            if message is not None:
                code = error.get("code")
                if not isinstance(code, str) or not code:
                    code = error.get("type") if isinstance(error.get("type"), str) else None
                return _short(message if isinstance(message, str) else json.dumps(message)), code, True
    text = body.decode("utf-8", "replace")
    return _short(" ".join(text.split())), None, False


def _error_param(body: bytes) -> str | None:
    """The request field an upstream's JSON error names (``{"error": {"param": "text.verbosity"}}``)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    error = obj.get("error") if isinstance(obj, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) and param else None


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Upstream:
    """One upstream endpoint: where to POST, with which key and headers, through which client.

    ``client``: an ``HTTPClient`` to use (and not close: several upstreams may share one); otherwise one is made
    on first use (in the running loop) and closed by ``aclose``. ``connect_timeout``: seconds to connect;
    ``read_timeout``: seconds the upstream may send nothing (for the answer's head, then between two reads of
    the stream).
    """

    def __init__(
        self,
        base: str,
        path: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        client: HTTPClient | None = None,
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("connect_timeout and read_timeout must be positive (seconds)")
        self.url = endpoint_url(base, path)
        self._parts = urlsplit(self.url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "accept-encoding": "identity",
            "user-agent": _USER_AGENT,
        }
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.headers.update({k.lower(): v for k, v in (headers or {}).items()})
        for name, value in self.headers.items():
            if not name or any(c in name for c in ":\r\n ") or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r}: a name without ':' or spaces, and no line breaks, please")
        self._header_items = list(self.headers.items())
        self._endpoint = Endpoint(self._parts, self._header_items)  # (every request's head, made once)
        self._owns_client = client is None
        self.client = client
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the own client
        self._draining: set[asyncio.Task[None]] = set()

    def _client(self) -> HTTPClient:
        loop = asyncio.get_running_loop()
        if self._owns_client and (self.client is None or self.client.closed or self._loop is not loop):
            # Connections belong to the loop they were made in: a backend used from another loop (a test
            # harness, a server restarted in-process) gets a client of that loop's own.
            self._close_elsewhere()
            self.client = HTTPClient()
            self._loop = loop
        assert self.client is not None
        return self.client

    async def aclose(self) -> None:
        for task in list(self._draining):
            task.cancel()
        if not self._owns_client or self.client is None:
            return
        if self._loop is asyncio.get_running_loop():
            self.client.close()
            self.client = None
        else:
            self._close_elsewhere()

    def _close_elsewhere(self) -> None:
        """Close an own client from outside its loop: on that loop if it still runs (else it died with it)."""
        client, loop = self.client, self._loop
        self.client = self._loop = None
        if client is not None and not client.closed and loop is not None and loop.is_running():
            loop.call_soon_threadsafe(client.close)

    @asynccontextmanager
    async def stream(
        self,
        body: Mapping[str, Any] | None,
        *,
        url: str | None = None,
        sent: Posted | Awaitable[Answer] | None = None,
    ) -> AsyncIterator[UpstreamStream]:
        """POST ``body`` (to the endpoint, or to ``url``) and hold the answer open: an ``UpstreamStream`` when
        the status is 2xx; a ``BackendError`` otherwise (or when the upstream cannot be reached or does not
        answer in time). ``sent``: a POST made earlier (``post_now``, or the answer of a ``post``), instead of
        posting ``body``."""
        if isinstance(sent, Posted):
            response = await self.answer(sent)
        elif sent is not None:
            response = await sent
        else:
            assert body is not None
            response = await self.post(body, url=url)
        stream = UpstreamStream(self, response)
        ended = False
        try:
            if response.status >= 400:
                raise error_from_status(url or self.url, response.status, await self._error_body(stream))
            yield stream
            ended = True
        finally:
            # A body read to its end gives its connection back to the pool; one whose consumer stopped at the
            # stream's end is read to its end first, in the background; one left in the middle (an error, the
            # client left, a cancel) is closed, so that the upstream sees the disconnect and stops.
            if response.at_eof():
                response.release()
            elif ended:
                task = asyncio.get_running_loop().create_task(_drain(response))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
            else:
                response.close()

    async def post(self, body: Mapping[str, Any], *, url: str | None = None) -> Answer:
        """POST ``body`` (to the endpoint, or to ``url``): the answer once its status and headers have come
        (its body unread); a ``BackendError`` when the upstream cannot be reached or does not answer in time."""
        return await self.answer(self.post_now(body, url=url))

    def post_now(self, body: Mapping[str, Any], *, url: str | None = None) -> Posted:
        """The POST of ``body``, its request written now when a kept connection is idle (``HTTPClient.post_now``);
        ``answer`` it later."""
        return self._client().send_now(
            self._endpoint if url is None else Endpoint(url, self._header_items),
            msgspec.json.encode(body),
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )

    async def answer(self, posted: Posted) -> Answer:
        """The answer to ``posted`` once its status and headers have come; transport trouble as ``BackendError``
        (the upstream cannot be reached, or does not answer in time)."""
        try:
            return await posted
        except ConnectTimeout:
            raise BackendError(
                f"could not connect to upstream {self.url} within {self.connect_timeout:g} s (connect timeout)",
                code="upstream_timeout",
                status=504,
            ) from None
        except TimeoutError:
            raise BackendError(
                f"upstream {self.url} sent no answer within {self.read_timeout:g} s (read timeout)",
                code="upstream_timeout",
                status=504,
            ) from None
        except OSError as exc:
            raise BackendError(
                f"could not reach upstream {self.url}: {_describe(exc)}",
                code="upstream_unreachable",
                status=502,
            ) from None

    async def _error_body(self, stream: UpstreamStream) -> bytes:
        body = bytearray()
        try:
            while chunk := await stream.response.read_chunk():
                body += chunk
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
        except OSError:  # (a time-out or a dropped connection: the status says enough)
            pass
        return bytes(body)


class UpstreamStream:
    """The body of one upstream answer: ``read_chunk()`` (transport trouble becomes ``BackendError``), ``read()``
    for a JSON answer; a backend's read loop takes ``response.take()``/``response.wait()`` itself (no coroutine
    per chunk) and turns an ``OSError`` into ``transport_error(exc)``. The backends frame and decode the chunks
    themselves, counting the frames in ``frames_seen``, which error messages quote."""

    def __init__(self, upstream: Upstream, response: Answer) -> None:
        self.upstream = upstream
        self.response = response
        self.frames_seen = 0

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def is_json(self) -> bool:
        """Whether the upstream answered with a JSON document rather than an event stream."""
        kind = self.response.headers.get("content-type", "")
        return kind.split(";", 1)[0].strip().lower() == "application/json"

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole body (for a JSON answer)."""
        body = bytearray()
        while chunk := await self.read_chunk():
            body += chunk
            if len(body) > limit:
                raise BackendError(f"upstream {self.url} sent a JSON answer larger than {limit} bytes")
        return bytes(body)

    def dropped(self, what: str = "chunks") -> BackendError:
        """The error for a stream that ended before its end (no ``[DONE]``, no finish, no terminal event)."""
        return BackendError(
            f"upstream {self.url} closed the connection mid-stream after {self.frames_seen} {what}",
            code="upstream_disconnected",
        )

    def malformed(self, payload: bytes, problem: str, what: str = "chunk") -> BackendError:
        shown = payload[:200].decode("utf-8", "replace") + ("..." if len(payload) > 200 else "")
        return BackendError(
            f"upstream {self.url} sent a malformed {what} (#{self.frames_seen}): {problem}: {shown}",
            code="upstream_malformed",
        )

    async def read_chunk(self) -> bytes:
        """Whatever of the body has arrived, in one piece (no re-chunking); b"" at its end. Trouble reading is
        a ``BackendError`` (``transport_error``)."""
        try:
            return await self.response.read_chunk()
        except Exception as exc:
            raise self.transport_error(exc) from None

    def transport_error(self, exc: Exception) -> Exception:
        """The ``BackendError`` for trouble reading the body (a time-out, a dropped connection); anything else
        as it is."""
        if isinstance(exc, TimeoutError):
            return BackendError(
                f"upstream {self.url} sent nothing for {self.upstream.read_timeout:g} s after "
                f"{self.frames_seen} chunks (read timeout)",
                code="upstream_timeout",
                status=504,
            )
        if isinstance(exc, OSError):
            return BackendError(
                f"upstream {self.url} closed the connection mid-stream after {self.frames_seen} chunks "
                f"({_describe(exc)})",
                code="upstream_disconnected",
            )
        return exc


class Push:
    """What a backend's ``batches(request, push=True)`` yields when nothing of the body has come: the consumer
    may take the next chunks in the connection's own ``data_received``, without a wake-up of its task per chunk.
    ``start(deliver)`` listens (``Answer.listen``): each read of the body is framed and decoded (``step``) and
    its batch handed to ``deliver`` at once, in the read's call (upstream socket to the consumer's log and
    followers in one synchronous call). The future it returns is done when the generator must go on itself: the
    body ended or failed (a drop, a time-out), a read made an error (``error``, which the generator raises,
    mapped as its own reads' are), a batch the generator must look at (``step`` said so: a Responses upstream's
    terminal or ``error`` event, a Chat Completions upstream's ``[DONE]`` or error; held in ``pending``), or
    ``deliver`` refused (False: the consumer stops or failed; that batch is dropped). The consumer then calls
    ``stop()`` and resumes the generator, which goes on reading.

    Ordering: the batches are delivered in the order of the body, and a pending one is the generator's next.
    Cancel: the consumer's task waits on the future; cancelling it, then ``stop()`` and closing the generator,
    leaves no listener behind (the connection is closed, as for any stream left in the middle). Backpressure is
    what it is with the generator: the consumer takes everything as it comes."""

    __slots__ = ("_answer", "_deliver", "_done", "_step", "error", "pending")

    def __init__(self, answer: Answer, step: Callable[[bytes], tuple[list[Any], bool]]) -> None:
        self._answer = answer
        # A read's chunk -> (its batch, whether the generator must see it rather than ``deliver``).
        self._step = step
        self._deliver: Callable[[list[Any]], bool] | None = None
        self._done: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.pending: list[Any] | None = None

    def start(self, deliver: Callable[[list[Any]], bool]) -> asyncio.Future[None]:
        self.error = self.pending = None
        self._deliver = deliver
        done = self._done = asyncio.get_running_loop().create_future()
        self._answer.listen(self._on_data)
        if self._answer.pending():  # (came meanwhile)
            self._on_data()
        return done

    def stop(self) -> None:
        self._answer.listen(None)
        self._deliver = None

    def taken(self) -> list[Any] | None:
        """For the generator, once the consumer's turn is over: raises the error a read made, else hands over
        the batch it must look at (``pending``; None: nothing, it reads on)."""
        if self.error is not None:
            raise self.error
        pending, self.pending = self.pending, None
        return pending

    def _on_data(self) -> None:
        answer = self._answer
        deliver = self._deliver
        connection = answer._connection
        if deliver is None:
            return
        # The body's end and its errors are the generator's own to handle (``take`` raises them, mapped).
        while connection.chunks and not connection.complete and connection.error is None:
            chunk = answer.take()
            if not chunk:  # (a plain answer's chunks are never empty: the generator decides)
                self._finish()
                return
            try:
                batch, special = self._step(chunk)
            except Exception as exc:
                self.error = exc
                self._finish()
                return
            if special:
                self.pending = batch
                self._finish()
                return
            if batch and not deliver(batch):
                self._finish()
                return
        if connection.complete or connection.error is not None:
            self._finish()

    def _finish(self) -> None:
        self.stop()
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)


async def _drain(response: Answer) -> None:
    """Read what is left of a finished stream's body (at most ``_DRAIN_BYTES``, ``_DRAIN_SECONDS``), then give
    the connection back to the pool; close it if the body does not end within those bounds."""
    try:
        size = 0
        async with asyncio.timeout(_DRAIN_SECONDS):
            while size <= _DRAIN_BYTES and not response.at_eof():
                chunk = await response.read_chunk()
                if not chunk:
                    break
                size += len(chunk)
    except OSError:  # (TimeoutError included)
        pass
    finally:
        if response.at_eof():
            response.release()
        else:
            response.close()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# The model name a request gets when it names none and the backend was given none: the upstream decides.
DEFAULT_MODEL = "default"


class UpstreamBackend:
    """What the two upstream backends share: the HTTP side (``Upstream``), the model names, ``extra_body``."""

    def __init__(
        self,
        upstream: str,
        path: str,
        api_key: str | None,
        *,
        model: str | None,
        models: Sequence[str],
        connect_timeout: float,
        read_timeout: float,
        headers: Mapping[str, str] | None,
        extra_body: Mapping[str, Any] | None,
        client: HTTPClient | None,
    ) -> None:
        self.upstream = Upstream(
            upstream,
            path,
            api_key=api_key,
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            client=client,
        )
        self.model = model
        self._models = list(dict.fromkeys([*([model] if model else []), *models])) or [DEFAULT_MODEL]
        self.extra_body = dict(extra_body or {})
        # Requests sent ahead (``send_ahead``), by the id of the GenerationRequest they were sent for: that
        # request (held, so that its id stays its own), the POST (or the task making its connection), the timer
        # that closes it if nobody reads it.
        self._ahead: dict[int, tuple[GenerationRequest, Posted | asyncio.Task[Answer], asyncio.TimerHandle]]
        self._ahead = {}

    def models(self) -> list[str]:
        return list(self._models)

    def request_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body POSTed upstream for ``request``."""
        raise NotImplementedError

    def model_for(self, request: GenerationRequest) -> str | None:
        """The model to name upstream for ``request``: its own, else this backend's; None (let the upstream
        choose) when neither is set and the request names only the placeholder ``DEFAULT_MODEL``."""
        model: str | None = request.model or self.model
        if model == DEFAULT_MODEL and self.model is None:
            return None
        return model

    def send_ahead(self, request: GenerationRequest, *, connect: bool = True) -> None:
        """POST ``request`` upstream now, before the response is stored and its run has started: the run's read
        of this same request (``batches``/``generate``/``events``) takes that answer, so the upstream's time to
        its first event overlaps the rest of the create path. On a kept connection that is idle the request is
        written here, in this call (no task, no turn of the loop); without one, ``connect``: a task makes the
        connection and writes it meanwhile (worth it when storing the response may wait); else the run makes
        it when it reads the answer, as if nothing had been sent ahead. An answer nobody takes within
        ``AHEAD_SECONDS`` (the run was stopped before it generated) is closed; ``forget_ahead`` closes it at
        once."""
        loop = asyncio.get_running_loop()
        self.forget_ahead(request)
        try:
            posted = self.upstream.post_now(self.request_body(request))
        except Exception:  # (a closed client, say): the run's own POST meets it, where it is reported
            return
        ahead: Posted | asyncio.Task[Answer] = posted
        if connect and not posted.written:
            ahead = loop.create_task(self.upstream.answer(posted))
        timer = loop.call_later(AHEAD_SECONDS, self._drop_ahead, id(request))
        self._ahead[id(request)] = (request, ahead, timer)

    def forget_ahead(self, request: GenerationRequest) -> None:
        """Nobody will read what ``send_ahead(request)`` sent (the create failed): close it."""
        entry = self._ahead.get(id(request))
        if entry is not None and entry[0] is request:
            self._drop_ahead(id(request))

    def _sent_ahead(self, request: GenerationRequest) -> Posted | asyncio.Task[Answer] | None:
        """What ``send_ahead`` sent for ``request``, taken (None: it was not sent ahead)."""
        entry = self._ahead.get(id(request))
        if entry is None or entry[0] is not request:
            return None
        del self._ahead[id(request)]
        entry[2].cancel()
        return entry[1]

    def _drop_ahead(self, key: int) -> None:
        entry = self._ahead.pop(key, None)
        if entry is None:
            return
        _, ahead, timer = entry
        timer.cancel()
        if isinstance(ahead, Posted):
            ahead.close()
            return
        ahead.add_done_callback(_close_unread)
        ahead.cancel()  # (nothing, if the answer has come: the callback closes it)

    async def aclose(self) -> None:
        for key in list(self._ahead):
            self._drop_ahead(key)
        await self.upstream.aclose()


# How long an answer sent ahead waits for the run that reads it.
AHEAD_SECONDS = 30.0


def _close_unread(task: asyncio.Task[Answer]) -> None:
    """An answer sent ahead that nobody will read: closed (the upstream sees the disconnect and stops)."""
    if task.cancelled():
        return
    if task.exception() is None:  # (an error is read here, so that nobody is told it was never retrieved)
        task.result().close()
