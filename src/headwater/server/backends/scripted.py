"""ScriptedBackend: a deterministic TEST DOUBLE that plays a script of generation steps (from a list, a function of
the request, a JSON file or a recorded Responses capture). Never the default backend: tests and demos choose it.
It records every request and how each stream ended, which is what tests of disconnects and cancels look at.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

from headwater.protocol.codec import decode_event_obj
from headwater.protocol.events import TERMINAL_EVENT_TYPES

from ._events import StepsFromEvents
from .base import (
    BackendError,
    Finish,
    GenerationRequest,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)

__all__ = [
    "Fail",
    "Pause",
    "Script",
    "ScriptItem",
    "ScriptRun",
    "ScriptedBackend",
    "item_from_json",
    "load_script",
    "steps_from_capture",
]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait this long before the next item (a slow backend)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise ``error`` at this point of the stream (a backend failing mid-stream)."""

    error: BackendError


ScriptItem: TypeAlias = Step | Pause | Fail
Script: TypeAlias = Sequence[ScriptItem] | Callable[[GenerationRequest], Sequence[ScriptItem]]

_FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls")

PACE_TICK = 0.001  # paced steps due within one such slice share one timer (``_Pacer``)


class _Pacer:
    """The paced streams' timers of one event loop: the steps due in one ``PACE_TICK`` slice share one timer.

    Each stream keeps its own schedule (its own start, its own deadlines); a step waits for the end of the slice
    its deadline falls in, so it is at most one tick late, never early, and the lateness does not add up. With
    hundreds of streams a tick has many steps due: one timer, not one per step (a timer per step was 4-6 % of
    a worker's CPU at 1,000 streams, bench/README.md)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slices: dict[int, list[asyncio.Future[None]]] = {}

    def until(self, due: float) -> asyncio.Future[None]:
        """A future resolved once ``due`` (loop time) has passed, at the end of its slice."""
        key = -int(-due // PACE_TICK)  # (the slice's end, in ticks: rounded up)
        waiters = self._slices.get(key)
        if waiters is None:
            waiters = self._slices[key] = []
            self._loop.call_at(key * PACE_TICK, self._due, key)
        waiter = self._loop.create_future()
        waiters.append(waiter)
        return waiter

    def _due(self, key: int) -> None:
        for waiter in self._slices.pop(key):
            if not waiter.done():  # (its stream was cancelled meanwhile)
                waiter.set_result(None)


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pacer] = weakref.WeakKeyDictionary()


def _pacer(loop: asyncio.AbstractEventLoop) -> _Pacer:
    pacer = _pacers.get(loop)
    if pacer is None:
        pacer = _pacers[loop] = _Pacer(loop)
    return pacer
FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


@dataclass(slots=True)
class ScriptRun:
    """What happened to one ``generate`` call."""

    request: GenerationRequest
    steps_yielded: int = 0
    completed: bool = False  # the script played to its end
    closed_early: bool = False  # the consumer closed the iterator (aclose) or its task was cancelled first
    failed: BackendError | None = None


class ScriptedBackend:
    """Plays ``script`` on every ``generate`` call: a list of steps (with ``Pause`` and ``Fail`` items), or a
    function ``request -> list`` so a test can echo what the backend saw.

    ``delay`` paces the steps: step n (from 1) is due ``n * delay`` seconds after the stream began, plus the
    ``Pause`` items before it, on absolute deadlines (each stream its own, from its own start; the steps of all
    streams due within one millisecond share one timer, ``_Pacer``, so a step comes up to 1 ms after its deadline). So a paced stream offers one step every ``delay`` seconds
    whatever its consumer does meanwhile: time the server spends between two steps is not added to the pace
    (a late consumer gets the steps that are due at once, after only a yield to the event loop; never more
    than are due), and a stream of N steps
    takes N x delay (+ pauses) when its consumer keeps up. A ``Pause`` is a wait of its own, from when it is
    reached; the pace resumes from its end.

    Any model name is accepted unless ``strict_models`` is set; then names outside ``models`` are a
    ``BackendError(400, "model_not_found")``. ``runs`` holds one ``ScriptRun`` per call; ``requests``,
    ``steps_yielded`` (all runs) and ``closed_early`` (the latest run) are shortcuts over it.
    """

    name = "scripted"

    def __init__(
        self,
        script: Script,
        *,
        delay: float = 0.0,
        models: Sequence[str] = ("scripted",),
        strict_models: bool = False,
        source: str = "an in-memory script",
    ) -> None:
        self.script = script
        self.delay = delay
        self.strict_models = strict_models
        self.source = source
        self.runs: list[ScriptRun] = []
        self.closed = False
        self._models = list(models)

    # -- building from files --------------------------------------------------------------------------------

    @classmethod
    def from_capture(
        cls, path: str | os.PathLike[str], *, response: int = 0, **options: Any
    ) -> ScriptedBackend:
        """Replays the ``response``-th response of a recorded Responses stream (JSONL of events)."""
        with open(path, encoding="utf-8") as f:
            steps = steps_from_capture(f, response=response)
        return cls(steps, source=f"capture {Path(path).name}", **options)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **options: Any) -> ScriptedBackend:
        """A ``.jsonl`` file is a capture; anything else a JSON list of steps (see ``item_from_json``)."""
        if Path(path).suffix == ".jsonl":
            return cls.from_capture(path, **options)
        return cls(load_script(path), source=f"script {Path(path).name}", **options)

    # -- what tests look at ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[GenerationRequest]:
        return [run.request for run in self.runs]

    @property
    def steps_yielded(self) -> int:
        return sum(run.steps_yielded for run in self.runs)

    @property
    def closed_early(self) -> bool:
        """Whether the latest stream was closed (or its task cancelled) before its script ended."""
        return bool(self.runs) and self.runs[-1].closed_early

    # -- the Backend protocol -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return list(self._models)

    def describe(self) -> str:
        return f"scripted: a test double replaying {self.source}; deterministic, no model behind it"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        run = ScriptRun(request)
        self.runs.append(run)
        if self.strict_models and request.model not in self._models:
            run.failed = BackendError(
                f"model {request.model!r} is not served here; available: {', '.join(self._models)}",
                code="model_not_found",
                status=400,
            )
            raise run.failed
        items = self.script(request) if callable(self.script) else self.script
        loop = asyncio.get_running_loop()
        pacer = _pacer(loop) if self.delay else None
        due = loop.time()  # when the next step is due (with delay): deadlines from the start, not from the last step
        try:
            for item in items:
                if isinstance(item, Pause):
                    await asyncio.sleep(item.seconds)
                    due = max(due, loop.time())  # (a pause is a wait of its own: the pace resumes after it)
                elif isinstance(item, Fail):
                    run.failed = item.error
                    raise item.error
                else:
                    if pacer is not None:
                        due += self.delay
                        if due > loop.time():
                            await pacer.until(due)
                        else:
                            # A step already due still lets the loop run others first (as a socket read
                            # would): a late stream catching up must not hold the loop for all its overdue steps.
                            await asyncio.sleep(0)
                    run.steps_yielded += 1
                    yield item
            run.completed = True
        except (GeneratorExit, asyncio.CancelledError):
            run.closed_early = True
            raise

    async def aclose(self) -> None:
        self.closed = True


# -- scripts as JSON --------------------------------------------------------------------------------------------


def item_from_json(obj: dict[str, Any]) -> ScriptItem:
    """One script item from its JSON form: ``{"text": "Hel"}``, ``{"reasoning": "..."}``,
    ``{"tool_call": {"index": 0, "call_id": "call_1", "name": "f", "arguments": "{}"}}``,
    ``{"usage": {"input_tokens": 3, "output_tokens": 2}}``, ``{"finish": "stop"}``, ``{"pause": 0.1}``
    (or ``"delay"``), ``{"error": {"message": "...", "code": "server_error", "status": 502}}``."""
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ValueError(f"a script step is an object with one key, got {obj!r}")
    ((key, value),) = obj.items()
    if key == "text":
        return TextDelta(str(value))
    if key == "reasoning":
        return ReasoningDelta(str(value))
    if key == "tool_call":
        return ToolCallDelta(**{"index": 0, **value})
    if key == "usage":
        return UsageStep(**value)
    if key == "finish":
        if value not in _FINISH_REASONS:
            raise ValueError(f"finish reason {value!r} is not one of {', '.join(_FINISH_REASONS)}")
        return Finish(cast(FinishReason, value))
    if key in ("pause", "delay"):
        return Pause(float(value))
    if key == "error":
        if isinstance(value, str):
            return Fail(BackendError(value))
        return Fail(BackendError(value.get("message", "scripted failure"), **_error_options(value)))
    raise ValueError(f"unknown script step {key!r} (text, reasoning, tool_call, usage, finish, pause, error)")


def load_script(path: str | os.PathLike[str]) -> list[ScriptItem]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a script is a JSON list of steps")
    return [item_from_json(obj) for obj in data]


def _error_options(error: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"code": error.get("code") or "server_error"}
    if isinstance(error.get("status"), int):
        options["status"] = error["status"]
    if isinstance(error.get("param"), str):
        options["param"] = error["param"]
    return options


# -- recorded captures ------------------------------------------------------------------------------------------


def steps_from_capture(lines: Iterable[str], *, response: int = 0) -> list[ScriptItem]:
    """The steps a backend would have yielded for one response of a recorded stream (one JSON event a line).

    As the Responses backend reads an upstream (one core, ``StepsFromEvents``): text and refusal deltas become
    ``TextDelta``; reasoning, reasoning summary and reasoning text deltas ``ReasoningDelta``; function calls
    ``ToolCallDelta`` (index = order of the call; the first piece carries call_id and name); the terminal
    response's usage (cost included) a ``UsageStep`` and its status a ``Finish`` (completed with calls: ``tool_calls``;
    incomplete: ``length`` or ``content_filter``); ``error`` / ``response.failed`` a ``Fail``. Other tools'
    items (MCP, shell, custom tools...) have no step and are skipped. A capture holding several responses is
    cut at each ``response.created``.
    """
    responses: list[list[dict[str, Any]]] = [[]]
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("type") == "response.created" and any(
            e.get("type") == "response.created" for e in responses[-1]
        ):
            responses.append([])
        responses[-1].append(event)
    if not 0 <= response < len(responses):
        raise ValueError(f"the capture holds {len(responses)} response(s), not #{response}")
    return _steps(responses[response])


def _steps(events: list[dict[str, Any]]) -> list[ScriptItem]:
    """Through the same events->steps core as the Responses backend (``StepsFromEvents``), so a replayed capture
    keeps what a live upstream's stream keeps (reasoning deltas, refusals, cost); a failure becomes a ``Fail``."""
    flatten = StepsFromEvents("capture")
    steps: list[ScriptItem] = []
    try:
        for obj in events:
            event = decode_event_obj(obj, lenient=True)
            steps.extend(flatten.feed(event))
            if event.type in TERMINAL_EVENT_TYPES:
                return steps
        steps.extend(flatten.close())
    except BackendError as exc:
        steps.append(Fail(exc))
    return steps
