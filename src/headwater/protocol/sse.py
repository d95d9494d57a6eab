"""Incremental, sans-I/O Server-Sent Events framing: bytes in, `Frame`s out (WHATWG event-stream rules), and back.

Framing only: payloads stay bytes and are never JSON-decoded here. Also reads JSONL recordings (one payload per
line, auto-detected). No sockets, no event loop, no reconnection logic (`last_event_id`/`retry` are only exposed).
"""

from __future__ import annotations

from io import BytesIO
from itertools import repeat
from typing import Any, Final

import msgspec

from .errors import SSEError

try:
    from mypy_extensions import mypyc_attr  # read by mypyc when it compiles this module (setup.py)
except ImportError:  # mypy, which brings it, is a dev dependency: without it, a stand-in that does nothing

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls

__all__ = ["DONE", "WRITE_BYTES", "Frame", "SSEDecoder", "SSEError", "encode_comment", "encode_frame", "join_frames"]

DONE: Final = b"[DONE]"
"""The `data: [DONE]` end-of-stream sentinel of OpenAI / OpenRouter; delivered as an ordinary frame's data."""

_BOM: Final = b"\xef\xbb\xbf"
_WHITESPACE: Final = b" \t\r\n"
# A pending line may exceed max_event_size by this much before it is refused: room for "event: "/"data: ".
_LINE_SLACK: Final = 64
_NAME_CACHE_SIZE: Final = 256
_PENDING_MAX: Final = 64 * 1024
_EVENT: Final = b"event: "
_DATA: Final = b"data: "
_FIRST: Final = (_EVENT, _DATA)  # the first lines an unfinished event may keep whole (see `_rest`)
# b"event: X" (or b"event: X\r") -> "X", shared by every decoder: a stream's names are mostly the last stream's,
# and a pure function of the line. At most _NAME_CACHE_SIZE lines (then emptied); only checked lines go in.
_NAMES: dict[bytes, str | None] = {}


# From this size on, a region's lines are cut by ``_lines`` (one ``memchr`` a line) rather than ``bytes.split``
# (which compares byte by byte, about 5 instructions a byte): below it, making the BytesIO costs more than it saves.
_READLINES_MIN: Final = 256


def _lines(region: bytes) -> list[bytes]:
    """``region``'s lines, each with its LF, and then what follows the last LF (b"" if ``region`` ends with one):
    ``region.split(b"\\n")`` with the LFs kept, found with ``memchr`` (``io.BytesIO`` shares the bytes, no copy)."""
    lines = BytesIO(region).readlines()
    if not region or region[-1] == 10:
        lines.append(b"")
    return lines


