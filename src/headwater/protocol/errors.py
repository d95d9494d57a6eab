"""Typed errors of the protocol core. Each says what broke, where in the stream, and why.

Every protocol-level failure derives from ``ProtocolError``, so a caller can catch one base class.
"""

from __future__ import annotations

__all__ = ["DecodeError", "ProtocolError", "SSEError", "WriterError"]


class ProtocolError(Exception):
    """Base of every error the protocol core raises."""


class SSEError(ProtocolError):
    """The byte stream is not a readable event stream (e.g. one event larger than the configured maximum).

    ``offset`` is the byte offset in the stream (counted from the first byte fed, BOM included) where the
    offending event or line began.
    """

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class DecodeError(ProtocolError):
    """A payload is not valid JSON, or a known event type carries a field of the wrong type.

    ``event_type``, ``sequence_number`` and the field path (inside ``message``, as ``$.path``) say where.
    """

    def __init__(
        self,
        message: str,
        *,
        event_type: str | None = None,
        sequence_number: int | None = None,
        payload: bytes | None = None,
    ) -> None:
        where = []
        if event_type is not None:
            where.append(f"event {event_type!r}")
        if sequence_number is not None:
            where.append(f"sequence_number {sequence_number}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.event_type = event_type
        self.sequence_number = sequence_number
        self.payload = payload
        self.detail = message


class WriterError(ProtocolError):
    """``ResponseWriter`` misuse: an event that would make the stream non-conformant (a delta after done,
    a second terminal event, ...). Raised at once, before anything is emitted."""
