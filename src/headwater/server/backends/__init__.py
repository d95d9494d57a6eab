"""Backends: where generation steps come from. ``create_backend(name, **options)`` builds one by name; a backend's
module is imported only when it is chosen, so llama.cpp is loaded only for "local".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .base import (
    Backend,
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

__all__ = [
    "BACKEND_NAMES",
    "UPSTREAM_BACKENDS",
    "Backend",
    "BackendError",
    "ChatMessage",
    "Finish",
    "GenerationRequest",
    "ReasoningDelta",
    "Step",
    "TextDelta",
    "ToolCallDelta",
    "UsageStep",
    "create_backend",
]


def _local() -> Callable[..., Backend]:
    """``LocalBackend(model_path=, n_ctx=, slots=, n_threads=, default_max_output_tokens=, prompt_cache_bytes=,
    seed=)``."""
    from .local import LocalBackend

    return LocalBackend


def _scripted() -> Callable[..., Backend]:
    """``script=`` a path (``.jsonl`` capture or JSON list of steps), a list of steps or a function of the
    request; other options go to ``ScriptedBackend`` (``delay=``, ``models=``, ``strict_models=``)."""
    from .scripted import ScriptedBackend

    def build(*, script: Any, **options: Any) -> Backend:
        if isinstance(script, str) or hasattr(script, "__fspath__"):
            return ScriptedBackend.from_file(script, **options)
        return ScriptedBackend(script, **options)

    build.__signature__ = inspect.signature(ScriptedBackend)  # type: ignore[attr-defined]
    return build


def _chat() -> Callable[..., Backend]:
    """``ChatBackend(upstream, api_key=, model=, models=, connect_timeout=, read_timeout=, ...)``: any Chat
    Completions server (vLLM, Ollama, llama.cpp's server, LM Studio, OpenRouter, OpenAI)."""
    from .chat import ChatBackend

    return ChatBackend


def _responses() -> Callable[..., Backend]:
    """``ResponsesBackend(upstream, api_key=, model=, models=, ...)``: a Responses upstream (OpenAI, OpenRouter,
    another Headwater), whose events are relayed, not re-generated."""
    from .responses import ResponsesBackend

    return ResponsesBackend


# name -> a function returning the backend's constructor.
_BACKENDS: dict[str, Callable[[], Callable[..., Backend]]] = {
    "local": _local,
    "scripted": _scripted,
    "chat": _chat,
    "responses": _responses,
}
UPSTREAM_BACKENDS = frozenset({"chat", "responses"})
BACKEND_NAMES = tuple(_BACKENDS)


def create_backend(name: str, **options: Any) -> Backend:
    """The backend called ``name``, built with ``options``. An unknown name or option is a ``ValueError``
    that lists what is known; trouble the backend itself can name (a missing model file) is a ``BackendError``."""
    loader = _BACKENDS.get(name)
    if loader is None:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKEND_NAMES)}")
    constructor = loader()
    signature = inspect.signature(constructor)
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ValueError(f"backend {name!r}: {exc}") from exc
    for key, value in options.items():
        problem = _type_problem(signature.parameters[key].annotation, value)
        if problem is not None:
            raise ValueError(f"backend {name!r}: option {key}={value!r}: {problem}")
    return constructor(**options)


# The plain types an option's annotation may name (as written, ``from __future__ import annotations``).
_PLAIN: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _type_problem(annotation: object, value: object) -> str | None:
    """Why ``value`` does not fit a parameter annotated with plain types (``int``, ``float | None``, ...); None
    when it fits or the annotation names other types (those are the backend's to check)."""
    if not isinstance(annotation, str):
        return None
    names = [part.strip() for part in annotation.split("|")]
    if not all(n in _PLAIN or n == "None" for n in names):
        return None
    if value is None and "None" in names:
        return None
    for n in names:
        if n in _PLAIN and isinstance(value, _PLAIN[n]) and not (isinstance(value, bool) and n != "bool"):
            return None
    expected = " or ".join(_NAMES.get(n, "null") for n in names)
    return f"expected {expected}"
