"""Runs: one response being generated, in a task of its own, detached from the request that started it.

A run turns the backend's steps into events with a ``ResponseWriter``, appends each batch to the store's event
log (durable before anyone sees it), then to the live log (``live``), which every follower reads (the live
stream, resumed streams). Each event is encoded once, as an ``Entry``; transports frame entries.
``cancel()`` ends generation at once (the backend iterator is closed: no more tokens are computed).

How a stopped run ends its stream. The spec's terminal events are completed/incomplete/failed; there is no
"cancelled" event. A cancelled run (``POST .../cancel``, or the client of a non-background stream leaving) ends
with ``response.incomplete`` whose response says ``status: "cancelled"`` and ``incomplete_details: null``
(``ResponseWriter.cancelled``): the output so far stays valid, OpenAI's SDKs (which raise on an ``error``
event) do not raise, and clients that validate with OpenAI's types (litellm), which allow only
``max_output_tokens`` / ``content_filter`` as an incomplete reason, accept it. The stored resource, GET and
``stream: false`` say the same.
A run stopped by server shutdown ends with ``error`` + ``response.failed``; so, on the next start, does a run
a crash left ``queued``/``in_progress`` (``close_orphans``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from msgspec import UNSET
from msgspec.structs import replace

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.codec import decode_event, encode_event
from headwater.protocol.events import TERMINAL_EVENT_TYPES, ErrorEvent, ErrorPayload, Event, ResponseFailed
from headwater.protocol.resources import (
    InputTokensDetails,
    OutputTokensDetails,
    Response,
    ResponseError,
    Usage,
    has_wire,
    keep_wire,
    to_builtins,
)
from headwater.protocol.writer import (
    FunctionCallWriter,
    MessageWriter,
    ReasoningTextWriter,
    ReasoningWriter,
    ResponseWriter,
    TextWriter,
)

from .admission import Admission, Limits, Ticket, default_limits
from .backends.base import (
    Backend,
    BackendError,
    Finish,
    GenerationRequest,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
    is_passthrough,
)
from .errors import APIError
from .live import LiveLog
from .live.memory import MemoryLiveLog
from .store import Entry, Fenced, Store, StoredResponse, StoreUnavailable

__all__ = ["Run", "Runs", "close_orphan", "close_orphans", "encode_response"]

log = logging.getLogger("headwater.server")

# How long the live log of a finished run waits for a follower that was promised but has not come (its
# creator's stream, when the client went before the stream began); a follower's leaving ends it at once.
LIVE_LINGER_SECONDS = 30.0


def _unknown_hook(obj: object) -> object:
    to_builtins = getattr(obj, "to_builtins", None)
    if to_builtins is None:
        raise NotImplementedError(f"cannot encode {type(obj).__name__}")
    return to_builtins()


_response_encoder = msgspec.json.Encoder(enc_hook=_unknown_hook)
_response_decoder = msgspec.json.Decoder(Response)


def encode_response(response: Response) -> bytes:
    """A ``ResponseResource`` as JSON: every spec-required field, nulls included; what a relayed upstream sent
    in its items, parts, annotations and usage as it sent it (``resources.to_builtins``)."""
    if has_wire(response):
        return _response_encoder.encode(to_builtins(response))
    return _response_encoder.encode(response)


class _Stop(enum.Enum):
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


class Run:
    """One response being generated. Read its entries through ``follow`` (from its live log); ``response`` is
    the snapshot so far; ``backend_error`` is the ``BackendError`` that failed the run, if one did, and
    ``steps`` how many steps the backend gave before."""

    def __init__(
        self,
        *,
        writer: ResponseWriter,
        backend: Backend,
        request: GenerationRequest,
        store: Store | None,
        owner: str | None,
        background: bool,
        max_tool_calls: int | None = None,
        on_finish: Callable[[Run], None] | None = None,
        live: LiveLog | None = None,
        followed: bool = True,
        ticket: Ticket | None = None,
    ) -> None:
        # A passthrough backend (a Responses upstream) hands over protocol events, not steps: they go through
        # its relay, a ResponseWriter that renumbers and repairs them, so the stream stays ours and conformant.
        self._passthrough = backend if is_passthrough(backend) else None
        self._relay = self._passthrough.relay(writer) if self._passthrough is not None else None
        self.writer = self._relay if self._relay is not None else writer
        self.id = writer.id
        self.owner = owner
        self.background = background
        self.stored = store is not None
        # The resource as it was created, before any event (what a background request is answered with).
        self.template: Response = writer.response
        self.live: LiveLog = live if live is not None else MemoryLiveLog()
        self.finished = False
        self.backend_error: BackendError | None = None
        self.steps = 0  # backend steps received
        self.events = 0  # events made (for /metrics)
        self.followers = 0  # streams reading this run right now (the request's own, resumes)
        # Set once a non-background stream's client left: how long the run waits for a reader each time the
        # last one leaves (``cancel_unless_followed``), and the timer of that wait.
        self._grace: float | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._backend = backend
        self._request = request
        self._store = store
        # The run's place in admission control: it generates once the ticket is granted, and releases it at
        # its end. None: no admission control (the run starts at once).
        self._ticket = ticket
        # Batches waiting for the store: (events, payloads, status, resource JSON).
        self._backlog: list[tuple[list[Entry], str | None, bytes | None]] = []
        self._wake = asyncio.Event()
        self._logger: asyncio.Task[None] | None = None
        self._log_error: Exception | None = None
        self._silenced: Exception | None = None  # fenced or the shared store away: publish nothing more
        self._max_tool_calls = max_tool_calls
        self._on_finish = on_finish
        self._first_step = asyncio.Event()
        self._stop: _Stop | None = None
        self._in_backend = False
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()  # the live log exists: followers may read it
        self._ended = False  # the terminal entry is in the live log
        self._awaiting_follower = followed  # the creator will follow, and has not yet
        self._expiry: asyncio.Task[None] | None = None
        # What is open in the writer while steps arrive.
        self._message: MessageWriter | None = None
        self._text: TextWriter | None = None
        self._reasoning: ReasoningWriter | None = None
        self._reasoning_text: ReasoningTextWriter | None = None
        self._calls: dict[int, FunctionCallWriter] = {}
        self._ignored_calls: set[int] = set()
        self._usage: Usage | None = None
        self._finish: str | None = None

    # --- control ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main(), name=f"headwater run {self.id}")

    @property
    def response(self) -> Response:
        return self.writer.response

    def cancel_unless_followed(self, grace: float) -> None:
        """A non-background stream's client left: cancel now, or ``grace`` seconds after the last reader left
        unless one has resumed the stream by then (``GET ...?stream=true&starting_after=N``). From here on the
        same holds each time the last reader leaves."""
        if grace <= 0:
            self.cancel()
            return
        self._grace = grace
        self._arm_grace()

    def _arm_grace(self) -> None:
        if self._grace is None or self.followers or self.finished:
            return
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._grace_timer = asyncio.get_running_loop().call_later(self._grace, self._grace_expired)

    def _grace_expired(self) -> None:
        self._grace_timer = None
        if self.followers == 0 and not self.finished:
            log.info("response %s: nobody resumed within %.1fs; cancelling", self.id, self._grace)
            self.cancel()

    def cancel(self) -> None:
        """Stop generating; the run ends as cancelled (see the module's notes). Does nothing once finished."""
        self._request_stop(_Stop.CANCELLED)

    def shut_down(self) -> None:
        """Stop generating because the server is stopping; the run ends as failed."""
        self._request_stop(_Stop.SHUTDOWN)

    def _request_stop(self, stop: _Stop) -> None:
        if self.writer.finished or self._stop is not None:
            return  # (a run whose terminal event is being logged has finished generating)
        self._stop = stop
        # Interrupt a wait for the next token at once. Anywhere else the loop sees ``_stop`` before it waits
        # again, so a store write is never interrupted halfway.
        if self._in_backend and self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        """Until the terminal event is logged and published (cancelling the waiter leaves the run alone)."""
        if self._task is not None and not self.finished:
            await asyncio.shield(self._task)

    async def wait_first_step(self, timeout: float) -> None:
        """Until the backend produced its first step, the run finished or was queued (admission control), or
        ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._first_step.wait()

    async def follow(self, starting_after: int = -1, keepalive: float = 15.0) -> AsyncIterator[list[Entry]]:
        """The entries after ``starting_after``, then the new ones as they are published (in batches: all that
        are ready), until the terminal event; an empty batch after ``keepalive`` seconds without any (the
        transport writes a keep-alive)."""
        self.followers += 1
        self._awaiting_follower = False
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        try:
            await self._opened.wait()
            last, ended = starting_after, False
            async for batch in self.live.follow(self.id, starting_after, keepalive=keepalive):
                if batch:
                    last, ended = batch[-1].sequence_number, batch[-1].type in TERMINAL_EVENT_TYPES
                yield batch
            if not ended and self._store is not None:
                # The live log went before this follower read its end (the run finished meanwhile): the store
                # has every entry of a finished run.
                await self.wait()
                rest = await self._store.events(self.id, last)
                if rest:
                    yield rest
        finally:
            self.followers -= 1
            self._release()
            self._arm_grace()

    def _release(self) -> None:
        """Forget the live log once the run has finished and nobody follows it (after a linger while the
        creator's stream is still to come). Later readers of a stored run read the store."""
        if not self.finished or self.followers:
            return
        after = LIVE_LINGER_SECONDS if self._awaiting_follower and self._ended else 0.0
        self._expiry = asyncio.get_running_loop().create_task(self.live.expire(self.id, after))

    # --- the task -----------------------------------------------------------------------------------------

    async def _main(self) -> None:
        try:
            await self.live.append(self.id, [])
            self._opened.set()
            try:
                ticket = self._ticket
                if ticket is not None and not ticket.granted:
                    # Queued: created + queued now (a stream gets its headers and these at once), in_progress
                    # once a slot is free.
                    await self._emit(self.writer.start(wait=True), status="queued")
                    self._first_step.set()
                    await self._wait_turn(ticket)
                    if self._stop is None:
                        await self._emit(self.writer.begin(), status="in_progress")
                else:
                    await self._emit(self.writer.start(queued=self.background), status="in_progress")
                if self._stop is None:
                    await self._generate()
            except BackendError as exc:
                log.warning(
                    "response %s: backend error %s (%s): %s", self.id, exc.status, exc.code, exc.message
                )
                self.backend_error = exc
                if not self.writer.finished:
                    await self._emit(self.writer.fail(exc.code, exc.message, exc.param, usage=self._usage))
            if not self.writer.finished:
                await self._emit(self._stop_events())
        except Exception as exc:
            log.error("response %s: generation failed", self.id, exc_info=exc)
            if not self.writer.finished:
                events = self.writer.fail(
                    "server_error", "the server had an error while generating this response", usage=self._usage
                )
                with contextlib.suppress(Exception):  # a failed store: the events are published all the same
                    await self._emit(events)
        finally:
            if self._ticket is not None:
                self._ticket.release()  # the next queued run may start
            self.finished = True
            self._opened.set()  # (a follower of a run that could not even open its log finds none, and ends)
            self._first_step.set()
            if not self._ended:
                self._awaiting_follower = False  # no terminal entry to wait for: followers go to the store
            if self._silenced is not None:  # this process's followers go on from the store, at once
                self._expiry = asyncio.get_running_loop().create_task(self.live.expire(self.id, 0.0))
            self._release()
            if self._on_finish is not None:
                self._on_finish(self)

    async def _wait_turn(self, ticket: Ticket) -> None:
        """Until ``ticket`` is granted, or the run is stopped (cancelled, shut down) while it waits."""
        self._in_backend = True  # (a stop interrupts this wait as it does a wait for the next token)
        try:
            await ticket.wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop is None or task is None:
                raise
            task.uncancel()
        finally:
            self._in_backend = False

    async def _generate(self) -> None:
        relay = self._relay
        steps: AsyncIterator[Any] = (
            self._passthrough.events(self._request)
            if self._passthrough is not None
            else self._backend.generate(self._request)
        )
        try:
            while self._stop is None:
                self._in_backend = True
                try:
                    step = await anext(steps)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._stop is None or task is None:
                        raise
                    task.uncancel()  # our own cancel(): the run goes on to write its terminal event
                    break
                finally:
                    self._in_backend = False
                self.steps += 1
                self._first_step.set()
                events = relay.feed(step) if relay is not None else self._translate(step)
                if events:
                    await self._emit(events)
            if self._stop is None:
                await self._emit(relay.close() if relay is not None else self._finish_events())
        finally:
            aclose = getattr(steps, "aclose", None)
            if aclose is not None:
                await aclose()

    def _stop_events(self) -> list[Event]:
        if self._stop is _Stop.SHUTDOWN:
            log.warning("response %s: stopped by the server shutting down; it ends as failed (server_shutdown)",
                        self.id)
            return self.writer.fail(
                "server_shutdown", "the server shut down before this response finished", usage=self._usage
            )
        return self.writer.cancelled(self._usage)

    # --- steps to events ----------------------------------------------------------------------------------

    def _translate(self, step: Step) -> list[Event]:
        out: list[Event] = []
        if self._finish is not None and not isinstance(step, UsageStep):
            log.warning(
                "response %s: the backend sent %s after its finish; ignored", self.id, type(step).__name__
            )
        elif isinstance(step, TextDelta):
            if step.text:
                self._close_reasoning(out)
                out.extend(self._text_part(out).delta(step.text))
        elif isinstance(step, ReasoningDelta):
            if step.text:
                self._close_message(out)
                out.extend(self._reasoning_part(out).delta(step.text))
        elif isinstance(step, ToolCallDelta):
            call = self._calls.get(step.index)
            if call is None:
                if step.index in self._ignored_calls or (
                    self._max_tool_calls is not None and len(self._calls) >= self._max_tool_calls
                ):
                    self._ignored_calls.add(step.index)  # max_tool_calls: later calls are not made
                    return out
                self._close_message(out)
                self._close_reasoning(out)
                call = self._calls[step.index] = self.writer.function_call(step.name or "", step.call_id)
                out.extend(call.events)
            if step.arguments:
                out.extend(call.delta(step.arguments))
        elif isinstance(step, UsageStep):
            self._usage = _usage(step)
        elif isinstance(step, Finish):
            # The terminal event waits for the end of the iterator: usage may come after the finish (as in
            # Chat Completions streams).
            self._finish = step.reason
        return out

    def _finish_events(self) -> list[Event]:
        if self._finish == "length":
            return self.writer.incomplete("max_output_tokens", self._usage)
        if self._finish == "content_filter":
            return self.writer.incomplete("content_filter", self._usage)
        return self.writer.complete(self._usage)

    def _text_part(self, out: list[Event]) -> TextWriter:
        if self._text is None:
            if self._message is None:
                self._message = self.writer.message()
                out.extend(self._message.events)
            self._text = self._message.text()
            out.extend(self._text.events)
        return self._text

    def _reasoning_part(self, out: list[Event]) -> ReasoningTextWriter:
        if self._reasoning_text is None:
            if self._reasoning is None:
                self._reasoning = self.writer.reasoning()
                out.extend(self._reasoning.events)
            self._reasoning_text = self._reasoning.text()
            out.extend(self._reasoning_text.events)
        return self._reasoning_text

    def _close_message(self, out: list[Event]) -> None:
        if self._message is not None:
            out.extend(self._message.done())
            self._message = self._text = None

    def _close_reasoning(self, out: list[Event]) -> None:
        if self._reasoning is not None:
            out.extend(self._reasoning.done())
            self._reasoning = self._reasoning_text = None

    # --- log and fan-out ----------------------------------------------------------------------------------
    # Generation never waits for the disk: ``_emit`` queues each batch for ``_log``, which appends all that is
    # queued in one store call and only then publishes it. Followers see nothing that is not durable, a slow
    # fsync delays followers rather than the model, and a fast model's events share fsyncs. The terminal batch
    # is the exception: ``_emit`` returns once it is logged and published.

    async def _emit(self, events: list[Event], *, status: str | None = None) -> None:
        """Log ``events`` (with the resource at status changes and at the end), then publish them. Raises the
        store's error once the store has failed; the events are published all the same."""
        entries = [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events]
        self.events += len(entries)
        if self._store is None:
            await self._publish(entries)
            return
        data = None
        if status is not None or self.writer.finished:
            response = self.response
            status, data = response.status, encode_response(response)
        self._backlog.append((entries, status, data))
        if self._logger is None:
            self._logger = asyncio.get_running_loop().create_task(self._log(self._store))
        self._wake.set()
        if self.writer.finished:
            await self._logger
        if self._log_error is not None:
            raise self._log_error

    async def _log(self, store: Store) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batches, self._backlog = self._backlog, []
            if self._log_error is None:
                rows = [entry for entries, _, _ in batches for entry in entries]
                status = next((b[1] for b in reversed(batches) if b[1] is not None), None)
                data = next((b[2] for b in reversed(batches) if b[2] is not None), None)
                try:
                    await store.append(self.id, rows, status=status, data=data)
                except (Fenced, StoreUnavailable) as exc:
                    # Another replica owns the response now, or the shared store is away: nothing more is
                    # published from here (followers must only see what is stored). Local followers find the
                    # live log gone and read the store; the response is closed by its new owner, or by this
                    # replica once the store is back (``replicas``).
                    log.error("response %s: %s; this replica stops writing it", self.id, exc)
                    self._log_error = self._silenced = exc
                except Exception as exc:
                    # Followers still get a consistent stream: the run's next _emit raises, so a run still
                    # generating ends with error + response.failed. The store keeps its prefix in_progress and
                    # the next start closes it as failed (close_orphans).
                    log.error("response %s: the store failed; its log stops here", self.id, exc_info=exc)
                    self._log_error = exc
            try:
                await self._publish([entry for entries, _, _ in batches for entry in entries])
            except Exception as exc:  # followers' bounded reads notice; the store has every entry
                log.error("response %s: the live log failed", self.id, exc_info=exc)
            if self.writer.finished and not self._backlog:
                return

    async def _publish(self, entries: list[Entry]) -> None:
        if not entries or self._ended or self._silenced is not None:
            return
        self._ended = entries[-1].type in TERMINAL_EVENT_TYPES
        await self.live.append(self.id, entries, ended=self._ended)


def _usage(step: UsageStep) -> Usage:
    """A backend's usage as the response's: its counts, and what else its upstream said (``step.extra``, kept
    as sent through ``keep_wire``)."""
    usage = Usage(
        input_tokens=step.input_tokens,
        output_tokens=step.output_tokens,
        total_tokens=step.input_tokens + step.output_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=step.cached_tokens),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=step.reasoning_tokens),
        cost=UNSET if step.cost is None else step.cost,  # e.g. OpenRouter's, passed on as reported
    )
    if not step.extra:
        return usage
    wire = to_builtins(usage)
    for key, value in step.extra.items():
        if isinstance(value, dict) and isinstance(wire.get(key), dict):
            wire[key] = {**wire[key], **value}  # the upstream's (the mapped counts are never among them)
        elif key not in wire:
            wire[key] = value
    try:
        kept = msgspec.convert(wire, Usage)
    except msgspec.ValidationError as exc:  # an extra that clashes with a field Headwater declares
        log.warning("usage extras %s do not fit Responses usage (%s); the counts are kept without them",
                    sorted(step.extra), exc)
        return usage
    keep_wire(kept, wire)
    return kept


