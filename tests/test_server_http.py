"""The server through a real uvicorn on a loopback socket and a real httpx client: every endpoint, streaming,
JSON and background, resume, cancel, disconnect, chains, errors, auth and crash recovery.

Every stream received is checked with ``headwater.protocol.conformance.check``: zero findings.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.protocol.conformance import check
from headwater.protocol.events import Event
from headwater.protocol.stream import encode_sse, iter_events
from headwater.server.app import create_app
from headwater.server.backends.base import (
    BackendError,
    Finish,
    GenerationRequest,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.scripted import Fail, Pause, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore, SQLiteStore, Store

HELLO: list[Step] = [TextDelta("Hello"), TextDelta(", "), TextDelta("world"), UsageStep(7, 3), Finish("stop")]
MODEL = "scripted-1"


class Gate:
    """A point where a script holds until the test opens it (a model thinking for as long as a test needs)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()

    def open(self) -> None:
        self.opened.set()


def script(*items: Any) -> Callable[[GenerationRequest], Iterator[ScriptItem]]:
    """A ``ScriptedBackend`` script of steps, ``Pause``/``Fail`` items, ``Gate``s and exceptions to raise. The
    backend iterates what the script returns as it plays, so a gate holds it with short pauses."""

    def play(request: GenerationRequest) -> Iterator[ScriptItem]:
        for item in items:
            if isinstance(item, Gate):
                item.reached.set()
                while not item.opened.is_set():
                    yield Pause(0.002)
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    return play


# --- harness ------------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    backend: ScriptedBackend
    client: httpx.Client
    store: Store
    live: Any


