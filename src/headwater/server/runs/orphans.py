"""Closing orphans: responses that a crash (or a dead replica) left ``queued``/``in_progress`` end with
``error`` + ``response.failed`` in their log and the store. Run at start-up and by a replica taking over.
"""

from __future__ import annotations

import logging

from msgspec.structs import replace

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.codec import decode_event, decode_response, encode_event, encode_response
from headwater.protocol.events import ErrorEvent, ErrorPayload, ResponseFailed
from headwater.protocol.resources import (
    Response,
    ResponseError,
)
from headwater.protocol.writer import (
    ResponseWriter,
)

from ..store import Entry, Store, StoredResponse

__all__ = ["ORPHAN_MESSAGE", "close_orphan", "close_orphans"]

log = logging.getLogger("headwater.server")


ORPHAN_MESSAGE = (
    "the server stopped before this response finished; it was closed as failed when the server restarted"
)


UNREADABLE_MESSAGE = (
    "the server stopped before this response finished, and its stored record could not be read when the server "
    "restarted; it was closed as failed"
)


async def close_orphans(store: Store) -> list[str]:
    """Close every response a crash left ``queued``/``in_progress``: append ``error`` + ``response.failed`` to
    its log and store it as failed. Returns their ids. One that cannot be closed (the store fails) is logged
    and left as it is: the start goes on regardless."""
    closed = []
    for record in await store.unfinished():
        try:
            await close_orphan(store, record)
        except Exception as exc:
            log.error("response %s: could not be closed as failed; it stays %s", record.id, record.status,
                      exc_info=exc)
            continue
        log.warning(
            "response %s was left %s by an earlier run of the server; closed as failed",
            record.id,
            record.status,
        )
        closed.append(record.id)
    return closed


async def close_orphan(
    store: Store, record: StoredResponse, code: str = "server_restarted", message: str = ORPHAN_MESSAGE
) -> list[Entry]:
    """End one response nobody generates any more with ``error`` + ``response.failed`` (``code``, ``message``)
    in its log and the store; returns the entries appended (a replica that took the response over also puts
    them in the live log).

    The writer that was making these events died with its process. When the log is empty a fresh writer
    writes the whole stream; otherwise the two closing events are made here from the log's accumulated
    snapshot (the one place the server makes events without a writer), numbered on from the log. A record
    whose resource or log cannot be decoded (say, nested too deeply) is replaced by a readable one
    (``_close_unreadable``), with the reason logged.
    """
    stored = await store.events(record.id)
    try:
        entries, final = _closing_entries(record, stored, code, message)
    except Exception as exc:  # RecursionError, DecodeError, ...: whatever decoding this record raises
        log.warning("response %s: its stored record cannot be read (%s: %s); closing it as failed with a bare "
                    "resource", record.id, type(exc).__name__, exc)
        return await _close_unreadable(store, record, code)
    await store.append(record.id, entries, status="failed", data=final)
    return entries


def _closing_entries(
    record: StoredResponse, stored: list[Entry], code: str, message: str
) -> tuple[list[Entry], bytes]:
    """The entries that close ``record`` (whose log is ``stored``), and its final resource."""
    logged = [decode_event(entry.payload) for entry in stored]
    if not logged:
        writer = ResponseWriter(decode_response(record.data))
        events = writer.start() + writer.fail(code, message)
        final = writer.response
    else:
        accumulator = Accumulator()
        for event in logged:
            accumulator.feed(event)
        seq = (logged[-1].sequence_number or len(logged) - 1) + 1
        final = replace(
            accumulator.response,
            status="failed",
            completed_at=None,
            error=ResponseError(code=code, message=message),
        )
        payload = ErrorPayload(type="server_error", code=code, message=message, param=None)
        events = [
            ErrorEvent(sequence_number=seq, code=code, message=message, param=None, error=payload),
            ResponseFailed(sequence_number=seq + 1, response=final),
        ]
    return [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events], encode_response(final)


async def _close_unreadable(store: Store, record: StoredResponse, code: str) -> list[Entry]:
    """Replace an unreadable record by a readable failed one: the same id, owner, creation time and input
    items (their bytes, not decoded), a bare resource, and a log that a fresh writer makes."""
    items = (await store.input_items(record.id)).items
    bare = Response(id=record.id, created_at=record.created_at, status="in_progress")
    writer = ResponseWriter(bare)
    events = writer.start() + writer.fail(code, UNREADABLE_MESSAGE)
    await store.delete(record.id)
    await store.create(StoredResponse(record.id, record.owner, "in_progress", record.created_at,
                                      encode_response(bare)), items)
    entries = [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events]
    await store.append(record.id, entries, status="failed", data=encode_response(writer.response))
    return entries
