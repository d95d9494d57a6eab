"""Client libraries as released (pinned in uv.lock, the ``interop`` extra) against ``headwater serve`` on loopback:
the flows issue 13 found broken. The OpenAI Agents SDK's WebSocket mode (``stream: true`` in every
``response.create``, ``text.verbosity`` for gpt-5 model names) through a tool round trip; litellm's cancel and
retrieve of a cancelled response (it validates with OpenAI's types); openai-python's ``input_tokens.count`` is in
``test_server_local_e2e.py`` (it needs the local model's tokenizer). The Vercel AI SDK is in
``test_interop_vercel.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from headwater.server.app import create_app
from headwater.server.backends.base import (
    BackendError,
    ChatMessage,
    Finish,
    GenerationRequest,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.scripted import Fail, Pause, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.testing import LiveServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no cost-map download at import
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # the Agents SDK: no trace upload

MODEL = "gpt-5-mini"


def weather_script(request: GenerationRequest) -> Sequence[ScriptItem]:
    """A model that calls get_weather once, then answers with what the tool said."""
    last: ChatMessage = request.messages[-1]
    if last.role == "tool":
        return [TextDelta(f"In Paris it is {last.content}."), UsageStep(30, 8), Finish("stop")]
    return [ToolCallDelta(0, '{"city": "Paris"}', call_id="call_w1", name="get_weather"), UsageStep(20, 5),
            Finish("tool_calls")]


@pytest.fixture
def headwater(serve: Callable[[Any], LiveServer]) -> Callable[..., tuple[str, ScriptedBackend]]:
    def start(script: Any) -> tuple[str, ScriptedBackend]:
        backend = ScriptedBackend(script, models=[MODEL])
        live = serve(create_app(ServerConfig(store="memory", backend="scripted"), backend=backend))
        return live.url, backend

    return start


async def test_agents_sdk_websocket_mode_runs_a_tool_round_trip(
    headwater: Callable[..., tuple[str, ScriptedBackend]],
) -> None:
    agents = pytest.importorskip("agents")
    url, backend = headwater(weather_script)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny"

    agent = agents.Agent(name="weather", instructions="Answer with the tool.", model=MODEL, tools=[get_weather])
    async with agents.responses_websocket_session(api_key="unused", base_url=url + "/v1") as session:
        result = await session.run(agent, "What is the weather in Paris?")
        streamed = session.run_streamed(agent, "And now?")
        async for _ in streamed.stream_events():
            pass
    assert calls == ["Paris", "Paris"]
    assert result.final_output == "In Paris it is sunny."
    assert streamed.final_output == "In Paris it is sunny."
    # Four model calls over WebSocket (two per run), each a tool round trip the backend saw whole.
    assert len(backend.requests) == 4
    # The SDK's defaults for gpt-5-style names include text.verbosity "low": a hint the backend was given.
    assert {r.verbosity for r in backend.requests} == {"low"}
    assert [m.role for m in backend.requests[1].messages][-2:] == ["assistant", "tool"]


def test_litellm_cancels_and_retrieves_a_cancelled_response(
    headwater: Callable[..., tuple[str, ScriptedBackend]], wait_until: Callable[..., None],
) -> None:
    litellm = pytest.importorskip("litellm")
    url, backend = headwater([TextDelta("partial"), Pause(30), TextDelta(" never"), Finish("stop")])
    where = {"api_base": url + "/v1", "api_key": "unused", "custom_llm_provider": "openai"}
    created = litellm.responses(model=f"openai/{MODEL}", input="Write a long story.", background=True,
                                api_base=url + "/v1", api_key="unused")
    wait_until(lambda: backend.steps_yielded >= 1)
    cancelled = litellm.cancel_responses(response_id=created.id, **where)
    assert cancelled.status == "cancelled"
    retrieved = litellm.get_responses(response_id=created.id, **where)
    assert retrieved.status == "cancelled"
    assert retrieved.output[0].content[0].text == "partial"


def openai_types_script(request: GenerationRequest) -> Sequence[ScriptItem]:
    word = request.messages[-1].content
    if word == "cancel":
        return [TextDelta("partial"), Pause(30), Finish()]
    if word == "fail":
        return [TextDelta("partial"), Fail(BackendError("the model broke", code="server_error")), Finish()]
    if word == "long":
        return [TextDelta("partial"), UsageStep(3, 2), Finish("length")]
    return [TextDelta("fine"), ToolCallDelta(0, '{"a":1}', call_id="c1", name="f"), UsageStep(3, 2), Finish()]


@pytest.mark.parametrize("word", ["done", "cancel", "fail", "long"])
def test_resources_and_events_validate_with_openai_types(
    headwater: Callable[..., tuple[str, ScriptedBackend]], wait_until: Callable[..., None], word: str,
) -> None:
    # What litellm and other strict clients do: validate with openai-python's own pydantic types. (The spec's
    # reasoning event names, response.reasoning.delta/done, are not in OpenAI's union: not exercised here.)
    pydantic = pytest.importorskip("pydantic")
    from openai.types.responses import Response, ResponseStreamEvent

    url, backend = headwater(openai_types_script)
    with httpx.Client(base_url=url, timeout=30) as client:
        created = client.post("/v1/responses", json={"model": MODEL, "input": word, "background": True,
                                                     "tools": [{"type": "function", "name": "f"}]}).json()
        if word == "cancel":
            wait_until(lambda: backend.steps_yielded >= 1)
            client.post(f"/v1/responses/{created['id']}/cancel")
        wait_until(lambda: client.get(f"/v1/responses/{created['id']}").json()["status"] not in ("queued", "in_progress"))
        resource = client.get(f"/v1/responses/{created['id']}").json()
        replayed = client.get(f"/v1/responses/{created['id']}", params={"stream": "true"}).text
    assert resource["status"] == {"done": "completed", "cancel": "cancelled", "fail": "failed", "long": "incomplete"}[word]
    pydantic.TypeAdapter(Response).validate_python(resource)
    events = [json.loads(line[6:]) for line in replayed.splitlines() if line.startswith("data: ")]
    adapter = pydantic.TypeAdapter(ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event)
    assert events[-1]["response"]["status"] == resource["status"]
