"""One stream's events/s through `headwater serve` over loopback, against a bare Starlette app that pushes the
same pre-encoded SSE bytes, one write per event (the reference; goal: Headwater >= 0.9x of it), and the same
app writing whole frames in 64 KiB writes (the ceiling of joining ready frames, which Headwater now does).

Both servers run in this process on uvicorn (a thread each, real sockets on 127.0.0.1); the same httpx client,
reads both and decodes with `headwater.iter_events`, so the difference is the server's own work: request
validation, the run driver, the ResponseWriter, the event log and SSE delivery. The client runs twice: in this
process (client and servers share one interpreter lock, as in a test suite) and in a child process (the server's
CPU is its own, so its per-event cost shows undiluted). The Headwater server runs the
scripted backend (N text deltas, no delays) with the in-memory store and, separately, the SQLite store.

Each stack (event loop + HTTP parser) runs the whole set, so its ratios come from one run: uvicorn on asyncio +
h11 (pure Python), uvicorn on uvloop + httptools (what `headwater serve` picks when they are installed, as the
`server` extra installs them), and granian (Rust HTTP, its own process, so only the separate-process placement).

    python bench/bench_server.py            # N=5000 deltas, best of 5, every stack
    python bench/bench_server.py --quick    # N=1000, best of 3
    python bench/bench_server.py --stacks uvloop+httptools,granian
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import msgspec
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


def granian_bare() -> Starlette:
    """Factory for granian: the bare app (N from the environment)."""
    return bare_app(pre_encoded(int(os.environ["BENCH_N"])))


def granian_headwater() -> object:
    """Factory for granian: the Headwater app (N, store and data dir from the environment)."""
    config = ServerConfig(
        store=os.environ["BENCH_STORE"], data_dir=Path(os.environ["BENCH_DATA"]), backend="scripted"
    )
    return create_app(config, backend=ScriptedBackend(steps(int(os.environ["BENCH_N"])), models=["bench"]))


class GranianServer:
    """This module's factory ``target`` served by granian in a child process on a free loopback port."""

    def __init__(self, target: str, env: dict[str, str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        here = Path(__file__).resolve().parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop",
             "--no-access-log", "--log-level", "warning", "--host", "127.0.0.1", "--port", str(self.port),
             "--working-dir", str(here), f"bench_server:{target}"],
            env={**os.environ, **env},
        )

    def __enter__(self) -> GranianServer:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return self
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("granian did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bare_app(blocks: list[bytes]) -> Starlette:
    """``/v1/responses``: one write per event (what Headwater did before it joined ready frames);
    ``/batched/v1/responses``: every frame is ready, so whole frames joined into 64 KiB writes (the ceiling of
    Headwater's own policy, which joins only what is ready when its follower wakes)."""
    from headwater.protocol.sse import join_frames

    async def responses(request: Request) -> StreamingResponse:
        await request.body()

        async def body():
            for block in blocks:
                yield block

        return StreamingResponse(body(), media_type="text/event-stream")

    async def batched(request: Request) -> StreamingResponse:
        await request.body()

        async def body():
            index = 0
            while index < len(blocks):
                chunk, index = join_frames(blocks, index)
                yield chunk

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/responses", responses, methods=["POST"]),
                             Route("/batched/v1/responses", batched, methods=["POST"])])


def one_stream(client: httpx.Client, url: str) -> int:
    body = {"model": "bench", "input": "go", "stream": True}
    count = 0
    with client.stream("POST", url + "/v1/responses", json=body) as response:
        response.raise_for_status()
        for _ in iter_events(response.iter_bytes()):
            count += 1
    return count


TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


class _Type(msgspec.Struct):
    type: str


_type_of = msgspec.json.Decoder(_Type)


def one_ws_stream(ws: Any) -> int:
    """One response over WebSocket mode: ``response.create``, then messages up to the terminal event."""
    ws.send(msgspec.json.encode({"type": "response.create", "model": "bench", "input": "go"}).decode())
    count = 0
    while True:
        count += 1
        if _type_of.decode(ws.recv()).type in TERMINAL:
            return count


