"""Headwater: the Open Responses streaming protocol (the Responses API's event stream), done right and fast.

The protocol core (``headwater.protocol``) is sans-I/O: bytes in, typed events out; events in, a response
snapshot out; a writer that can only emit conformant streams. The server, client and CLI build on it.
"""

from headwater.protocol.accumulate import Accumulator, aaccumulate, accumulate
from headwater.protocol.codec import decode_event, encode_event, replace_event
from headwater.protocol.conformance import RULES, Checker, Violation, check
from headwater.protocol.errors import DecodeError, ProtocolError, SSEError, WriterError
from headwater.protocol.events import Event, UnknownEvent
from headwater.protocol.resources import Response
from headwater.protocol.stream import EventDecoder, aiter_events, encode_sse, iter_events
from headwater.protocol.writer import ResponseWriter

__all__ = [
    "RULES",
    "Accumulator",
    "Checker",
    "DecodeError",
    "Event",
    "EventDecoder",
    "ProtocolError",
    "Response",
    "ResponseWriter",
    "SSEError",
    "UnknownEvent",
    "Violation",
    "WriterError",
    "aaccumulate",
    "accumulate",
    "aiter_events",
    "check",
    "decode_event",
    "encode_event",
    "encode_sse",
    "iter_events",
    "replace_event",
]