@pytest.fixture
def start(serve: Callable[[Any], Any]) -> Iterator[Callable[..., Server]]:
    clients: list[httpx.Client] = []

    def start_server(
        steps: list[Any] | None = None,
        *,
        store: Store | None = None,
        api_keys: tuple[str, ...] = (),
        key: str | None = None,
        **settings: Any,
    ) -> Server:
        backend = ScriptedBackend(script(*(HELLO if steps is None else steps)), models=[MODEL])
        store = store if store is not None else MemoryStore()
        config = ServerConfig.with_keys(api_keys, store="memory", **settings)
        live = serve(create_app(config, backend=backend, store=store))
        headers = {"authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=live.url, headers=headers, timeout=20)
        clients.append(client)
        return Server(live.url, backend, client, store, live)

    yield start_server
    for client in clients:
        client.close()


def events_of(body: bytes) -> list[Event]:
    return list(iter_events([body]))


def conformant(body: bytes) -> list[Event]:
    events = events_of(body)
    findings = check(events)
    assert findings == [], "\n".join(map(str, findings))
    return events


def stream(server: Server, **body: Any) -> tuple[httpx.Response, list[Event]]:
    response = server.client.post("/v1/responses", json={"model": MODEL, "stream": True, **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response, conformant(response.content)


def create(server: Server, **body: Any) -> dict[str, Any]:
    response = server.client.post("/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert "Traceback" not in error["message"]
    return error  # type: ignore[no-any-return]


def wait_for_status(server: Server, response_id: str, wanted: set[str], wait_until: Callable[..., None]) -> dict:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(server.client.get(f"/v1/responses/{response_id}").json())
        return seen.get("status") in wanted

    wait_until(done)
    return seen


def required_fields() -> list[str]:
    spec = json.loads((Path(__file__).parents[1] / "src/headwater/server/openapi.json").read_text())
    return spec["components"]["schemas"]["ResponseResource"]["required"]  # type: ignore[no-any-return]


# --- create: stream, JSON, background -----------------------------------------------------------------------


def test_stream_is_conformant_sse_one_event_per_type(start: Callable[..., Server]) -> None:
    server = start()
    response, events = stream(server, input="hi")
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    blocks = [b for b in response.content.split(b"\n\n") if b]
    assert all(b.startswith(b"event: ") for b in blocks)
    for block, event in zip(blocks, events, strict=True):
        assert block.split(b"\n")[0] == b"event: " + event.type.encode()
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output[0].content[0].text == "Hello, world"
    assert final.usage.input_tokens == 7 and final.usage.total_tokens == 10


def test_json_response_has_every_spec_field(start: Callable[..., Server]) -> None:
    server = start()
    body = create(server, input="hi", metadata={"k": "v"}, temperature=0.5)
    assert set(required_fields()) <= set(body)
    assert body["status"] == "completed" and body["object"] == "response"
    assert body["output"][0]["content"][0]["text"] == "Hello, world"
    assert body["metadata"] == {"k": "v"} and body["temperature"] == 0.5
    assert body["completed_at"] is not None
    assert server.backend.runs[0].request.temperature == 0.5
    assert server.client.get(f"/v1/responses/{body['id']}").json() == body


def test_background_returns_queued_at_once_then_completes(start: Callable[..., Server], wait_until) -> None:
    gate = Gate()
    server = start([gate, *HELLO])
    body = create(server, input="hi", background=True)
    assert body["status"] == "queued" and body["background"] is True
    assert set(required_fields()) <= set(body)
    assert gate.reached.wait(10)
    assert server.client.get(f"/v1/responses/{body['id']}").json()["status"] == "in_progress"
    gate.open()
    final = wait_for_status(server, body["id"], {"completed"}, wait_until)
    assert final["output"][0]["content"][0]["text"] == "Hello, world"
    replay = server.client.get(f"/v1/responses/{body['id']}", params={"stream": "true"})
    events = conformant(replay.content)
    assert [e.type for e in events][:3] == ["response.created", "response.queued", "response.in_progress"]


def test_background_stream_follows_live(start: Callable[..., Server]) -> None:
    server = start()
    _, events = stream(server, input="hi", background=True)
    assert events[0].response.status == "queued"  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"


def test_reasoning_then_text_then_tool_calls(start: Callable[..., Server]) -> None:
    script: list[Any] = [
        ReasoningDelta("Think"), ReasoningDelta("ing."), TextDelta("Calling."),
        ToolCallDelta(0, '{"ci', call_id="c1", name="weather"), ToolCallDelta(1, "{}", call_id="c2", name="time"),
        ToolCallDelta(0, 'ty":"Oslo"}'), Finish("tool_calls"),
    ]
    server = start(script)
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}, {"type": "function", "name": "time"}]
    _, events = stream(server, input="hi", tools=tools)
    output = events[-1].response.output  # type: ignore[union-attr]
    assert [type(item).__name__ for item in output] == ["ReasoningItem", "Message", "FunctionCall", "FunctionCall"]
    assert output[0].content[0].text == "Thinking."
    assert (output[2].name, output[2].call_id, output[2].arguments) == ("weather", "c1", '{"city":"Oslo"}')
    assert (output[3].name, output[3].arguments) == ("time", "{}")
    assert server.backend.runs[0].request.tools[0] == {
        "name": "weather", "description": None, "parameters": {"type": "object"}}


def test_max_tool_calls_limits_the_calls_made(start: Callable[..., Server]) -> None:
    script: list[Any] = [ToolCallDelta(0, "{}", call_id="c1", name="f"), ToolCallDelta(1, "{}", call_id="c2", name="f"),
                         Finish("tool_calls")]
    server = start(script)
    body = create(server, input="hi", tools=[{"type": "function", "name": "f"}], max_tool_calls=1)
    assert [item["call_id"] for item in body["output"]] == ["c1"]


def test_max_output_tokens_makes_the_response_incomplete(start: Callable[..., Server]) -> None:
    server = start([TextDelta("cut"), Finish("length")])
    _, events = stream(server, input="hi", max_output_tokens=16)
    final = events[-1]
    assert final.type == "response.incomplete"
    assert final.response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert server.backend.runs[0].request.max_output_tokens == 16
    assert create(server, input="hi", max_output_tokens=16)["status"] == "incomplete"


def test_keepalive_comments_while_the_model_is_silent(start: Callable[..., Server]) -> None:
    gate = Gate()
    server = start([TextDelta("a"), gate, TextDelta("b"), Finish()], keepalive_seconds=0.05)
    with server.client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as response:
        chunks = response.iter_bytes()
        received = b""
        while b": keep-alive" not in received:
            received += next(chunks)
        gate.open()
        received += b"".join(chunks)
    conformant(received)


def test_store_false_is_not_retrievable(start: Callable[..., Server]) -> None:
    server = start()
    body = create(server, input="hi", store=False)
    assert body["store"] is False and body["status"] == "completed"
    error_of(server.client.get(f"/v1/responses/{body['id']}"), 404)
    error = error_of(server.client.post("/v1/responses", json={"input": "x", "previous_response_id": body["id"]}), 400)
    assert (error["param"], error["code"]) == ("previous_response_id", "previous_response_not_found")


def test_large_request_with_a_dozen_tools_and_unrunnable_ones(start: Callable[..., Server]) -> None:
    server = start()
    tools: list[dict[str, Any]] = [
        {"type": "function", "name": f"tool_{n}", "description": "d" * 2500,
         "parameters": {"type": "object", "properties": {f"p{k}": {"type": "string", "description": "x" * 100}
                                                         for k in range(8)}}}
        for n in range(12)
    ]
    tools += [{"type": "web_search"}, {"type": "mcp", "server_label": "s", "server_url": "https://x"},
              {"type": "namespace", "name": "ns", "tools": []}]
    body = {"model": MODEL, "input": "hi", "tools": tools, "client_extra": {"a": 1}}
    assert len(json.dumps(body)) > 40_000
    response = server.client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-headwater-dropped-tools"] == "web_search, mcp, namespace"
    assert len(response.json()["tools"]) == 12
    assert [t["name"] for t in server.backend.runs[0].request.tools] == [f"tool_{n}" for n in range(12)]


def test_strict_tools_refuses_unrunnable_tools(start: Callable[..., Server]) -> None:
    server = start(strict_tools=True)
    response = server.client.post("/v1/responses", json={"input": "hi", "tools": [{"type": "web_search"}]})
    assert error_of(response, 400)["param"] == "tools[0]"
    assert server.backend.runs == []


# --- retrieve, resume, input items, delete ------------------------------------------------------------------


def test_resume_from_several_points_concatenates_to_the_full_stream(start: Callable[..., Server]) -> None:
    server = start()
    response, events = stream(server, input="hi")
    full = response.content
    frames = [b + b"\n\n" for b in full.split(b"\n\n") if b]
    response_id = events[0].response.id  # type: ignore[union-attr]
    for after in (-1, 0, 1, 4, len(events) - 2, len(events) - 1):
        resumed = server.client.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": after})
        assert resumed.status_code == 200
        assert b"".join(frames[: after + 1]) + resumed.content == full
        assert [e.sequence_number for e in events_of(resumed.content)] == list(range(after + 1, len(events)))


def test_resume_while_live_then_follow_to_the_end(start: Callable[..., Server]) -> None:
    gate = Gate()
    server = start([TextDelta("a"), gate, TextDelta("b"), Finish()])
    body = create(server, input="hi", background=True)
    assert gate.reached.wait(10)
    with server.client.stream("GET", f"/v1/responses/{body['id']}", params={"stream": "true"}) as live:
        chunks = live.iter_bytes()
        received = b""
        while b"response.output_text.delta" not in received:
            received += next(chunks)
        seen = events_of(received)
        gate.open()
        received += b"".join(chunks)
    events = conformant(received)
    resumed = server.client.get(
        f"/v1/responses/{body['id']}", params={"stream": "true", "starting_after": seen[-1].sequence_number}
    )
    assert events[: len(seen)] == seen
    assert events_of(resumed.content) == events[len(seen):]


def test_input_items_are_paginated_like_openai(start: Callable[..., Server]) -> None:
    server = start()
    items = [{"role": "user", "content": f"m{n}"} for n in range(5)]
    body = create(server, input=items, instructions="sys")
    url = f"/v1/responses/{body['id']}/input_items"
    page = server.client.get(url).json()
    assert page["object"] == "list" and not page["has_more"]
    assert [i["content"][0]["text"] for i in page["data"]] == ["m4", "m3", "m2", "m1", "m0"]  # newest first
    page = server.client.get(url, params={"order": "asc", "limit": 2}).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["m0", "m1"] and page["has_more"]
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][1]["id"]
    page = server.client.get(url, params={"order": "asc", "after": page["last_id"]}).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["m2", "m3", "m4"]
    assert error_of(server.client.get(url, params={"limit": 0}), 400)["param"] == "limit"
    assert error_of(server.client.get(url, params={"order": "up"}), 400)["param"] == "order"


def test_delete_removes_the_response(start: Callable[..., Server]) -> None:
    server = start()
    body = create(server, input="hi")
    deleted = server.client.delete(f"/v1/responses/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "response", "deleted": True}
    error_of(server.client.get(f"/v1/responses/{body['id']}"), 404)
    error_of(server.client.delete(f"/v1/responses/{body['id']}"), 404)


# --- cancel and disconnect ----------------------------------------------------------------------------------


def test_cancel_a_background_run(start: Callable[..., Server], wait_until) -> None:
    gate = Gate()
    server = start([TextDelta("partial"), gate, TextDelta(" never"), Finish()])
    body = create(server, input="hi", background=True)
    assert gate.reached.wait(10)
    cancelled = server.client.post(f"/v1/responses/{body['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["incomplete_details"] is None  # known by its status (OpenAI's types allow no reason)
    generation = server.backend.runs[0]
    wait_until(lambda: generation.closed_early)
    assert generation.steps_yielded == 1
    assert server.client.get(f"/v1/responses/{body['id']}").json()["status"] == "cancelled"
    events = conformant(server.client.get(f"/v1/responses/{body['id']}", params={"stream": "true"}).content)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"  # type: ignore[union-attr]
    assert events[-1].response.incomplete_details is None  # type: ignore[union-attr]
    assert events[-1].response.output[0].content[0].text == "partial"  # type: ignore[union-attr]
    again = server.client.post(f"/v1/responses/{body['id']}/cancel")
    assert again.json()["status"] == "cancelled"


def test_cancel_ends_a_live_stream_properly(start: Callable[..., Server]) -> None:
    gate = Gate()
    server = start([TextDelta("partial"), gate, Finish()])
    with server.client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as live:
        chunks = live.iter_bytes()
        received = next(chunks)
        response_id = events_of(received.split(b"\n\n")[0] + b"\n\n")[0].response.id  # type: ignore[union-attr]
        assert gate.reached.wait(10)
        assert server.client.post(f"/v1/responses/{response_id}/cancel").json()["status"] == "cancelled"
        received += b"".join(chunks)
    events = conformant(received)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"  # type: ignore[union-attr]


def test_cancelling_a_finished_response_is_refused(start: Callable[..., Server]) -> None:
    server = start()
    body = create(server, input="hi")
    error = error_of(server.client.post(f"/v1/responses/{body['id']}/cancel"), 400)
    assert "completed" in error["message"]


def test_client_disconnect_cancels_a_streamed_run(start: Callable[..., Server], wait_until) -> None:
    gate = Gate()
    server = start([TextDelta("a"), gate, TextDelta("b"), Finish()])
    with server.client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as live:
        received = b""
        chunks = live.iter_bytes()
        while b"output_text.delta" not in received:
            received += next(chunks)
        response_id = events_of(received)[0].response.id  # type: ignore[union-attr]
    # The connection is closed; the model is still held at the gate.
    generation = server.backend.runs[0]
    wait_until(lambda: generation.closed_early)
    assert generation.steps_yielded == 1
    gate.open()
    stored = server.client.get(f"/v1/responses/{response_id}").json()
    assert stored["status"] == "cancelled"
    conformant(server.client.get(f"/v1/responses/{response_id}", params={"stream": "true"}).content)


def test_with_a_disconnect_grace_a_dropped_stream_can_be_resumed_to_its_end(
    start: Callable[..., Server], wait_until
) -> None:
    gate = Gate()
    server = start([TextDelta("a"), gate, TextDelta("b"), Finish()], disconnect_grace_seconds=30.0)
    with server.client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as live:
        received = b""
        chunks = live.iter_bytes()
        while b"output_text.delta" not in received:
            received += next(chunks)
    first = events_of(received)
    response_id = first[0].response.id  # type: ignore[union-attr]
    last = first[-1].sequence_number
    with server.client.stream(
        "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": last}
    ) as resumed:
        gate.open()  # the model goes on while the resumed stream follows it
        rest = events_of(resumed.read())
    assert not server.backend.runs[0].closed_early
    assert rest[0].sequence_number == last + 1 and rest[-1].type == "response.completed"
    conformant(b"".join(encode_sse(e) for e in [*first, *rest]))


def test_with_a_disconnect_grace_an_abandoned_stream_is_cancelled_after_it(
    start: Callable[..., Server], wait_until
) -> None:
    gate = Gate()
    server = start([TextDelta("a"), gate, TextDelta("b"), Finish()], disconnect_grace_seconds=0.2)
    with server.client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as live:
        received = b""
        chunks = live.iter_bytes()
        while b"output_text.delta" not in received:
            received += next(chunks)
    wait_until(lambda: server.backend.runs[0].closed_early)
    gate.open()


def test_disconnect_leaves_a_background_stream_running(start: Callable[..., Server], wait_until) -> None:
    gate = Gate()
    server = start([TextDelta("a"), gate, TextDelta("b"), Finish()])
    body = {"input": "hi", "stream": True, "background": True}
    with server.client.stream("POST", "/v1/responses", json=body) as live:
        received = next(live.iter_bytes())
        response_id = events_of(received.split(b"\n\n")[0] + b"\n\n")[0].response.id  # type: ignore[union-attr]
    gate.open()
    final = wait_for_status(server, response_id, {"completed", "cancelled"}, wait_until)
    assert final["status"] == "completed"
    assert not server.backend.runs[0].closed_early


def test_client_disconnect_cancels_a_json_request(start: Callable[..., Server], wait_until) -> None:
    gate = Gate()
    server = start([TextDelta("a"), gate, Finish()])
    with pytest.raises(httpx.ReadTimeout):
        server.client.post("/v1/responses", json={"input": "hi"}, timeout=httpx.Timeout(5, read=0.2))
    generation = server.backend.runs[0]
    wait_until(lambda: generation.closed_early)
    assert generation.steps_yielded == 1


def test_shutdown_fails_live_runs(start: Callable[..., Server], tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    gate = Gate()
    first = start([TextDelta("a"), gate, Finish()], store=SQLiteStore(path))
    body = create(first, input="hi", background=True)
    assert gate.reached.wait(10)
    first.live.stop()
    assert first.backend.runs[0].closed_early
    second = start(store=SQLiteStore(path))
    stored = second.client.get(f"/v1/responses/{body['id']}").json()
    assert (stored["status"], stored["error"]["code"]) == ("failed", "server_shutdown")
    conformant(second.client.get(f"/v1/responses/{body['id']}", params={"stream": "true"}).content)


# --- previous_response_id -----------------------------------------------------------------------------------


def test_previous_response_chain_reaches_the_backend(start: Callable[..., Server]) -> None:
    server = start([ToolCallDelta(0, '{"q":1}', call_id="c1", name="look"), Finish("tool_calls")])
    tools = [{"type": "function", "name": "look"}]
    first = create(server, input="first question", instructions="old rules", tools=tools)
    server.backend.script = script(*HELLO)
    second = create(server, previous_response_id=first["id"], tools=tools,
                    input=[{"type": "function_call_output", "call_id": "c1", "output": "42"}])
    third = create(server, previous_response_id=second["id"], input="thanks", instructions="new rules")
    assert third["previous_response_id"] == second["id"]
    seen = [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in server.backend.runs[2].request.messages]
    assert seen == [
        ("system", "new rules", [], None),
        ("user", "first question", [], None),
        ("assistant", "", [{"id": "c1", "name": "look", "arguments": '{"q":1}'}], None),
        ("tool", "42", [], "c1"),
        ("assistant", "Hello, world", [], None),
        ("user", "thanks", [], None),
    ]


def test_item_references_are_resolved_from_the_store(start: Callable[..., Server]) -> None:
    # The Vercel AI SDK's default multi-turn: the messages resent, store: true, earlier output items as
    # {"type": "item_reference", "id"} (or the bare {"id"}), no previous_response_id.
    server = start([ReasoningDelta("hmm"), ToolCallDelta(0, '{"q":1}', call_id="c1", name="look"),
                    Finish("tool_calls")])
    tools = [{"type": "function", "name": "look"}]
    first = create(server, input=[{"role": "user", "content": "first question"}], tools=tools)
    reasoning, call = first["output"]
    server.backend.script = script(*HELLO)
    second = create(server, tools=tools, input=[
        {"role": "user", "content": "first question"},
        {"type": "item_reference", "id": reasoning["id"]},
        {"id": call["id"]},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ])
    seen = [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in server.backend.runs[1].request.messages]
    assert seen == [
        ("user", "first question", [], None),
        ("assistant", "", [{"id": "c1", "name": "look", "arguments": '{"q":1}'}], None),
        ("tool", "42", [], "c1"),
    ]
    # The referenced items are this response's input items, as they were stored (a referenced input item too).
    items = server.client.get(f"/v1/responses/{second['id']}/input_items", params={"order": "asc"}).json()["data"]
    assert [item["type"] for item in items] == ["message", "reasoning", "function_call", "function_call_output"]
    assert items[1]["id"] == reasoning["id"] and items[2]["call_id"] == "c1"
    fco = items[3]["id"]
    server.backend.script = script(*HELLO)
    create(server, input=[{"role": "user", "content": "again"}, {"type": "item_reference", "id": fco}])
    assert [m.role for m in server.backend.runs[2].request.messages] == ["user", "tool"]


def test_an_unknown_item_reference_is_400_naming_the_input(start: Callable[..., Server]) -> None:
    server = start(api_keys=("k1", "k2"), key="k1")
    mine = create(server, input="hi")
    error = error_of(server.client.post("/v1/responses", json={
        "input": [{"role": "user", "content": "x"}, {"type": "item_reference", "id": "msg_nope"}]}), 400)
    assert (error["param"], error["code"]) == ("input[1]", "item_not_found")
    assert "msg_nope" in error["message"]
    # Another key's items are unknown to this one.
    other = httpx.Client(base_url=server.url, headers={"authorization": "Bearer k2"}, timeout=20)
    with other:
        response = other.post("/v1/responses", json={"input": [{"id": mine["output"][0]["id"]}]})
    assert error_of(response, 400)["param"] == "input[0]"


def test_counting_input_tokens_needs_a_backend_that_can(start: Callable[..., Server]) -> None:
    server = start()
    response = server.client.post("/v1/responses/input_tokens", json={"model": MODEL, "input": "hi"})
    error = error_of(response, 501)
    assert error["code"] == "not_implemented" and "count" in error["message"]
    assert error_of(server.client.post("/v1/responses/input_tokens", json={"input": 5}), 400)["param"] == "input"


def test_unknown_previous_response_is_400_previous_response_not_found(start: Callable[..., Server]) -> None:
    server = start()
    response = server.client.post("/v1/responses", json={"input": "x", "previous_response_id": "resp_nope"})
    error = error_of(response, 400)
    assert (error["param"], error["code"]) == ("previous_response_id", "previous_response_not_found")


# --- errors -------------------------------------------------------------------------------------------------


def test_backend_error_before_output_is_its_http_status(start: Callable[..., Server]) -> None:
    server = start([Fail(BackendError("upstream timed out", code="timeout", status=504))])
    error = error_of(server.client.post("/v1/responses", json={"input": "hi", "stream": True}), 504)
    assert (error["code"], error["message"], error["type"]) == ("timeout", "upstream timed out", "server_error")
    error = error_of(server.client.post("/v1/responses", json={"input": "hi"}), 504)
    server.backend.script = [Fail(BackendError("bad gateway"))]
    assert error_of(server.client.post("/v1/responses", json={"input": "hi"}), 502)["code"] == "server_error"
    server.backend.script = [Fail(BackendError("no such model", code="model_not_found", status=400))]
    assert error_of(server.client.post("/v1/responses", json={"input": "hi"}), 400)["code"] == "model_not_found"


def test_backend_error_mid_stream_is_error_then_failed(start: Callable[..., Server]) -> None:
    server = start([TextDelta("half"), Fail(BackendError("connection reset", code="upstream_error"))])
    _, events = stream(server, input="hi")
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.error.code == "upstream_error" and failed.error.message == "connection reset"
    stored = server.client.get(f"/v1/responses/{failed.id}").json()
    assert stored["status"] == "failed" and stored["error"]["code"] == "upstream_error"
    assert events_of(server.client.get(f"/v1/responses/{failed.id}", params={"stream": "true"}).content) == events


def test_unexpected_backend_exception_is_a_clean_failure(start: Callable[..., Server]) -> None:
    server = start([TextDelta("x"), RuntimeError("secret internals /etc/passwd")])
    response, events = stream(server, input="hi")
    assert events[-1].type == "response.failed"
    assert b"secret" not in response.content and b"Traceback" not in response.content


class FailingStore(MemoryStore):
    """A store whose disk fills up after ``appends`` successful appends."""

    def __init__(self, appends: int) -> None:
        super().__init__()
        self.appends = appends
        self.failed = threading.Event()

    async def append(self, response_id: str, events: Any, **changes: Any) -> None:
        if self.appends == 0:
            self.failed.set()
            raise OSError("disk full")
        self.appends -= 1
        await super().append(response_id, events, **changes)


def test_a_failing_store_ends_the_stream_as_failed(start: Callable[..., Server], wait_until: Callable[..., None]) -> None:
    gate = Gate()
    store = FailingStore(appends=0)  # the response is created, no event gets logged
    server = start([TextDelta("a"), gate, TextDelta("b"), Finish()], store=store)
    with server.client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as live:
        assert store.failed.wait(10)
        gate.open()
        received = live.read()
    events = conformant(received)
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.error.code == "server_error"  # type: ignore[union-attr]
    assert b"disk full" not in received
    # The store keeps what it had, in_progress: the next start closes it as failed (see the orphan tests). (The
    # stream's end may reach the client before its run has ended; until then a retrieve shows the run's own.)
    url = f"/v1/responses/{events[0].response.id}"  # type: ignore[union-attr]
    wait_until(lambda: server.client.get(url).json()["status"] == "in_progress")


@pytest.mark.parametrize(
    ("send", "status", "code"),
    [
        (lambda c: c.post("/v1/responses", content=b"{oops"), 400, "invalid_json"),
        (lambda c: c.post("/v1/responses", json={"input": 3}), 400, "invalid_value"),
        (lambda c: c.get("/v1/responses/resp_missing"), 404, "not_found"),
        (lambda c: c.get("/v1/nothing"), 404, "not_found"),
        (lambda c: c.put("/v1/responses"), 405, "method_not_allowed"),
        (lambda c: c.post("/v1/responses", content=b"x" * (64 * 1024 + 1)), 413, "request_too_large"),
        (lambda c: c.get("/v1/responses/resp_x", params={"stream": "true", "starting_after": "x"}), 404, "not_found"),
    ],
)
def test_error_statuses(start: Callable[..., Server], send: Callable[[httpx.Client], httpx.Response], status: int,
                        code: str) -> None:
    server = start(max_body_bytes=64 * 1024)
    assert error_of(send(server.client), status)["code"] == code


def test_413_without_content_length(start: Callable[..., Server]) -> None:
    server = start(max_body_bytes=1024)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 200

    assert error_of(server.client.post("/v1/responses", content=chunks()), 413)["code"] == "request_too_large"


def test_bad_starting_after_is_400(start: Callable[..., Server]) -> None:
    server = start()
    body = create(server, input="hi")
    response = server.client.get(f"/v1/responses/{body['id']}", params={"stream": "true", "starting_after": "x"})
    assert error_of(response, 400)["param"] == "starting_after"


# --- auth ---------------------------------------------------------------------------------------------------


def test_api_keys_guard_and_isolate(start: Callable[..., Server]) -> None:
    server = start(api_keys=("key-a", "key-b"), key="key-a")
    anonymous = httpx.Client(base_url=server.url)
    other = httpx.Client(base_url=server.url, headers={"authorization": "Bearer key-b"})
    wrong = httpx.Client(base_url=server.url, headers={"authorization": "Bearer key-c"})
    try:
        assert error_of(anonymous.post("/v1/responses", json={"input": "hi"}), 401)["code"] == "missing_api_key"
        assert error_of(wrong.post("/v1/responses", json={"input": "hi"}), 401)["code"] == "invalid_api_key"
        error_of(anonymous.get("/v1/models"), 401)
        assert anonymous.get("/healthz").status_code == 200
        body = create(server, input="hi")
        for path in ("", "/input_items"):
            error_of(other.get(f"/v1/responses/{body['id']}{path}"), 404)
        error_of(other.post(f"/v1/responses/{body['id']}/cancel"), 404)
        error_of(other.delete(f"/v1/responses/{body['id']}"), 404)
        error_of(other.post("/v1/responses", json={"input": "x", "previous_response_id": body["id"]}), 400)
        assert server.client.get(f"/v1/responses/{body['id']}").status_code == 200
    finally:
        for client in (anonymous, other, wrong):
            client.close()


# --- models, openapi, health --------------------------------------------------------------------------------


def test_models_openapi_and_health(start: Callable[..., Server]) -> None:
    server = start()
    models = server.client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["scripted-1"]
    spec = server.client.get("/openapi.json").json()
    assert "CreateResponseBody" in spec["components"]["schemas"]
    assert server.client.get("/healthz").json()["status"] == "ok"


# --- durability ---------------------------------------------------------------------------------------------


def test_sqlite_store_survives_a_restart(start: Callable[..., Server], tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    first = start(store=SQLiteStore(path))
    response, events = stream(first, input="remember me")
    response_id = events[0].response.id  # type: ignore[union-attr]
    second = start(store=SQLiteStore(path))
    assert second.client.get(f"/v1/responses/{response_id}").json()["status"] == "completed"
    assert second.client.get(f"/v1/responses/{response_id}", params={"stream": "true"}).content == response.content
    create(second, input="and now?", previous_response_id=response_id)
    assert [m.content for m in second.backend.runs[0].request.messages] == ["remember me", "Hello, world",
                                                                                  "and now?"]


def test_orphaned_runs_are_failed_on_restart(start: Callable[..., Server], tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    gate = Gate()
    first = start([TextDelta("partial"), gate, Finish()], store=SQLiteStore(path))
    body = create(first, input="hi", background=True)
    assert gate.reached.wait(10)
    deadline = time.monotonic() + 10
    while True:  # the delta is stored (the run's writes are coalesced: they land a little after the step)
        with sqlite3.connect(path) as db:
            types = [row[0] for row in db.execute(
                "SELECT type FROM events WHERE response = (SELECT key FROM responses WHERE id = ?)", (body["id"],))]
        if "response.output_text.delta" in types or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    # What a crash leaves: the run's events so far and an in_progress row. Copy the file as it is now.
    crashed = tmp_path / "crashed.sqlite3"
    source = sqlite3.connect(path)
    target = sqlite3.connect(crashed)
    source.backup(target)
    source.close()
    target.close()
    gate.open()
    second = start(store=SQLiteStore(crashed))
    stored = second.client.get(f"/v1/responses/{body['id']}").json()
    assert stored["status"] == "failed"
    assert stored["error"]["code"] == "server_restarted"
    events = conformant(second.client.get(f"/v1/responses/{body['id']}", params={"stream": "true"}).content)
    # The closing goes on where the dead writer stopped: the open text, part and message are closed first.
    assert [e.type for e in events[-5:]] == ["response.output_text.done", "response.content_part.done",
                                             "response.output_item.done", "error", "response.failed"]
    message = events[-1].response.output[0]
    assert message.status == "incomplete" and message.content[0].text == "partial"
    assert stored["output"][0]["content"][0]["text"] == "partial"


def test_orphan_with_an_empty_log_gets_a_whole_failed_stream(start: Callable[..., Server], tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    start(store=SQLiteStore(path))  # creates the schema
    template = create(start(), input="hi", store=True)  # any valid resource JSON
    template.update(id="resp_orphan", status="in_progress", output=[], completed_at=None, usage=None)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO responses (id, owner, status, created_at, data) VALUES (?, NULL, ?, ?, ?)",
                   ("resp_orphan", "in_progress", 1, json.dumps(template).encode()))
    server = start(store=SQLiteStore(path))
    assert server.client.get("/v1/responses/resp_orphan").json()["status"] == "failed"
    events = conformant(server.client.get("/v1/responses/resp_orphan", params={"stream": "true"}).content)
    assert events[0].type == "response.created" and events[-1].type == "response.failed"


def test_backend_reported_cost_reaches_the_response_usage(start: Callable[..., Server]) -> None:
    server = start([TextDelta("Hi"), UsageStep(5, 1, cost=0.0021), Finish("stop")])
    body = server.client.post("/v1/responses", json={"model": MODEL, "input": "hi"}).json()
    assert body["usage"]["cost"] == 0.0021
    plain = start().client.post("/v1/responses", json={"model": MODEL, "input": "hi"}).json()
    assert "cost" not in plain["usage"]  # nothing reported, nothing invented


def test_invalid_utf8_body_is_a_400_not_a_500(start: Callable[..., Server]) -> None:
    server = start()
    body = b'{"model": "m", "input": "\xff"}'
    for path in ("/v1/responses", "/v1/responses/compact"):
        answer = server.client.post(path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["code"] == "invalid_json"


def test_repeated_input_items_stay_reachable_through_input_items_paging(start: Callable[..., Server]) -> None:
    server = start()
    item = {"type": "message", "id": "msg_same", "role": "user", "content": "again"}
    body = create(server, input=[item, item, item])
    seen, after = [], None
    for _ in range(10):  # bounded: an ambiguous cursor would page forever
        params: dict[str, Any] = {"limit": 1, "order": "asc", **({"after": after} if after else {})}
        page = server.client.get(f"/v1/responses/{body['id']}/input_items", params=params).json()
        seen += [entry["id"] for entry in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(seen) == 3 and len(set(seen)) == 3 and seen[0] == "msg_same"
