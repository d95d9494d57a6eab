"""Admission control over real HTTP: caps on running responses (in all, per API key), a FIFO queue whose
streams answer at once with ``response.created`` + ``response.queued``, and 429 with ``Retry-After`` beyond it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from headwater.protocol.conformance import check
from headwater.protocol.stream import iter_events
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer

Serve = Callable[..., httpx.Client]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(**config)``: a server whose backend takes 20 s per response (cancel to move on), and a client."""
    servers: list[LiveServer] = []
    clients: list[httpx.Client] = []

    def start(keys: tuple[str, ...] = (), **settings: Any) -> httpx.Client:
        backend = ScriptedBackend([*(TextDelta(f"w{i} ") for i in range(400)), Finish()], delay=0.05)
        config = ServerConfig.with_keys(keys, store="memory", **settings)
        server = LiveServer(create_app(config, backend=backend, store=MemoryStore())).start()
        servers.append(server)
        client = httpx.Client(base_url=server.url, timeout=30)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


def background(client: httpx.Client, key: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = client.post("/v1/responses", json={"input": "hi", "background": True}, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def status(client: httpx.Client, response_id: str, key: str | None = None) -> str:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return str(client.get(f"/v1/responses/{response_id}", headers=headers).json()["status"])


def cancel(client: httpx.Client, response_id: str, key: str | None = None) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    assert client.post(f"/v1/responses/{response_id}/cancel", headers=headers).status_code == 200


def test_a_queued_stream_gets_created_and_queued_at_once_then_in_progress(serve: Serve) -> None:
    client = serve(max_running=1)
    running = background(client)
    with client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as queued:
        assert queued.status_code == 200  # the headers came although no slot is free
        events = iter_events(queued.iter_raw())
        created, waiting = next(events), next(events)
        assert (created.type, waiting.type) == ("response.created", "response.queued")
        assert created.response.status == "queued"  # type: ignore[union-attr]
        assert status(client, running["id"]) == "in_progress"  # all this while the other one runs
        cancel(client, running["id"])  # its slot is free: the queued one starts
        rest = list(events)
    assert rest[0].type == "response.in_progress"
    assert check([created, waiting, *rest]) == []


def test_beyond_the_queue_a_request_gets_429_with_retry_after(serve: Serve) -> None:
    client = serve(max_running=1, max_queued=1)
    first, second = background(client), background(client)
    assert status(client, second["id"]) == "queued"
    for body in ({"input": "hi", "background": True}, {"input": "hi", "stream": True}, {"input": "hi"}):
        refused = client.post("/v1/responses", json=body)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "1 running and 1 queued" in error["message"]
    cancel(client, first["id"])
    assert status(client, second["id"]) in ("in_progress", "completed")
    assert background(client)  # a place in the queue again


def test_the_queue_is_first_come_first_served(serve: Serve) -> None:
    client = serve(max_running=1)
    first, second, third = background(client), background(client), background(client)
    assert [status(client, r["id"]) for r in (first, second, third)] == ["in_progress", "queued", "queued"]
    assert _gauge(client, "headwater_runs_queued") == 2
    cancel(client, first["id"])
    assert [status(client, r["id"]) for r in (second, third)] == ["in_progress", "queued"]
    assert _gauge(client, "headwater_runs_queued") == 1
    cancel(client, second["id"])
    assert status(client, third["id"]) == "in_progress"
    cancel(client, third["id"])


def _gauge(client: httpx.Client, name: str) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, lines
    return float(lines[0].split()[1])


def test_a_key_at_its_own_cap_waits_while_other_keys_run(serve: Serve) -> None:
    client = serve(keys=("k1", "k2"), max_running=3, max_running_per_key=1, max_queued_per_key=1)
    a1, a2 = background(client, "k1"), background(client, "k1")
    assert status(client, a2["id"], "k1") == "queued"  # k1 is at its cap of one running
    refused = client.post("/v1/responses", json={"input": "hi", "background": True},
                          headers={"authorization": "Bearer k1"})
    assert refused.status_code == 429 and "this API key" in refused.json()["error"]["message"]
    b1 = background(client, "k2")
    assert status(client, b1["id"], "k2") == "in_progress"  # past k1's queued one: another key has room
    cancel(client, a1["id"], "k1")
    assert status(client, a2["id"], "k1") == "in_progress"
    for response_id, key in ((a2["id"], "k1"), (b1["id"], "k2")):
        cancel(client, response_id, key)


def test_a_queued_response_cancelled_while_it_waits_never_runs(serve: Serve) -> None:
    client = serve(max_running=1)
    first, second = background(client), background(client)
    cancel(client, second["id"])
    assert status(client, second["id"]) == "cancelled"
    events = list(iter_events([client.get(f"/v1/responses/{second['id']}", params={"stream": "true"}).content]))
    assert [e.type for e in events] == ["response.created", "response.queued", "response.incomplete"]
    assert check(events) == []
    cancel(client, first["id"])


def test_shutdown_ends_queued_responses_as_failed_too() -> None:
    backend = ScriptedBackend([*(TextDelta(f"w{i} ") for i in range(400)), Finish()], delay=0.05)
    store = MemoryStore()
    app = create_app(ServerConfig(store="memory", max_running=1), backend=backend, store=store)
    with LiveServer(app) as live:
        client = httpx.Client(base_url=live.url, timeout=30)
        running, queued = background(client), background(client)
    for response_id in (running["id"], queued["id"]):
        record = asyncio.run(store.get(response_id))
        assert record is not None and record.status == "failed"
        assert b"server_shutdown" in record.data


def test_over_websocket_a_queued_response_says_so_and_beyond_the_queue_is_a_429_error(serve: Serve) -> None:
    client = serve(max_running=1, max_queued=1)
    running = background(client)
    url = str(client.base_url).replace("http://", "ws://") + "/v1/responses"
    with connect(url) as first, connect(url) as second:
        first.send(json.dumps({"type": "response.create", "input": "hi"}))
        created, queued = json.loads(first.recv(timeout=10)), json.loads(first.recv(timeout=10))
        assert (created["type"], queued["type"]) == ("response.created", "response.queued")
        second.send(json.dumps({"type": "response.create", "input": "hi"}))
        refused = json.loads(second.recv(timeout=10))
        assert refused["type"] == "error" and refused["status"] == 429
        assert refused["error"]["code"] == "rate_limit_exceeded"
        cancel(client, running["id"])
        assert json.loads(first.recv(timeout=10))["type"] == "response.in_progress"
        cancel(client, created["response"]["id"])
