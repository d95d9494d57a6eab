"""The stream machine: one streamed response, across as many connections as it takes, written once for both faces.

It decodes SSE bytes into typed events (repairing them first in compatibility mode), drops events already
delivered (``sequence_number`` at or below the last one seen), folds each event into an ``Accumulator`` just
before it is handed out, and decides what a dropped connection means: retry the request (no event yet), resume
with ``GET /responses/{id}?stream=true&starting_after=N`` (events arrived and the response is stored), or give
up with a typed error. Sans-I/O: the faces do the HTTP and the sleeping (``Client``/``AsyncClient``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from headwater.protocol.accumulate import Accumulator, Problem
from headwater.protocol.codec import decode_event, decode_event_obj
from headwater.protocol.events import TERMINAL_EVENT_TYPES, ErrorEvent, Event
from headwater.protocol.resources import FunctionCall, Response
from headwater.protocol.sse import DONE, Frame, SSEDecoder

from .compat import Repairer
from .core import (
    ClientOptions,
    Fail,
    RequestSpec,
    Retry,
    json_request,
    response_path,
    retry_or_fail,
    transport_error,
)
from .errors import (
    APIConnectionError,
    APIError,
    NotFoundError,
    StreamError,
    StreamInterruptedError,
    error_from_response,
)

__all__ = ["Finish", "StreamMachine", "StreamView"]

_json = msgspec.json.Decoder()


@dataclass
class Finish:
    """The stream is over: hand out ``events`` (already decided, folded in as they are taken), then raise
    ``machine.final_error()`` if there is one."""

    events: Iterator[Event] = field(default_factory=lambda: iter(()))


class StreamMachine:
    """One streamed response. Use: ``request()``; perform it; ``on_status``; then either ``feed`` every body
    chunk and ``end_of_body``/``on_eof``, or ``on_error_body``; ``on_transport_error`` for any httpx transport
    failure. ``Retry`` means sleep then ``request()`` again (a retry or a resume); ``Fail`` means raise."""

    def __init__(
        self,
        first: RequestSpec,
        options: ClientOptions,
        *,
        compat: bool,
        store: bool | None = None,
        response_id: str | None = None,
        starting_after: int | None = None,
    ) -> None:
        self.options = options
        self.policy = options.retry
        self.first = first
        self.compat = compat
        self.accumulator = Accumulator()
        self.repairer: Repairer | None = Repairer() if compat else None
        self.response_id = response_id
        # The provider's own numbering of the last event delivered: what dedup and ``starting_after`` use.
        self.last_sequence_number: int | None = starting_after if starting_after is not None and starting_after >= 0 else None
        self.store = store
        self.resumes = 0  # reconnects made after events had arrived
        self.retries = 0  # new attempts at the first request (no event yet)
        self.duplicates_dropped = 0
        self.events_received = 0
        self.attempts = 0  # attempts in a row without a new event
        self.terminal: Event | None = None
        self.error_event: ErrorEvent | None = None
        self.last_error: str | None = None
        # A stream read with GET from the start can always be asked for again; a POST only before any event.
        self._from_get = first.method == "GET"
        self._decoder = SSEDecoder()
        self._connection_frames = 0  # frames the current connection has carried

    # --- requests ---------------------------------------------------------------------------------------------

    @property
    def resuming(self) -> bool:
        """Whether a new connection continues the stream (GET ... starting_after) rather than repeating the
        first request: once an event arrived, or from the start for a stream that was itself a GET."""
        return self.events_received > 0 or self._from_get

    def request(self) -> RequestSpec:
        if not self.resuming or self.response_id is None:
            return self.first
        params: dict[str, Any] = {"stream": "true"}
        if self.last_sequence_number is not None:
            params["starting_after"] = self.last_sequence_number
        extra = {k: v for k, v in self.first.headers.items() if k not in ("content-type",)}
        return json_request(self.options, "GET", response_path(self.response_id), params=params, stream=True,
                            extra_headers=extra, timeout=self.first.timeout)

    def on_status(self, status: int, headers: Mapping[str, str]) -> bool:
        """True when the answer is the event stream (read its body with ``feed``); else read the whole body and
        call ``on_error_body``."""
        if 200 <= status < 300:
            self._decoder = SSEDecoder()
            self._connection_frames = 0
            return True
        return False

    def on_error_body(self, status: int, headers: Mapping[str, str], body: bytes) -> Retry | Fail:
        error = error_from_response(status, headers, body)
        if self.events_received == 0:
            # Before any event an error status answers the request itself (a GET stream included): the typed
            # error, retried only where a retry can help (429, 5xx).
            step = retry_or_fail(self, error)
            if isinstance(step, Retry):
                self.retries += 1
            return step
        self.last_error = str(error)
        if isinstance(error, NotFoundError):
            return Fail(self._interrupted(f"the server no longer has it ({error})"))
        step = retry_or_fail(self, error, self.policy.max_resumes)
        if isinstance(step, Fail):
            return Fail(self._interrupted(f"resuming failed after {self.attempts} attempt(s): {error}"))
        self.resumes += 1
        return step

    # --- the body ---------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events ``chunk`` completes, each folded into the snapshot just before it is handed out."""
        for frame in self._decoder.feed(chunk):
            yield from self._frame(frame)

    def end_of_body(self) -> Iterator[Event]:
        """The body ended cleanly: an event the last bytes completed without a blank line."""
        for frame in self._decoder.close():
            yield from self._frame(frame)

    def feed_message(self, data: bytes) -> Iterator[Event]:
        """One event's JSON as a whole message (WebSocket mode): decoded, deduplicated and folded like a frame."""
        return self._frame(Frame(None, data))

    def _frame(self, frame: Frame) -> Iterator[Event]:
        data = frame.data
        if data == DONE:
            return
        self._connection_frames += 1
        repairer = self.repairer
        obj: dict[str, Any] | None = None
        if repairer is not None:
            try:
                decoded = _json.decode(data)
            except msgspec.DecodeError:
                decoded = None
            if not isinstance(decoded, dict):
                repairer.note("not-json", repr(data[:40]))
                return
            obj = decoded
            seq = obj.get("sequence_number")
            provider_seq = seq if type(seq) is int else None
            event: Event | None = None
        else:
            event = decode_event(data)
            if frame.event is not None and frame.event != event.type:
                event.__dict__["_sse_event"] = frame.event  # the checker reports it; compat mode trusts data.type
            provider_seq = event.sequence_number
        if provider_seq is not None:
            if self.last_sequence_number is not None and provider_seq <= self.last_sequence_number:
                self.duplicates_dropped += 1  # already delivered before a reconnect
                return
            self.last_sequence_number = provider_seq
        if repairer is not None and obj is not None:
            if repairer.repair(frame.event, obj):
                event = decode_event_obj(obj, lenient=True)
                event.__dict__["_wire"] = obj  # encodes as repaired, provider extras kept
            else:
                event = decode_event(data, lenient=True)
        assert event is not None
        yield self._deliver(event)

    def _deliver(self, event: Event) -> Event:
        self.accumulator.feed(event)
        self.events_received += 1
        self.attempts = 0  # progress: the next drop starts a fresh round of attempts
        response = getattr(event, "response", None)
        if isinstance(response, Response):
            if self.response_id is None and response.id:
                self.response_id = response.id
            if response.store is not None and self.store is not False:
                self.store = response.store
        if type(event) is ErrorEvent:
            self.error_event = event
        if event.type in TERMINAL_EVENT_TYPES:
            self.terminal = event
        return event

    # --- the end of a connection ------------------------------------------------------------------------------

    def on_eof(self) -> Retry | Fail | Finish:
        """The body ended cleanly (call after ``end_of_body``)."""
        if self.terminal is not None:
            return Finish()
        if self._from_get and self.events_received == 0 and self._connection_frames == 0:
            # A stream asked for after its last event (``starting_after`` = the terminal event's number): the
            # server has nothing more to send and ends the body at once. That is an empty stream, as in
            # openai-python, not a dropped one.
            return Finish()
        if self.repairer is not None and (self.events_received > 0 or self.error_event is not None):
            return Finish(self._synthesize(self.repairer))
        return self._dropped("the stream ended without a terminal event", None)

    def on_transport_error(self, exc: Exception) -> Retry | Fail | Finish:
        if self.terminal is not None:
            return Finish()  # everything arrived; only the end of the body was lost
        return self._dropped(str(exc) or type(exc).__name__, exc)

    def _dropped(self, reason: str, exc: Exception | None) -> Retry | Fail | Finish:
        self.last_error = reason
        if not self.resuming:
            error: APIError = (
                transport_error(exc, self.first.url) if exc is not None
                else APIConnectionError(f"{self.first.url}: {reason} and before any event", url=self.first.url)
            )
            if self.attempts >= self.policy.max_retries:
                return Fail(error)
            self.attempts += 1
            self.retries += 1
            return Retry(self.policy.delay(self.attempts), str(error))
        why = self._not_resumable()
        if why is not None:
            if self.error_event is not None:
                return Finish()  # the error is the answer; StreamError carries what arrived
            return Fail(self._interrupted(f"{reason}; it cannot be resumed: {why}"))
        if self.attempts >= self.policy.max_resumes:
            return Fail(self._interrupted(f"gave up after {self.attempts} resume attempt(s); last error: {reason}"))
        self.attempts += 1
        self.resumes += 1
        return Retry(self.policy.delay(self.attempts), reason)

    def _not_resumable(self) -> str | None:
        if self.response_id is None:
            return "no response id was received"
        if self.store is False:
            return "the response is not stored (store: false)"
        if self.last_sequence_number is None:
            return "its events carry no sequence_number to resume after"
        return None

    def _interrupted(self, detail: str) -> StreamInterruptedError:
        where = f"response {self.response_id}" if self.response_id else "the response"
        after = (f" after sequence_number {self.last_sequence_number}" if self.last_sequence_number is not None
                 else "")
        return StreamInterruptedError(
            f"the stream of {where} broke{after} ({self.events_received} events received): {detail}",
            url=self.first.url,
            response_id=self.response_id,
            last_sequence_number=self.last_sequence_number,
            attempts=self.attempts,
            snapshot=self.accumulator.response,
        )

    def _synthesize(self, repairer: Repairer) -> Iterator[Event]:
        closing = repairer.closing(self.accumulator)
        for payload in closing:
            yield self._deliver(decode_event_obj(payload, lenient=True))
        terminal = repairer.terminal(self.accumulator, self.error_event, closed_items=bool(closing))
        yield self._deliver(decode_event_obj(terminal, lenient=True))

    def final_error(self) -> StreamError | None:
        """The ``StreamError`` to raise once the stream is over, if it carried an ``error`` event."""
        event = self.error_event
        if event is None:
            return None
        return StreamError(
            event.error_message or "the stream reported an error",
            code=event.error_code,
            param=event.error_param,
            response=self.accumulator.response,
        )


