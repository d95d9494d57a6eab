"""WebSocket mode on /v1/responses through a real uvicorn on loopback and a real WebSocket client (``websockets``'
sync client; one test also drives the unmodified ``openai`` package's ``responses.connect()``).

Every streamed sequence is checked with ``headwater.protocol.conformance.check``: zero findings. Error messages
are checked against the spec's ``WebSocketErrorEvent``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from headwater.protocol.codec import decode_event
from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.server.app import create_app
from headwater.server.backends.base import (
    BackendError,
    Finish,
    GenerationRequest,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.scripted import Fail, Pause, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.http import websocket as ws_module
from headwater.server.store import MemoryStore

MODEL = "scripted-1"
HELLO: list[Step] = [TextDelta("Hello"), TextDelta(", "), TextDelta("world"), UsageStep(7, 3), Finish("stop")]
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class Gate:
    """A point where a script holds until the test opens it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()


def play(*items: Any) -> Callable[[GenerationRequest], Iterator[ScriptItem]]:
    def script(request: GenerationRequest) -> Iterator[ScriptItem]:
        for item in items:
            if isinstance(item, Gate):
                item.reached.set()
                while not item.opened.is_set():
                    yield Pause(0.002)
            else:
                yield item

    return script


def failing_on(word: str) -> Callable[[GenerationRequest], list[ScriptItem]]:
    """HELLO, except that a request whose last message contains ``word`` fails mid-stream."""

    def script(request: GenerationRequest) -> list[ScriptItem]:
        if word in request.messages[-1].content:
            return [TextDelta("par"), Fail(BackendError("the model fell over", code="server_error"))]
        return list(HELLO)

    return script


@dataclass
class Server:
    url: str
    ws_url: str
    backend: ScriptedBackend
    http: httpx.Client


@pytest.fixture
def start(serve: Callable[[Any], Any]) -> Iterator[Callable[..., Server]]:
    clients: list[httpx.Client] = []

    def start_server(script: Any = None, *, api_keys: tuple[str, ...] = (), key: str | None = None,
                     **settings: Any) -> Server:
        backend = ScriptedBackend(HELLO if script is None else script, models=[MODEL])
        config = ServerConfig.with_keys(api_keys, store="memory", **settings)
        live = serve(create_app(config, backend=backend, store=MemoryStore()))
        headers = {"authorization": f"Bearer {key}"} if key else {}
        http = httpx.Client(base_url=live.url, headers=headers, timeout=20)
        clients.append(http)
        return Server(live.url, "ws" + live.url.removeprefix("http") + "/v1/responses", backend, http)

    yield start_server
    for client in clients:
        client.close()


@pytest.fixture
def connections() -> Iterator[Callable[..., ClientConnection]]:
    opened: list[ClientConnection] = []

    def open_connection(server: Server, key: str | None = None) -> ClientConnection:
        headers = {"Authorization": f"Bearer {key}"} if key else None
        connection = connect(server.ws_url, additional_headers=headers, open_timeout=10, close_timeout=5)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


# --- helpers ------------------------------------------------------------------------------------------------


def receive(ws: ClientConnection) -> dict[str, Any]:
    message = ws.recv(timeout=20)
    assert isinstance(message, str), "every server message is a JSON text message"
    obj: dict[str, Any] = json.loads(message)
    return obj


def is_ws_error(message: dict[str, Any]) -> bool:
    return message.get("type") == "error" and "status" in message and "sequence_number" not in message


def ws_error(message: dict[str, Any], status: int) -> dict[str, Any]:
    """The spec's WebSocketErrorEvent: type, status, error{type, code, message, param}."""
    assert is_ws_error(message), message
    assert set(message) == {"type", "status", "error"}
    assert message["status"] == status, message
    error: dict[str, Any] = message["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in error["message"]
    return error


def send_create(ws: ClientConnection, **body: Any) -> None:
    ws.send(json.dumps({"type": "response.create", "model": MODEL, **body}))


def read_stream(ws: ClientConnection) -> list[Event]:
    """The events of one response, up to its terminal event; conformant."""
    events: list[Event] = []
    while True:
        message = receive(ws)
        assert not is_ws_error(message), message
        events.append(decode_event(json.dumps(message).encode()))
        if message["type"] in TERMINAL:
            break
    findings = check(events)
    assert findings == [], "\n".join(map(str, findings))
    return events


def turn(ws: ClientConnection, **body: Any) -> list[Event]:
    send_create(ws, **body)
    return read_stream(ws)


def turn_error(ws: ClientConnection, status: int, **body: Any) -> dict[str, Any]:
    send_create(ws, **body)
    return ws_error(receive(ws), status)


def response_of(events: list[Event]) -> Any:
    return events[-1].response


def conversation(request: GenerationRequest) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in request.messages]


