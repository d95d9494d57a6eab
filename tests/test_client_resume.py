"""Streams that survive a dropped connection: a real headwater server (scripted backend) on loopback, reached
through a proxy that cuts connections after a random number of bytes, with a FIN or a RST.

Whatever the cuts, the client's events are exactly the server's stored stream of that response (compared as
encoded bytes), the final response is the stored one, and the stream is conformant. Sync and async alike.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import LiveServer
from headwater.client import AsyncClient, Client, StreamInterruptedError
from headwater.client.core import decode_response
from headwater.protocol.codec import encode_event
from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.protocol.resources import to_builtins
from headwater.protocol.stream import iter_events
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, ReasoningDelta, TextDelta, ToolCallDelta, UsageStep
from headwater.server.backends.scripted import Pause, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from test_client_harness import Cut, CutProxy

SEEDS = range(25)


def long_script() -> list[ScriptItem]:
    """Reasoning, then ~150 text deltas, then a function call streamed in 20 pieces: ~230 events, ~90 kB."""
    steps: list[ScriptItem] = [ReasoningDelta(f"thought {i}; ") for i in range(30)]
    for i in range(150):
        steps.append(TextDelta(f"word{i} "))
        if i % 30 == 0:
            steps.append(Pause(0.002))  # so that some resumes follow the live run, others read the finished log
    steps.append(ToolCallDelta(0, "", call_id="call_1", name="lookup"))
    steps += [ToolCallDelta(0, f'{{"piece": {i}}}' if i == 0 else f" {i}") for i in range(20)]
    steps += [UsageStep(12, 230), Finish("tool_calls")]
    return steps


@dataclass
class Served:
    url: str
    backend: ScriptedBackend
    http: httpx.Client
    answer_bytes: int  # the length of a whole uninterrupted streamed answer, headers included


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    backend = ScriptedBackend(long_script(), models=["scripted-1"])
    live = LiveServer(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())).start()
    http = httpx.Client(base_url=live.url, timeout=20)
    counter = CutProxy(("127.0.0.1", live.port), lambda n: None)
    try:
        with httpx.Client(timeout=20) as plain:
            raw = plain.post(counter.url + "/v1/responses", json={"model": "scripted-1", "input": "go", "stream": True})
            assert raw.status_code == 200
            answer_bytes = counter.bytes_down  # status line and headers included
        yield Served(live.url, backend, http, answer_bytes)
    finally:
        counter.close()
        http.close()
        live.stop()


def stored_stream(served: Served, response_id: str) -> list[bytes]:
    """The server's own log of the response: every event, straight from the server (no proxy)."""
    body = served.http.get(f"/v1/responses/{response_id}", params={"stream": "true"}).content
    return [encode_event(event) for event in iter_events([body])]


def stored_response(served: Served, response_id: str) -> Any:
    return to_builtins(decode_response(served.http.get(f"/v1/responses/{response_id}").content))


def random_plan(seed: int, answer_bytes: int) -> tuple[Callable[[int], Cut | None], bool]:
    """1 to 3 cuts at random byte offsets, FIN or RST; even seeds stream a background response, odd ones a
    stored foreground one (whose proxy keeps reading, so the server never sees the client go and cancel)."""
    rng = random.Random(seed)
    cuts = [Cut(rng.randrange(0, answer_bytes), reset=rng.random() < 0.5) for _ in range(rng.randint(1, 3))]
    return (lambda n: cuts[n] if n < len(cuts) else None), seed % 2 == 0


def client_options(proxy: CutProxy) -> dict[str, Any]:
    return {"base_url": proxy.url + "/v1", "max_retries": 5, "max_resumes": 5, "backoff": 0.001,
            "backoff_max": 0.01, "timeout": 20}


def assert_same_as_stored(served: Served, events: list[Event], final: Any, response_id: str | None) -> None:
    assert response_id is not None
    assert check(events) == []
    assert [encode_event(event) for event in events] == stored_stream(served, response_id)
    assert to_builtins(final) == stored_response(served, response_id)


@pytest.mark.parametrize("seed", SEEDS)
def test_sync_stream_survives_random_cuts(served: Served, seed: int) -> None:
    plan, background = random_plan(seed, served.answer_bytes)
    proxy = CutProxy(("127.0.0.1", port_of(served)), plan, drain=not background)
    try:
        with Client(**client_options(proxy)) as client, client.responses.stream(
            model="scripted-1", input="go", background=background
        ) as stream:
            events = list(stream)
            final = stream.get_final_response()
        assert proxy.cuts >= 1
        assert stream.resumes + stream.retries <= proxy.cuts
        assert final.status == "completed" and stream.output_text.startswith("word0 word1 ")
        assert_same_as_stored(served, events, final, stream.response_id)
    finally:
        proxy.close()


