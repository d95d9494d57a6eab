"""A finished request leaves no reference cycle behind on the server (uvicorn + httptools, the real server on
loopback): its response cycle, scope and direct body (``serving._DirectBody``, which holds the cycle weakly)
are freed by reference counting, not left for the cyclic collector. With the collector off, twenty streamed
responses on one connection, then a collection that saves what it finds: none of it is the server's. And above
``info`` the server builds no access-log line per response."""

from __future__ import annotations

import gc

import httpx
import pytest
from uvicorn.protocols.http import httptools_impl

from headwater.server.app import create_app
from headwater.server.backends.base import TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.serving import server_config
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer

SERVER_MODULES = ("headwater.", "uvicorn.", "starlette.")


def test_a_finished_streamed_request_is_freed_by_reference_counting() -> None:
    backend = ScriptedBackend([TextDelta("one "), TextDelta("two")])
    body = {"model": "m", "input": "hi", "stream": True}
    with LiveServer(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())) as live, \
            httpx.Client(base_url=live.url) as client:
        client.post("/v1/responses", json=body).read()  # (whatever is made once is made)
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                with client.stream("POST", "/v1/responses", json=body) as response:
                    assert response.status_code == 200
                    assert b"response.completed" in response.read()
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                           if type(o).__module__.startswith(SERVER_MODULES)})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert left == []


def test_above_info_no_access_log_line_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """At ``log_level`` warning (``LiveServer``'s, and the benches' ``headwater serve --log-level warning``)
    uvicorn's access log is off, so the arguments of its (dropped) info lines are not built per response."""
    built: list[object] = []

    def path(scope: object) -> str:
        built.append(scope)
        return "/"

    monkeypatch.setattr(httptools_impl, "get_path_with_query_string", path)
    backend = ScriptedBackend([TextDelta("one")])
    with LiveServer(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())) as live, \
            httpx.Client(base_url=live.url) as client:
        for _ in range(3):
            assert client.post("/v1/responses", json={"model": "m", "input": "hi"}).status_code == 200
    assert built == []
    assert server_config(object(), log_level="warning", header_timeout=1, idle_timeout=1).access_log is False
    assert server_config(object(), log_level="info", header_timeout=1, idle_timeout=1).access_log is True
    assert server_config(object(), log_level="warning", header_timeout=1, idle_timeout=1,
                         access_log=True).access_log is True
