"""``app.HeadwaterApp``: a create (``POST /v1/responses``) skips Starlette's middleware and router layers, and is
answered as they would answer it: the app's handler for the exception's class while nothing was sent, a logged
500 (then raised on for the server) for anything unexpected; every other request goes through Starlette, and so
does a create once middleware is added."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.testclient import TestClient

from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore, StoreUnavailable


class FailingStore(MemoryStore):
    """A memory store whose ``create`` raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def create(self, *args: Any, **kwargs: Any) -> None:
        raise self.error


def client(store: MemoryStore | None = None, **options: Any) -> TestClient:
    backend = ScriptedBackend([TextDelta("hi"), Finish()])
    app = create_app(ServerConfig(store="memory"), backend=backend, store=store or MemoryStore())
    return TestClient(app, **options)


def test_a_create_streams_and_the_other_routes_still_answer() -> None:
    with client() as http:
        streamed = http.post("/v1/responses", json={"input": "hi", "stream": True})
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert b"response.completed" in streamed.content
        created = http.post("/v1/responses", json={"input": "hi"}).json()
        assert created["status"] == "completed"
        assert http.get(f"/v1/responses/{created['id']}").json()["id"] == created["id"]
        assert http.get("/v1/responses").status_code == 405  # (the router's answer, in the error shape)
        assert http.get("/v1/responses").json()["error"]["code"] == "method_not_allowed"


def test_an_invalid_create_is_answered_in_the_error_shape() -> None:
    with client() as http:
        answer = http.post("/v1/responses", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert set(answer.json()["error"]) == {"type", "code", "message", "param"}


def test_a_store_away_is_a_503_by_the_apps_own_handler() -> None:
    with client(FailingStore(StoreUnavailable("the database is down"))) as http:
        answer = http.post("/v1/responses", json={"input": "hi", "stream": True})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "store_unavailable"
    assert answer.headers["retry-after"] == "1"


def test_an_unexpected_error_is_a_logged_bare_500_and_raised_on(caplog: pytest.LogCaptureFixture) -> None:
    with client(FailingStore(RuntimeError("secret detail")), raise_server_exceptions=False) as http, \
            caplog.at_level(logging.ERROR, logger="headwater.server"):
        answer = http.post("/v1/responses", json={"input": "hi"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "server_error"
    assert "secret detail" not in answer.text
    assert any("unhandled error on POST /v1/responses" in r.getMessage() for r in caplog.records)
    with client(FailingStore(RuntimeError("secret detail"))) as http, pytest.raises(RuntimeError):
        http.post("/v1/responses", json={"input": "hi"})


def test_middleware_an_embedding_app_adds_sees_the_creates_too() -> None:
    backend = ScriptedBackend([TextDelta("hi"), Finish()])
    app = create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())
    app.add_middleware(CORSMiddleware, allow_origins=["https://chat.example"])
    with TestClient(app) as http:
        answer = http.post("/v1/responses", json={"input": "hi"}, headers={"origin": "https://chat.example"})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://chat.example"
