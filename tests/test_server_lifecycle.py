"""Start-up and shutdown of ``headwater serve`` as a process: the banner once the port is bound, a taken port,
backend options checked at start, graceful shutdown on SIGTERM/SIGINT mid-stream, start-up over unreadable
records; and what ``/healthz`` tells a caller without a key."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from headwater.protocol.conformance import check
from headwater.protocol.stream import iter_events
from headwater.server.app import create_app
from headwater.server.backends.base import TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer, ServeProcess

EXIT_CANNOT_LISTEN = 4


def slow_script(tmp_path: Path, words: int = 400) -> Path:
    """A script for ``--backend scripted`` that takes ``words`` x delay to play."""
    path = tmp_path / "slow.json"
    path.write_text(json.dumps([{"text": f"w{i} "} for i in range(words)] + [{"finish": "stop"}]))
    return path


def scripted_args(tmp_path: Path, *, delay: float = 0.05) -> list[str]:
    return ["--backend", "scripted", "--backend-option", f"script={slow_script(tmp_path)}",
            "--backend-option", f"delay={delay}", "--data-dir", str(tmp_path / "data"), "--log-level", "info"]


def test_listening_is_printed_once_the_port_is_bound(tmp_path: Path) -> None:
    with ServeProcess(*scripted_args(tmp_path)) as server:
        assert server.stdout.count("listening on") == 1
        # The line names the port really bound (--port 0), and that port answers at once.
        assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"


def test_a_taken_port_is_one_clear_line_and_exit_code_4(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [sys.executable, "-m", "headwater", "serve", "--port", str(port), *scripted_args(tmp_path)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_CANNOT_LISTEN
    assert "listening on" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines == [f"headwater: cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize(("option", "message"), [
    ("n_ctx=abc", "option n_ctx='abc': expected an integer"),
    ("n_ctx=1.5", "option n_ctx=1.5: expected an integer"),
    ("n_threads=true", "option n_threads=True: expected an integer or null"),
])
def test_a_backend_option_of_the_wrong_type_fails_start_up(tmp_path: Path, option: str, message: str) -> None:
    args = [sys.executable, "-m", "headwater", "serve", "--port", "0", "--backend", "local",
            "--backend-option", option, "--data-dir", str(tmp_path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert message in result.stderr
    assert "listening on" not in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_ends_every_live_stream_with_server_shutdown(tmp_path: Path, sig: signal.Signals) -> None:
    with ServeProcess(*scripted_args(tmp_path)) as server:
        client = httpx.Client(base_url=server.url, timeout=30)
        background = client.post("/v1/responses", json={"input": "hi", "background": True}).json()
        body: list[bytes] = []
        started = threading.Event()

        def read_stream() -> None:
            with client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as response:
                for chunk in response.iter_raw():
                    body.append(chunk)
                    if b"output_text.delta" in chunk:
                        started.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert started.wait(30)
        server.signal(sig)
        reader.join(30)  # httpx raises in the thread on a body cut short; then the checks below fail
        assert not reader.is_alive()
        assert server.wait() == 0
    events = list(iter_events(body))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.error.code == "server_shutdown"  # type: ignore[union-attr]
    assert check(events) == []
    assert server.stderr.count("stopped by the server shutting down") == 2
    assert "Traceback" not in server.stderr
    # The background run ended the same way in the store: a restart finds nothing to close.
    with ServeProcess(*scripted_args(tmp_path)) as again:
        stored = httpx.get(f"{again.url}/v1/responses/{background['id']}").json()
    assert stored["status"] == "failed" and stored["error"]["code"] == "server_shutdown"
    assert "left in_progress" not in again.stderr


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_start_up_closes_an_unreadable_record_as_failed_and_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServeProcess(*scripted_args(tmp_path)) as server:  # creates the database
        kept = httpx.post(f"{server.url}/v1/responses", json={"input": "hi", "background": True}).json()
    # What a crash leaves of a request stored before there was a nesting limit: a record, an input item and a
    # log nested deeper than any decoder here goes.
    resource = (f'{{"id":"resp_deep","object":"response","created_at":1,"status":"in_progress","model":"m",'
                f'"output":[],"tools":[{{"type":"function","name":"f","parameters":{{"x":{deep(5000)}}}}}]}}')
    with sqlite3.connect(data / "headwater.sqlite3") as db:
        db.execute("INSERT INTO responses (id, owner, status, created_at, data) "
                   "VALUES ('resp_deep', NULL, 'in_progress', 1, ?)", (resource.encode(),))
        db.execute("INSERT INTO input_items (response_id, position, item_id, data) VALUES ('resp_deep', 0, 'msg_1', ?)",
                   (f'{{"type":"message","role":"user","content":"hi","x":{deep(5000)}}}'.encode(),))
        db.execute("INSERT INTO events (response, seq, type, data) VALUES "
                   "((SELECT key FROM responses WHERE id = 'resp_deep'), 0, 'response.created', ?)",
                   (f'{{"type":"response.created","sequence_number":0,"response":{resource}}}'.encode(),))
    with ServeProcess(*scripted_args(tmp_path)) as server:
        client = httpx.Client(base_url=server.url)
        stored = client.get("/v1/responses/resp_deep").json()
        assert stored["status"] == "failed" and stored["error"]["code"] == "server_restarted"
        replay = client.get("/v1/responses/resp_deep", params={"stream": "true"})
        assert replay.status_code == 200
        events = list(iter_events([replay.content]))
        assert [e.type for e in events][-2:] == ["error", "response.failed"] and check(events) == []
        items = client.get("/v1/responses/resp_deep/input_items")  # kept as stored (too deep for json here)
        assert items.status_code == 200 and b'"first_id":"msg_1"' in items.content
        assert client.get(f"/v1/responses/{kept['id']}").json()["status"] in ("completed", "failed")
    assert "resp_deep" in server.stderr and "cannot be read (" in server.stderr
    assert "Traceback" not in server.stderr


def test_healthz_tells_a_caller_without_a_key_only_that_the_server_lives() -> None:
    backend = ScriptedBackend([TextDelta("hi")])
    app = create_app(ServerConfig.with_keys(["k1"], store="memory"), backend=backend, store=MemoryStore())
    with LiveServer(app) as live:
        assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{live.url}/healthz", headers={"authorization": "Bearer nope"}).json() == {"status": "ok"}
        detailed = httpx.get(f"{live.url}/healthz", headers={"authorization": "Bearer k1"}).json()
    assert detailed["status"] == "ok" and detailed["backend"] == "scripted" and "store" in detailed


def test_disconnect_grace_starts_again_each_time_the_last_reader_leaves(wait_until: object) -> None:
    backend = ScriptedBackend([TextDelta(f"w{i} ") for i in range(400)], delay=0.05)  # 20 s to play
    config = ServerConfig(store="memory", disconnect_grace_seconds=0.5)
    with LiveServer(create_app(config, backend=backend, store=MemoryStore())) as live:
        client = httpx.Client(base_url=live.url, timeout=30)
        with client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as first:
            events = iter_events(first.iter_raw())
            response_id = next(events).response.id  # type: ignore[union-attr]
            seen = next(e for e in events if e.type == "response.output_text.delta").sequence_number
        # A second reader resumes within the grace, stays past it, then leaves too.
        resumed = client.stream("GET", f"/v1/responses/{response_id}",
                                params={"stream": "true", "starting_after": seen})
        with resumed as second:
            deadline = time.monotonic() + 1.5  # three times the grace
            for _ in iter_events(second.iter_raw()):
                if time.monotonic() > deadline:
                    break

        def ended() -> bool:
            return client.get(f"/v1/responses/{response_id}").json()["status"] != "in_progress"

        assert callable(wait_until)
        wait_until(ended, timeout=15)  # well before the 20 s the whole script takes
        assert client.get(f"/v1/responses/{response_id}").json()["status"] == "cancelled"
        assert backend.closed_early


def test_shutdown_ends_a_live_websocket_response_with_server_shutdown() -> None:
    backend = ScriptedBackend([TextDelta(f"w{i} ") for i in range(400)], delay=0.05)
    live = LiveServer(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())).start()
    received: list[dict[str, object]] = []
    with connect(live.url.replace("http://", "ws://") + "/v1/responses") as ws:
        ws.send(json.dumps({"type": "response.create", "input": "hi"}))
        while not any(m["type"] == "response.output_text.delta" for m in received):
            received.append(json.loads(ws.recv(timeout=10)))
        stopper = threading.Thread(target=live.stop)
        stopper.start()
        try:
            while received[-1]["type"] != "response.failed":
                received.append(json.loads(ws.recv(timeout=10)))
        except ConnectionClosed:
            pass
        stopper.join(30)
    assert [m["type"] for m in received[-2:]] == ["error", "response.failed"]
    assert received[-1]["response"]["error"]["code"] == "server_shutdown"  # type: ignore[index]
