"""Bad and oversized input over real sockets (uvicorn on loopback, httpx and a ``websockets`` client): nesting
beyond the limit (in a request, a WebSocket message and a record stored before the limit existed), fields of the
wrong type, tool types echoed into a header, query strings, empty requests, tool outputs that answer no call
(and the WebSocket eviction that follows), and the size limits. Every refusal is a 4xx in the spec's error shape.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from headwater.protocol.codec import decode_event
from headwater.protocol.errors import DecodeError
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, Step, TextDelta, ToolCallDelta, UsageStep
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.input_limits import InputLimits
from headwater.server.store import MemoryStore
from headwater.server.testing import ServeProcess

MODEL = "scripted-1"
HELLO: list[Step] = [TextDelta("Hello"), UsageStep(3, 1), Finish("stop")]
CALL: list[Step] = [ToolCallDelta(0, '{"city": "Oslo"}', call_id="call_1", name="weather"), Finish("tool_calls")]
TOOLS = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]


@dataclass
class Server:
    http: httpx.Client
    ws_url: str
    backend: ScriptedBackend
    live: Any


@pytest.fixture
def start(serve: Callable[[Any], Any]) -> Iterator[Callable[..., Server]]:
    clients: list[httpx.Client] = []

    def start_server(steps: list[Step] | None = None, **settings: Any) -> Server:
        backend = ScriptedBackend(HELLO if steps is None else steps, models=[MODEL])
        settings.setdefault("store", "memory")
        store = MemoryStore() if settings["store"] == "memory" else None
        live = serve(create_app(ServerConfig(**settings), backend=backend, store=store))
        client = httpx.Client(base_url=live.url, timeout=30)
        clients.append(client)
        return Server(client, "ws" + live.url.removeprefix("http") + "/v1/responses", backend, live)

    yield start_server
    for client in clients:
        client.close()


@pytest.fixture
def sockets() -> Iterator[Callable[[Server], ClientConnection]]:
    opened: list[ClientConnection] = []

    def open_socket(server: Server) -> ClientConnection:
        connection = connect(server.ws_url, open_timeout=10, close_timeout=5, max_size=None)
        opened.append(connection)
        return connection

    yield open_socket
    for connection in opened:
        connection.close()


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    """The spec's error shape, with the status wanted."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert isinstance(error["message"], str) and "Traceback" not in error["message"]
    return error  # type: ignore[no-any-return]


