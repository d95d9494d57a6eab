"""HTTP and WebSocket are two faces of one service: the same request gives the same response resource over both
(sampling defaults, refusals, stored records), through a real uvicorn on loopback and real clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from headwater.server.app import create_app
from headwater.server.backends.base import BackendError, Finish, TextDelta, UsageStep
from headwater.server.backends.scripted import Fail, ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

MODEL = "scripted-1"


class SamplingBackend(ScriptedBackend):
    """A scripted backend that declares sampling defaults other than the spec's 1.0/1.0, as the local one does."""

    default_temperature = 0.2
    default_top_p = 0.9


@pytest.fixture
def urls(serve: Any) -> Iterator[tuple[str, str]]:
    backend = SamplingBackend([TextDelta("Hi"), UsageStep(3, 1), Finish("stop")], models=[MODEL])
    server = serve(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore()))
    yield server.url, "ws" + server.url.removeprefix("http") + "/v1/responses"


def over_http(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/responses", json=body, timeout=20)
    assert response.status_code == 200, response.text
    resource: dict[str, Any] = response.json()
    return resource


def over_websocket(url: str, body: dict[str, Any]) -> dict[str, Any]:
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"type": "response.create", **body}))
        while True:
            message = json.loads(ws.recv(timeout=20))
            if message["type"] in ("response.completed", "response.incomplete", "response.failed", "error"):
                assert message["type"] == "response.completed", message
                resource: dict[str, Any] = message["response"]
                return resource


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.7}, {"top_p": 0.5}, {"temperature": 0, "top_p": 1}])
def test_http_and_websocket_report_the_same_sampling(urls: tuple[str, str], sampling: dict[str, Any]) -> None:
    http_url, ws_url = urls
    body = {"model": MODEL, "input": "hi", **sampling}
    via_http = over_http(http_url, body)
    via_ws = over_websocket(ws_url, body)
    expected = (sampling.get("temperature", 0.2), sampling.get("top_p", 0.9))  # unset: what the backend uses
    assert (via_http["temperature"], via_http["top_p"]) == expected
    assert (via_ws["temperature"], via_ws["top_p"]) == expected


def test_http_and_websocket_build_the_same_resource(urls: tuple[str, str]) -> None:
    http_url, ws_url = urls
    body = {"model": MODEL, "input": "hi", "instructions": "Be brief.", "metadata": {"k": "v"}, "max_output_tokens": 64}
    via_http, via_ws = over_http(http_url, body), over_websocket(ws_url, body)
    differ = {"id", "created_at", "completed_at", "output"}  # fresh per response
    assert {k: v for k, v in via_http.items() if k not in differ} == {k: v for k, v in via_ws.items() if k not in differ}


def test_a_request_the_backend_refuses_at_once_is_the_same_error_over_both(serve: Any) -> None:
    refusal = BackendError("the model is overloaded", status=503, code="model_overloaded")
    backend = ScriptedBackend([Fail(refusal)], models=[MODEL])
    store = MemoryStore()
    server = serve(create_app(ServerConfig(store="memory"), backend=backend, store=store))
    http = httpx.post(f"{server.url}/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}, timeout=20)
    with connect("ws" + server.url.removeprefix("http") + "/v1/responses", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "hi"}))
        message = json.loads(ws.recv(timeout=20))
    assert http.status_code == 503 and message["type"] == "error" and message["status"] == 503
    assert http.json()["error"] == message["error"]
    assert store._responses == {}  # neither kept the refused response: its id was never given out