class Frame(msgspec.Struct, gc=False):
    """One dispatched SSE event (or one JSONL line).

    `event`: the event type (None when the `event:` field is absent or empty); `data`: the data lines joined with
    b"\\n"; `id`: the `id:` field given in this event's block (None if none; the stream-wide last event ID is
    `SSEDecoder.last_event_id`); `retry`: the valid `retry:` field in this block, in milliseconds, or None.
    A msgspec Struct: slotted (`__slots__` is data/event/id/retry), with `__repr__` and `__eq__`, built in C about
    4x faster than a Python `__init__`, and not tracked by the cyclic GC (its fields cannot form cycles).
    """

    event: str | None
    data: bytes
    id: str | None = None
    retry: int | None = None


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests' subclasses swap fast paths out
class SSEDecoder:
    """Feed it the bytes of one stream as they arrive; it returns the complete frames.

    Rules: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation, with data
    kept as bytes. `mode` is "sse" or "jsonl" (forced, or detected from the first non-whitespace byte: `{` means
    JSONL); None until detected. `comments` counts comment lines (keep-alives). `last_event_id` and `retry` are
    the stream-wide WHATWG "last event ID" and reconnection time. An event whose data exceeds `max_event_size`
    bytes (or a single line that long) raises `SSEError`; the decoder must not be used after that.
    Work is linear in the input: every byte is scanned a bounded number of times, whatever the chunking.
    """

    mode: str | None
    comments: int
    last_event_id: str
    retry: int | None

    def __init__(self, *, max_event_size: int = 16 * 1024 * 1024, mode: str | None = None) -> None:
        if mode not in (None, "sse", "jsonl"):
            raise ValueError(f"mode must be 'sse', 'jsonl' or None (auto-detect), not {mode!r}")
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be positive, not {max_event_size}")
        self.mode = mode
        self.comments = 0
        self.last_event_id = ""
        self.retry = None
        self._max = max_event_size
        self._line_max = max_event_size + _LINE_SLACK  # for JSONL, max_event_size + 1 (room for a CR)
        self._ready = False  # BOM handled and mode known, and the mode is "sse": feed() takes its fast path
        self._bom_done = False
        self._closed = False
        self._bom_head = b""  # the stream's first bytes (1 or 2) while they may be a BOM split over chunks
        self._ws_head = bytearray()  # the last line of the leading whitespace while the mode is undecided
        self._pos = 0  # stream offset of the next byte to be fed
        # Pending incomplete line (never holds CR or LF) and its stream offset.
        self._buf = bytearray()
        self._buf_off = 0
        # Or: the unfinished last event of the previous chunk, kept whole (no field applied yet), and its offset.
        # Small enough that nothing in it can break the size limit; never holds CRs.
        self._pending = b""
        self._pending_off = 0
        self._pending_max = min(max_event_size, _PENDING_MAX)
        self._skip_lf = False  # the last line ended with a CR at the end of a chunk: a leading LF is its tail
        # The event being built (WHATWG buffers), reset by each blank line.
        self._has_fields = False
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._event_start = 0
        self._names = _NAMES  # b"event: X" -> "X", for the fast path
        # What the current feed() call completes, as columns: the event names, the data, and (index, id, retry)
        # for the rare frame whose block set an id or retry field.
        self._out_names: list[str | None] = []
        self._out_data: list[bytes] = []
        self._out_meta: list[tuple[int, str | None, int | None]] = []

    # -- public API ---------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Frame]:
        """Take the next bytes of the stream; return the frames they complete (possibly none)."""
        return self._frames(*self.feed_columns(chunk))

    def feed_columns(self, raw: bytes | bytearray | memoryview) -> tuple[list[str | None], list[bytes]]:
        """``feed``, but the frames it completes as two columns, their events (names) and their data, with no
        ``Frame`` built: what ``stream.EventDecoder`` reads, and cheaper. A frame's ``id`` and ``retry`` are not
        in the columns (``last_event_id`` and ``retry`` still follow them)."""
        if self._out_meta:
            self._out_meta.clear()
        # A bytearray or memoryview (or a bytes subclass) is copied: frames must hold immutable, plain bytes.
        chunk = raw if type(raw) is bytes else bytes(raw)
        if self._ready and not (self._buf or self._skip_lf or self._has_fields) and 13 not in chunk:
            columns = self._feed_lines(chunk)
            if columns is not None:
                return columns
        names: list[str | None] = []
        data: list[bytes] = []
        self._out_names = names
        self._out_data = data
        if self._ready:
            self._feed(chunk)
        else:
            self._feed_slow(chunk)
        return names, data

    def _feed_lines(self, chunk: bytes) -> tuple[list[str | None], list[bytes]] | None:
        """The hot path: ``feed_columns`` for a chunk that, after the kept start of its first event, completes
        whole events of the two common shapes (see ``_scan``) and ends inside the next one or right after an
        event. Its frames as columns, the state updated; or None, nothing changed, for anything else (the
        general path then takes the chunk). The decoder is ready, holds no pending line, no event fields and no
        CR; nor does the chunk.

        One cut at LFs (``_lines``, or ``bytes.split`` for a short chunk) and one pass over the lines, with no other
        scan of the bytes: where the complete events end and how many lines the rest has follow from the lines and
        their lengths."""
        pending = self._pending
        joined = pending + chunk if pending else chunk
        if len(joined) > self._max:
            return None  # a region of whole events larger than an event may be: _feed cuts it up and checks it
        eol = 1 if len(joined) >= _READLINES_MIN else 0
        lines = _lines(joined) if eol else joined.split(b"\n")
        names: list[str | None] = []
        payloads: list[bytes] = []
        start = self._scan(lines, names, payloads, eol)
        if start <= 0:
            return None  # an unusual line (-1), or no complete event (0)
        base = self._pending_off if pending else self._pos
        self._pos += len(chunk)
        last = len(lines) - 1
        if start == last and not lines[last]:
            self._pending = b""  # the chunk ends right after an event
            return names, payloads
        # The chunk ends inside an event, which starts at lines[start]. With at most its first line complete (an
        # "event:" or "data:" one, as _scan read it), keep it whole for the next chunk; otherwise apply its lines
        # now. (The LFs between the rest's lines, if the lines do not hold theirs: last - start of them.)
        size = 0 if eol else last - start
        for index in range(start, last + 1):
            size += len(lines[index])
        cut = len(joined) - size
        rest = joined[cut:]
        if last - start <= 1 and size <= self._pending_max:
            self._pending = rest
            self._pending_off = base + cut
        else:
            self._pending = b""
            self._out_names = names
            self._out_data = payloads
            self._general(rest, base + cut)
        return names, payloads

    def _frames(self, names: list[str | None], data: list[bytes]) -> list[Frame]:
        frames = list(map(Frame, names, data))
        meta = self._out_meta
        if meta:
            for index, event_id, retry in meta:
                frames[index] = Frame(names[index], data[index], event_id, retry)
            meta.clear()
        return frames

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        base = self._pos
        self._pos = base + len(chunk)
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
                base += 1
                if not chunk:
                    return
        if self._pending:
            # The start of an event (LF line ends, no field applied yet) was kept whole. If this chunk ends it,
            # frame it in one piece on the fast path; if not, apply its lines now (each byte is re-read once).
            pending = self._pending
            self._pending = b""
            if 13 not in chunk and (chunk.find(b"\n\n") >= 0 or (chunk[0] == 10 and pending[-1] == 10)):
                self._feed_sse(pending + chunk, self._pending_off)
                return
            self._general(pending, self._pending_off)  # no blank line in it: nothing to dispatch
        buf = self._buf
        if buf:
            if 10 not in chunk and 13 not in chunk:
                # Still inside one long line: append (amortised O(len(chunk))), never re-scan the buffer.
                buf += chunk
                if len(buf) > self._line_max:
                    self._line_too_long(len(buf))
                return
            if 13 not in chunk:
                # The long line ends in this chunk: finish it on its own, so that its bytes are copied once
                # more here and not again by the slicing and line splitting of the general path.
                end = chunk.find(b"\n")
                buf += chunk[:end]
                if len(buf) > self._line_max:
                    self._line_too_long(len(buf))
                if buf.startswith(_DATA):  # the usual long line: its value copied once, straight from the buffer
                    with memoryview(buf) as view:
                        value = bytes(view[6:])
                    self._add_data(value, self._buf_off)
                else:
                    self._process([bytes(buf)], self._buf_off, 1)
                buf.clear()
                if end + 1 < len(chunk):
                    self._feed_sse(chunk[end + 1 :], base + end + 1)
                return
            chunk = bytes(buf) + chunk  # each pending byte is copied once, when its line completes
            base = self._buf_off
            buf.clear()
        self._feed_sse(chunk, base)

    def close(self) -> list[Frame]:
        """Signal the end of the stream; return what it completes.

        SSE: an event not terminated by a blank line is discarded (WHATWG). JSONL: a last line without a newline
        is a frame. Further `feed` calls raise ValueError; `close` again returns [].
        """
        if self._closed:
            return []
        names: list[str | None] = []
        data: list[bytes] = []
        self._out_names = names
        self._out_data = data
        self._out_meta.clear()
        if self._bom_head:  # not a BOM after all: content
            self._start(b"", final=True)
        if self.mode == "jsonl" and self._buf:
            line = bytes(self._buf)
            if line[-1] == 13:
                line = line[:-1]
            if len(line) > self._max:
                self._jsonl_too_long(len(line), self._buf_off)
            if line and not line.isspace():
                names.append(None)
                data.append(line)
        self._buf.clear()
        self._pending = b""
        self._data = []
        self._closed = True
        self._ready = False
        return self._frames(names, data)

    # -- start of stream: BOM, mode detection, JSONL --------------------------------------------------------------

    def _feed_slow(self, chunk: bytes) -> None:
        if self._closed:
            raise ValueError("SSEDecoder.feed() called after close()")
        if not chunk:
            return
        if not self._bom_done or self.mode is None:
            self._start(chunk, final=False)
        else:
            self._feed_jsonl(chunk)

    def _start(self, chunk: bytes, *, final: bool) -> None:
        if not self._bom_done:
            head = self._bom_head + chunk
            if not final and len(head) < 3 and _BOM.startswith(head):
                self._bom_head = head  # maybe a BOM split over chunks: wait for its other bytes
                return
            self._bom_done = True
            self._bom_head = b""
            if head.startswith(_BOM):
                head = head[3:]
                self._pos += 3
            chunk = head
        if self.mode is None:
            ws = self._ws_head
            stripped = chunk.lstrip(_WHITESPACE)
            if stripped:
                self.mode = "jsonl" if stripped[0] == 0x7B else "sse"
                if ws:
                    chunk = bytes(ws) + chunk  # replay the kept whitespace (self._pos is its offset)
                    ws.clear()
            else:
                # Only whitespace so far: blank lines do nothing in either mode, so drop whole lines (up to the last
                # LF: a CR ends a line in SSE but not in JSONL) and keep the rest to replay once the mode is known.
                cut = chunk.rfind(b"\n") + 1
                if cut:
                    self._pos += len(ws) + cut
                    ws.clear()
                ws += chunk[cut:] if cut else chunk
                if final or len(ws) <= self._max + _LINE_SLACK:
                    return
                # Whitespace without a LF for longer than a line may be: as the first line of JSONL that is too
                # long, so take it as SSE (where CRs make blank lines) rather than buffer it without bound.
                self.mode = "sse"
                chunk = bytes(ws)
                ws.clear()
        if self.mode == "jsonl":
            self._line_max = self._max + 1
        self._ready = self.mode == "sse"
        if not chunk:
            return
        if self.mode == "jsonl":
            self._feed_jsonl(chunk)
        else:
            self._feed(chunk)

    def _feed_jsonl(self, chunk: bytes) -> None:
        base = self._pos
        self._pos = base + len(chunk)
        buf = self._buf
        end = chunk.rfind(b"\n")
        if end < 0:
            if not buf:
                self._buf_off = base
            buf += chunk
            if len(buf) > self._line_max:
                self._jsonl_too_long(len(buf), self._buf_off)
            return
        if buf:
            buf += chunk[:end]
            region = bytes(buf)
            start = self._buf_off
            buf.clear()
        else:
            region = chunk[:end]
            start = base
        if end + 1 < len(chunk):
            buf += chunk[end + 1 :]
            self._buf_off = base + end + 1
            if len(buf) > self._line_max:
                self._jsonl_too_long(len(buf), self._buf_off)
        lines = region.split(b"\n")
        if len(region) > self._max:
            off = start
            for line in lines:
                if len(line) - (line[-1:] == b"\r") > self._max:
                    self._jsonl_too_long(len(line), off)
                off += len(line) + 1
        if b"\r" in region:
            lines = [line[:-1] if line[-1:] == b"\r" else line for line in lines]
        kept = [line for line in lines if line and (line[0] == 123 or not line.isspace())]
        self._out_names += repeat(None, len(kept))
        self._out_data += kept

    def _jsonl_too_long(self, size: int, offset: int) -> None:
        raise SSEError(
            f"JSONL line of {size} bytes or more, starting at byte offset {offset}, exceeds "
            f"max_event_size={self._max}",
            offset=offset,
        )

    # -- SSE ------------------------------------------------------------------------------------------------------

    def _feed_sse(self, data: bytes, base: int) -> None:
        """Frame `data`, which starts at a line start at stream offset `base`."""
        crlf = 13 in data  # any CR: the line-end-checking variant of the fast path
        nl2 = b"\r\n\r\n" if crlf else b"\n\n"
        pos = 0
        if self._has_fields:
            # Finish the event begun in an earlier chunk line by line, up to and including its blank line.
            if data.startswith(b"\r\n" if crlf else b"\n"):
                pos = 1 + crlf
            else:
                pos = data.find(nl2)
                if pos < 0:
                    self._general(data, base)
                    return
                pos += len(nl2)
            self._general(data[:pos], base)
        # [pos:cut] is whole events: it ends with a line end and a blank line (every CR ends a line, so "\r\n\r\n"
        # does too, whatever the mix of line ends). [cut:] is the start of the next event.
        cut = data.rfind(nl2, pos)
        if cut < 0:
            cut = pos
        else:
            cut += len(nl2)
            region = data[pos:cut] if pos or cut < len(data) else data
            if len(region) > self._max:
                self._big_blocks(region, base + pos, nl2)
            elif crlf:
                self._blocks_cr(region)
            else:
                self._blocks(region)
        if cut < len(data):
            rest = data[cut:] if cut else data
            if crlf:
                self._general(rest, base + cut)
            else:
                self._rest(rest, base + cut)

    def _rest(self, rest: bytes, off: int) -> None:
        """Take `rest` (LF line ends, no blank line, at stream offset `off`): what follows a chunk's last whole
        event. The common case: a chunk ends inside an event. Keep that event's start whole, unless it is long or
        has a complete line that changes state visible now (an id, retry or comment line)."""
        lines = rest.count(10)
        if len(rest) <= self._pending_max and (not lines or (lines == 1 and rest.startswith(_FIRST))):
            self._pending = rest
            self._pending_off = off
        else:
            self._general(rest, off)

    def _blocks(self, region: bytes) -> None:
        """The hot path, for LF line ends. `region` holds whole events (it ends with a blank line), no event is set
        yet, and none can exceed the size limit. The common shapes are framed by `_scan`; otherwise those shapes
        are recognised event by event on the split lines, and anything else goes through `_process` line by
        line up to its blank line."""
        eol = 1 if len(region) >= _READLINES_MIN else 0
        lines = _lines(region) if eol else region.split(b"\n")
        names: list[str | None] = []
        payloads: list[bytes] = []
        if self._scan(lines, names, payloads, eol) == len(lines) - 1:
            self._out_names += names
            self._out_data += payloads
            return
        if eol:
            lines = region.split(b"\n")
        lines.pop()  # the empty piece after the final line end
        self._blocks_each(lines)

    def _scan(self, lines: list[bytes], names: list[str | None], payloads: list[bytes], eol: int) -> int:
        """Frame the complete events at the start of ``lines`` (a region cut at LFs; the last piece is what
        follows the final LF) into ``names`` and ``payloads``, if they are of the two common shapes, "event: X /
        data: Y / blank" and "data: Y / blank", in any mix: nearly every chunk of a Responses stream. Returns the
        index of the line where the first incomplete event starts (the last piece's if none is), or -1 at an
        unusual line among them: another field, a second data line, a comment, an extra blank line. No event is
        set yet, and the lines hold no CR. ``eol``: 0 if the lines were split at their LFs (``bytes.split``), 1
        if every line but the last piece still ends with its LF (``_lines``).

        Event by event, a few steps each: compiled (setup.py), those steps are a few machine instructions
        (``startswith`` on bytes is a mypyc primitive, list indexing is native), cheaper than the slices and maps
        that avoid Python steps in the interpreter."""
        last = len(lines) - 1
        cache = self._names
        name: str | None = None
        name_line = b""  # the last "event:" line seen, and its name: a chunk's events mostly share one
        line_name: str | None = None
        index = 0
        while index < last:
            start = index
            line = lines[index]
            if line.startswith(_EVENT):
                if line != name_line:
                    line_name = cache.get(line)
                    if line_name is None:
                        line_name = self._event_name(line)
                    name_line = line
                name = line_name
                index += 1
                if index == last:
                    return start
                line = lines[index]
            else:
                name = None
            if not line.startswith(_DATA):
                return -1
            if index + 1 == last:
                return start  # the data line is complete, the blank line after it not here yet
            if len(lines[index + 1]) != eol:
                return -1
            names.append(name)
            payloads.append(line[6 : len(line) - eol])
            index += 2
        return index

    def _blocks_each(self, lines: list[bytes]) -> None:
        """`_blocks` event by event, for a region of mixed shapes (`lines`: its lines, split, the last one blank)."""
        # Every non-blank line is followed by at least one more line (the last one is blank): next() is safe.
        it = iter(lines)
        names = self._names
        add_name = self._out_names.append
        add_data = self._out_data.append
        slow: list[bytes]
        for line in it:
            if line.startswith(b"event: "):
                data = next(it)
                if data.startswith(b"data: "):
                    blank = next(it)
                    if not blank:
                        name = names.get(line)
                        if name is None:
                            name = self._event_name(line)
                        add_name(name)
                        add_data(data[6:])
                        continue
                    slow = [line, data, blank]
                else:
                    slow = [line, data]
            elif line.startswith(b"data: "):
                blank = next(it)
                if not blank:
                    add_name(None)
                    add_data(line[6:])
                    continue
                slow = [line, blank]
            elif not line:
                continue  # a blank line with no event pending does nothing
            else:
                slow = [line]
            self._process(slow, 0, 1)
            if self._has_fields:  # an unusual event: take it line by line up to its blank line
                for line in it:
                    self._process([line], 0, 1)
                    if not self._has_fields:
                        break

    def _blocks_cr(self, region: bytes) -> None:
        """`_blocks` for a region holding CRs: CRLF line ends (LF ones may be mixed in) take the fast path; at the
        first lone CR or unusual event, the rest of the region goes through `_general`."""
        lines = region.split(b"\n")
        lines.pop()
        # The last line is b"\r" (a blank line), so next() is safe after any line that is not blank.
        it = iter(lines)
        names = self._names
        add_name = self._out_names.append
        add_data = self._out_data.append
        rest: list[bytes]
        for line in it:
            if line.startswith(b"event: "):
                data = next(it)
                if data.startswith(b"data: "):
                    blank = next(it)
                    if blank == b"\r" or not blank:
                        name = names.get(line)
                        if name is None:
                            name = self._event_name(line)
                        payload = data[6:-1] if data[-1] == 13 else data[6:]
                        if name is not None and 13 not in payload:
                            add_name(name)
                            add_data(payload)
                            continue
                    rest = [line, data, blank]
                else:
                    rest = [line, data]
            elif line.startswith(b"data: "):
                blank = next(it)
                if blank == b"\r" or not blank:
                    payload = line[6:-1] if line[-1] == 13 else line[6:]
                    if 13 not in payload:
                        add_name(None)
                        add_data(payload)
                        continue
                rest = [line, blank]
            elif line == b"\r" or not line:
                continue  # a blank line with no event pending does nothing
            else:
                rest = [line]
            rest.extend(it)
            self._general(b"\n".join(rest) + b"\n", 0)
            return

    def _big_blocks(self, region: bytes, off: int, nl2: bytes) -> None:
        """The fast path for a region longer than max_event_size (at stream offset `off`): cut it at blank lines
        into pieces within the limit; a single event longer than that goes through `_general`, which checks it."""
        limit = self._max
        start = 0
        size = len(region)
        while start < size:
            end = size if size - start <= limit else region.rfind(nl2, start, start + limit)
            if end >= 0:
                end = size if end == size else end + len(nl2)
                piece = region[start:end]
                if nl2 == b"\n\n":
                    self._blocks(piece)
                else:
                    self._blocks_cr(piece)
            else:
                # The next event is over the limit (or is a few blank lines overlapping the last cut).
                end = region.find(nl2, start)
                end = size if end < 0 else end + len(nl2)
                self._general(region[start:end], off + start)
            start = end

    def _event_name(self, line: bytes) -> str | None:
        """The event type in b"event: X" (or b"event: X\\r", or b"event: X\\n" from ``_lines``), cached; None if
        empty or holding a (lone) CR."""
        raw = line[7:-1] if line[-1] == 13 or line[-1] == 10 else line[7:]
        if 13 in raw:
            return None
        name = raw.decode("utf-8", "replace") or None
        if name is not None:
            if len(self._names) >= _NAME_CACHE_SIZE:
                self._names.clear()
            self._names[line] = name
        return name

    def _general(self, data: bytes, off: int) -> None:
        """Frame `data` (starting at a line start, stream offset `off`) line by line; keep its unfinished line.
        Any mix of CR, LF and CRLF line ends."""
        lines = data.splitlines(True)
        last = lines[-1][-1] if lines else 10
        tail = b""
        if last == 13:
            self._skip_lf = True  # the CR may be the first half of a CRLF split between chunks
        elif last != 10:
            tail = lines.pop()
        off = self._process(lines, off, 0)
        if tail:
            self._buf += tail
            self._buf_off = off
            if len(tail) > self._line_max:
                self._line_too_long(len(tail))

    def _process(self, lines: list[bytes], off: int, eol: int) -> int:
        """Apply complete lines to the event being built (WHATWG "process the field"), dispatching at blank lines.

        `lines` start at stream offset `off`; each ends with a line end of `eol` bytes that was split off, or,
        if `eol` is 0, still carries its own. Returns the offset after them."""
        for raw in lines:
            line_off = off
            if eol:
                line = raw
                off += len(raw) + eol
            else:
                line = raw.rstrip(b"\r\n")
                off += len(raw)
            if not line:  # blank line: dispatch
                if self._has_fields:
                    if self._data:
                        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                        if self._id is not None or self._retry is not None:
                            self._out_meta.append((len(self._out_data), self._id, self._retry))
                        self._out_names.append(self._event)
                        self._out_data.append(data)
                    self._reset()
                continue
            if len(line) > self._line_max:
                self._buf_off = line_off
                self._line_too_long(len(line))
            # The field name and value, the value's one leading space dropped: one slice (a long data line is
            # copied once here, not by a partition and again by dropping its space).
            colon = line.find(b":")
            if colon < 0:
                name, value = line, b""
            else:
                name = line[:colon]
                value = line[colon + 2 :] if line.startswith(b" ", colon + 1) else line[colon + 1 :]
            if not name:
                self.comments += 1
                continue
            if name == b"data":
                self._add_data(value, line_off)
            elif name == b"event":
                if not self._has_fields:
                    self._has_fields = True
                    self._event_start = line_off
                self._event = value.decode("utf-8", "replace") or None
            elif name == b"id":
                if 0 not in value:
                    if not self._has_fields:
                        self._has_fields = True
                        self._event_start = line_off
                    self._id = self.last_event_id = value.decode("utf-8", "replace")
            # (Over 18 digits: absurd as milliseconds, and beyond what int() parses quickly.)
            elif name == b"retry" and value.isdigit() and len(value) <= 18:
                if not self._has_fields:
                    self._has_fields = True
                    self._event_start = line_off
                self._retry = self.retry = int(value)
        return off

    def _add_data(self, value: bytes, line_off: int) -> None:
        """A data field's value (its line at stream offset `line_off`) for the event being built."""
        if not self._has_fields:
            self._has_fields = True
            self._event_start = line_off
        if self._data:
            self._data_size += 1 + len(value)
        else:
            self._data_size = len(value)
        self._data.append(value)
        if self._data_size > self._max:
            raise SSEError(
                f"SSE event data reached {self._data_size} bytes, over max_event_size={self._max}; "
                f"the event began at byte offset {self._event_start}",
                offset=self._event_start,
            )

    def _reset(self) -> None:
        self._has_fields = False
        self._data = []
        self._data_size = 0
        self._event = None
        self._id = None
        self._retry = None

    def _line_too_long(self, size: int) -> None:
        offset = self._event_start if self._has_fields else self._buf_off
        raise SSEError(
            f"SSE line of at least {size} bytes exceeds max_event_size={self._max} (+{_LINE_SLACK} for the field "
            f"name); it belongs to the event that began at byte offset {offset}",
            offset=offset,
        )