def post(server: Server, body: dict[str, Any] | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return server.http.post("/v1/responses", content=body, headers={"content-type": "application/json"})
    return server.http.post("/v1/responses", json={"model": MODEL, **body})


def ws_send(ws: ClientConnection, body: dict[str, Any] | str) -> None:
    ws.send(body if isinstance(body, str) else json.dumps({"type": "response.create", "model": MODEL, **body}))


def ws_error(ws: ClientConnection, status: int = 400) -> dict[str, Any]:
    """The next message, which must be the spec's WebSocketErrorEvent with ``status``."""
    message = json.loads(ws.recv(timeout=30))
    assert set(message) == {"type", "status", "error"} and message["type"] == "error", message
    assert message["status"] == status, message
    error: dict[str, Any] = message["error"]
    assert set(error) == {"type", "code", "message", "param"}
    return error


def ws_turn(ws: ClientConnection, body: dict[str, Any]) -> dict[str, Any]:
    """Send a response.create and read its events to the terminal one; the final response."""
    ws_send(ws, body)
    while True:
        message = json.loads(ws.recv(timeout=30))
        assert message["type"] != "error", message
        if message["type"] in ("response.completed", "response.incomplete", "response.failed"):
            return message["response"]  # type: ignore[no-any-return]


def nested(levels: int) -> str:
    """A JSON value of ``levels`` nested objects."""
    return '{"a":' * levels + "1" + "}" * levels


def deep_tools_body(levels: int) -> bytes:
    """A body whose tools[0].parameters holds ``levels`` nested objects (the body itself is 3 levels above)."""
    return (f'{{"model":"{MODEL}","input":"hi","tools":[{{"type":"function","name":"f","parameters":'
            f"{nested(levels)}}}]}}").encode()


# --- nesting ------------------------------------------------------------------------------------------------


def test_a_body_at_the_nesting_limit_is_accepted(start: Callable[..., Server]) -> None:
    server = start()
    # body (1) > tools (2) > tool (3) > parameters (4) ... 61 objects in parameters reach level 64.
    response = post(server, deep_tools_body(61))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("levels", [62, 964, 5_000, 200_000])
def test_a_body_nested_beyond_the_limit_is_a_400_naming_the_param(start: Callable[..., Server], levels: int) -> None:
    server = start()
    error = error_of(post(server, deep_tools_body(levels)))
    assert error["code"] == "nesting_too_deep"
    # Within the decoder's reach the path is exact; beyond it, the top-level field.
    assert error["param"] in ("tools", "tools[0].parameters.a")
    assert server.http.get("/healthz").status_code == 200


@pytest.mark.parametrize("levels", [100, 100_000])
def test_a_deep_websocket_message_is_an_error_and_the_connection_goes_on(
    start: Callable[..., Server], sockets: Callable[[Server], ClientConnection], levels: int
) -> None:
    server = start()
    ws = sockets(server)
    ws.send(deep_tools_body(levels).decode().replace("{", '{"type":"response.create",', 1))
    error = ws_error(ws)
    assert error["code"] == "nesting_too_deep" and error["param"].startswith("tools")
    assert ws_turn(ws, {"input": "hi"})["status"] == "completed"


def test_deep_annotations_in_input_are_refused(start: Callable[..., Server]) -> None:
    server = start()
    part = {"type": "output_text", "text": "x", "annotations": [json.loads(nested(80))]}
    error = error_of(post(server, {"input": [{"role": "assistant", "content": [part]}, {"role": "user",
                                                                                     "content": "hi"}]}))
    assert error["code"] == "nesting_too_deep"
    assert error["param"].startswith("input[0].content[0].annotations")


def test_a_record_stored_before_the_limit_gives_a_clear_400_wherever_it_is_read(
    start: Callable[..., Server], sockets: Callable[[Server], ClientConnection], tmp_path: Path
) -> None:
    first = start(store="sqlite", data_dir=tmp_path)
    marker = {"marker": "deep"}
    tools = [{"type": "function", "name": "f", "parameters": marker}]
    response = post(first, {"input": "hi", "tools": tools})
    assert response.status_code == 200, response.text
    response_id = response.json()["id"]
    first.live.stop()
    # What an earlier server (without the limit) stored: the same records, 5,000 levels deep.
    old, deep = json.dumps(marker, separators=(",", ":")).encode(), nested(5_000).encode()
    with sqlite3.connect(tmp_path / "headwater.sqlite3") as db:
        [data] = db.execute("SELECT data FROM responses WHERE id = ?", (response_id,)).fetchone()
        assert old in data
        db.execute("UPDATE responses SET data = ? WHERE id = ?", (data.replace(old, deep), response_id))
        [key] = db.execute("SELECT key FROM responses WHERE id = ?", (response_id,)).fetchone()
        for seq, data in db.execute("SELECT seq, data FROM events WHERE response = ?", (key,)).fetchall():
            db.execute("UPDATE events SET data = ? WHERE response = ? AND seq = ?", (data.replace(old, deep), key, seq))
    server = start(store="sqlite", data_dir=tmp_path)

    error = error_of(post(server, {"input": "again", "previous_response_id": response_id}))
    assert error["code"] == "previous_response_unreadable" and error["param"] == "previous_response_id"
    error = error_of(server.http.post("/v1/responses/compact", json={"model": MODEL,
                                                                       "previous_response_id": response_id}))
    assert error["code"] == "previous_response_unreadable"
    ws = sockets(server)
    ws_send(ws, {"input": "again", "previous_response_id": response_id})
    assert ws_error(ws)["code"] == "previous_response_unreadable"
    # The record itself is still served as stored, as JSON and as a replayed stream.
    assert server.http.get(f"/v1/responses/{response_id}").status_code == 200
    replay = server.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    assert replay.status_code == 200 and b"event: response.completed" in replay.content
    assert ws_turn(ws, {"input": "hi"})["status"] == "completed"


def test_decoding_a_deep_event_is_a_decode_error_not_a_recursion_error() -> None:
    payload = f'{{"type":"response.created","sequence_number":0,"response":{nested(100_000)}}}'.encode()
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode_event(payload)


# --- wrong types --------------------------------------------------------------------------------------------


WRONG_TOOL_CHOICES = [
    ({"type": "function", "name": [1]}, "tool_choice.name"),
    ({"type": "function", "name": {"a": 1}}, "tool_choice.name"),
    ({"type": ["function"]}, "tool_choice.type"),
    ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": [1]}]}, "tool_choice.tools[0]"),
    ({"type": "allowed_tools", "mode": [1], "tools": [{"type": "function", "name": "weather"}]}, "tool_choice.mode"),
    ({"type": "allowed_tools", "tools": "weather"}, "tool_choice.tools"),
    ({"type": "allowed_tools", "tools": [[1]]}, "tool_choice.tools[0]"),
    ([1], "tool_choice"),
]


@pytest.mark.parametrize(("choice", "param"), WRONG_TOOL_CHOICES)
def test_a_tool_choice_of_the_wrong_type_is_a_400_with_its_param(
    start: Callable[..., Server], sockets: Callable[[Server], ClientConnection], choice: Any, param: str
) -> None:
    server = start()
    body = {"input": "hi", "tools": TOOLS, "tool_choice": choice}
    assert error_of(post(server, body))["param"] == param
    ws = sockets(server)
    ws_send(ws, body)
    assert ws_error(ws, 400)["param"] == param


def test_tool_choice_is_echoed_with_its_spec_fields_only(start: Callable[..., Server]) -> None:
    server = start()
    choice = {"type": "function", "name": "weather", "junk": "x" * 10_000}
    response = post(server, {"input": "hi", "tools": TOOLS, "tool_choice": choice})
    assert response.status_code == 200, response.text
    assert response.json()["tool_choice"] == {"type": "function", "name": "weather"}


# --- the dropped-tools header -------------------------------------------------------------------------------


def test_dropped_tool_types_never_break_the_response_header(start: Callable[..., Server]) -> None:
    server = start()
    odd = ["wéb_search", "a\r\nx-injected: 1", "nul\x00type", "x" * 100_000, "web_search", "web_search"]
    tools = [*({"type": kind} for kind in odd), *TOOLS]
    response = post(server, {"input": "hi", "tools": tools})
    assert response.status_code == 200, response.text
    header = response.headers["x-headwater-dropped-tools"]
    assert header == "web_search, 4 other type(s)"
    assert "x-injected" not in response.headers
    # As a raw socket sees it: one ASCII header line, short.
    assert len(response.headers.raw[0][1]) < 1000
    assert response.headers.get_list("x-headwater-dropped-tools") == [header]


def test_many_dropped_tool_types_are_shown_up_to_sixteen(start: Callable[..., Server]) -> None:
    server = start()
    tools = [{"type": f"hosted_{i}"} for i in range(40)]
    response = post(server, {"input": "hi", "tools": tools})
    assert response.status_code == 200, response.text
    assert response.headers["x-headwater-dropped-tools"].endswith(", 24 other type(s)")


# --- query strings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["٣", "1_0", "+3", " 5", "5 ", "0x3", "3.0", "", "9223372036854775808",
                                   "-2", "1e3", "99999999999999999999999"])