@pytest.mark.parametrize("seed", SEEDS)
async def test_async_stream_survives_random_cuts(served: Served, seed: int) -> None:
    plan, background = random_plan(1000 + seed, served.answer_bytes)
    proxy = CutProxy(("127.0.0.1", port_of(served)), plan, drain=not background)
    try:
        async with AsyncClient(**client_options(proxy)) as client, client.responses.stream(
            model="scripted-1", input="go", background=background
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
        assert proxy.cuts >= 1
        assert stream.resumes + stream.retries <= proxy.cuts
        assert_same_as_stored(served, events, final, stream.response_id)
    finally:
        proxy.close()


def port_of(served: Served) -> int:
    return int(served.url.rsplit(":", 1)[1])


def test_a_cut_in_the_middle_is_one_resume_and_no_retry(served: Served) -> None:
    proxy = CutProxy(("127.0.0.1", port_of(served)), lambda n: Cut(served.answer_bytes // 2) if n == 0 else None)
    try:
        with Client(**client_options(proxy)) as client:
            stream = client.responses.create(model="scripted-1", input="go", background=True, stream=True)
            events = list(stream)
        assert (stream.resumes, stream.retries, proxy.connections) == (1, 0, 2)
        assert_same_as_stored(served, events, stream.get_final_response(), stream.response_id)
    finally:
        proxy.close()


@pytest.mark.parametrize("cut", [Cut(0), Cut(40), Cut(40, reset=True)], ids=["at-accept", "in-headers", "reset"])
def test_a_drop_before_the_first_event_retries_the_request(served: Served, cut: Cut) -> None:
    proxy = CutProxy(("127.0.0.1", port_of(served)), lambda n: cut if n == 0 else None)
    try:
        with Client(**client_options(proxy)) as client:
            stream = client.responses.create(model="scripted-1", input="go", stream=True)
            events = list(stream)
        assert (stream.retries, stream.resumes) == (1, 0)
        assert_same_as_stored(served, events, stream.get_final_response(), stream.response_id)
    finally:
        proxy.close()


def test_resume_gives_up_after_max_resumes_with_a_clear_error(served: Served) -> None:
    # The first connection breaks mid-stream; every reconnect is dropped at once.
    proxy = CutProxy(("127.0.0.1", port_of(served)), lambda n: Cut(served.answer_bytes // 2) if n == 0 else Cut(0))
    received: list[Event] = []
    try:
        with Client(**{**client_options(proxy), "max_resumes": 3}) as client:
            stream = client.responses.stream(model="scripted-1", input="go", background=True)
            with pytest.raises(StreamInterruptedError) as caught:
                for event in stream:
                    received.append(event)
        error = caught.value
        assert "gave up after 3 resume attempt(s)" in str(error)
        assert stream.response_id is not None and stream.response_id in str(error)
        assert error.response_id == stream.response_id and error.attempts == 3
        assert error.last_sequence_number == received[-1].sequence_number
        assert error.snapshot is not None and error.snapshot.output  # what arrived is not lost
        assert stream.resumes == 3 and proxy.connections == 4
        with pytest.raises(StreamInterruptedError):
            stream.get_final_response()
    finally:
        proxy.close()


def test_an_unstored_stream_cannot_be_resumed_and_says_why(served: Served) -> None:
    proxy = CutProxy(("127.0.0.1", port_of(served)), lambda n: Cut(served.answer_bytes // 2), drain=True)
    try:
        with Client(**client_options(proxy)) as client, pytest.raises(StreamInterruptedError) as caught:
            list(client.responses.create(model="scripted-1", input="go", store=False, stream=True))
        assert "not stored (store: false)" in str(caught.value)
        assert proxy.connections == 1
    finally:
        proxy.close()


@pytest.mark.parametrize("seed", range(5))
def test_retrieve_stream_from_the_middle_survives_cuts(served: Served, seed: int) -> None:
    response = Client(base_url=served.url + "/v1").responses.create(model="scripted-1", input="go")
    full = stored_stream(served, response.id)
    rng = random.Random(seed)
    start = rng.randrange(0, len(full) // 2)
    cuts = [Cut(rng.randrange(0, served.answer_bytes // 2), reset=rng.random() < 0.5) for _ in range(2)]
    proxy = CutProxy(("127.0.0.1", port_of(served)), lambda n: cuts[n] if n < len(cuts) else None)
    try:
        with Client(**client_options(proxy)) as client:
            stream = client.responses.retrieve(response.id, stream=True, starting_after=start)
            events = [encode_event(event) for event in stream]
        assert events == full[start + 1:]
        assert to_builtins(stream.get_final_response()) == stored_response(served, response.id)
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def served_with_grace() -> Iterator[Served]:
    """A server that lets a dropped foreground stream go on for a while (``--disconnect-grace``)."""
    backend = ScriptedBackend(long_script(), models=["scripted-1"])
    config = ServerConfig(store="memory", disconnect_grace_seconds=30.0)
    live = LiveServer(create_app(config, backend=backend, store=MemoryStore())).start()
    http = httpx.Client(base_url=live.url, timeout=20)
    counter = CutProxy(("127.0.0.1", live.port), lambda n: None)
    try:
        with httpx.Client(timeout=20) as plain:
            raw = plain.post(counter.url + "/v1/responses", json={"model": "scripted-1", "input": "go", "stream": True})
            assert raw.status_code == 200
            answer_bytes = counter.bytes_down
        yield Served(live.url, backend, http, answer_bytes)
    finally:
        counter.close()
        http.close()
        live.stop()


@pytest.mark.parametrize("seed", range(8))
def test_a_foreground_stream_the_server_sees_dropped_is_resumed_within_the_grace(
    served_with_grace: Served, seed: int
) -> None:
    served = served_with_grace
    rng = random.Random(5000 + seed)
    cuts = [Cut(rng.randrange(0, served.answer_bytes), reset=rng.random() < 0.5) for _ in range(rng.randint(1, 3))]
    # drain=False: the proxy really closes the server's side too, so the server sees its client leave.
    proxy = CutProxy(("127.0.0.1", port_of(served)), lambda n: cuts[n] if n < len(cuts) else None, drain=False)
    try:
        with Client(**client_options(proxy)) as client, client.responses.stream(
            model="scripted-1", input="go"
        ) as stream:
            events = list(stream)
            final = stream.get_final_response()
        assert final.status == "completed"
        assert_same_as_stored(served, events, final, stream.response_id)
    finally:
        proxy.close()