# --- several responses, one connection ----------------------------------------------------------------------


def test_sequential_responses_on_one_connection(start: Callable[..., Server], connections: Callable) -> None:
    server = start()
    ws = connections(server)
    ids = []
    for text in ("one", "two", "three"):
        events = turn(ws, input=text)
        assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
        assert events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        final = response_of(events)
        assert final.output[0].content[0].text == "Hello, world"
        assert final.usage.input_tokens == 7
        ids.append(final.id)
    assert len(set(ids)) == 3
    assert [conversation(r) for r in server.backend.requests] == [[("user", t)] for t in ("one", "two", "three")]
    # store defaults to true over WebSocket as over HTTP: the responses can be read and replayed over HTTP.
    stored = server.http.get(f"/v1/responses/{ids[0]}").json()
    assert stored["status"] == "completed" and stored["output"][0]["content"][0]["text"] == "Hello, world"


def test_continuation_with_previous_response_id(start: Callable[..., Server], connections: Callable) -> None:
    server = start()
    ws = connections(server)
    first = response_of(turn(ws, input="first", instructions="Be brief."))
    second = response_of(turn(ws, input="second", previous_response_id=first.id))
    assert second.previous_response_id == first.id
    assert conversation(server.backend.requests[1]) == [("user", "first"), ("assistant", "Hello, world"),
                                                        ("user", "second")]  # instructions are not inherited
    # A stored chain goes on from a new connection (through the store) and over HTTP.
    other = connections(server)
    turn(other, input="third", previous_response_id=second.id)
    assert conversation(server.backend.requests[2]) == [
        ("user", "first"), ("assistant", "Hello, world"), ("user", "second"), ("assistant", "Hello, world"),
        ("user", "third"),
    ]
    http = server.http.post("/v1/responses", json={"model": MODEL, "input": "4", "previous_response_id": second.id})
    assert http.status_code == 200, http.text
    assert len(server.backend.requests[3].messages) == 5