def test_starting_after_must_be_a_plain_decimal_in_range(start: Callable[..., Server], value: str) -> None:
    server = start()
    response_id = post(server, {"input": "hi"}).json()["id"]
    response = server.http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": value})
    assert error_of(response)["param"] == "starting_after"


@pytest.mark.parametrize("value", ["٣", "1_0", "+3", " 5", "0", "101", "9223372036854775808", ""])
def test_limit_must_be_a_plain_decimal_in_range(start: Callable[..., Server], value: str) -> None:
    server = start()
    response_id = post(server, {"input": "hi"}).json()["id"]
    response = server.http.get(f"/v1/responses/{response_id}/input_items", params={"limit": value})
    assert error_of(response)["param"] == "limit"


@pytest.mark.parametrize("value", ["yes", "1", "True", "", "on"])
def test_stream_must_be_true_or_false(start: Callable[..., Server], value: str) -> None:
    server = start()
    response_id = post(server, {"input": "hi"}).json()["id"]
    response = server.http.get(f"/v1/responses/{response_id}", params={"stream": value})
    assert error_of(response)["param"] == "stream"


def test_plain_query_values_still_work(start: Callable[..., Server]) -> None:
    server = start()
    response_id = post(server, {"input": "hi"}).json()["id"]
    replay = server.http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": "2"})
    assert replay.status_code == 200 and b"event: response.created" not in replay.content
    assert server.http.get(f"/v1/responses/{response_id}", params={"stream": "false"}).json()["id"] == response_id
    page = server.http.get(f"/v1/responses/{response_id}/input_items", params={"limit": "007"})
    assert page.status_code == 200 and len(page.json()["data"]) == 1


