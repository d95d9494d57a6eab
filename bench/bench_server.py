"""One stream's events/s through `headwater serve` over loopback, against a bare Starlette app that pushes the
same pre-encoded SSE bytes (one write per event, as the server does). Goal: Headwater >= 0.9x the bare app.

Both servers run in this process on uvicorn (a thread each, real sockets on 127.0.0.1); the same httpx client,
reads both and decodes with `headwater.iter_events`, so the difference is the server's own work: request
validation, the run driver, the ResponseWriter, the event log and SSE delivery. The client runs twice: in this
process (client and servers share one interpreter lock, as in a test suite) and in a child process (the server's
CPU is its own, so its per-event cost shows undiluted). The Headwater server runs the
scripted backend (N text deltas, no delays) with the in-memory store and, separately, the SQLite store.

    python bench/bench_server.py            # N=5000 deltas, best of 5
    python bench/bench_server.py --quick    # N=1000, best of 3
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from headwater import iter_events
from headwater.protocol.resources import Response
from headwater.protocol.stream import encode_sse
from headwater.protocol.writer import ResponseWriter
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta, UsageStep
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.testing import LiveServer

WORDS = ["the ", "quick ", "brown ", "fox ", "jumps ", "over ", "a ", "lazy ", "dog, ", "again. "]


def steps(n: int) -> list[object]:
    out: list[object] = [TextDelta(WORDS[i % len(WORDS)]) for i in range(n)]
    out += [UsageStep(input_tokens=12, output_tokens=n), Finish("stop")]
    return out


def pre_encoded(n: int) -> list[bytes]:
    """The same stream the server writes, encoded once up front."""
    writer = ResponseWriter(Response(model="bench"))
    events = list(writer.start())
    message = writer.message()
    events += message.events
    text = message.text()
    events += text.events
    for i in range(n):
        events += text.delta(WORDS[i % len(WORDS)])
    events += text.done()
    events += message.done()
    events += writer.complete()
    return [encode_sse(event) for event in events]


def bare_app(blocks: list[bytes]) -> Starlette:
    async def responses(request: Request) -> StreamingResponse:
        await request.body()

        async def body():  # one write per event, as the Headwater server does
            for block in blocks:
                yield block

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/responses", responses, methods=["POST"])])


def one_stream(client: httpx.Client, url: str) -> int:
    body = {"model": "bench", "input": "go", "stream": True}
    count = 0
    with client.stream("POST", url + "/v1/responses", json=body) as response:
        response.raise_for_status()
        for _ in iter_events(response.iter_bytes()):
            count += 1
    return count


def best_rate(url: str, repeats: int) -> tuple[float, int]:
    best = 0.0
    events = 0
    with httpx.Client(timeout=60) as client:
        one_stream(client, url)  # warm-up: connection, model load, code paths
        for _ in range(repeats):
            gc.collect()
            start = time.perf_counter()
            events = one_stream(client, url)
            elapsed = time.perf_counter() - start
            best = max(best, events / elapsed)
    return best, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None, help="text deltas per stream")
    args = parser.parse_args()
    n = args.n or (1000 if args.quick else 5000)
    repeats = 3 if args.quick else 5

    blocks = pre_encoded(n)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        for same_process in (True, False):

            def measure(url: str, same_process: bool = same_process) -> tuple[float, int]:
                if same_process:
                    return best_rate(url, repeats)
                return pool.submit(best_rate, url, repeats).result()

            results: dict[str, tuple[float, int]] = {}
            with LiveServer(bare_app(blocks)) as bare:
                results["bare Starlette, pre-encoded bytes"] = measure(bare.url)
            for store in ("memory", "sqlite"):
                with tempfile.TemporaryDirectory() as data_dir:
                    config = ServerConfig(store=store, data_dir=Path(data_dir), backend="scripted")
                    app = create_app(config, backend=ScriptedBackend(steps(n), models=["bench"]))
                    with LiveServer(app) as server:
                        results[f"headwater serve ({store} store)"] = measure(server.url)
            report(results, n, repeats, "the same process" if same_process else "a child process")


def report(results: dict[str, tuple[float, int]], n: int, repeats: int, where: str) -> None:
    base = results["bare Starlette, pre-encoded bytes"][0]
    print(f"one stream of {n} text deltas over loopback, best of {repeats}; the client in {where}")
    print(f"{'server':<36} {'events':>7} {'events/s':>10} {'vs bare':>8} {'us/event':>9}")
    for name, (rate, events) in results.items():
        print(f"{name:<36} {events:>7} {rate:>10,.0f} {rate / base:>7.2f}x {1e6 / rate:>9.1f}")
    print()


if __name__ == "__main__":
    main()
