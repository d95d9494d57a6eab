"""``app.HeadwaterApp``: a create (``POST /v1/responses``) skips Starlette's middleware and router layers, and is
answered as they would answer it: the app's handler for the exception's class while nothing was sent, a logged
500 (then raised on for the server) for anything unexpected; every other request goes through Starlette, and so
does a create once middleware is added."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import httpx
import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.testclient import TestClient

from headwater.server.app import CreateTurns, create_app
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


# --- at most per_turn creates begin in a turn of the event loop (app.CreateTurns) ------------------------------


class TurnCounter:
    """Counts the event loop's turns: a callback that schedules itself again (it runs once every turn)."""

    def __init__(self) -> None:
        self.turn = 0
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.turn += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


@pytest.mark.parametrize("per_turn", [1, 3])
async def test_creates_that_come_in_one_turn_begin_per_turn_a_turn(per_turn: int) -> None:
    turns, counter, began = CreateTurns(per_turn), TurnCounter(), []

    async def create(name: int) -> None:
        turn = turns.take()
        if turn is not None:
            await turn
        began.append((name, counter.turn))

    await asyncio.gather(*(create(name) for name in range(7)))  # (their first steps run in one turn)
    counter.stop()
    assert [name for name, _ in began] == list(range(7))  # in the order they came
    per = collections.Counter(turn for _, turn in began)
    assert max(per.values()) == per_turn  # never more than per_turn in one turn
    assert len(per) == -(-7 // per_turn)  # and the turns after the first are full but the last
    assert turns.take() is None  # the turn has room again once nobody waits


async def test_a_create_that_finds_the_turn_free_begins_at_once_and_a_cancelled_waiter_is_passed_over() -> None:
    turns = CreateTurns()
    assert turns.take() is None
    first, second = turns.take(), turns.take()
    assert first is not None and second is not None
    first.cancel()  # (its create's task was cancelled while it waited)
    await second
    assert first.cancelled()


async def test_concurrent_creates_through_the_app_all_stream_to_their_end() -> None:
    backend = ScriptedBackend([TextDelta("hi"), Finish()])
    app = create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        answers = await asyncio.gather(*(http.post("/v1/responses", json={"input": "hi", "stream": True})
                                         for _ in range(8)))
    assert all(a.status_code == 200 and b"response.completed" in a.content for a in answers)