# --- empty requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"input": ""}, {"input": []}, {"input": None}])
def test_a_request_without_input_or_previous_response_is_a_400_naming_input(
    start: Callable[..., Server], sockets: Callable[[Server], ClientConnection], body: dict[str, Any]
) -> None:
    server = start()
    error = error_of(post(server, body))
    assert error["param"] == "input" and error["code"] == "missing_required_parameter"
    assert server.backend.requests == []  # the model was never asked
    ws = sockets(server)
    ws_send(ws, body)
    assert ws_error(ws)["param"] == "input"


def test_an_empty_input_may_continue_a_previous_response(start: Callable[..., Server]) -> None:
    server = start()
    first = post(server, {"input": "hi"}).json()
    response = post(server, {"input": [], "previous_response_id": first["id"]})
    assert response.status_code == 200, response.text


# --- function_call_output that answers no call ------------------------------------------------------------


def output(call_id: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": "12 degrees"}


def test_a_tool_output_that_answers_no_call_is_a_400(start: Callable[..., Server]) -> None:
    server = start(CALL)
    first = post(server, {"input": "weather?", "tools": TOOLS}).json()
    assert first["output"][0]["call_id"] == "call_1"
    error = error_of(post(server, {"input": [output("call_9")], "previous_response_id": first["id"],
                                   "tools": TOOLS}))
    assert error["param"] == "input[0].call_id" and "call_9" in error["message"]
    error = error_of(post(server, {"input": [{"role": "user", "content": "hi"}, output("call_1")]}))
    assert error["param"] == "input[1].call_id"
    # The right call_id, from the chain or from the same input, is accepted.
    answered = post(server, {"input": [output("call_1")], "previous_response_id": first["id"], "tools": TOOLS})
    assert answered.status_code == 200, answered.text
    call = {"type": "function_call", "call_id": "call_5", "name": "weather", "arguments": "{}"}
    assert post(server, {"input": [call, output("call_5")], "tools": TOOLS}).status_code == 200


def test_over_websocket_a_failed_continuation_forgets_the_response_it_named(
    start: Callable[..., Server], sockets: Callable[[Server], ClientConnection]
) -> None:
    server = start(CALL)
    ws = sockets(server)
    # Without a failure, a store: false response is continued from the connection's memory.
    first = ws_turn(ws, {"input": "weather?", "tools": TOOLS, "store": False})
    assert ws_turn(ws, {"input": [output("call_1")], "previous_response_id": first["id"], "tools": TOOLS,
                        "store": False})["status"] == "completed"
    # A continuation that fails (an output answering no call) evicts it: the next one cannot find it.
    first = ws_turn(ws, {"input": "weather?", "tools": TOOLS, "store": False})
    ws_send(ws, {"input": [output("call_9")], "previous_response_id": first["id"], "tools": TOOLS, "store": False})
    assert ws_error(ws)["param"] == "input[0].call_id"
    ws_send(ws, {"input": [output("call_1")], "previous_response_id": first["id"], "tools": TOOLS, "store": False})
    error = ws_error(ws)
    assert error["code"] == "previous_response_not_found" and error["param"] == "previous_response_id"
    assert ws_turn(ws, {"input": "hi"})["status"] == "completed"


# --- sizes --------------------------------------------------------------------------------------------------


SMALL = InputLimits(input_items=10, content_parts=4, text_chars=1_000, instructions_chars=500, tools=3,
                    tools_bytes=2_000)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi", "instructions": "x" * 501}, "instructions", "string_above_max_length"),
        ({"input": "x" * 1_001}, "input", "string_above_max_length"),
        ({"input": [{"role": "user", "content": "hi"}] * 11}, "input", "array_above_max_length"),
        ({"input": [{"role": "user", "content": "x" * 1_001}]}, "input[0].content", "string_above_max_length"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}] * 5}]}, "input[0].content",
         "array_above_max_length"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x" * 1_001}]}]},
         "input[0].content[0].text", "string_above_max_length"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "x" * 1_001}]},
         "input[0].arguments", "string_above_max_length"),
        ({"input": "hi", "tools": [{"type": "function", "name": f"f{i}"} for i in range(4)]}, "tools",
         "array_above_max_length"),
        ({"input": "hi", "tools": [{"type": "function", "name": "f", "description": "x" * 2_000}]}, "tools",
         "tools_too_large"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "s",
                                             "schema": {"description": "x" * 2_000}}}},
         "text.format", "schema_too_large"),
        ({"input": "hi", "model": "m" * 257}, "model", "invalid_value"),
        ({"input": "hi", "previous_response_id": "r" * 257}, "previous_response_id", "invalid_value"),
    ],
)
def test_beyond_a_size_limit_is_a_400_with_its_param(
    start: Callable[..., Server], body: dict[str, Any], param: str, code: str
) -> None:
    server = start(input_limits=SMALL)
    error = error_of(post(server, {"model": MODEL, **body}))
    assert (error["param"], error["code"]) == (param, code), error["message"]
    assert len(error["message"]) < 400


