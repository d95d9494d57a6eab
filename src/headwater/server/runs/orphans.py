"""Closing orphans: responses that a crash (or a dead replica) left ``queued``/``in_progress`` end with
``error`` + ``response.failed`` in their log and the store. Run at start-up and by a replica taking over.
"""

from __future__ import annotations

import logging

from headwater.protocol.codec import decode_event, decode_response, encode_event, encode_response
from headwater.protocol.resources import Response
from headwater.protocol.writer import ResponseWriter

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

    The writer that was making these events died with its process; a writer resumed from the stored log
    (``ResponseWriter.resume``) goes on where it stopped: it closes what was open (items and parts, as
    incomplete), then fails, numbered on from the log, so the closed log is a conformant stream by
    construction. An empty log gets a fresh writer's whole stream. A record whose resource or log cannot be
    decoded (say, nested too deeply) or resumed is replaced by a readable one (``_close_unreadable``), with the
    reason logged.
    """
    stored = await store.events(record.id)
    try:
        entries, final = _closing_entries(record, stored, code, message)
    except Exception as exc:  # RecursionError, DecodeError, WriterError, ...: whatever this record raises
        log.warning("response %s: its stored record cannot be read (%s: %s); closing it as failed with a bare "
                    "resource", record.id, type(exc).__name__, exc)
        return await _close_unreadable(store, record, code)
    await store.append(record.id, entries, status="failed", data=final)
    return entries


def _closing_entries(
    record: StoredResponse, stored: list[Entry], code: str, message: str
) -> tuple[list[Entry], bytes]:
    """The entries that close ``record`` (whose log is ``stored``), and its final resource."""
    if stored:
        writer = ResponseWriter.resume(decode_event(entry.payload) for entry in stored)
        events = writer.fail(code, message)
    else:
        writer = ResponseWriter(decode_response(record.data))
        events = writer.start() + writer.fail(code, message)
    return [Entry(e.sequence_number or 0, e.type, encode_event(e)) for e in events], encode_response(writer.response)


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
