"""An upstream's body read in the connection's own ``data_received`` (``Push``): while the run waits, each read
of the body is framed, decoded, relayed (a Responses upstream's events) or written (a Chat Completions
upstream's steps) and logged in the read's call, with no wake-up of the run's task. These tests drive the real
run (``Runs``) against a real loopback upstream that sends its body in pieces with pauses between them (each
piece a read of its own, arriving while the run waits), and check what must not change: event boundaries
(however the body is cut), order, the stream's end (a terminal event, ``[DONE]``), the errors (a drop, a
malformed payload, an error in the stream, a time-out, a store failure) and a cancel at once (the upstream
sees the disconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from headwater.protocol.codec import decode_event
from headwater.protocol.conformance import check
from headwater.server.backends.chat import ChatBackend
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
CHAT = fixture("chat/openai-parallel-tool-calls.sse")  # (tool calls, then usage, then [DONE])
BODIES = {"responses": BODY, "chat": CHAT}
# A read that makes the response fail, for each: a payload that is not JSON, and what its run says.
BROKEN = {
    "responses": b"event: response.output_text.delta\ndata: {not json\n\n",
    "chat": b'data: {"choices": [{"delta": {not json\n\n',
}


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


async def _run(
    upstream: ReplayUpstream, store: MemoryStore, kind: str = "responses", **options: Any
) -> tuple[Run, ResponsesBackend | ChatBackend]:
    backend = (ResponsesBackend if kind == "responses" else ChatBackend)(upstream.url, **options)
    _, run = await start_run(backend, store)
    return run, backend


async def _relayed(
    pieces: list[Any], store: MemoryStore | None = None, kind: str = "responses", **options: Any
) -> list[Any]:
    store = store if store is not None else _WatchedStore()
    async with ReplayUpstream([Reply(200, pieces)]) as upstream:
        run, backend = await _run(upstream, store, kind, **options)
        await run.wait()
        await backend.aclose()
    return [decode_event(entry.payload) for entry in await store.events(run.id)]


def _said(events: list[Any]) -> list[tuple[Any, ...]]:
    """What a stream says, event by event (the ids aside)."""
    return [(e.type, getattr(e, "delta", None), getattr(e, "text", None), e.sequence_number) for e in events]


KINDS = pytest.mark.parametrize("kind", sorted(BODIES))


@KINDS
async def test_reads_that_come_while_the_run_waits_are_logged_in_the_connections_own_call(kind: str) -> None:
    store = _WatchedStore()
    whole = await _relayed([BODIES[kind]], kind=kind)
    paced = await _relayed(_paced(events_of(BODIES[kind])), store, kind)
    assert check(paced) == [] and paced[-1].type == "response.completed"
    assert _said(paced) == _said(whole)
    # The start and the terminal batch are the run's task's; what came between, in the connection's reads. (A
    # chat body's reads that make no event, its finish and usage chunks and [DONE], commit nothing.)
    assert store.tasks.count(None) >= len([e for e in paced if "delta" in e.type]) - 2
    assert store.tasks[0] is not None and store.tasks[-1] is not None


@KINDS
@pytest.mark.parametrize("size", [1, 7, 64, 300])
async def test_the_events_are_the_same_however_the_pushed_body_is_cut(kind: str, size: int) -> None:
    whole = await _relayed([BODIES[kind]], kind=kind)
    cut = await _relayed(_paced(pieces_of(BODIES[kind], size), 0.0005), kind=kind)
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


async def test_a_chat_upstreams_done_while_pushing_ends_the_stream_at_once() -> None:
    # [DONE] goes back to the generator, which ends the response without reading on (what follows never comes).
    store = _WatchedStore()
    async with ReplayUpstream([Reply(200, [*_paced(events_of(CHAT)), Pause(30.0), b"data: {}\n\n"])]) as upstream:
        run, backend = await _run(upstream, store, "chat")
        await asyncio.wait_for(run.wait(), 5.0)
        await backend.aclose()
    events = [decode_event(entry.payload) for entry in await store.events(run.id)]
    assert check(events) == [] and events[-1].type == "response.completed"
    assert _said(events) == _said(await _relayed([CHAT], kind="chat"))
    assert store.tasks.count(None) > 0  # (it was pushed)


@pytest.mark.parametrize("name", ["vllm-midstream-error", "openrouter-midstream-error"])
async def test_a_chat_upstreams_error_while_pushing_fails_the_run_after_the_steps_before_it(name: str) -> None:
    body = fixture(f"chat/{name}.sse")
    whole = await _relayed([body], kind="chat")
    paced = await _relayed(_paced(events_of(body), 0.01), kind="chat")
    assert check(paced) == []
    assert _said(paced) == _said(whole)
    assert [e.type for e in paced[-2:]] == ["error", "response.failed"]
    assert paced[-2].error_code == "upstream_error"
    assert any(e.type.endswith(".delta") for e in paced)  # (what came before the error is kept)


@KINDS
async def test_a_drop_while_pushing_fails_the_run_as_a_drop(kind: str) -> None:
    chunks = events_of(BODIES[kind])
    events = await _relayed([*_paced(chunks[:6]), Drop()], kind=kind)
    assert check(events) == []
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].error_code == "upstream_disconnected"
    assert "closed the connection mid-stream" in events[-2].error_message
    assert any(e.type.endswith(".delta") for e in events)


@KINDS
async def test_a_malformed_payload_while_pushing_fails_naming_it(kind: str) -> None:
    chunks = events_of(BODIES[kind])
    events = await _relayed([*_paced(chunks[:5]), BROKEN[kind]], kind=kind)
    assert check(events) == []
    assert events[-1].type == "response.failed" and events[-2].error_code == "upstream_malformed"
    assert "{not json" in events[-2].error_message


@KINDS
async def test_a_read_time_out_while_pushing_fails_the_run(kind: str) -> None:
    chunks = events_of(BODIES[kind])
    events = await _relayed([*_paced(chunks[:5]), Stall()], kind=kind, read_timeout=0.3)
    assert check(events) == []
    assert events[-1].type == "response.failed" and events[-2].error_code == "upstream_timeout"


@KINDS
async def test_a_store_failure_while_pushing_fails_the_run(kind: str) -> None:
    store = _WatchedStore(fail_at=4)
    async with ReplayUpstream([Reply(200, _paced(events_of(BODIES[kind])))]) as upstream:
        run, backend = await _run(upstream, store, kind)
        await run.wait()
        await backend.aclose()
    assert store.tasks[3] is None  # (the failing commit was a pushed one)
    assert run.response.status == "failed"
    assert run.response.error is not None and run.response.error.code == "server_error"


@KINDS
async def test_a_cancel_while_pushing_stops_at_once_and_closes_the_upstream(kind: str) -> None:
    chunks = events_of(BODIES[kind])
    store = _WatchedStore()
    async with ReplayUpstream([Reply(200, [*_paced(chunks[:5]), Pause(30.0), *chunks[5:]])]) as upstream:
        run, backend = await _run(upstream, store, kind)
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
