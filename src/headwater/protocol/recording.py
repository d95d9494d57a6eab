"""A recorded stream (an SSE transcript or JSONL) read whole: its events, and what could not be read, and where.

Unlike the live decoder, a recording is read to its end whatever it holds: a payload that is not JSON (a file cut
mid-line), or a last event with no blank line after it, is a ``ReadProblem`` with its line and byte offset, and
the events around it are kept. Sans-I/O: it takes the recording's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .codec import decode_event
from .errors import DecodeError, SSEError
from .events import Event, ResponseCreated
from .sse import DONE, Frame, SSEDecoder

__all__ = ["ReadProblem", "Recording", "read_recording"]

_CHUNK = 1 << 16


@dataclass(frozen=True)
class ReadProblem:
    """Bytes of a recording that did not give an event. ``line`` is 1-based; ``offset`` a byte offset."""

    line: int
    offset: int
    severity: str  # "error": bytes lost; "warning": read, but not as the rules say
    message: str

    def __str__(self) -> str:
        return f"line {self.line} (byte {self.offset}): {self.message}"


@dataclass
class Recording:
    """The events of a recording in order, and the problems met reading it."""

    events: list[Event] = field(default_factory=list)
    problems: list[ReadProblem] = field(default_factory=list)
    mode: str | None = None  # "sse" or "jsonl"

    @property
    def responses(self) -> int:
        """How many responses it holds, by its ``response.created`` events (a resumed stream has none)."""
        return sum(type(event) is ResponseCreated for event in self.events)


def read_recording(data: bytes) -> Recording:
    """Every readable event of ``data``, with a ``ReadProblem`` for each part that is not (SSE or JSONL, detected
    from the first bytes, as ``EventDecoder`` does)."""
    out = Recording()
    decoder = SSEDecoder()
    located = _Locator(data)
    try:
        for start in range(0, len(data), _CHUNK):
            _add(out, decoder.feed(data[start : start + _CHUNK]), located)
        _add(out, decoder.close(), located)
    except SSEError as exc:
        out.problems.append(located.problem(exc.offset, "error", f"{exc}; the rest is not read"))
    out.mode = decoder.mode
    if decoder.mode == "sse":
        _unterminated_tail(out, data, located)
    return out


class _Locator:
    """Finds each frame's payload in the recording, in order, to say on which line a problem stands."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0  # just past the last payload found

    def find(self, payload: bytes) -> int:
        last_line = payload.rsplit(b"\n", 1)[-1]  # a multi-line payload stands in the file line by line
        at = self.data.find(last_line, self.pos) if last_line else -1
        if at < 0:
            return self.pos
        self.pos = at + len(last_line)
        return at - (len(payload) - len(last_line))

    def problem(self, offset: int, severity: str, message: str) -> ReadProblem:
        offset = max(0, min(offset, len(self.data)))
        return ReadProblem(self.data.count(b"\n", 0, offset) + 1, offset, severity, message)


def _decode(frame_data: bytes, name: str | None) -> Event:
    event = decode_event(frame_data, lenient=True)
    if name is not None and name != event.type:
        event.__dict__["_sse_event"] = name  # the checker reports an `event:` name that differs from the type
    return event


def _add(out: Recording, frames: list[Frame], located: _Locator) -> None:
    for frame in frames:
        at = located.find(frame.data)
        if frame.data == DONE:
            continue
        try:
            out.events.append(_decode(frame.data, frame.event))
        except DecodeError as exc:
            cut = " (the recording is cut here?)" if at + len(frame.data) >= len(located.data.rstrip()) else ""
            out.problems.append(located.problem(at, "error", f"event {len(out.events)}: {exc.detail}{cut}"))


def _unterminated_tail(out: Recording, data: bytes, located: _Locator) -> None:
    """SSE drops a last event with no blank line after it (WHATWG); a recording says so, and keeps the event
    when its payload is whole (a transcript that lost only its final newline)."""
    rest = data[located.pos :].lstrip(b"\r\n")
    lines = rest.splitlines()
    payload = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
    if not payload:
        return
    names = [line[6:].strip().decode("utf-8", "replace") for line in lines if line.startswith(b"event:")]
    offset = len(data) - len(rest)
    try:
        event = _decode(b"\n".join(payload), names[-1] if names else None)
    except DecodeError as exc:
        out.problems.append(
            located.problem(offset, "error", f"the recording ends inside an event (cut?): {exc.detail}")
        )
        return
    out.events.append(event)
    out.problems.append(
        located.problem(offset, "warning", "the last event has no blank line after it (SSE drops it; read here)")
    )
