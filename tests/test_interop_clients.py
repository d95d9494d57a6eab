"""Client libraries as released (pinned in uv.lock, the ``interop`` extra) against ``headwater serve`` on loopback:
the flows issue 13 found broken. The OpenAI Agents SDK's WebSocket mode (``stream: true`` in every
``response.create``, ``text.verbosity`` for gpt-5 model names) through a tool round trip; litellm's cancel and
retrieve of a cancelled response (it validates with OpenAI's types); openai-python's ``input_tokens.count`` is in
``test_server_local_e2e.py`` (it needs the local model's tokenizer). The Vercel AI SDK is in
``test_interop_vercel.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from headwater.server.app import create_app
from headwater.server.backends.base import (
    ChatMessage,
    Finish,
    GenerationRequest,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.scripted import Pause, ScriptedBackend, ScriptItem
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
