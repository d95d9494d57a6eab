"""Runs: one response being generated, in a task of its own, detached from the request that started it.

A run turns the backend's steps into events with a ``ResponseWriter`` and hands each batch to the process's
group-commit event log (``log.EventLog``), which appends the batches of all runs to the store in one call and
only then (durable before anyone sees it) publishes each run's to the live log (``live``), which every follower
reads (the live stream, resumed streams). Each event is encoded once, as an ``Entry``; transports frame entries.
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

from headwater.protocol.codec import encode_event, encode_response
from headwater.protocol.events import TERMINAL_EVENT_TYPES, Event
from headwater.protocol.resources import (
    Response,
    Usage,
)
from headwater.protocol.writer import (
    ResponseWriter,
)

from ..admission import Ticket
from ..backends.base import (
    Backend,
    BackendError,
    GenerationRequest,
    is_passthrough,
)
from ..live import LiveLog
from ..live.memory import MemoryLiveLog
from ..store import Entry, Store
from .log import EventLog, RunLog
from .steps import StepWriter

__all__ = ["INTERRUPTIBLE", "TRANSITIONS", "Run", "State"]

log = logging.getLogger("headwater.server")

# How long the live log of a finished run waits for a follower that was promised but has not come (its
# creator's stream, when the client went before the stream began); a follower's leaving ends it at once.
LIVE_LINGER_SECONDS = 30.0


class _Stop(enum.Enum):
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


class State(enum.Enum):
    """Where a run is. ``QUEUED`` and ``WAITING`` are the waits a stop interrupts at once; in any other state a
    stop is seen before the run waits again, so a store write is never interrupted halfway."""

    STARTING = "starting"  # opening its live log, writing response.created
    QUEUED = "queued"  # waiting for an admission slot
    WAITING = "waiting"  # waiting for the backend's next step
    WRITING = "writing"  # turning a step into events and logging them
    ENDING = "ending"  # writing its terminal events
    FINISHED = "finished"  # its terminal event is logged and published (or it failed trying)

    # Members are singletons compared by identity: hash them by identity too, in C (Enum's own ``__hash__`` is
    # a Python call, and ``_enter`` hashes twice per move, two moves per backend step).
    __hash__ = object.__hash__


# The run's lifecycle: each state and the states it may go to next (FINISHED is reachable from anywhere: an
# unexpected error ends any run). ``Run._enter`` refuses any other move.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.QUEUED, State.WAITING, State.WRITING, State.ENDING}),
    State.QUEUED: frozenset({State.WRITING, State.ENDING}),
    State.WAITING: frozenset({State.WRITING, State.ENDING}),
    State.WRITING: frozenset({State.WAITING, State.ENDING}),
    State.ENDING: frozenset(),
    State.FINISHED: frozenset(),
}
INTERRUPTIBLE = frozenset({State.QUEUED, State.WAITING})
# (A member read off the class is an attribute look-up through the enum's metaclass: kept here for _deliver.)
_WAITING, _WRITING = State.WAITING, State.WRITING

# The events that carry the whole resource as the writer's snapshot stands after them: a status batch and the
# terminal batch end with one, and the resource the store keeps is the JSON that event carries (``_carried``).
_CARRIERS = frozenset({"response.created", "response.queued", "response.in_progress", *TERMINAL_EVENT_TYPES})


class _Carrier(msgspec.Struct):
    response: msgspec.Raw  # (the rest of the event is skipped, not decoded)


_carrier = msgspec.json.Decoder(_Carrier)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        event_log: EventLog | None = None,
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
        self.state = State.STARTING
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
        # Where its batches go: the process's group commit (``log``; a run made alone gets one of its own), or,
        # for a run that is not stored, straight to the live log.
        if store is not None and event_log is None:
            event_log = EventLog(store)
        self._log: RunLog = (event_log.open(self.id, self.live) if store is not None and event_log is not None
                             else RunLog(self.id, self.live, None))
        self._on_finish = on_finish
        # The backend's first step came (or the run was queued, or finished): ``wait_first_step`` returns. A flag
        # and, while the create waits, a future with a timer of its own: no ``asyncio.Event`` and no
        # ``asyncio.timeout`` per create (their objects, the task look-ups, the timer's reschedule).
        self._first_step = False
        self._first_waiters: list[asyncio.Future[None]] = []
        self._stop: _Stop | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()  # the live log exists: followers may read it
        self._awaiting_follower = followed  # the creator will follow, and has not yet
        self._expiry: asyncio.Task[None] | None = None
        # Steps to events (for a backend that yields steps; a passthrough one's events go through the relay).
        self._steps = None if self._relay is not None else StepWriter(self.writer, max_tool_calls=max_tool_calls)
        self._feed: Callable[[Any], list[Event]] | None = None  # (set by _generate, for _deliver)
        self._pushed: list[Event] | Exception | None = None  # what _deliver left for the task
        self._final: bytes | None = None  # the final resource's JSON, once the terminal batch is made (``resource``)

    # --- control ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main(), name=f"headwater run {self.id}")

    @property
    def response(self) -> Response:
        return self.writer.response

    def resource(self) -> bytes:
        """The response resource's JSON as it stands. Once the run has ended, the very bytes its terminal event
        carries, which the store keeps too: a ``stream: false`` answer, a retrieve, a resumed stream and a
        WebSocket client all get the same final resource, encoded once."""
        if self._final is not None:
            return self._final
        return encode_response(self.response)

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
        if self.state in INTERRUPTIBLE and self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        """Until the terminal event is logged and published (cancelling the waiter leaves the run alone)."""
        if self._task is not None and not self.finished:
            await asyncio.shield(self._task)

    async def wait_first_step(self, timeout: float) -> None:
        """Until the backend produced its first step, the run finished or was queued (admission control), or
        ``timeout`` seconds."""
        if self._first_step:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._first_waiters.append(waiter)
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._first_waiters.remove(waiter)

    def _stepped(self) -> None:
        """The first step came (or the run was queued, or it finished): ``wait_first_step`` returns."""
        self._first_step = True
        for waiter in self._first_waiters:
            _wake(waiter)

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
        self._expire(LIVE_LINGER_SECONDS if self._awaiting_follower and self._log.ended else 0.0)

    def _expire(self, after: float) -> None:
        """Have the live log forget this run ``after`` seconds from now: the in-process log in this call, any
        other (a round trip to Redis) in a task."""
        live = self.live
        if isinstance(live, MemoryLiveLog):
            live.expire_now(self.id, after)
        else:
            self._expiry = asyncio.get_running_loop().create_task(live.expire(self.id, after))

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
                    self._stepped()
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
                    self._enter(State.ENDING)
                    await self._emit(self.writer.fail(exc.code, exc.message, exc.param, usage=self._usage))
            if not self.writer.finished:
                self._enter(State.ENDING)
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
            # A request the create sent ahead (``send_ahead``) that this run never read (it was stopped, or its
            # start failed, before it generated) is closed now, so that the upstream stops generating it.
            forget = getattr(self._backend, "forget_ahead", None)
            if forget is not None:
                forget(self._request)
            if self._ticket is not None:
                self._ticket.release()  # the next queued run may start
            self._enter(State.FINISHED)
            self._opened.set()  # (a follower of a run that could not even open its log finds none, and ends)
            self._stepped()
            if not self._log.ended:
                self._awaiting_follower = False  # no terminal entry to wait for: followers go to the store
            if self._log.silenced is not None:  # this process's followers go on from the store, at once
                self._expire(0.0)
            self._release()
            if self._on_finish is not None:
                self._on_finish(self)

    async def _wait_turn(self, ticket: Ticket) -> None:
        """Until ``ticket`` is granted, or the run is stopped (cancelled, shut down) while it waits."""
        self._enter(State.QUEUED)  # (a stop interrupts this wait as it does a wait for the next token)
        try:
            await ticket.wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop is None or task is None:
                raise
            task.uncancel()
        finally:
            self._enter(State.WRITING)

    async def _generate(self) -> None:
        """Feed the backend's steps (a passthrough backend's events) to the writer (its relay) and log what they
        make, until the backend ends or the run is stopped. A backend with ``batches`` hands over each chunk's
        steps together: one turn of this loop, one batch to the log, per chunk of the upstream's body. One that
        ``pushes`` hands over a ``Push`` whenever nothing has come: the chunks that come next are fed and logged
        by ``_deliver``, in the upstream connection's own read (no wake-up of this task per chunk), until the
        backend wants its generator back (the end, an error, the terminal event) or the run stops."""
        relay = self._relay
        source: Any = self._passthrough if self._passthrough is not None else self._backend
        batches = getattr(source, "batches", None)
        # Pushed batches are logged in the connection's call: the store's log queues without a coroutine, and the
        # in-process live log takes entries without one (a run that is not stored publishes them itself).
        push = (batches is not None and getattr(source, "pushes", False) is True
                and (self._store is not None or isinstance(self.live, MemoryLiveLog)))
        steps: AsyncIterator[Any] = (
            (batches(self._request, push=True) if push else batches(self._request)) if batches is not None
            else source.events(self._request) if relay is not None
            else source.generate(self._request)
        )
        feed = self._feed = relay.feed if relay is not None else self._steps_writer().feed
        try:
            while self._stop is None:
                self._enter(State.WAITING)
                try:
                    got = await anext(steps)
                    if push and type(got) is not list:  # a Push (backends/_upstream.py; not imported here)
                        try:
                            await got.start(self._deliver)
                        finally:
                            got.stop()
                        if self._pushed is not None:  # (what _deliver could not do itself)
                            pushed, self._pushed = self._pushed, None
                            if isinstance(pushed, BaseException):
                                raise pushed
                            self._enter(State.WRITING)
                            await self._emit(pushed)
                        continue
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._stop is None or task is None:
                        raise
                    task.uncancel()  # our own cancel(): the run goes on to write its terminal event
                    break
                finally:
                    self._enter(State.WRITING)
                batch = got if batches is not None else (got,)
                self.steps += len(batch)
                if not self._first_step:
                    self._stepped()
                events = feed(batch[0]) if len(batch) == 1 else [event for step in batch for event in feed(step)]
                if events:
                    await self._emit(events)
            if self._stop is None:
                self._enter(State.ENDING)
                # (Once the terminal event is logged, close() has nothing more: an empty batch here would encode the
                # final resource again and commit it a second time.)
                events = relay.close() if relay is not None else self._steps_writer().close()
                if events or not self.writer.finished:
                    await self._emit(events)
        finally:
            aclose = getattr(steps, "aclose", None)
            if aclose is not None:
                await aclose()

    def _deliver(self, batch: list[Any]) -> bool:
        """A pushed batch (``Push``), in the upstream connection's read, while the task waits: fed and logged
        as the loop of ``_generate`` would (never raising: what fails is kept in ``_pushed`` for the task to
        raise); False when the pushing must stop (the run is stopping, or the task must take over)."""
        if self._stop is not None or self.state is not _WAITING:
            return False  # (a stop while the task waited: the batch is dropped, as a cancelled read's is)
        self.state = _WRITING
        try:
            self.steps += len(batch)
            if not self._first_step:
                self._stepped()
            feed = self._feed
            assert feed is not None
            events = feed(batch[0]) if len(batch) == 1 else [event for step in batch for event in feed(step)]
            if events:
                if self.writer.finished:  # (its terminal batch: logged by the task, which awaits it)
                    self._pushed = events
                    return False
                self._emit_now(events)
        except Exception as exc:
            self._pushed = exc
            return False
        finally:
            if self.state is _WRITING:
                self.state = _WAITING
        return self._stop is None

    def _emit_now(self, events: list[Event]) -> None:
        """``_emit`` for a batch that neither changes the status nor ends the response, without a coroutine."""
        entries = [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events]
        self.events += len(entries)
        if self._store is None:
            ended = self._log._publishable(entries)
            if ended is not None:
                assert isinstance(self.live, MemoryLiveLog)
                self.live.append_now(self.id, entries, ended=ended)
            return
        self._log.write(entries, None, None)
        if self._log.error is not None:
            raise self._log.error

    @property
    def finished(self) -> bool:
        """The terminal event is logged and published (or the run failed trying): nothing more will come."""
        return self.state is State.FINISHED

    def _enter(self, state: State) -> None:
        """Move to ``state`` along ``TRANSITIONS`` (staying put is no move)."""
        if state is self.state:
            return
        if state is not State.FINISHED and state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"run {self.id}: no move from {self.state.value} to {state.value}")
        self.state = state

    @property
    def _usage(self) -> Usage | None:
        """The usage the backend reported so far (for the events a stop or failure ends the run with)."""
        return self._steps.usage if self._steps is not None else None

    def _steps_writer(self) -> StepWriter:
        assert self._steps is not None
        return self._steps

    def _stop_events(self) -> list[Event]:
        if self._stop is _Stop.SHUTDOWN:
            log.warning("response %s: stopped by the server shutting down; it ends as failed (server_shutdown)",
                        self.id)
            return self.writer.fail(
                "server_shutdown", "the server shut down before this response finished", usage=self._usage
            )
        return self.writer.cancelled(self._usage)

    # --- log and fan-out ----------------------------------------------------------------------------------
    # Generation never waits for the disk: ``_emit`` hands each batch to the process's event log (``log``),
    # which appends all that every run has queued in one store call and only then publishes it. Followers see
    # nothing that is not durable, a slow fsync delays followers rather than the model, and the events of many
    # runs share fsyncs. The terminal batch is the exception: ``_emit`` returns once it is logged and published.

    async def _emit(self, events: list[Event], *, status: str | None = None) -> None:
        """Log ``events`` (with the resource at status changes and at the end), then publish them. Raises the
        store's error once the store has failed; the events are published all the same."""
        entries = [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events]
        self.events += len(entries)
        finished = self.writer.finished
        if finished:
            self._final = self._carried(entries)
        if self._store is None:
            await self._log.publish(entries)
            return
        data = None
        if status is not None or finished:
            status, data = self.response.status, self._final if finished else self._carried(entries)
        self._log.write(entries, status, data)  # (once the store failed this run, it is only published)
        if finished:
            await self._log.flushed()
        if self._log.error is not None:
            raise self._log.error

    def _carried(self, entries: list[Entry]) -> bytes:
        """The resource's JSON after ``entries``: the bytes their last event carries when it carries the
        resource (a status or terminal event: the snapshot is what it says), cut out of its payload without
        encoding the resource again; else the snapshot encoded."""
        if entries and entries[-1].type in _CARRIERS:
            try:
                return bytes(_carrier.decode(entries[-1].payload).response)
            except msgspec.MsgspecError:  # pragma: no cover - the writer's own events always carry one
                pass
        return encode_response(self.response)