class Runs:
    """The runs of one server: started here, found by id while live (stored runs only), stopped at shutdown."""

    def __init__(
        self, store: Store, backend: Backend, live: LiveLog | None = None, limits: Limits | None = None
    ) -> None:
        self.store = store
        self.backend = backend
        self.admission = Admission(limits or default_limits(getattr(backend, "slots", None)))
        self.closing = False  # shutting down: no new runs
        self.live: LiveLog = live if live is not None else MemoryLiveLog()
        # A response that is not stored can be read only by the request that made it, in this process.
        self._private = self.live if isinstance(self.live, MemoryLiveLog) else MemoryLiveLog()
        self._live: dict[str, Run] = {}
        self._all: set[Run] = set()
        self._events_of_finished = 0

    def start(
        self,
        *,
        writer: ResponseWriter,
        request: GenerationRequest,
        owner: str | None,
        stored: bool,
        background: bool,
        max_tool_calls: int | None,
        followed: bool = True,
        ticket: Ticket | None = None,
    ) -> Run:
        """Start a run. ``ticket``: its place from ``admit`` (taken here when not given; ``admit``'s 429 then
        comes from here)."""
        if ticket is None:
            ticket = self.admit(owner)
        run = Run(
            writer=writer,
            backend=self.backend,
            request=request,
            store=self.store if stored else None,
            owner=owner,
            background=background,
            max_tool_calls=max_tool_calls,
            on_finish=self._finished,
            live=self.live if stored else self._private,
            followed=followed,
            ticket=ticket,
        )
        self._all.add(run)
        if stored:
            self._live[run.id] = run
        run.start()
        return run

    def admit(self, owner: str | None) -> Ticket:
        """A place for a run of ``owner``: granted now or queued; ``APIError`` 429 with ``Retry-After`` beyond
        the queue, 503 once the server is shutting down. Take it before storing the response (``with``: it is
        released if the block raises before ``start``)."""
        if self.closing:
            raise APIError(503, "the server is shutting down", code="server_shutting_down")
        return self.admission.admit(owner)

    def get(self, response_id: str) -> Run | None:
        """The live run of a stored response. It stays here until its terminal event is in the store."""
        return self._live.get(response_id)

    def figures(self) -> dict[str, int]:
        """Runs generating now, those still queued, and the events all runs of this process have made."""
        runs = list(self._all)
        return {
            "live": len(runs),
            "queued": sum(1 for run in runs if run.writer.response.status == "queued"),
            "events": self._events_of_finished + sum(run.events for run in runs),
        }

    def running(self) -> set[str]:
        """The ids of the stored responses this process is generating now."""
        return set(self._live)

    def cancel(self, response_id: str) -> None:
        """Cancel the run of ``response_id`` if this process runs it (a cancel signal from another replica)."""
        run = self._live.get(response_id)
        if run is not None:
            run.cancel()

    def _finished(self, run: Run) -> None:
        self._events_of_finished += run.events
        self._all.discard(run)
        self._live.pop(run.id, None)

    async def shut_down(self) -> None:
        """Stop every run (each ends with ``error`` + ``response.failed``, ``server_shutdown``, and logs one
        line) and wait until their terminal events are logged and published. New runs are refused (503)."""
        self.closing = True
        runs = list(self._all)
        for run in runs:
            run.shut_down()
        await asyncio.gather(*(run.wait() for run in runs), return_exceptions=True)