def encode_frame(event: str, data: bytes) -> bytes:
    """One SSE event as bytes: b"event: <event>\\ndata: <data>\\n\\n". `data` must be a single line (JSON is)."""
    prefix = _PREFIXES.get(event)
    if prefix is None:
        prefix = _event_prefix(event)
    if 10 in data or 13 in data:  # (int needles: bytes.__contains__ tries a bytes one as an int first, and raises)
        raise ValueError("SSE frame data must not contain CR or LF (it would split into several data lines)")
    return prefix + data + b"\n\n"


_PREFIXES: dict[str, bytes] = {}


def _event_prefix(event: str) -> bytes:
    if not event or "\n" in event or "\r" in event:
        raise ValueError(f"SSE event name must be non-empty and contain no CR or LF, not {event!r}")
    prefix = b"event: " + event.encode() + b"\ndata: "
    if len(_PREFIXES) < _NAME_CACHE_SIZE:
        _PREFIXES[event] = prefix
    return prefix


WRITE_BYTES: Final = 64 * 1024
"""How many bytes of whole frames ``join_frames`` puts in one write (a bigger frame goes alone, whole)."""


def join_frames(frames: list[bytes], start: int, limit: int = WRITE_BYTES) -> tuple[bytes, int]:
    """The frames from ``frames[start]`` on that fit in ``limit`` bytes, joined for one write, and the index
    after the last one taken. Always takes at least one frame (a lone or oversized frame goes out as it is),
    never part of one: a write then ends on an event boundary, as the compliance suite's parser needs."""
    end = start + 1
    size = len(frames[start])
    count = len(frames)
    while end < count and size + len(frames[end]) <= limit:
        size += len(frames[end])
        end += 1
    if end == start + 1:
        return frames[start], end
    return b"".join(frames[start:end]), end


def encode_comment(text: str) -> bytes:
    """An SSE comment (b": <text>\\n\\n"), e.g. a keep-alive; decoders skip it."""
    if "\n" in text or "\r" in text:
        raise ValueError("SSE comment text must not contain CR or LF")
    return b": " + text.encode() + b"\n\n"