def test_the_size_limits_hold_over_websocket(
    start: Callable[..., Server], sockets: Callable[[Server], ClientConnection]
) -> None:
    server = start(input_limits=SMALL)
    ws = sockets(server)
    ws_send(ws, {"input": "hi", "instructions": "x" * 501})
    assert ws_error(ws)["param"] == "instructions"
    assert ws_turn(ws, {"input": "hi", "instructions": "x" * 500})["status"] == "completed"


def test_a_large_real_client_request_fits_the_default_limits(start: Callable[..., Server]) -> None:
    server = start()
    # About what Codex CLI sends: ~6k tokens of instructions, a few dozen tools with JSON schemas, a long history.
    tools = [{"type": "function", "name": f"tool_{i}", "description": "Does a thing. " * 40,
              "parameters": {"type": "object", "properties": {f"arg_{j}": {"type": "string", "description": "x" * 80}
                                                            for j in range(8)}}} for i in range(60)]
    history = [{"role": "user" if i % 2 else "assistant", "content": "word " * 200} for i in range(500)]
    body = {"input": [*history, {"role": "user", "content": "go on"}], "instructions": "Be careful. " * 2_500,
            "tools": tools}
    response = post(server, body)
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["instructions"]) == len(body["instructions"])


# --- configuring the limits ---------------------------------------------------------------------------------


def test_serve_limit_options_change_the_limits() -> None:
    script = json.dumps([{"text": "hi"}, {"finish": "stop"}])
    with ServeProcess("--backend", "scripted", "--backend-option", f"script={script}", "--store", "memory",
                      "--limit", "instructions_chars=10", "--limit", "input_items=2") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        assert error_of(client.post("/v1/responses", json={"input": "hi", "instructions": "x" * 11}))[
            "param"] == "instructions"
        assert error_of(client.post("/v1/responses", json={"input": ["a", "b", "c"]}))["param"] == "input"
        assert client.post("/v1/responses", json={"input": "hi", "instructions": "x" * 10}).status_code == 200
    refused = subprocess.run([sys.executable, "-m", "headwater", "serve", "--limit", "depth=3"],
                             capture_output=True, timeout=60)
    assert refused.returncode == 2 and b"nesting_depth" in refused.stderr
