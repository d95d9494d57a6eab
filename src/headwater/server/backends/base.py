"""What a backend is: something that turns a normalized request into *generation steps*.

Backends never build protocol events: they yield steps (text, reasoning, tool-call deltas, usage, finish) and the
server's ``ResponseWriter`` turns steps into a conformant event stream. A backend raises ``BackendError`` for
trouble it can name (upstream HTTP errors, time-outs); the server turns it into ``error`` + ``response.failed``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard, Union

if TYPE_CHECKING:
    from headwater.protocol.events import Event
    from headwater.protocol.relay import ResponseRelay
    from headwater.protocol.writer import ResponseWriter

__all__ = [
    "Backend",
    "BackendError",
    "ChatMessage",
    "Finish",
    "GenerationRequest",
    "PassthroughBackend",
    "ReasoningDelta",
    "Step",
    "TextDelta",
    "ToolCallDelta",
    "UsageStep",
    "is_passthrough",
    "sampling_defaults",
    "served_model",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a function call. ``index`` tells parallel calls apart; ``call_id``/``name`` come with the
    first piece of a call (later pieces may repeat or omit them); ``arguments`` is the next slice of JSON text."""

    index: int
    arguments: str = ""
    call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class UsageStep:
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = None
    # What else the upstream's usage said, in Responses usage's shape (``input_tokens_details`` /
    # ``output_tokens_details`` entries, top-level fields): it survives into the response's usage as sent.
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of generation. ``length`` and ``content_filter`` make the response ``incomplete``."""

    reason: Literal["stop", "length", "content_filter", "tool_calls"] = "stop"


Step = Union[TextDelta, ReasoningDelta, ToolCallDelta, UsageStep, Finish]


@dataclass(slots=True)
class ChatMessage:
    """One turn of the normalized conversation a backend sees (the chat shape every backend understands).

    ``role`` is system/developer/user/assistant/tool. Assistant turns may carry ``tool_calls``
    (``[{"id", "name", "arguments"}]``); tool turns carry ``tool_call_id``.
    """

    role: str
    content: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    tool_call_id: str | None = None


@dataclass(slots=True)
class GenerationRequest:
    model: str
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] = field(
        default_factory=list
    )  # function tools: {"name","description","parameters"}
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text_format: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    stop: list[str] = field(default_factory=list)
    # text.verbosity: a hint. Upstreams that take it get it; backends without the notion ignore it (the
    # response echoes it either way; docs/request-policy.md).
    verbosity: str | None = None


class BackendError(Exception):
    """Trouble a backend can name. ``status`` is the HTTP status the server answers with before streaming
    starts (502 upstream error, 504 time-out); mid-stream it becomes ``error`` + ``response.failed``. ``param``
    names the request field at fault, when one is (``model`` for ``model_not_found``)."""

    def __init__(
        self, message: str, *, code: str = "server_error", status: int = 502, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.param = param


class Backend(Protocol):
    """A source of generation steps. ``generate`` must stop promptly when its iterator is closed
    (``aclose()``): that is how a client disconnect or a cancel stops paid compute. A backend that can run only
    so many generations at once says how many in an optional ``slots`` attribute (an int): admission control
    lets that many responses run and queues the rest (``server.admission``). A backend with weights to load
    may have an optional ``async def preload()`` that loads them ahead of the first request (``headwater serve``
    calls it once it listens; a request arriving meanwhile waits for the same load). A backend that reads its
    steps in chunks (an upstream's body) may also have ``batches(request)``: the same steps (a passthrough
    backend's: its events), one list per chunk, which the run takes in one turn and logs as one batch."""

    name: str

    def models(self) -> list[str]: ...

    def describe(self) -> str:
        """One line for start-up: what runs, and what it can and cannot do."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Step]: ...

    async def aclose(self) -> None: ...


class PassthroughBackend(Backend, Protocol):
    """A backend whose upstream already speaks the protocol (a Responses upstream). Its ``events`` are the
    upstream's own events; the run driver feeds them through ``relay(writer)``, a ``ResponseWriter`` that
    renumbers and repairs them, instead of turning steps into events."""

    passthrough: Literal[True]

    def relay(self, writer: ResponseWriter) -> ResponseRelay: ...

    def events(self, request: GenerationRequest) -> AsyncIterator[Event]: ...

    def batches(self, request: GenerationRequest) -> AsyncIterator[list[Event]]:
        """The same events, one list per chunk of the upstream's body (what the run reads)."""
        ...


def is_passthrough(backend: Backend) -> TypeGuard[PassthroughBackend]:
    return getattr(backend, "passthrough", False) is True


def served_model(backend: Backend, requested: str | None) -> str:
    """The model a request runs on, as its response reports it: the one named (the backend's first when none
    is), with an alias (``local``) resolved to the real name through the backend's ``aliases``, if it has any."""
    name = requested or backend.models()[0]
    aliases: dict[str, str] = getattr(backend, "aliases", {})
    return aliases.get(name, name)


def sampling_defaults(backend: Backend) -> dict[str, Any]:
    """What a backend uses for the sampling fields a request leaves unset, for the response to report:
    ``default_temperature``/``default_top_p`` (1.0 unless the backend says) and ``default_max_output_tokens``
    (the cap it applies, None for none)."""
    return {
        "default_temperature": getattr(backend, "default_temperature", 1.0),
        "default_top_p": getattr(backend, "default_top_p", 1.0),
        "default_max_output_tokens": getattr(backend, "default_max_output_tokens", None),
    }
