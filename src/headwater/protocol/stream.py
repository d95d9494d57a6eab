"""Bytes to typed events and typed events to bytes: the SSE framing of ``sse`` joined to the codec.

``EventDecoder`` is incremental and sans-I/O (feed chunks, get events); ``iter_events`` / ``aiter_events`` run it
over an iterable or async iterable of byte chunks. ``[DONE]`` sentinels end nothing by themselves and are
skipped. An SSE ``event:`` name that differs from the payload's ``type`` is kept on the event (the conformance
checker reports it) rather than trusted.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

import msgspec

from .codec import decode_event, encode_event, fast_decoder
from .events import Event
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

    def feed(self, chunk: bytes) -> list[Event]:
        return self._decode(self._frames.feed(chunk))

    def close(self) -> list[Event]:
        """End of input: whatever complete event the decoder still holds."""
        return self._decode(self._frames.close())

    def _decode(self, frames: list) -> list[Event]:
        if self._camel:
            return self._decode_slow(frames)
        # The hot loop: ``decode_event``'s fast path inlined (one prebuilt msgspec decoder, the payload kept as
        # ``_raw``), which saves a Python call per event; whatever that decoder refuses (``[DONE]``, an unknown
        # type, a field that does not fit) goes through ``decode_event`` itself.
        out: list[Event] = []
        append = out.append
        decode = fast_decoder.decode
        lenient = self._lenient
        event: Event
        for frame in frames:
            data = frame.data
            try:
                event = decode(data)
            except msgspec.MsgspecError:
                if data == DONE:
                    continue
                event = decode_event(data, lenient=lenient)
            else:
                event.__dict__["_raw"] = data
            name = frame.event
            if name is not None and name != event.type:
                event.__dict__["_sse_event"] = name
            append(event)
        self.events_decoded += len(out)
        return out

    def _decode_slow(self, frames: list) -> list[Event]:
        out: list[Event] = []
        for frame in frames:
            data = frame.data
            if data == DONE:
                continue
            event = decode_event(data, lenient=self._lenient, camel=True)
            name = frame.event
            if name is not None and name != event.type:
                event.__dict__["_sse_event"] = name
            out.append(event)
        self.events_decoded += len(out)
        return out


def iter_events(
    chunks: Iterable[bytes], *, lenient: bool = False, camel: bool = False, max_event_size: int = 16 * 1024 * 1024
) -> Iterator[Event]:
    """Typed events from an iterable of byte chunks (SSE or JSONL, detected from the first bytes)."""
    decoder = EventDecoder(lenient=lenient, camel=camel, max_event_size=max_event_size)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()


async def aiter_events(
    chunks: AsyncIterable[bytes],
    *,
    lenient: bool = False,
    camel: bool = False,
    max_event_size: int = 16 * 1024 * 1024,
) -> AsyncIterator[Event]:
    """Typed events from an async iterable of byte chunks: the same decoder as ``iter_events``."""
    decoder = EventDecoder(lenient=lenient, camel=camel, max_event_size=max_event_size)
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event


def encode_sse(event: Event) -> bytes:
    """One event as one SSE block; the ``event:`` name is always the payload's ``type``."""
    return encode_frame(event.type, encode_event(event))
