"""The client's WebSocket mode (``client.responses.connect()``) against a real headwater server on loopback with
the scripted backend. Every stream passes ``headwater.protocol.conformance.check`` with zero findings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from headwater.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    StreamError,
    WebSocketStream,
)
from headwater.client.websocket import AsyncWebSocketStream, websocket_url
from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.server.app import create_app
from headwater.server.backends.base import BackendError, Finish, GenerationRequest, Step, TextDelta, UsageStep
from headwater.server.backends.scripted import Fail, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

MODEL = "scripted-1"
KEY = "sk-test-ws"
HELLO: list[Step] = [TextDelta("Hello"), TextDelta(", "), TextDelta("world"), UsageStep(7, 3), Finish("stop")]
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def hello_or_fail(request: GenerationRequest) -> list[ScriptItem]:
    if "boom" in request.messages[-1].content:
        return [TextDelta("par"), Fail(BackendError("the model fell over", code="server_error"))]
    return list(HELLO)


class Live:
    def __init__(self, base_url: str, backend: ScriptedBackend) -> None:
        self.base_url = base_url
        self.backend = backend

    def conversations(self) -> list[list[tuple[str, str]]]:
        return [[(m.role, m.content) for m in r.messages] for r in self.backend.requests]


@pytest.fixture
def live(serve: Callable[[Any], Any]) -> Live:
    backend = ScriptedBackend(hello_or_fail, models=[MODEL])
    config = ServerConfig.with_keys((KEY,), store="memory")
    server = serve(create_app(config, backend=backend, store=MemoryStore()))
    return Live(server.url + "/v1", backend)


@pytest.fixture
def client(live: Live) -> Iterator[Client]:
    with Client(base_url=live.base_url, api_key=KEY, timeout=20) as c:
        yield c


def conformant(events: list[Event]) -> list[Event]:
    assert events and events[-1].type in TERMINAL
    assert [e.type for e in events].count(events[-1].type) == 1
    findings = check(events)
    assert findings == [], "\n".join(map(str, findings))
    return events


def read(stream: WebSocketStream) -> list[Event]:
    events = conformant(list(stream))
    assert stream.done and stream.get_final_response() is stream.snapshot
    return events


def test_url_mapping() -> None:
    assert websocket_url("http://127.0.0.1:8080/v1") == "ws://127.0.0.1:8080/v1/responses"
    assert websocket_url("https://api.example.com/v1/") == "wss://api.example.com/v1/responses"


def test_two_sequential_responses_on_one_connection(client: Client, live: Live) -> None:
    with client.responses.connect() as connection:
        ids = []
        for text in ("one", "two"):
            stream = connection.create(model=MODEL, input=text)
            events = read(stream)
            assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
            assert [e.sequence_number for e in events] == list(range(len(events)))
            final = stream.get_final_response()
            assert final.status == "completed" and stream.output_text == "Hello, world"
            assert final.usage is not None and final.usage.input_tokens == 7
            assert final.id == stream.response_id == events[-1].response.id
            ids.append(final.id)
    assert len(set(ids)) == 2
    assert live.conversations() == [[("user", "one")], [("user", "two")]]
    # Stored by default, as over HTTP: the HTTP face reads it back.
    assert client.responses.retrieve(ids[0]).status == "completed"


def test_continuation_stored_and_store_false(client: Client, live: Live) -> None:
    with client.responses.connect() as connection:
        first = connection.create(model=MODEL, input="first").get_final_response()
        second_stream = connection.create(model=MODEL, input="second", previous_response_id=first.id)
        read(second_stream)
        second = second_stream.get_final_response()
        assert second.previous_response_id == first.id
        # store: false lives on the connection only.
        local = connection.create(model=MODEL, input="private", store=False, previous_response_id=second.id)
        read(local)
        assert local.snapshot.store is False
        follow = connection.create(model=MODEL, input="more", store=False, previous_response_id=local.response_id)
        read(follow)
    assert live.conversations()[1] == [("user", "first"), ("assistant", "Hello, world"), ("user", "second")]
    assert live.conversations()[3] == [
        ("user", "first"), ("assistant", "Hello, world"), ("user", "second"), ("assistant", "Hello, world"),
        ("user", "private"), ("assistant", "Hello, world"), ("user", "more"),
    ]
    # A new connection cannot see the store: false response.
    with client.responses.connect() as other, pytest.raises(BadRequestError) as caught:
        other.create(model=MODEL, input="and?", previous_response_id=follow.response_id)
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id" and caught.value.status_code == 400


def test_error_messages_are_typed_and_the_connection_stays_usable(client: Client, live: Live) -> None:
    with client.responses.connect() as connection:
        with pytest.raises(BadRequestError) as caught:
            connection.create(model=MODEL, input="x", temperature=5)
        assert caught.value.param == "temperature"
        with pytest.raises(BadRequestError) as caught:
            connection.create(model=MODEL, input="x", previous_response_id="resp_nope")
        assert caught.value.code == "previous_response_not_found"
        with pytest.raises(BadRequestError) as caught:
            connection.create(model=MODEL, input="x", background=True)  # contradicts WebSocket mode
        assert caught.value.param == "background"
        assert read(connection.create(model=MODEL, input="fine"))[-1].type == "response.completed"
        # An error *event* inside a stream: every event is delivered, then StreamError at its end.
        failing = connection.create(model=MODEL, input="boom")
        events: list[Event] = []
        with pytest.raises(StreamError) as stream_error:
            for event in failing:
                events.append(event)
        conformant(events)
        assert [e.type for e in events][-2:] == ["error", "response.failed"]
        assert stream_error.value.response is not None and stream_error.value.response.status == "failed"
        assert read(connection.create(model=MODEL, input="again"))[-1].type == "response.completed"


def test_create_reads_out_an_unfinished_previous_stream(client: Client) -> None:
    with client.responses.connect() as connection:
        first = connection.create(model=MODEL, input="one")
        next(first)  # read one event only
        second = connection.create(model=MODEL, input="two")  # no 409: the first is read out first
        assert first.done and first.output_text == "Hello, world"
        read(second)


def test_handshake_is_authenticated(live: Live) -> None:
    with Client(base_url=live.base_url, api_key="sk-wrong", timeout=20) as bad, pytest.raises(AuthenticationError):
        bad.responses.connect()


async def test_async_face(live: Live) -> None:
    aclient = AsyncClient(base_url=live.base_url, api_key=KEY, timeout=20)
    try:
        async with aclient.responses.connect() as connection:
            stream = await connection.create(model=MODEL, input="one", store=False)
            assert isinstance(stream, AsyncWebSocketStream)
            events = conformant([event async for event in stream])
            final = await stream.get_final_response()
            assert final.status == "completed" and stream.output_text == "Hello, world"
            assert events[-1].response.id == final.id
            with pytest.raises(BadRequestError) as caught:
                await connection.create(model=MODEL, input="x", temperature=5)
            assert caught.value.param == "temperature"
            follow = await connection.create(model=MODEL, input="two", store=False, previous_response_id=final.id)
            conformant([event async for event in follow])
            texts = [t async for t in (await connection.create(model=MODEL, input="three")).text_deltas()]
            assert "".join(texts) == "Hello, world"
    finally:
        await aclient.aclose()
    assert live.conversations()[1] == [("user", "one"), ("assistant", "Hello, world"), ("user", "two")]
