"""``headwater serve`` as a user runs it: a subprocess on a free port, the start-up banner, a real request,
shutdown on SIGTERM; and recorded captures replayed through the server stay conformant."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.protocol.conformance import check
from headwater.protocol.stream import iter_events
from headwater.server.app import create_app
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

CAPTURES = Path(__file__).parent / "fixtures/captures/openai"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_prints_where_and_what_then_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "HEADWATER_API_KEYS": "k1, k2", "HEADWATER_DATA_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "headwater", "serve", "--port", str(port), "--backend", "scripted",
            "--backend-option", f"script={CAPTURES / 'openai-issue-11239.2.jsonl'}", "--api-key", "k3",
            "--log-level", "warning"]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"authorization": "Bearer k2"})
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(0.05)
        streamed = client.post("/v1/responses", json={"input": "hi", "stream": True})
        assert streamed.status_code == 200
        assert check(list(iter_events([streamed.content]))) == []
        assert client.get("/v1/models", headers={"authorization": "Bearer nope"}).status_code == 401
        assert client.get("/v1/models", headers={"authorization": "Bearer k3"}).status_code == 200
        client.close()
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    banner = out.decode()
    assert f"listening on http://127.0.0.1:{port}" in banner
    assert "backend: scripted: a test double replaying capture openai-issue-11239.2.jsonl" in banner
    assert f"store:   sqlite {tmp_path / 'headwater.sqlite3'}" in banner
    assert "3 API key(s)" in banner
    assert (tmp_path / "headwater.sqlite3").exists()


def test_serve_refuses_an_unknown_backend() -> None:
    result = subprocess.run([sys.executable, "-m", "headwater", "serve", "--backend", "nope"],
                            capture_output=True, timeout=60)
    assert result.returncode != 0
    assert b"unknown backend 'nope'" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "chat"], b"--backend chat needs --upstream URL"),
        (["--backend", "responses"], b"--backend responses needs --upstream URL"),
        (["--upstream", "http://127.0.0.1:9/v1"], b"--upstream is for --backend chat or responses"),
    ],
)
def test_serve_upstream_flags_are_checked(args: list[str], message: bytes) -> None:
    result = subprocess.run([sys.executable, "-m", "headwater", "serve", *args], capture_output=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    "capture",
    ["openai-issue-11239.1.jsonl", "openai-issue-11239.2.jsonl", "issue-19067-parallel-tool-call-wrapper.jsonl",
     "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl", "openai-error.1.jsonl"],
)
def test_captures_replayed_through_the_server_are_conformant(serve: Callable[[Any], Any], capture: str) -> None:
    backend = ScriptedBackend.from_capture(CAPTURES / capture)
    live = serve(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore()))
    with httpx.Client(base_url=live.url) as client:
        response = client.post("/v1/responses", json={"input": "hi", "stream": True})
        if response.status_code != 200:  # a capture that fails before any output: its HTTP status instead
            assert response.json()["error"]["message"]
            return
        events = list(iter_events([response.content]))
        assert check(events) == []
        replay = client.get(f"/v1/responses/{events[0].response.id}", params={"stream": "true"})  # type: ignore[union-attr]
        assert replay.content == response.content


def test_serve_workers_say_listening_only_once_every_worker_listens_and_fail_when_one_cannot_start() -> None:
    # The workers open the store as they start; here it cannot be reached, so none of them ever listens.
    args = [sys.executable, "-m", "headwater", "serve", "--port", "0", "--backend", "scripted", "--backend-option",
            f"script={CAPTURES / 'openai-issue-11239.2.jsonl'}", "--workers", "2",
            "--store", "postgresql://postgres@127.0.0.1:1/test", "--events", "redis://127.0.0.1:1/0",
            "--log-level", "warning"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "listening on" not in done.stdout
    assert "a worker process exited before it listened" in done.stderr
