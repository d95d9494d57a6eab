"""End to end with the real embedded model: `headwater serve`'s default backend (SmolLM2-135M through llama.cpp)
behind a real uvicorn server on loopback, read by httpx and by the unmodified `openai` package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from headwater import Accumulator, check, iter_events
from headwater.protocol import events as ev
from headwater.server.app import create_app
from headwater.server.config import ServerConfig
from headwater.server.testing import LiveServer

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir: Path = tmp_path_factory.mktemp("data")
    app = create_app(ServerConfig(backend="local", store="sqlite", data_dir=data_dir))
    with LiveServer(app) as live:
        yield live


def test_streamed_short_answer_with_real_usage(server: LiveServer) -> None:
    body = {
        "model": MODEL,
        "input": "What is the capital of France?",
        "stream": True,
        "max_output_tokens": 24,
        "temperature": 0,
    }
    events: list[Any] = []
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(iter_events(response.iter_bytes()))
    assert check(events) == []
    deltas = [e for e in events if isinstance(e, ev.ResponseOutputTextDelta)]
    assert len(deltas) >= 2  # real token streaming, not one blob
    terminal = events[-1]
    assert isinstance(terminal, ev.ResponseCompleted | ev.ResponseIncomplete)
    usage = terminal.response.usage
    assert usage is not None
    assert usage.input_tokens > 5 and 0 < usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    assert acc.output_text == "".join(d.delta for d in deltas) != ""
    stored = httpx.get(f"{server.url}/v1/responses/{terminal.response.id}", timeout=10).json()
    assert stored["output"][0]["content"][0]["text"] == acc.output_text


def test_max_output_tokens_ends_incomplete_with_reason(server: LiveServer) -> None:
    body = {
        "model": MODEL,
        "input": "Tell me a long story about a dragon.",
        "max_output_tokens": 16,
        "temperature": 0,
    }
    response = httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["usage"]["output_tokens"] == 16


def test_openai_package_streams_from_the_real_model(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    with client.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=64, temperature=0) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert texts and final.output_text == "".join(texts)
    assert final.usage is not None and final.usage.output_tokens >= len(texts)


def test_unset_sampling_reports_what_the_model_really_uses(server: LiveServer) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 16}
    response = httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()
    assert (response["temperature"], response["top_p"]) == (0.2, 0.9)
    body["temperature"], body["top_p"] = 0.7, 0.5
    response = httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()
    assert (response["temperature"], response["top_p"]) == (0.7, 0.5)
