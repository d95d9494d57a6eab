"""The inspector's server side on a 10,000-event recording: upload and analysis (decode, check, fold), then
snapshots at scattered indexes (each folds from the first event), over real HTTP on loopback.

    .venv/bin/python bench/bench_inspect.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from headwater.protocol.resources import Response
from headwater.protocol.stream import encode_sse
from headwater.protocol.writer import ResponseWriter
from headwater.server.app import create_app
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer


def recording(deltas: int = 9_992) -> bytes:
    """One message in ``deltas`` text deltas: 10,000 events in all, as SSE."""
    writer = ResponseWriter(Response(id="resp_big", model="big"))
    events = writer.start()
    message = writer.message()
    text = message.text()
    events += message.events + text.events
    for i in range(deltas):
        events += text.delta(f"t{i} ")
    events += text.done() + message.done() + writer.complete()
    return b"".join(encode_sse(e) for e in events)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data = recording()
    app = create_app(ServerConfig.with_keys(["k"], store="memory"), backend=ScriptedBackend([]), store=MemoryStore())
    headers = {"authorization": "Bearer k"}
    with LiveServer(app) as server, httpx.Client(base_url=server.url + "/inspect/api/", headers=headers,
                                                 timeout=60) as http:
        uploads = []
        for _ in range(args.runs):
            start = time.perf_counter()
            answer = http.post("sessions", content=data)
            uploads.append((time.perf_counter() - start) * 1000)
        session = answer.json()
        snapshots = []
        for index in range(0, 10_000, 250):
            start = time.perf_counter()
            http.get(f"sessions/{session['id']}/snapshot", params={"index": index}).raise_for_status()
            snapshots.append((time.perf_counter() - start) * 1000)
    print(f"recording: {session['events']} events, {len(data)} bytes; analysis JSON {len(answer.content)} bytes")
    print(f"upload + analysis: median {statistics.median(uploads):.0f} ms (runs: {', '.join(f'{u:.0f}' for u in uploads)})")
    print(f"snapshot at 40 indexes: median {statistics.median(snapshots):.1f} ms, max {max(snapshots):.1f} ms")


if __name__ == "__main__":
    main()
