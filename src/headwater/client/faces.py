"""The iteration faces of a stream object, written once for every transport: ``EventIterator`` (sync) and
``AsyncEventIterator`` (async). A transport's stream class supplies ``_events()``, the events as they arrive; the
face adds iteration that remembers its end and its error, ``text_deltas``, ``until_done`` and
``get_final_response``. HTTP and WebSocket streams share them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Self

from headwater.protocol.events import Event, ResponseOutputTextDelta
from headwater.protocol.resources import Response

from .errors import APIError
from .stream import StreamView

__all__ = ["AsyncEventIterator", "EventIterator"]


class EventIterator(StreamView):
    _iterator: Iterator[Event] | None = None
    _raised: APIError | None = None
    _exhausted: bool = False

    def _events(self) -> Iterator[Event]:
        raise NotImplementedError

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        if self._raised is not None:
            raise self._raised
        if self._iterator is None:
            self._iterator = self._events()
        try:
            return next(self._iterator)
        except StopIteration:
            self._exhausted = True
            raise
        except APIError as exc:
            self._raised = exc
            self._exhausted = True
            raise

    def text_deltas(self) -> Iterator[str]:
        """Only the output text, piece by piece, as it streams."""
        for event in self:
            if type(event) is ResponseOutputTextDelta:
                yield event.delta

    def until_done(self) -> Self:
        for _ in self:
            pass
        return self

    def get_final_response(self) -> Response:
        """Reads the rest of the stream, then returns the final response (``status`` says completed,
        incomplete or failed). Raises ``StreamError`` if the stream carried an ``error`` event."""
        if not self._exhausted:
            self.until_done()
        if self._raised is not None:
            raise self._raised
        return self.snapshot


class AsyncEventIterator(StreamView):
    _iterator: AsyncIterator[Event] | None = None
    _raised: APIError | None = None
    _exhausted: bool = False

    def _events(self) -> AsyncIterator[Event]:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._raised is not None:
            raise self._raised
        if self._iterator is None:
            self._iterator = self._events()
        try:
            return await anext(self._iterator)
        except StopAsyncIteration:
            self._exhausted = True
            raise
        except APIError as exc:
            self._raised = exc
            self._exhausted = True
            raise

    async def text_deltas(self) -> AsyncIterator[str]:
        """Only the output text, piece by piece, as it streams."""
        async for event in self:
            if type(event) is ResponseOutputTextDelta:
                yield event.delta

    async def until_done(self) -> Self:
        async for _ in self:
            pass
        return self

    async def get_final_response(self) -> Response:
        """Reads the rest of the stream, then returns the final response; ``StreamError`` after an ``error``."""
        if not self._exhausted:
            await self.until_done()
        if self._raised is not None:
            raise self._raised
        return self.snapshot