ORPHAN_MESSAGE = (
    "the server stopped before this response finished; it was closed as failed when the server restarted"
)


UNREADABLE_MESSAGE = (
    "the server stopped before this response finished, and its stored record could not be read when the server "
    "restarted; it was closed as failed"
)


async def close_orphans(store: Store) -> list[str]:
    """Close every response a crash left ``queued``/``in_progress``: append ``error`` + ``response.failed`` to
    its log and store it as failed. Returns their ids. One that cannot be closed (the store fails) is logged
    and left as it is: the start goes on regardless."""
    closed = []
    for record in await store.unfinished():
        try:
            await close_orphan(store, record)
        except Exception as exc:
            log.error("response %s: could not be closed as failed; it stays %s", record.id, record.status,
                      exc_info=exc)
            continue
        log.warning(
            "response %s was left %s by an earlier run of the server; closed as failed",
            record.id,
            record.status,
        )
        closed.append(record.id)
    return closed


async def close_orphan(
    store: Store, record: StoredResponse, code: str = "server_restarted", message: str = ORPHAN_MESSAGE
) -> list[Entry]:
    """End one response nobody generates any more with ``error`` + ``response.failed`` (``code``, ``message``)
    in its log and the store; returns the entries appended (a replica that took the response over also puts
    them in the live log).

    The writer that was making these events died with its process. When the log is empty a fresh writer
    writes the whole stream; otherwise the two closing events are made here from the log's accumulated
    snapshot (the one place the server makes events without a writer), numbered on from the log. A record
    whose resource or log cannot be decoded (say, nested too deeply) is replaced by a readable one
    (``_close_unreadable``), with the reason logged.
    """
    stored = await store.events(record.id)
    try:
        entries, final = _closing_entries(record, stored, code, message)
    except Exception as exc:  # RecursionError, DecodeError, ...: whatever decoding this record raises
        log.warning("response %s: its stored record cannot be read (%s: %s); closing it as failed with a bare "
                    "resource", record.id, type(exc).__name__, exc)
        return await _close_unreadable(store, record, code)
    await store.append(record.id, entries, status="failed", data=final)
    return entries