def test_store_false_chain_lives_on_the_connection(start: Callable[..., Server], connections: Callable) -> None:
    def script(request: GenerationRequest) -> list[ScriptItem]:
        if request.messages[-1].role == "tool":
            return [TextDelta("It is sunny."), UsageStep(20, 4), Finish()]
        return [ToolCallDelta(0, '{"city": "Paris"}', call_id="call_1", name="weather"), Finish("tool_calls")]

    server = start(script)
    ws = connections(server)
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]
    first = response_of(turn(ws, input="Weather in Paris?", tools=tools, store=False))
    assert first.output[0].type == "function_call" and first.store is False
    output = [{"type": "function_call_output", "call_id": "call_1", "output": "22C, sunny"}]
    second = response_of(turn(ws, input=output, tools=tools, store=False, previous_response_id=first.id))
    assert second.output[0].content[0].text == "It is sunny."
    seen = server.backend.requests[1].messages
    assert [m.role for m in seen] == ["user", "assistant", "tool"]
    assert seen[1].tool_calls == [{"id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'}]
    assert seen[2].content == "22C, sunny" and seen[2].tool_call_id == "call_1"
    third = response_of(turn(ws, input="Thanks!", tools=tools, store=False, previous_response_id=second.id))
    assert [m.role for m in server.backend.requests[2].messages] == ["user", "assistant", "tool", "assistant",
                                                                     "user"]
    # Nothing of it was stored.
    for response in (first, second, third):
        assert server.http.get(f"/v1/responses/{response.id}").status_code == 404


def test_store_false_response_is_gone_for_a_new_connection(start: Callable[..., Server],
                                                           connections: Callable) -> None:
    server = start()
    ws = connections(server)
    first = response_of(turn(ws, input="remember me", store=False))
    other = connections(server)  # while the first connection is still open: the state is connection-local
    error = turn_error(other, 400, input="and?", store=False, previous_response_id=first.id)
    assert error["code"] == "previous_response_not_found" and error["param"] == "previous_response_id"
    ws.close()
    again = connections(server)
    error = turn_error(again, 400, input="and?", previous_response_id=first.id)
    assert error["code"] == "previous_response_not_found"
    # The connection stays usable after the error.
    assert turn(again, input="fresh start")[-1].type == "response.completed"
    assert len(server.backend.requests) == 2


@pytest.mark.parametrize("failure", ["invalid_request", "backend_failure"])
def test_a_failed_continuation_forgets_the_response_it_named(start: Callable[..., Server], connections: Callable,
                                                             failure: str) -> None:
    server = start(failing_on("boom"))
    ws = connections(server)
    first = response_of(turn(ws, input="hi", store=False))
    if failure == "invalid_request":
        error = turn_error(ws, 400, input="x", temperature=5, store=False, previous_response_id=first.id)
        assert error["param"] == "temperature"
    else:
        events = turn(ws, input="boom", store=False, previous_response_id=first.id)
        assert [e.type for e in events][-2:] == ["error", "response.failed"]
    error = turn_error(ws, 400, input="again", store=False, previous_response_id=first.id)
    assert error["code"] == "previous_response_not_found"
    assert turn(ws, input="new chain", store=False)[-1].type == "response.completed"


def test_a_failed_continuation_of_a_stored_response_falls_back_to_the_store(start: Callable[..., Server],
                                                                            connections: Callable) -> None:
    server = start(failing_on("boom"))
    ws = connections(server)
    first = response_of(turn(ws, input="hi"))
    assert turn(ws, input="boom", previous_response_id=first.id)[-1].type == "response.failed"
    turn(ws, input="retry", previous_response_id=first.id)
    assert conversation(server.backend.requests[-1]) == [("user", "hi"), ("assistant", "Hello, world"),
                                                         ("user", "retry")]


def test_only_the_latest_store_false_response_is_remembered(start: Callable[..., Server],
                                                            connections: Callable) -> None:
    server = start()
    ws = connections(server)
    first = response_of(turn(ws, input="one", store=False))
    turn(ws, input="two", store=False)  # not a continuation: the connection now remembers this one
    error = turn_error(ws, 400, input="three", store=False, previous_response_id=first.id)
    assert error["code"] == "previous_response_not_found"


def test_a_stored_response_continuing_a_connection_local_one(start: Callable[..., Server],
                                                              connections: Callable) -> None:
    server = start()
    ws = connections(server)
    first = response_of(turn(ws, input="one", store=False))
    second = response_of(turn(ws, input="two", previous_response_id=first.id))  # stored
    turn(ws, input="three", previous_response_id=second.id)  # on the same connection: from memory
    assert len(server.backend.requests[-1].messages) == 5
    # Elsewhere the stored response's chain reaches a response the store never had.
    error = turn_error(connections(server), 400, input="x", previous_response_id=second.id)
    assert error["code"] == "previous_response_not_found"
    http = server.http.post("/v1/responses", json={"model": MODEL, "input": "x", "previous_response_id": second.id})
    assert http.status_code == 400 and http.json()["error"]["code"] == "previous_response_not_found"


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "status", "code", "param"),
    [
        ("{not json", 400, "invalid_json", None),
        ("", 400, "invalid_json", None),
        ('["response.create"]', 400, "invalid_json", None),
        ('{"model": "m", "input": "hi"}', 400, "missing_required_parameter", "type"),
        ('{"type": "response.cancel"}', 400, "invalid_value", "type"),
        ('{"type": "session.update", "session": {}}', 400, "invalid_value", "type"),
        ('{"type": "response.create", "input": "hi", "temperature": 5}', 400, "invalid_value", "temperature"),
        ('{"type": "response.create", "input": [{"type": "nope"}]}', 400, "invalid_value", "input[0].type"),
        ('{"type": "response.create", "input": "hi", "stream": false}', 400, "unsupported_parameter", "stream"),
        ('{"type": "response.create", "input": "hi", "background": true}', 400, "unsupported_parameter",
         "background"),
        ('{"type": "response.create", "input": "hi", "generate": false}', 400, "unsupported_parameter",
         "generate"),
        ('{"type": "response.create", "input": "hi", "previous_response_id": "resp_nope"}', 400,
         "previous_response_not_found", "previous_response_id"),
    ],
)
def test_bad_messages_get_an_error_and_the_connection_stays_usable(
    start: Callable[..., Server], connections: Callable, message: str, status: int, code: str, param: str | None
) -> None:
    server = start()
    ws = connections(server)
    ws.send(message)
    error = ws_error(receive(ws), status)
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error"
    assert turn(ws, input="still here?")[-1].type == "response.completed"
    assert len(server.backend.requests) == 1  # the bad message never reached the backend


