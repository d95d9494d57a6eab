"""One big request must not stall the others: its parsing and validation run off the event loop, so that a
live stream keeps being generated and sent meanwhile."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from headwater.protocol.stream import iter_events
from headwater.server import requests
from headwater.server.app import create_app
from headwater.server.backends.base import TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.offload import OFF_LOOP_BYTES
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer


def test_a_live_stream_keeps_going_while_a_big_request_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ScriptedBackend([TextDelta(f"w{i} ") for i in range(3000)], delay=0.01)  # 30 s of stream
    app = create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore())
    real_parse = requests.parse_request
    seen: dict[str, Any] = {}

    def parse_while_watching_the_stream(data: bytes, **options: Any) -> requests.ValidatedRequest:
        # Hold the parse of the big body until the stream's run has made five more steps. The run makes its
        # steps on the event loop: were this parse on the loop too, it would wait in vain.
        if len(data) > OFF_LOOP_BYTES:
            before = backend.steps_yielded
            deadline = time.monotonic() + 10
            while backend.steps_yielded < before + 5 and time.monotonic() < deadline:
                time.sleep(0.005)
            seen["steps during the parse"] = backend.steps_yielded - before
            seen["parsed on"] = threading.current_thread().name
        return real_parse(data, **options)

    monkeypatch.setattr(requests, "parse_request", parse_while_watching_the_stream)
    with LiveServer(app) as live:
        client = httpx.Client(base_url=live.url, timeout=30)
        received: list[str] = []
        stop = threading.Event()

        def read_stream() -> None:
            with client.stream("POST", "/v1/responses", json={"input": "hi", "stream": True}) as response:
                for event in iter_events(response.iter_raw()):
                    received.append(event.type)
                    if stop.is_set():
                        return

        reader = threading.Thread(target=read_stream)
        reader.start()
        deadline = time.monotonic() + 10
        while "response.output_text.delta" not in received and time.monotonic() < deadline:
            time.sleep(0.01)
        # A big body (about 1 MB of input items) with one bad field, so that it is refused once parsed.
        big = {"input": [{"role": "user", "content": "x" * 100} for _ in range(8000)], "temperature": "hot"}
        answer = client.post("/v1/responses", json=big)
        during = len(received)
        stop.set()
        reader.join(30)
    assert answer.status_code == 400
    assert seen["steps during the parse"] >= 5, seen
    assert during > 0 and "response.completed" not in received  # the stream was live all along
