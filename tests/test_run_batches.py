"""A read of an upstream's body is one turn of the run: the events of one chunk (a Responses upstream's, or the
steps of a Chat Completions upstream's) are relayed together and reach the event log as one batch, however many
the chunk holds, and the stream is the same as read one by one.

Real loopback upstreams that send a whole recorded body in one chunk (``ReplayUpstream``), the in-process store.
"""

from __future__ import annotations

from typing import Any

import pytest

from headwater.protocol.codec import decode_event
from headwater.protocol.conformance import check
from headwater.protocol.resources import Response
from headwater.protocol.writer import ResponseWriter
from headwater.server.backends.base import Backend, ChatMessage, GenerationRequest
from headwater.server.backends.chat import ChatBackend
from headwater.server.backends.responses import ResponsesBackend
from headwater.server.runs import Run, Runs
from headwater.server.store import MemoryStore, Store, StoredResponse
from test_upstream_replay import Pause, ReplayUpstream, Reply, events_of, fixture

BODIES = {
    "responses": fixture("responses/bedrock-cache-write-tokens.sse"),
    "chat": fixture("chat/ollama-stop.sse"),
}


async def start_run(backend: Backend, store: Store) -> tuple[Runs, Run]:
    """A stored foreground run of ``backend`` that nobody follows, its response created ``queued`` in ``store``."""
    runs = Runs(store, backend)
    writer = ResponseWriter(Response(model="m"))
    await store.create(StoredResponse(writer.id, None, "queued", 0, b"{}"), [])
    request = GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])
    run = runs.start(writer=writer, request=request, owner=None, stored=True, background=False,
                     max_tool_calls=None, followed=False)
    return runs, run


async def _relayed(kind: str, pieces: list[Any]) -> tuple[list[Any], int]:
    """The stored events of one run relaying ``pieces`` (each sent as one chunk), and the log's store calls."""
    async with ReplayUpstream([Reply(200, pieces)]) as upstream:
        backend = ResponsesBackend(upstream.url) if kind == "responses" else ChatBackend(upstream.url)
        store = MemoryStore()
        runs, run = await start_run(backend, store)
        await run.wait()
        await backend.aclose()
    events = [decode_event(entry.payload) for entry in await store.events(run.id)]
    return events, runs.log.commits


@pytest.mark.parametrize("kind", sorted(BODIES))
async def test_a_chunk_of_the_upstream_body_is_one_batch_of_the_event_log(kind: str) -> None:
    body = BODIES[kind]
    whole, commits = await _relayed(kind, [body])
    one_by_one, _ = await _relayed(kind, [part for event in events_of(body) for part in (event, Pause(0.002))])
    assert check(whole) == [] and whole[-1].type == "response.completed" and len(whole) >= 8
    assert [e.type for e in whole] == [e.type for e in one_by_one]
    # created + in_progress; the chunk's events, the terminal one among them (a Responses upstream's: nothing after
    # it, no second commit of the final resource); the chat bridge's terminal events come at its close
    assert commits <= (2 if kind == "responses" else 3)