@pytest.mark.parametrize(
    "fields",
    [
        {"stream": True},  # the Agents SDK's WebSocket mode always sends it
        {"stream": True, "stream_options": {"include_obfuscation": False}},
        {"background": False},
    ],
)
def test_transport_fields_that_agree_with_the_mode_are_accepted_and_ignored(
    start: Callable[..., Server], connections: Callable, fields: dict
) -> None:
    server = start()
    events = turn(connections(server), input="hi", **fields)
    assert events[-1].type == "response.completed"
    assert events[-1].response.background is False
    assert len(server.backend.requests) == 1


def test_item_references_are_resolved_as_over_http(start: Callable[..., Server], connections: Callable) -> None:
    server = start()
    ws = connections(server)
    first = response_of(turn(ws, input="one"))
    message = first.output[0].id
    turn(ws, input=[{"role": "user", "content": "one"}, {"type": "item_reference", "id": message},
                    {"role": "user", "content": "two"}])
    assert conversation(server.backend.requests[-1])[-3:] == [("user", "one"), ("assistant", "Hello, world"),
                                                             ("user", "two")]
    error = turn_error(ws, 400, input=[{"id": "msg_nope"}])
    assert (error["code"], error["param"]) == ("item_not_found", "input[0]")


def test_binary_json_message_is_accepted(start: Callable[..., Server], connections: Callable) -> None:
    server = start()
    ws = connections(server)
    ws.send(json.dumps({"type": "response.create", "input": "hi"}).encode())
    assert read_stream(ws)[-1].type == "response.completed"


def test_binary_message_with_invalid_utf8_gets_an_error_not_a_closed_socket(
    start: Callable[..., Server], connections: Callable
) -> None:
    server = start()
    ws = connections(server)
    ws.send(b'{"type": "response.create", "input": "\xff"}')
    error = ws_error(receive(ws), 400)
    assert error["code"] == "invalid_json"
    assert turn(ws, input="still here?")[-1].type == "response.completed"


def test_message_over_the_size_limit_is_413(start: Callable[..., Server], connections: Callable) -> None:
    server = start(max_body_bytes=2048)
    ws = connections(server)
    error = turn_error(ws, 413, input="x" * 4096)
    assert error["code"] == "request_too_large"
    assert turn(ws, input="small")[-1].type == "response.completed"


def test_a_second_create_while_one_is_in_flight_is_refused(start: Callable[..., Server],
                                                           connections: Callable) -> None:
    gate = Gate()
    server = start(play(gate, *HELLO))
    ws = connections(server)
    send_create(ws, input="slow one")
    assert gate.reached.wait(10)
    send_create(ws, input="too early")
    error = ws_error(receive(ws), 409)
    assert error["code"] == "response_already_in_flight"
    gate.opened.set()
    events = read_stream(ws)  # the first response goes on undisturbed
    assert response_of(events).output[0].content[0].text == "Hello, world"
    assert len(server.backend.requests) == 1
    assert turn(ws, input="now")[-1].type == "response.completed"


def test_backend_refusal_is_an_error_message(start: Callable[..., Server],
                                                                 connections: Callable) -> None:
    def script(request: GenerationRequest) -> list[ScriptItem]:
        if request.model == "missing-model":
            return [Fail(BackendError("no such model", code="model_not_found", status=400))]
        return list(HELLO)

    server = start(script)
    ws = connections(server)
    first = response_of(turn(ws, input="hi"))
    error = turn_error(ws, 400, model="missing-model", input="x", previous_response_id=first.id)
    assert error["code"] == "model_not_found"
    assert turn(ws, input="fine")[-1].type == "response.completed"


def test_backend_failure_mid_stream_ends_the_stream_as_failed(start: Callable[..., Server],
                                                              connections: Callable) -> None:
    server = start(failing_on("boom"))
    ws = connections(server)
    events = turn(ws, input="boom")
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert turn(ws, input="and now?")[-1].type == "response.completed"


