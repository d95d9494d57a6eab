"""Interop: the official ``openai`` package, unmodified, against ``headwater serve`` on a loopback socket."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from headwater.protocol.conformance import check
from headwater.protocol.stream import iter_events
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta, ToolCallDelta, UsageStep
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

openai = pytest.importorskip("openai")
KEY = "sk-headwater-test"
HELLO = [TextDelta("Hello"), TextDelta(", "), TextDelta("world"), UsageStep(7, 3), Finish("stop")]


@pytest.fixture
def client(serve: Callable[[Any], Any]) -> tuple[Any, ScriptedBackend]:
    backend = ScriptedBackend(HELLO, models=["scripted-1"])
    app = create_app(ServerConfig.with_keys([KEY], store="memory"), backend=backend, store=MemoryStore())
    live = serve(app)
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0), backend


def test_create_without_streaming(client: tuple[Any, ScriptedBackend]) -> None:
    sdk, _ = client
    response = sdk.responses.create(model="scripted-1", input="hi", metadata={"k": "v"})
    assert response.status == "completed"
    assert response.output_text == "Hello, world"
    assert response.usage is not None and response.usage.total_tokens == 10
    assert response.metadata == {"k": "v"}


def test_create_with_streaming(client: tuple[Any, ScriptedBackend]) -> None:
    sdk, _ = client
    events = list(sdk.responses.create(model="scripted-1", input="hi", stream=True))
    assert events[0].type == "response.created"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello, world"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hello, world"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # What the SDK read is the stored log, byte for byte; it passes the checker.
    replay = sdk.get(f"/responses/{events[0].response.id}", cast_to=httpx.Response, options={"params": {"stream": "true"}})
    assert check(list(iter_events([replay.content]))) == []


def test_stream_helper_and_final_response(client: tuple[Any, ScriptedBackend]) -> None:
    sdk, backend = client
    backend.script = [TextDelta("Calling"), ToolCallDelta(0, '{"city": "Oslo"}', call_id="c1", name="weather"),
                      UsageStep(3, 4), Finish("tool_calls")]
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}},
              "strict": False}]
    with sdk.responses.stream(model="scripted-1", input="weather?", tools=tools) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert texts == ["Calling"]
    call = final.output[-1]
    assert (call.type, call.name, call.call_id, call.arguments) == ("function_call", "weather", "c1",
                                                                   '{"city": "Oslo"}')
    # The tool result goes back through previous_response_id, as the SDK's users do it.
    backend.script = list(HELLO)
    follow = sdk.responses.create(model="scripted-1", previous_response_id=final.id,
                                  input=[{"type": "function_call_output", "call_id": "c1", "output": "rain"}])
    assert follow.output_text == "Hello, world"
    assert [m.role for m in backend.runs[-1].request.messages] == ["user", "assistant", "tool"]


def test_background_then_retrieve_and_input_items(client: tuple[Any, ScriptedBackend]) -> None:
    sdk, _ = client
    queued = sdk.responses.create(model="scripted-1", input="hi", background=True)
    assert queued.status == "queued"
    deadline = time.monotonic() + 10
    response = sdk.responses.retrieve(queued.id)
    while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.01)
        response = sdk.responses.retrieve(queued.id)
    assert response.status == "completed" and response.output_text == "Hello, world"
    items = sdk.responses.input_items.list(queued.id)
    assert [item.role for item in items.data] == ["user"]
    sdk.responses.delete(queued.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(queued.id)


def test_errors_become_the_sdk_exceptions(client: tuple[Any, ScriptedBackend]) -> None:
    sdk, _ = client
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model="scripted-1", input="hi", temperature=5)
    assert info.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(sdk.base_url), api_key="wrong", max_retries=0).responses.create(
            model="scripted-1", input="hi")
