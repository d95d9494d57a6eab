"""End to end with the real embedded model: `headwater serve`'s default backend (SmolLM2-135M through llama.cpp)
behind a real uvicorn server on loopback, read by httpx and by the unmodified `openai` package: streaming, usage
(on cancelled and failed responses too), the reported cap, model names and service tiers, prefix reuse."""

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
from headwater.server.backends.local import DEFAULT_MAX_OUTPUT_TOKENS
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


def test_the_alias_is_listed_and_answers_name_the_real_model(server: LiveServer) -> None:
    listed = [m["id"] for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]]
    assert listed == [MODEL, "local"]
    body = {"model": "local", "input": "Hi", "max_output_tokens": 16, "temperature": 0}
    assert httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()["model"] == MODEL
    streamed = {**body, "stream": True}
    with httpx.stream("POST", server.url + "/v1/responses", json=streamed, timeout=120) as response:
        events = list(iter_events(response.iter_bytes()))
    assert {e.response.model for e in events if hasattr(e, "response")} == {MODEL}


def test_unknown_model_and_other_service_tiers_are_refused_with_their_param(server: LiveServer) -> None:
    for body, param, code in (
        ({"model": "gpt-4o", "input": "Hi"}, "model", "model_not_found"),
        ({"model": "local", "input": "Hi", "service_tier": "flex"}, "service_tier", "unsupported_value"),
        ({"model": "local", "input": "Hi", "service_tier": "priority", "stream": True}, "service_tier",
         "unsupported_value"),
    ):
        response = httpx.post(server.url + "/v1/responses", json=body, timeout=120)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, code)
    body = {"model": "local", "input": "Hi", "service_tier": "auto", "max_output_tokens": 16}
    assert httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()["service_tier"] == "default"


def test_the_default_cap_is_reported_in_the_response(server: LiveServer) -> None:
    body: dict[str, Any] = {"model": "local", "input": "Say hi.", "temperature": 0}
    response = httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()
    assert response["max_output_tokens"] == DEFAULT_MAX_OUTPUT_TOKENS
    assert response["usage"]["output_tokens"] <= DEFAULT_MAX_OUTPUT_TOKENS
    body["max_output_tokens"] = 20
    assert httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()["max_output_tokens"] == 20


def test_a_cancelled_response_reports_what_it_consumed(server: LiveServer, wait_until: Any) -> None:
    body = {"model": "local", "input": "Tell me a long story about a dragon.", "background": True,
            "temperature": 0, "max_output_tokens": 400}
    created = httpx.post(server.url + "/v1/responses", json=body, timeout=120).json()
    url = f"{server.url}/v1/responses/{created['id']}"
    wait_until(lambda: httpx.get(url, timeout=10).json()["output"], timeout=120)
    cancelled = httpx.post(url + "/cancel", timeout=60).json()
    assert cancelled["status"] == "cancelled"
    usage = cancelled["usage"]
    assert usage is not None and usage["input_tokens"] > 5 and usage["output_tokens"] >= 1
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert httpx.get(url, timeout=10).json()["usage"] == usage


def test_a_follow_up_turn_reuses_the_conversations_cached_prefix(server: LiveServer) -> None:
    notes = "Here are my notes on bread. " + "Flour, water, salt and yeast make a dough. " * 30
    first = httpx.post(server.url + "/v1/responses", timeout=120,
                       json={"model": "local", "input": notes, "max_output_tokens": 16, "temperature": 0}).json()
    second = httpx.post(server.url + "/v1/responses", timeout=120, json={
        "model": "local", "input": "And what else?", "previous_response_id": first["id"], "max_output_tokens": 16,
        "temperature": 0}).json()
    assert first["usage"]["input_tokens"] > 300
    cached = second["usage"]["input_tokens_details"]["cached_tokens"]
    # Everything the first turn evaluated (its prompt and its answer) is reused, not evaluated again.
    assert cached >= first["usage"]["input_tokens"]
    assert second["usage"]["input_tokens"] > cached


def test_a_response_failed_by_shutdown_reports_what_it_consumed(tmp_path: Path, wait_until: Any) -> None:
    config = ServerConfig(backend="local", store="sqlite", data_dir=tmp_path)
    body = {"model": "local", "input": "Tell me a long story about a dragon.", "background": True,
            "temperature": 0, "max_output_tokens": 400}
    with LiveServer(create_app(config)) as live:
        created = httpx.post(live.url + "/v1/responses", json=body, timeout=120).json()
        url = f"/v1/responses/{created['id']}"
        wait_until(lambda: httpx.get(live.url + url, timeout=10).json()["output"], timeout=120)
    with LiveServer(create_app(config)) as again:
        stored = httpx.get(again.url + url, timeout=10).json()
    assert stored["status"] == "failed" and stored["error"]["code"] == "server_shutdown"
    assert stored["usage"] is not None and stored["usage"]["output_tokens"] >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_required_tool_call_is_refused_naming_tool_choice_and_logged(
    server: LiveServer, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    body = {"model": MODEL, "input": "Weather?", "tools": [tool], "tool_choice": "required", "stream": stream}
    with caplog.at_level("INFO", logger="headwater.server"):
        response = httpx.post(server.url + "/v1/responses", json=body, timeout=120)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "tool_choice")
    # The operator sees why the client was refused: status, code, param and message, never the body.
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and "400" in r.getMessage()]
    assert "unsupported_parameter" in line and "tool_choice" in line and error["message"] in line
    assert "Weather?" not in line


def test_openai_input_tokens_count_is_the_exact_prompt_count(server: LiveServer) -> None:
    # openai-python's responses.input_tokens.count (POST /v1/responses/input_tokens), as released.
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    ask: dict[str, Any] = {"model": MODEL, "instructions": "Be brief.", "input": "What is the capital of France?"}
    counted = client.responses.input_tokens.count(**ask)
    assert counted.object == "response.input_tokens"
    used = client.responses.create(**ask, max_output_tokens=16, temperature=0).usage
    assert used is not None and counted.input_tokens == used.input_tokens
    longer = client.responses.input_tokens.count(model=MODEL, input="What is the capital of France? " * 5)
    assert longer.input_tokens > counted.input_tokens
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_tokens.count(model="gpt-4o", input="hi")
    assert caught.value.code == "model_not_found"
