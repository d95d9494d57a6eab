"""POST /v1/responses/compact through a real uvicorn on loopback (scripted backend; the real local model where
it is about the model): the CompactResource against the spec's schema, validation, conversations continued from
compacted items over HTTP, WebSocket mode and the unmodified ``openai`` package, and compaction that shrinks (a
budgeted summary, the extractive one when the model does not comply)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from headwater.protocol.conformance import check
from headwater.protocol.stream import iter_events
from headwater.server.app import create_app
from headwater.server.backends.base import BackendError, Finish, GenerationRequest, TextDelta, UsageStep
from headwater.server.backends.scripted import Fail, ScriptedBackend, ScriptItem
from headwater.server.compaction import (
    MAX_SUMMARY_CHARS,
    SUMMARY_INSTRUCTIONS,
    compaction_summary,
    render_transcript,
    replaced_turns,
    summary_budget,
)
from headwater.server.config import ServerConfig
from headwater.server.conversation import to_chat_messages
from headwater.server.requests import parse_request
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer
from spec_schema import SCHEMAS, schema_problems

MODEL = "scripted-1"

CONVERSATION = [
    {"role": "user", "content": "My name is Ada and I like tea."},
    {"role": "assistant", "content": "Nice to meet you, Ada."},
    {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q": "tea"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "Earl Grey is popular."},
    {"role": "user", "content": "Which tea should I try?"},
    {"role": "assistant", "content": "Try Earl Grey."},
]


def summarising(request: GenerationRequest) -> list[ScriptItem]:
    """The summary pass gets a summary (and its usage); any other request an answer naming what it saw."""
    if request.messages[0].content == SUMMARY_INSTRUCTIONS:
        return [TextDelta("Ada likes tea; "), TextDelta("Earl Grey was suggested."), UsageStep(120, 9), Finish()]
    return [TextDelta("Hello, world"), UsageStep(7, 3), Finish()]


@dataclass
class Server:
    url: str
    backend: ScriptedBackend
    client: httpx.Client


@pytest.fixture
def start(serve: Callable[[Any], Any]) -> Iterator[Callable[..., Server]]:
    clients: list[httpx.Client] = []

    def start_server(script: Any = summarising, *, api_keys: tuple[str, ...] = (), key: str | None = None) -> Server:
        backend = ScriptedBackend(script, models=[MODEL])
        live = serve(create_app(ServerConfig.with_keys(api_keys, store="memory"), backend=backend,
                                store=MemoryStore()))
        headers = {"authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=live.url, headers=headers, timeout=30)
        clients.append(client)
        return Server(live.url, backend, client)

    yield start_server
    for client in clients:
        client.close()


# --- the spec's schema --------------------------------------------------------------------------------------


def compact(server: Server, **body: Any) -> dict[str, Any]:
    response = server.client.post("/v1/responses/compact", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert schema_problems(result, SCHEMAS["CompactResource"]) == []
    return result


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    return error


def texts(items: list[dict[str, Any]]) -> list[str]:
    return [part["text"] for item in items if item["type"] == "message" for part in item["content"]]


# --- the resource -------------------------------------------------------------------------------------------


def test_compact_returns_a_schema_valid_compact_resource(start: Callable[..., Server]) -> None:
    server = start()
    result = compact(server, model=MODEL, input=CONVERSATION)
    assert set(SCHEMAS["CompactResource"]["required"]) <= set(result)
    assert result["object"] == "response.compaction" and result["id"].startswith("resp_")
    assert isinstance(result["created_at"], int)
    *kept, compaction = result["output"]
    # The user's messages are kept word for word, in order; everything else is in the compaction item.
    assert [(item["type"], item["role"]) for item in kept] == [("message", "user"), ("message", "user")]
    assert texts(kept) == ["My name is Ada and I like tea.", "Which tea should I try?"]
    assert schema_problems(compaction, SCHEMAS["CompactionBody"]) == []
    assert compaction["type"] == "compaction" and compaction["id"].startswith("cmp_")
    # Not encrypted: base64 of a JSON object holding the model's plain-text summary.
    payload = json.loads(base64.b64decode(compaction["encrypted_content"]))
    assert payload["format"] == "headwater.compaction/1" and payload["model"] == MODEL
    assert payload["summary"] == compaction_summary(compaction["encrypted_content"]) == (
        "Ada likes tea; Earl Grey was suggested.")
    # The usage is the summary pass's.
    assert result["usage"] == {"input_tokens": 120, "output_tokens": 9, "total_tokens": 129,
                               "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                               "output_tokens_details": {"reasoning_tokens": 0}}


def test_the_model_is_asked_for_a_summary_of_the_whole_conversation(start: Callable[..., Server]) -> None:
    server = start()
    compact(server, model=MODEL, input=CONVERSATION, instructions="Talk like a butler.")
    (request,) = server.backend.requests
    assert request.model == MODEL and request.tools == []
    system, user = request.messages
    assert (system.role, system.content) == ("system", SUMMARY_INSTRUCTIONS)
    assert user.role == "user"
    for line in ("Instructions: Talk like a butler.", "User: My name is Ada and I like tea.",
                 "Assistant: Nice to meet you, Ada.", 'Assistant called lookup({"q": "tea"}) [call call_1]',
                 "Tool result (call_1): Earl Grey is popular.", "Assistant: Try Earl Grey."):
        assert line in user.content


def test_missing_model_is_a_400_naming_model(start: Callable[..., Server]) -> None:
    server = start()
    error = error_of(server.client.post("/v1/responses/compact", json={"input": "hi"}), 400)
    assert (error["param"], error["code"]) == ("model", "missing_required_parameter")
    for model in (None, 5, ""):
        error = error_of(server.client.post("/v1/responses/compact", json={"model": model, "input": "hi"}), 400)
        assert error["param"] == "model"
    assert server.backend.requests == []


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{nope", 400, None),
        ({"model": MODEL}, 400, "input"),
        ({"model": MODEL, "input": [{"type": "nope"}]}, 400, "input[0].type"),
        ({"model": MODEL, "input": "hi", "previous_response_id": "resp_unknown"}, 400, "previous_response_id"),
        ({"model": MODEL, "input": [{"type": "compaction", "encrypted_content": "gAAAAABpM0Yj-abc="}]}, 400,
         "input[0].encrypted_content"),
    ],
)
def test_bad_compact_requests(start: Callable[..., Server], body: Any, status: int, param: str | None) -> None:
    server = start()
    if isinstance(body, bytes):
        response = server.client.post("/v1/responses/compact", content=body)
    else:
        response = server.client.post("/v1/responses/compact", json=body)
    assert error_of(response, status)["param"] == param
    assert server.backend.requests == []


def test_a_backend_refusal_is_its_status(start: Callable[..., Server]) -> None:
    server = start([Fail(BackendError("no such model", code="model_not_found", status=400))])
    error = error_of(server.client.post("/v1/responses/compact", json={"model": "other", "input": "hi"}), 400)
    assert error["code"] == "model_not_found"


def test_an_empty_summary_falls_back_to_the_transcript(start: Callable[..., Server]) -> None:
    server = start([UsageStep(50, 0), Finish()])
    result = compact(server, model=MODEL, input=CONVERSATION)
    summary = compaction_summary(result["output"][-1]["encrypted_content"])
    assert summary is not None
    assert summary == ('Nice to meet you, Ada.\ncalled lookup({"q": "tea"})\n'
                       "Tool result (call_1): Earl Grey is popular.\nTry Earl Grey.")
    assert "My name is Ada" not in summary  # the user's messages are kept as they are


# --- going on from the compacted items ----------------------------------------------------------------------


def test_continue_from_compacted_items(start: Callable[..., Server]) -> None:
    server = start()
    result = compact(server, model=MODEL, input=CONVERSATION)
    response = server.client.post("/v1/responses", json={
        "model": MODEL, "stream": True,
        "input": [*result["output"], {"role": "user", "content": "And what is my name?"}],
    })
    assert response.status_code == 200, response.text
    events = list(iter_events([response.content]))
    assert check(events) == [] and events[-1].type == "response.completed"
    seen = [(m.role, m.content) for m in server.backend.requests[-1].messages]
    assert seen == [
        ("user", "My name is Ada and I like tea."),
        ("user", "Which tea should I try?"),
        ("developer", "Summary of the earlier conversation (its turns were compacted into this summary):\n"
                      "Ada likes tea; Earl Grey was suggested."),
        ("user", "And what is my name?"),
    ]
    # The compaction item is kept with the response's input and goes on through previous_response_id.
    response_id = events[-1].response.id
    items = server.client.get(f"/v1/responses/{response_id}/input_items", params={"order": "asc"}).json()["data"]
    assert [item["type"] for item in items] == ["message", "message", "compaction", "message"]
    server.client.post("/v1/responses", json={"model": MODEL, "input": "Thanks.", "previous_response_id": response_id})
    roles = [m.role for m in server.backend.requests[-1].messages]
    assert roles == ["user", "user", "developer", "user", "assistant", "user"]


def test_compact_a_stored_chain_by_previous_response_id(start: Callable[..., Server]) -> None:
    server = start()
    first = server.client.post("/v1/responses", json={"model": MODEL, "input": "first question"}).json()
    second = server.client.post("/v1/responses", json={
        "model": MODEL, "input": "second question", "previous_response_id": first["id"]}).json()
    result = compact(server, model=MODEL, previous_response_id=second["id"], input="third question")
    assert texts(result["output"][:-1]) == ["first question", "second question", "third question"]
    summary_request = server.backend.requests[-1].messages[1].content
    assert summary_request.count("Assistant: Hello, world") == 2


def test_compacting_again_carries_the_earlier_summary(start: Callable[..., Server]) -> None:
    server = start()
    first = compact(server, model=MODEL, input=CONVERSATION)
    second = compact(server, model=MODEL, input=[*first["output"], {"role": "user", "content": "More tea?"},
                                                 {"role": "assistant", "content": "Always."}])
    assert [item["type"] for item in second["output"]] == ["message", "message", "message", "compaction"]
    transcript = server.backend.requests[-1].messages[1].content
    assert "Ada likes tea; Earl Grey was suggested." in transcript and "Assistant: Always." in transcript


def test_continue_from_compacted_items_over_websocket(start: Callable[..., Server]) -> None:
    server = start()
    result = compact(server, model=MODEL, input=CONVERSATION)
    with connect(server.url.replace("http", "ws", 1) + "/v1/responses", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "store": False,
                            "input": [*result["output"], {"role": "user", "content": "Name?"}]}))
        events = []
        while True:
            message = json.loads(ws.recv(timeout=20))
            events.append(message)
            if message["type"] in ("response.completed", "response.failed", "error"):
                break
    assert events[-1]["type"] == "response.completed"
    assert [m.role for m in server.backend.requests[-1].messages] == ["user", "user", "developer", "user"]


def test_api_keys_guard_compact(start: Callable[..., Server]) -> None:
    server = start(api_keys=("key-a", "key-b"), key="key-a")
    anonymous = httpx.post(server.url + "/v1/responses/compact", json={"model": MODEL, "input": "hi"})
    assert error_of(anonymous, 401)["code"] == "missing_api_key"
    mine = server.client.post("/v1/responses", json={"model": MODEL, "input": "secret"}).json()
    other = httpx.post(server.url + "/v1/responses/compact", headers={"authorization": "Bearer key-b"},
                       json={"model": MODEL, "previous_response_id": mine["id"]})
    assert error_of(other, 400)["param"] == "previous_response_id"


def test_openai_package_compact_and_continue(start: Callable[..., Server]) -> None:
    server = start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    compacted = client.responses.compact(model=MODEL, input=CONVERSATION)  # type: ignore[arg-type]
    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    assert compacted.usage.total_tokens == 129
    raw = client.responses.with_raw_response.compact(model=MODEL, input=CONVERSATION)  # type: ignore[arg-type]
    items = json.loads(raw.text)["output"]
    answer = client.responses.create(model=MODEL, input=[*items, {"role": "user", "content": "Go on."}])
    assert answer.output_text == "Hello, world"
    assert [m.role for m in server.backend.requests[-1].messages] == ["user", "user", "developer", "user"]


# --- the real model -----------------------------------------------------------------------------------------


# A conversation whose assistant turns are long, as a chatty model's are.
LONG_CONVERSATION = [
    {"role": "user", "content": "My cat is called Tom. What should I feed him?"},
    {"role": "assistant", "content": "Tom is a lovely name for a cat. Cats are carnivores, so Tom needs food made "
     "mostly of meat: a good wet food twice a day, with dry food in between if he likes it. Fresh water should "
     "always be available, and treats should stay under a tenth of what he eats in a day. Milk upsets the "
     "stomach of many adult cats, so it is better left out. If Tom is a kitten, he needs kitten food until he "
     "is about a year old, and a vet can tell you how much he should weigh."},
    {"role": "user", "content": "He likes fish. Is that fine?"},
    {"role": "assistant", "content": "Fish is fine for Tom now and then, cooked and without bones. Tuna every "
     "day is not a good idea: it lacks some nutrients cats need, and too much of it can carry mercury. Cat "
     "foods made with fish are balanced, so those are safe as a regular meal. Raw fish can destroy a vitamin "
     "cats need, so cook it first. Salmon, white fish and sardines in water are good choices; avoid fish in "
     "oil or salt, and never give him cooked bones."},
]


def test_a_summary_that_does_not_comply_is_replaced_by_an_extractive_one(start: Callable[..., Server]) -> None:
    replaced = render_transcript(replaced_turns(to_chat_messages(parse_request(
        json.dumps({"input": LONG_CONVERSATION}).encode()).items)))
    for reply in (
        [TextDelta("Tom likes fish. " * 200), UsageStep(300, 512), Finish("length")],  # runs to the cap
        [TextDelta("Summary: Tom eats fish.\nUser: What about milk?\nAssistant: No milk."), Finish()],  # turns
        [TextDelta("Tom " * 400), Finish()],  # over the budget
    ):
        server = start(list(reply))
        result = compact(server, model=MODEL, input=LONG_CONVERSATION)
        (request,) = server.backend.requests
        budget = summary_budget(replaced)
        assert request.max_output_tokens == budget // 4  # the model's output is capped to the budget
        summary = compaction_summary(result["output"][-1]["encrypted_content"])
        assert summary is not None and 0 < len(summary) <= budget < len(replaced)
        assert summary.startswith("Tom is a lovely name") and "What should I feed" not in summary
        # Deterministic: the same conversation compacts to the same summary.
        again = compaction_summary(compact(start(list(reply)), model=MODEL, input=LONG_CONVERSATION)["output"][-1][
            "encrypted_content"])
        assert again == summary


def test_a_summary_within_the_budget_is_kept(start: Callable[..., Server]) -> None:
    server = start([TextDelta("Tom the cat may eat cooked fish now and then, not every day."), Finish()])
    summary = compaction_summary(compact(server, model=MODEL, input=LONG_CONVERSATION)["output"][-1][
        "encrypted_content"])
    assert summary == "Tom the cat may eat cooked fish now and then, not every day."


def test_the_budget_is_always_shorter_than_what_it_replaces() -> None:
    for text in ("", "a", "Assistant: OK.", "x" * 299, "x" * 301, "x" * 1000, "x" * 100_000):
        budget = summary_budget(text)
        assert budget < len(text) or budget == 0
        assert budget <= MAX_SUMMARY_CHARS
    assert summary_budget("x" * 1000) == 500 and summary_budget("x" * 200) == 199


def test_compaction_with_the_real_local_model_shrinks_the_conversation(tmp_path: Path) -> None:
    app = create_app(ServerConfig(backend="local", store="memory", data_dir=tmp_path))
    question = {"role": "user", "content": "What is my cat called?"}
    with LiveServer(app) as live:
        response = httpx.post(live.url + "/v1/responses/compact", timeout=300,
                              json={"model": "local", "input": LONG_CONVERSATION})
        assert response.status_code == 200, response.text
        result = response.json()
        assert schema_problems(result, SCHEMAS["CompactResource"]) == []
        compacted = result["output"][-1]
        summary = compaction_summary(compacted["encrypted_content"])
        replaced = "\n\n".join(f"Assistant: {m['content']}" for m in LONG_CONVERSATION if m["role"] == "assistant")
        # The compacted item is shorter than the turns it replaces, whether the model complied or not.
        assert summary and len(summary) < len(replaced)
        assert [m["content"][0]["text"] for m in result["output"][:-1]] == [
            m["content"] for m in LONG_CONVERSATION if m["role"] == "user"]
        usage = result["usage"]
        assert usage["input_tokens"] > 20 and 0 < usage["output_tokens"] <= summary_budget(replaced) // 4
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        answers = []
        for window in ([*result["output"], question], [*LONG_CONVERSATION, question]):
            follow = httpx.post(live.url + "/v1/responses", timeout=300, json={
                "model": "local", "max_output_tokens": 16, "temperature": 0, "input": window})
            assert follow.status_code == 200, follow.text
            answers.append(follow.json())
        # The model reads fewer tokens going on from the compacted window than from the whole conversation.
        assert answers[0]["usage"]["input_tokens"] < answers[1]["usage"]["input_tokens"]