class StreamView:
    """What both faces' stream objects show while (and after) events arrive."""

    _machine: StreamMachine

    @property
    def snapshot(self) -> Response:
        """The response as it stands: every item and text received so far."""
        return self._machine.accumulator.response

    @property
    def output_text(self) -> str:
        return self._machine.accumulator.output_text

    @property
    def function_calls(self) -> list[FunctionCall]:
        return self._machine.accumulator.function_calls

    @property
    def response_id(self) -> str | None:
        return self._machine.response_id

    @property
    def status(self) -> str:
        return self._machine.accumulator.status

    @property
    def done(self) -> bool:
        return self._machine.terminal is not None

    @property
    def resumes(self) -> int:
        """How many times the stream was resumed after the connection dropped."""
        return self._machine.resumes

    @property
    def retries(self) -> int:
        """How many times the first request was tried again before any event arrived."""
        return self._machine.retries

    @property
    def repairs(self) -> list[str]:
        """Compatibility mode: what was repaired, one readable line per kind of repair (empty otherwise)."""
        repairer = self._machine.repairer
        return repairer.repairs if repairer is not None else []

    @property
    def problems(self) -> list[Problem]:
        """What the accumulator found wrong with the stream as delivered."""
        return self._machine.accumulator.problems

    @property
    def last_sequence_number(self) -> int | None:
        return self._machine.last_sequence_number

    @property
    def events_received(self) -> int:
        return self._machine.events_received