def best_ws_rate(url: str, repeats: int) -> tuple[float, int]:
    from websockets.sync.client import connect

    best = 0.0
    events = 0
    with connect(url.replace("http://", "ws://") + "/v1/responses", max_size=None) as ws:
        one_ws_stream(ws)  # warm-up
        for _ in range(repeats):
            gc.collect()
            start = time.perf_counter()
            events = one_ws_stream(ws)
            best = max(best, events / (time.perf_counter() - start))
    return best, events


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


STACKS = {"asyncio+h11": ("asyncio", "h11"), "uvloop+httptools": ("uvloop", "httptools"), "granian": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None, help="text deltas per stream")
    parser.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated, of {', '.join(STACKS)}")
    parser.add_argument("--no-websocket", dest="websocket", action="store_false",
                        help="skip WebSocket mode (measured on the uvicorn stacks)")
    args = parser.parse_args()
    n = args.n or (1000 if args.quick else 5000)
    repeats = 3 if args.quick else 5
    print(f"load average {os.getloadavg()[0]:.2f} at start")

    blocks = pre_encoded(n)
    ws_results: dict[str, tuple[float, int]] = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        for stack in args.stacks.split(","):
            uvicorn_options = STACKS[stack]
            for same_process in (True, False) if uvicorn_options else (None,):

                def measure(url: str, same_process: bool | None = same_process) -> tuple[float, int]:
                    if same_process is False:
                        return pool.submit(best_rate, url, repeats).result()
                    return best_rate(url, repeats)  # (granian: the server is a child process)

                results: dict[str, tuple[float, int]] = {}
                if uvicorn_options is not None:
                    loop, http = uvicorn_options
                    with LiveServer(bare_app(blocks), loop=loop, http=http) as bare:
                        results["bare Starlette, pre-encoded bytes"] = measure(bare.url)
                        results["bare, 64 KiB writes of whole frames"] = measure(bare.url + "/batched")
                else:
                    with GranianServer("granian_bare", {"BENCH_N": str(n)}) as bare:
                        results["bare Starlette, pre-encoded bytes"] = measure(bare.url)
                        results["bare, 64 KiB writes of whole frames"] = measure(bare.url + "/batched")
                for store in ("memory", "sqlite"):
                    with tempfile.TemporaryDirectory() as data_dir:
                        name = f"headwater serve ({store} store)"
                        if uvicorn_options is not None:
                            config = ServerConfig(store=store, data_dir=Path(data_dir), backend="scripted")
                            app = create_app(config, backend=ScriptedBackend(steps(n), models=["bench"]))
                            with LiveServer(app, loop=loop, http=http) as server:
                                results[name] = measure(server.url)
                        else:
                            env = {"BENCH_N": str(n), "BENCH_STORE": store, "BENCH_DATA": data_dir}
                            with GranianServer("granian_headwater", env) as server:
                                results[name] = measure(server.url)
                where = {True: "the same process", False: "a child process", None: "another process"}
                report(results, n, repeats, f"{stack}; the client in {where[same_process]}")
            if uvicorn_options is not None and args.websocket:
                with tempfile.TemporaryDirectory() as data_dir:
                    config = ServerConfig(store="memory", data_dir=Path(data_dir), backend="scripted")
                    app = create_app(config, backend=ScriptedBackend(steps(n), models=["bench"]))
                    with LiveServer(app, loop=loop, http=http) as server:
                        ws_results[stack] = pool.submit(best_ws_rate, server.url, repeats).result()
    if ws_results:
        print(f"WebSocket mode, one response of {n} deltas per turn, memory store, the client (websockets, sync) "
              f"in a child process; load {os.getloadavg()[0]:.2f}")
        first = next(iter(ws_results.values()))[0]
        for stack, (rate, events) in ws_results.items():
            print(f"  {stack:<20} {events:>7} events {rate:>10,.0f} events/s {rate / first:>6.2f}x")


def report(results: dict[str, tuple[float, int]], n: int, repeats: int, where: str) -> None:
    base = results["bare Starlette, pre-encoded bytes"][0]
    print(f"one stream of {n} text deltas over loopback, best of {repeats}; {where}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'server':<36} {'events':>7} {'events/s':>10} {'vs bare':>8} {'us/event':>9}")
    for name, (rate, events) in results.items():
        print(f"{name:<36} {events:>7} {rate:>10,.0f} {rate / base:>7.2f}x {1e6 / rate:>9.1f}")
    print()


if __name__ == "__main__":
    main()
