"""``GET /metrics``: Prometheus text with the runs, events, store and live-log figures of the process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer


def figures(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{label}}}" if label else "")] = sample.value
    return out


def test_metrics_count_the_events_of_each_stream(serve: Callable[[Any], LiveServer]) -> None:
    backend = ScriptedBackend([TextDelta("a"), TextDelta("b"), Finish()])
    server = serve(create_app(ServerConfig(backend="scripted"), backend=backend, store=MemoryStore()))
    before = figures(server.url)
    assert before["headwater_events_total"] == 0 and before["headwater_runs_live"] == 0
    with httpx.stream("POST", f"{server.url}/v1/responses", json={"input": "hi", "stream": True}) as r:
        frames = [line for line in r.iter_lines() if line.startswith("event: ")]
    after = figures(server.url)
    assert after["headwater_events_total"] == len(frames)
    assert after["headwater_lease_takeovers_total"] == 0
    assert after["headwater_errors_total{part=store}"] == 0
