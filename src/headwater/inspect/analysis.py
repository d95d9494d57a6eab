"""What the inspector shows of a stream, built by the protocol core: one row per event, the checker's findings on
the rows they concern, and the response as the Accumulator had it at any event.

Sans-I/O like the core: feed it frames (a recording's bytes, or a live stream's as they come) and read rows,
findings and snapshots. A recording of several responses is cut at each ``response.created`` (as
``headwater check`` does), and each response is checked and folded on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.codec import decode_event, encode_event
from headwater.protocol.conformance import RULES_BY_ID, Checker, Violation, report_lines
from headwater.protocol.errors import DecodeError
from headwater.protocol.events import Event, UnknownEvent
from headwater.protocol.recording import read_recording
from headwater.protocol.resources import to_builtins
from headwater.protocol.sse import DONE, SSEDecoder

__all__ = ["Recorded", "ResponseStream", "StreamAnalysis", "analyse_recording"]

# The field naming a part of an item, and how the timeline shows it.
_PART_FIELDS = (("content_index", "c"), ("summary_index", "s"), ("command_index", "cmd"))


@dataclass(slots=True)
class Recorded:
    """One event as it came: its payload bytes, the SSE ``event:`` name it was sent under, and when it arrived
    (seconds since the stream's first byte; None for a recording, which keeps no times)."""

    event: Event
    data: bytes
    sse_event: str | None
    at: float | None


def _fields(event: Event) -> Any:
    """Where an event's wire fields can be read: an unknown event keeps them in ``data``."""
    return event.data if isinstance(event, UnknownEvent) else None


def _get(event: Event, data: Any, name: str) -> Any:
    value = data.get(name) if data is not None else getattr(event, name, None)
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _row(index: int, rec: Recorded, previous: Recorded | None) -> dict[str, Any]:
    event = rec.event
    data = _fields(event)
    item_id = _get(event, data, "item_id")
    if item_id is None:  # output_item.added / done name their item inside it
        item = data.get("item") if data is not None else getattr(event, "item", None)
        item_id = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
        if not isinstance(item_id, str):
            item_id = None
    part = None
    for name, short in _PART_FIELDS:
        value = _get(event, data, name)
        if value is not None:
            part = f"{short}{value}"
            break
    dt = None
    if rec.at is not None and previous is not None and previous.at is not None:
        dt = round((rec.at - previous.at) * 1000, 1)
    row: dict[str, Any] = {
        "i": index,
        "seq": _get(event, data, "sequence_number") if data is not None else event.sequence_number,
        "type": event.type,
        "oi": _get(event, data, "output_index"),
        "part": part,
        "item": item_id,
        "dt": dt,
        "t": None if rec.at is None else round(rec.at * 1000, 1),
        "size": len(rec.data),
        "f": [],
    }
    if rec.sse_event is not None and rec.sse_event != event.type:
        row["sse"] = rec.sse_event
    return row


def _finding(violation: Violation, row: int, *, end: bool) -> dict[str, Any]:
    return {
        "row": row,
        "rule": violation.rule_id,
        "severity": violation.severity,
        "message": violation.message,
        "source": RULES_BY_ID[violation.rule_id].source,
        "end": end,
    }


@dataclass(slots=True)
class ResponseStream:
    """The events of one response, checked and folded as they are added."""

    offset: int  # where its first event stands in the whole recording (the index ``headwater check`` prints)
    events: list[Recorded] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    checker: Checker = field(default_factory=Checker)
    head: Accumulator = field(default_factory=Accumulator)
    finished: bool = False

    def add(self, rec: Recorded) -> dict[str, Any]:
        """Check and fold one event; its row, with the findings it raised."""
        index = len(self.events)
        row = _row(index, rec, self.events[-1] if self.events else None)
        self.events.append(rec)
        self.rows.append(row)
        self.head.feed(rec.event)
        for violation in self.checker.feed(rec.event):
            self._found(violation, index, end=False)
        return row

    def finish(self) -> list[dict[str, Any]]:
        """End of stream: the end-of-stream findings, shown on the last row."""
        if self.finished:
            return []
        self.finished = True
        self.head.end()
        start = len(self.findings)
        for violation in self.checker.finish():
            self._found(violation, max(len(self.rows) - 1, 0), end=True)
        return self.findings[start:]

    def _found(self, violation: Violation, index: int, *, end: bool) -> None:
        self.violations.append(violation)
        finding = _finding(violation, index, end=end)
        self.findings.append(finding)
        if self.rows:
            self.rows[index]["f"].append(len(self.findings) - 1)

    def snapshot(self, index: int) -> dict[str, Any]:
        """The response as the Accumulator had it just after event ``index`` (clamped to the events there are).

        Folds from the first event each time: a fresh Accumulator takes about 1 ms per 1,500 events, so even a
        10,000-event stream answers in a few milliseconds, and nothing but the Accumulator decides the text.
        """
        last = len(self.events) - 1
        index = max(0, min(index, last))
        if index == last:
            acc = self.head
        else:
            acc = Accumulator()
            for rec in self.events[: index + 1]:
                acc.feed(rec.event)
        return {
            "index": index,
            "response": to_builtins(acc.response),
            "output_text": acc.output_text,
            "problems": [{"index": p.event_index, "code": p.code, "message": p.message} for p in acc.problems],
        }

    def summary(self) -> dict[str, Any]:
        errors = sum(1 for v in self.violations if v.severity == "error")
        return {
            "id": self.head.response.id or None,
            "offset": self.offset,
            "events": len(self.rows),
            "errors": errors,
            "warnings": len(self.violations) - errors,
            "finished": self.finished,
        }


class StreamAnalysis:
    """A whole stream or recording, as one response or cut into responses at each ``response.created``.

    ``feed``/``close`` take a live stream's bytes as they come (SSE or JSONL, detected from the first bytes);
    ``add`` takes one event; ``analyse_recording`` reads a whole recording as ``headwater check`` does. Bytes
    that give no event (a payload that is not JSON, a recording cut mid-event) are ``problems``, with the events
    around them kept.
    """

    def __init__(self, *, split: bool = True) -> None:
        self.responses: list[ResponseStream] = []
        self.problems: list[dict[str, Any]] = []  # read problems: line, offset (None when live), severity, message
        self.split = split
        self.count = 0
        self._frames = SSEDecoder()

    def feed(self, chunk: bytes, at: float | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Decode and add what ``chunk`` completes; (response number, row) for each event added."""
        return self._add_frames(self._frames.feed(chunk), at)

    def close(self, at: float | None = None) -> list[tuple[int, dict[str, Any]]]:
        """End of input: add what the decoder still held, then finish every response."""
        out = self._add_frames(self._frames.close(), at)
        self.finish()
        return out

    def finish(self) -> None:
        for response in self.responses:
            response.finish()

    def _add_frames(self, frames: Iterable[Any], at: float | None) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for frame in frames:
            if frame.data == DONE:
                continue
            try:
                event = decode_event(frame.data, lenient=True)
            except DecodeError as exc:
                self.problems.append({"line": None, "offset": None, "severity": "error",
                                      "message": f"event {self.count}: {exc.detail}"})
                continue
            if frame.event is not None and frame.event != event.type:
                event.__dict__["_sse_event"] = frame.event  # as EventDecoder does, so SSE-NAME sees it
            out.append(self.add(Recorded(event, frame.data, frame.event, at)))
        return out

    def add(self, rec: Recorded) -> tuple[int, dict[str, Any]]:
        if not self.responses or (
            self.split and rec.event.type == "response.created" and self.responses[-1].events
        ):
            if self.responses:
                self.responses[-1].finish()
            self.responses.append(ResponseStream(offset=self.count))
        self.count += 1
        return len(self.responses) - 1, self.responses[-1].add(rec)

    def check_lines(self, path: str) -> Iterator[str]:
        """What ``headwater check PATH`` prints of this stream: its read problems, its findings (a recurring one
        once, with where else it stands), then the summary line."""
        errors = sum(p["severity"] == "error" for p in self.problems)
        warnings = len(self.problems) - errors
        for problem in self.problems:
            where = f"line {problem['line']} (byte {problem['offset']}): " if problem["line"] is not None else ""
            yield f"{path}: {where}{problem['message']}"
        found = [(r.offset + v.index, v) for r in self.responses for v in r.violations]
        errors += sum(v.severity == "error" for _, v in found)
        warnings += sum(v.severity != "error" for _, v in found)
        yield from report_lines(path, found)
        yield f"1 file(s): {errors} error(s), {warnings} warning(s)"

    def export(self, kind: str, response: int | None = None) -> bytes:
        """The stream (or one response of it) as SSE (each event under the name it was sent with) or JSONL."""
        chosen = self.responses if response is None else self.responses[response : response + 1]
        out = bytearray()
        for stream in chosen:
            for rec in stream.events:
                if kind == "jsonl":
                    out += rec.data + b"\n"
                else:
                    out += b"event: " + (rec.sse_event or rec.event.type).encode() + b"\n"
                    for line in rec.data.split(b"\n"):
                        out += b"data: " + line + b"\n"
                    out += b"\n"
        return bytes(out)


def analyse_recording(data: bytes) -> StreamAnalysis:
    """A whole recording, read as ``headwater check`` reads it (``read_recording``), cut into responses when it
    holds several ``response.created``, each checked and folded."""
    recording = read_recording(data)
    analysis = StreamAnalysis(split=recording.responses > 1)
    analysis.problems = [
        {"line": p.line, "offset": p.offset, "severity": p.severity, "message": p.message}
        for p in recording.problems
    ]
    for event in recording.events:
        raw = event.__dict__.get("_raw")
        analysis.add(Recorded(event, raw if isinstance(raw, bytes) else encode_event(event),
                              event.__dict__.get("_sse_event"), None))
    analysis.finish()
    return analysis