def _closing_entries(
    record: StoredResponse, stored: list[Entry], code: str, message: str
) -> tuple[list[Entry], bytes]:
    """The entries that close ``record`` (whose log is ``stored``), and its final resource."""
    logged = [decode_event(entry.payload) for entry in stored]
    if not logged:
        writer = ResponseWriter(_response_decoder.decode(record.data))
        events = writer.start() + writer.fail(code, message)
        final = writer.response
    else:
        accumulator = Accumulator()
        for event in logged:
            accumulator.feed(event)
        seq = (logged[-1].sequence_number or len(logged) - 1) + 1
        final = replace(
            accumulator.response,
            status="failed",
            completed_at=None,
            error=ResponseError(code=code, message=message),
        )
        payload = ErrorPayload(type="server_error", code=code, message=message, param=None)
        events = [
            ErrorEvent(sequence_number=seq, code=code, message=message, param=None, error=payload),
            ResponseFailed(sequence_number=seq + 1, response=final),
        ]
    return [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events], encode_response(final)


async def _close_unreadable(store: Store, record: StoredResponse, code: str) -> list[Entry]:
    """Replace an unreadable record by a readable failed one: the same id, owner, creation time and input
    items (their bytes, not decoded), a bare resource, and a log that a fresh writer makes."""
    items = (await store.input_items(record.id)).items
    bare = Response(id=record.id, created_at=record.created_at, status="in_progress")
    writer = ResponseWriter(bare)
    events = writer.start() + writer.fail(code, UNREADABLE_MESSAGE)
    await store.delete(record.id)
    await store.create(StoredResponse(record.id, record.owner, "in_progress", record.created_at,
                                      encode_response(bare)), items)
    entries = [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events]
    await store.append(record.id, entries, status="failed", data=encode_response(writer.response))
    return entries
