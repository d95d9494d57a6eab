"""A Responses upstream's body read in the connection's own ``data_received`` (``Push``): while the run waits,
each read of the body is framed, decoded, relayed and logged in the read's call, with no wake-up of the run's
task. These tests drive the real run (``Runs``) against a real loopback upstream that sends its body in pieces
with pauses between them (each piece a read of its own, arriving while the run waits), and check what must not
change: event boundaries (however the body is cut), order, the stream's end, the errors (a drop, a malformed
payload, a time-out, a store failure) and a cancel at once (the upstream sees the disconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from headwater.protocol.codec import decode_event
from headwater.protocol.conformance import check
from headwater.server.backends.responses import ResponsesBackend
from headwater.server.runs import Run
from headwater.server.store import Append, MemoryStore
from test_run_batches import start_run
from test_upstream_replay import (
    CAPTURES,
    Drop,
    Pause,
    ReplayUpstream,
    Reply,
    Stall,
    capture_as_sse,
    events_of,
    fixture,
    pieces_of,
)

BODY = fixture("responses/bedrock-cache-write-tokens.sse")


class _WatchedStore(MemoryStore):
    """The in-process store, noting the task each commit was made in (None: in a protocol callback); it refuses
    the appends from the ``fail_at``-th commit on."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.fail_at = fail_at

    def append_many_now(self, batches: Sequence[Append]) -> list[BaseException | None]:
        self.tasks.append(asyncio.current_task())
        if self.fail_at is not None and len(self.tasks) >= self.fail_at:
            return [RuntimeError("the disk is full") for _ in batches]
        return super().append_many_now(batches)


def _paced(pieces: list[bytes], pause: float = 0.003) -> list[Any]:
    return [part for piece in pieces for part in (piece, Pause(pause))]


async def _run(upstream: ReplayUpstream, store: MemoryStore, **options: Any) -> tuple[Run, ResponsesBackend]:
    backend = ResponsesBackend(upstream.url, **options)
    _, run = await start_run(backend, store)
    return run, backend


async def _relayed(pieces: list[Any], store: MemoryStore | None = None, **options: Any) -> list[Any]:
    store = store if store is not None else _WatchedStore()
    async with ReplayUpstream([Reply(200, pieces)]) as upstream:
        run, backend = await _run(upstream, store, **options)
        await run.wait()
        await backend.aclose()
    return [decode_event(entry.payload) for entry in await store.events(run.id)]


def _said(events: list[Any]) -> list[tuple[Any, ...]]:
    """What a stream says, event by event (the ids aside)."""
    return [(e.type, getattr(e, "delta", None), getattr(e, "text", None), e.sequence_number) for e in events]


async def test_reads_that_come_while_the_run_waits_are_logged_in_the_connections_own_call() -> None:
    store = _WatchedStore()
    whole = await _relayed([BODY])
    paced = await _relayed(_paced(events_of(BODY)), store)
    assert check(paced) == [] and paced[-1].type == "response.completed"
    assert _said(paced) == _said(whole)
    # The start and the terminal batch are the run's task's; the deltas between came in the connection's reads.
    assert store.tasks.count(None) >= len(events_of(BODY)) - 4
    assert store.tasks[0] is not None and store.tasks[-1] is not None


@pytest.mark.parametrize("size", [1, 7, 64, 300])
async def test_the_events_are_the_same_however_the_pushed_body_is_cut(size: int) -> None:
    whole = await _relayed([BODY])
    cut = await _relayed(_paced(pieces_of(BODY, size), 0.0005))
    assert check(cut) == []
    assert _said(cut) == _said(whole)


async def test_an_error_event_while_pushing_ends_the_stream_as_read_whole() -> None:
    # The error event goes back to the generator (the relay fails the response at it); the stream ends as read whole.
    body = capture_as_sse(CAPTURES / "openai-error.1.jsonl")
    whole = await _relayed([body])
    paced = await _relayed(_paced(events_of(body), 0.01))
    assert check(paced) == []
    assert _said(paced) == _said(whole)
    assert [e.type for e in paced[-2:]] == ["error", "response.failed"]
    assert paced[-2].error_code == whole[-2].error_code == "insufficient_quota"


async def test_a_drop_while_pushing_fails_the_run_as_a_drop() -> None:
    chunks = events_of(BODY)
    events = await _relayed([*_paced(chunks[:6]), Drop()])
    assert check(events) == []
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].error_code == "upstream_disconnected"
    assert "closed the connection mid-stream" in events[-2].error_message


async def test_a_malformed_payload_while_pushing_fails_naming_it() -> None:
    chunks = events_of(BODY)
    events = await _relayed([*_paced(chunks[:5]), b"event: response.output_text.delta\ndata: {not json\n\n"])
    assert check(events) == []
    assert events[-1].type == "response.failed" and events[-2].error_code == "upstream_malformed"
    assert "{not json" in events[-2].error_message


async def test_a_read_time_out_while_pushing_fails_the_run() -> None:
    chunks = events_of(BODY)
    events = await _relayed([*_paced(chunks[:5]), Stall()], read_timeout=0.3)
    assert check(events) == []
    assert events[-1].type == "response.failed" and events[-2].error_code == "upstream_timeout"


async def test_a_store_failure_while_pushing_fails_the_run() -> None:
    store = _WatchedStore(fail_at=4)
    async with ReplayUpstream([Reply(200, _paced(events_of(BODY)))]) as upstream:
        run, backend = await _run(upstream, store)
        await run.wait()
        await backend.aclose()
    assert store.tasks[3] is None  # (the failing commit was a pushed one)
    assert run.response.status == "failed"
    assert run.response.error is not None and run.response.error.code == "server_error"


async def test_a_cancel_while_pushing_stops_at_once_and_closes_the_upstream() -> None:
    chunks = events_of(BODY)
    store = _WatchedStore()
    async with ReplayUpstream([Reply(200, [*_paced(chunks[:5]), Pause(30.0), *chunks[5:]])]) as upstream:
        run, backend = await _run(upstream, store)
        while len(store.tasks) < 4:  # (created + in_progress, then pushed reads)
            await asyncio.sleep(0.005)
        run.cancel()
        await asyncio.wait_for(run.wait(), 5.0)
        for _ in range(200):  # the upstream notices the closed connection on its own read
            if upstream.disconnects:
                break
            await asyncio.sleep(0.01)
        await backend.aclose()
        assert upstream.disconnects == 1
    events = [decode_event(entry.payload) for entry in await store.events(run.id)]
    assert check(events) == []
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "cancelled"
