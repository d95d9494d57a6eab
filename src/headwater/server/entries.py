"""``Entry``: one event as the logs keep it, ``(sequence_number, type, payload)``, encoded once by the run.

The store's event log and the live log hold entries and never interpret them; a transport frames an entry
(SSE ``event: type`` + ``data: payload``, or one WebSocket message) without decoding its JSON again.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Entry"]


class Entry(NamedTuple):
    sequence_number: int
    type: str  # the event's ``type``, e.g. "response.output_text.delta"
    payload: bytes  # the event's JSON, exactly as every reader receives it
