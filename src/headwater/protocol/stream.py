"""Bytes to typed events and typed events to bytes: the SSE framing of ``sse`` joined to the codec.

``EventDecoder`` is incremental and sans-I/O (feed chunks, get events); ``iter_events`` / ``aiter_events`` run it
over an iterable or async iterable of byte chunks. ``[DONE]`` sentinels end nothing by themselves and are
skipped. An SSE ``event:`` name that differs from the payload's ``type`` is kept on the event (the conformance
checker reports it) rather than trusted.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from itertools import chain, repeat, starmap
from operator import attrgetter

import msgspec
from msgspec.structs import force_setattr

from .codec import decode_event, encode_event, fast_decoder
from .events import EVENT_CLASSES, Event
from .sse import DONE, SSEDecoder, encode_frame

__all__ = ["EventDecoder", "aiter_events", "encode_sse", "iter_events"]


class EventDecoder:
    """Feed byte chunks of an SSE (or JSONL) stream, get typed events.

    ``lenient``: payloads that do not fit their schema become ``UnknownEvent`` with ``problem`` set instead of
    raising ``DecodeError``. ``camel``: payloads use camelCase keys (TypeScript SDK dumps).
    """

    __slots__ = ("_camel", "_frames", "_lenient", "events_decoded")

    def __init__(
        self,
        *,
        lenient: bool = False,
        camel: bool = False,
        max_event_size: int = 16 * 1024 * 1024,
        mode: str | None = None,
    ) -> None:
        self._frames = SSEDecoder(max_event_size=max_event_size, mode=mode)
        self._lenient = lenient
        self._camel = camel
        self.events_decoded = 0

    @property
    def mode(self) -> str | None:
        """``"sse"`` or ``"jsonl"`` once the first bytes have been seen."""
        return self._frames.mode

    @property
    def comments(self) -> int:
        """How many comment lines (keep-alives) the stream has carried so far."""
        return self._frames.comments

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Event]:
        return self._decode(*self._frames.feed_columns(chunk))

    def close(self) -> list[Event]:
        """End of input: whatever complete event the decoder still holds."""
        frames = self._frames.close()
        return self._decode([frame.event for frame in frames], [frame.data for frame in frames])

    def _decode(self, names: list[str | None], data: list[bytes]) -> list[Event]:
        """The events of frames given as columns (their SSE event names, their payloads).

        The hot path decodes the whole batch column-wise, with no Python step per event: one prebuilt msgspec
        decoder mapped over the payloads, each payload kept on its event as ``_raw``, and the event names
        compared with the types as two lists. A batch holding anything that decoder refuses (``[DONE]``, an
        unknown type, a field that does not fit) or names that differ from the types goes event by event."""
        if not data:
            return []
        if self._camel:
            return self._decode_each(names, data)
        try:
            events: list[Event] = list(map(_fast_decode, data))
        except msgspec.MsgspecError:
            return self._decode_each(names, data)
        # Each payload on its event (``raw_json``): one C call an event (a frozen Struct's ``__dict__`` entry).
        any(map(force_setattr, events, _RAW, data))  # force_setattr returns None: any() runs it on every event
        count = len(names)
        first = names[0]
        # One name for the whole batch (or none), the common case: compare classes, not type strings.
        if names.count(first) == count and (
            first is None or list(map(type, events)).count(EVENT_CLASSES.get(first, _NoneType)) == count
        ):
            self.events_decoded += count
            return events
        if names != list(map(_type_of, events)) and names.count(None) != count:
            for name, event in zip(names, events, strict=True):
                if name is not None and name != event.type:
                    event.__dict__["_sse_event"] = name
        self.events_decoded += len(events)
        return events

    def _decode_each(self, names: list[str | None], data: list[bytes]) -> list[Event]:
        out: list[Event] = []
        append = out.append
        lenient = self._lenient
        camel = self._camel
        event: Event
        for name, payload in zip(names, data, strict=True):
            if payload == DONE:
                continue
            event = decode_event(payload, lenient=lenient, camel=camel)
            if name is not None and name != event.type:
                event.__dict__["_sse_event"] = name
            append(event)
        self.events_decoded += len(out)
        return out


_fast_decode = fast_decoder.decode
_RAW = repeat("_raw")  # endless and shared: map() stops at its finite iterables
_NoneType = type(None)  # no event's class: a name outside EVENT_CLASSES matches nothing
_type_of = attrgetter("type")


def iter_events(
    chunks: Iterable[bytes], *, lenient: bool = False, camel: bool = False, max_event_size: int = 16 * 1024 * 1024
) -> Iterator[Event]:
    """Typed events from an iterable of byte chunks (SSE or JSONL, detected from the first bytes)."""
    decoder = EventDecoder(lenient=lenient, camel=camel, max_event_size=max_event_size)
    # Chained C iterators, not a generator: handing out each event costs no Python frame resumption. And
    # ``decoder.feed`` unrolled: the framer's columns go straight to the batch decoder (``starmap`` unpacks the
    # pair in C), one Python call a chunk less, which 1 KiB chunks of ~4 events notice.
    batches = starmap(decoder._decode, map(decoder._frames.feed_columns, chunks))
    return chain(chain.from_iterable(batches), _closing(decoder))


def _closing(decoder: EventDecoder) -> Iterator[Event]:
    """What ``decoder.close()`` gives, computed only when the events before it have all been taken."""
    yield from decoder.close()


def aiter_events(
    chunks: AsyncIterable[bytes],
    *,
    lenient: bool = False,
    camel: bool = False,
    max_event_size: int = 16 * 1024 * 1024,
) -> AsyncIterator[Event]:
    """Typed events from an async iterable of byte chunks: the same decoder as ``iter_events``."""
    return _AsyncEvents(chunks, EventDecoder(lenient=lenient, camel=camel, max_event_size=max_event_size))


class _AsyncEvents:
    """``aiter_events``' iterator: an explicit ``__anext__`` rather than an async generator, which mypyc (the
    compiled build, see setup.py) cannot compile. Each chunk's events are handed out one by one; the decoder's
    ``close()`` is called once the chunks run out."""

    def __init__(self, chunks: AsyncIterable[bytes], decoder: EventDecoder) -> None:
        self._chunks = chunks.__aiter__()
        self._decoder = decoder
        self._ready: list[Event] = []
        self._next = 0
        self._closed = False

    def __aiter__(self) -> _AsyncEvents:
        return self

    async def __anext__(self) -> Event:
        while self._next >= len(self._ready):
            if self._closed:
                raise StopAsyncIteration
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._closed = True
                self._ready = self._decoder.close()
            else:
                self._ready = self._decoder.feed(chunk)
            self._next = 0
        event = self._ready[self._next]
        self._next += 1
        return event


def encode_sse(event: Event) -> bytes:
    """One event as one SSE block; the ``event:`` name is always the payload's ``type``."""
    return encode_frame(event.type, encode_event(event))