def test_closing_the_connection_cancels_the_running_response(start: Callable[..., Server],
                                                             connections: Callable, wait_until: Callable) -> None:
    gate = Gate()
    server = start(play(TextDelta("partial"), gate, *HELLO))
    ws = connections(server)
    send_create(ws, input="long task")
    assert gate.reached.wait(10)
    created = receive(ws)
    assert created["type"] == "response.created"
    ws.close()
    wait_until(lambda: server.backend.closed_early)
    response_id = created["response"]["id"]
    wait_until(lambda: server.http.get(f"/v1/responses/{response_id}").json()["status"] == "cancelled")
    assert server.http.get(f"/v1/responses/{response_id}").json()["incomplete_details"] is None
    replay = server.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    assert check(list(_sse_events(replay.content))) == []


def _sse_events(body: bytes) -> Iterator[Event]:
    from headwater.protocol.stream import iter_events

    return iter_events([body])


def test_a_stored_response_can_be_cancelled_over_http_meanwhile(start: Callable[..., Server],
                                                                connections: Callable) -> None:
    gate = Gate()
    server = start(play(TextDelta("partial"), gate, *HELLO))
    ws = connections(server)
    send_create(ws, input="long task")
    assert gate.reached.wait(10)
    created = receive(ws)
    cancelled = server.http.post(f"/v1/responses/{created['response']['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    rest = [decode_event(json.dumps(created).encode()), *read_stream_tail(ws)]
    assert check(rest) == []
    assert rest[-1].type == "response.incomplete"
    # A cancelled response is not a failure: it can be continued on the connection.
    gate.opened.set()
    turn(ws, input="go on", previous_response_id=created["response"]["id"])
    assert conversation(server.backend.requests[-1]) == [("user", "long task"), ("assistant", "partial"),
                                                         ("user", "go on")]


def read_stream_tail(ws: ClientConnection) -> list[Event]:
    events: list[Event] = []
    while True:
        message = receive(ws)
        events.append(decode_event(json.dumps(message).encode()))
        if message["type"] in TERMINAL:
            return events


def test_connection_limit(start: Callable[..., Server], connections: Callable,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    server = start()
    monkeypatch.setattr(ws_module, "MAX_CONNECTION_SECONDS", 0)
    ws = connections(server)
    error = turn_error(ws, 400, input="hi")
    assert error["code"] == "websocket_connection_limit_reached"
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert server.backend.requests == []


# --- auth ---------------------------------------------------------------------------------------------------


def test_the_handshake_needs_an_api_key(start: Callable[..., Server], connections: Callable) -> None:
    server = start(api_keys=("key-a", "key-b"), key="key-a")
    for key, code in ((None, "missing_api_key"), ("key-c", "invalid_api_key")):
        with pytest.raises(InvalidStatus) as refused:
            connections(server, key)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body or b"{}")["error"]["code"] == code
    ws = connections(server, "key-a")
    first = response_of(turn(ws, input="mine"))
    assert server.http.get(f"/v1/responses/{first.id}").status_code == 200
    other = connections(server, "key-b")  # another key cannot see or continue key-a's responses
    error = turn_error(other, 400, input="steal", previous_response_id=first.id)
    assert error["code"] == "previous_response_not_found"
    other_http = httpx.Client(base_url=server.url, headers={"authorization": "Bearer key-b"})
    try:
        assert other_http.get(f"/v1/responses/{first.id}").status_code == 404
    finally:
        other_http.close()


# --- the openai package -------------------------------------------------------------------------------------


def test_openai_package_websocket_mode(start: Callable[..., Server]) -> None:
    server = start(api_keys=("sk-test",))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test")
    texts: list[str] = []
    with client.responses.connect() as connection:
        previous = None
        for text in ("hi", "again"):
            connection.response.create(model=MODEL, input=text, store=False, previous_response_id=previous)
            for event in connection:
                if event.type == "response.completed":
                    previous = event.response.id
                    texts.append(event.response.output_text)
                    break
                assert event.type != "error", event
    assert texts == ["Hello, world", "Hello, world"]
    assert conversation(server.backend.requests[1]) == [("user", "hi"), ("assistant", "Hello, world"),
                                                        ("user", "again")]
