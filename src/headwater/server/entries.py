"""``Entry``: one event as the logs keep it, ``(sequence_number, type, payload)``, encoded once by the run.

The store's event log and the live log hold entries and never interpret them; a transport frames an entry
(SSE ``event: type`` + ``data: payload``, or one WebSocket message) without decoding its JSON again.

Entries are many and long-lived (every event of every live run, in the live log and the in-process store), and
they hold only an int, a str and bytes, so they can never be part of a reference cycle: the type is not tracked
by the cyclic garbage collector (``gc=False``). A tracked entry (a NamedTuple, as it was) is scanned by every
collection until it dies; with thousands of them young at once, each young-generation collection of a busy
server took tens of milliseconds (bench/README.md, bench_gateway), a pause every stream of the process waits out.
"""

from __future__ import annotations

import msgspec

__all__ = ["Entry"]


class Entry(msgspec.Struct, frozen=True, gc=False):
    sequence_number: int
    type: str  # the event's ``type``, e.g. "response.output_text.delta"
    payload: bytes  # the event's JSON, exactly as every reader receives it
