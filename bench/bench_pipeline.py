"""The run pipeline without HTTP: backend steps -> ``ResponseWriter`` (with its snapshot) -> JSON encode -> store
-> live log -> one follower, in one process, for N text deltas from the scripted backend.

Reported per store (none: a ``store: false`` response; memory; SQLite in a temporary directory): CPU µs per event
(``time.process_time``, which a loaded machine disturbs far less than wall time; the SQLite writer thread's CPU
is included, its fsync waits are not) and wall µs per event, best of N, GC off while timed.

``--concurrent R``: R runs at once instead (started together through one ``Runs``, as a server does, each with
a follower), each of ``-n`` deltas paced ``--delay`` seconds apart: what ``bench_scale.py`` measures without
HTTP, the load generator or the machine's other work in the way. Reported: CPU µs per event and the followers'
p99 gap between batches. ``--gc server`` tunes the garbage collector as ``headwater serve`` does
(``serving.tune_gc``); ``--gc default`` leaves Python's.

    python bench/bench_pipeline.py [-n 5000] [--repeats 7]
    python bench/bench_pipeline.py --concurrent 1000 -n 50 --delay 0.05 --repeats 3 [--gc server]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

from headwater.protocol.resources import Response
from headwater.protocol.writer import ResponseWriter
from headwater.server.admission import Limits
from headwater.server.backends.base import ChatMessage, Finish, GenerationRequest, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.live.memory import MemoryLiveLog
from headwater.server.runs import Run, Runs, encode_response
from headwater.server.store import MemoryStore, SQLiteStore, Store
from headwater.server.store.base import StoredResponse


async def once(n: int, store: Store | None) -> tuple[float, float, int]:
    backend = ScriptedBackend([*(TextDelta("word ") for _ in range(n)), Finish("stop")], models=["m"])
    writer = ResponseWriter(Response(model="m"))
    if store is not None:
        await store.create(StoredResponse(writer.id, None, "queued", 0, encode_response(writer.response)), [])
    request = GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])
    run = Run(writer=writer, backend=backend, request=request, store=store, owner=None, background=False,
              live=MemoryLiveLog())
    cpu, wall = time.process_time(), time.perf_counter()
    run.start()
    events = 0
    async for batch in run.follow():
        events += len(batch)
    await run.wait()
    return time.process_time() - cpu, time.perf_counter() - wall, events


async def main(n: int, repeats: int) -> None:
    print(f"run pipeline, {n} text deltas, best of {repeats}; load {os.getloadavg()[0]:.2f}")
    print(f"{'store':<8} {'events':>7} {'cpu us/event':>13} {'wall us/event':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("none", "memory", "sqlite"):
            best_cpu = best_wall = float("inf")
            events = 0
            for i in range(repeats + 1):  # the first run warms up
                store: Store | None = None
                if name == "memory":
                    store = MemoryStore()
                elif name == "sqlite":
                    store = SQLiteStore(Path(tmp) / f"{i}.sqlite3")
                    await store.open()
                gc.collect()
                gc.disable()
                try:
                    cpu, wall, events = await once(n, store)
                finally:
                    gc.enable()
                    if store is not None:
                        await store.close()
                if i:
                    best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
            print(f"{name:<8} {events:>7} {best_cpu / events * 1e6:>13.2f} {best_wall / events * 1e6:>14.2f}")


async def concurrent_once(runs_count: int, n: int, delay: float, store: Store) -> tuple[float, int, list[float]]:
    backend = ScriptedBackend([*(TextDelta("word ") for _ in range(n)), Finish("stop")], models=["m"], delay=delay)
    runs = Runs(store, backend, limits=Limits(max_running=runs_count, max_queued=0))
    request = GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])
    gaps: list[float] = []

    async def follow(run: Run) -> int:
        count, last = 0, None
        async for batch in run.follow():
            now = time.perf_counter()
            if last is not None:
                gaps.append(now - last)
            last, count = now, count + len(batch)
        return count

    cpu = time.process_time()
    started = []
    for _ in range(runs_count):
        writer = ResponseWriter(Response(model="m"))
        await store.create(StoredResponse(writer.id, None, "queued", 0, encode_response(writer.response)), [])
        started.append(runs.start(writer=writer, request=request, owner=None, stored=True, background=False,
                                  max_tool_calls=None))
    counts = await asyncio.gather(*(follow(run) for run in started))
    await asyncio.gather(*(run.wait() for run in started))
    return time.process_time() - cpu, sum(counts), gaps


async def concurrent(runs_count: int, n: int, delay: float, repeats: int) -> None:
    print(f"{runs_count} concurrent runs, {n} text deltas each, {delay * 1000:.0f} ms apart, best of {repeats}; "
          f"gc thresholds {gc.get_threshold()}; load {os.getloadavg()[0]:.2f}")
    print(f"{'store':<8} {'events':>7} {'cpu us/event':>13} {'gap p99 ms':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("memory", "sqlite"):
            best = float("inf")
            gap = float("nan")
            events = 0
            for i in range(repeats):
                store: Store = MemoryStore() if name == "memory" else SQLiteStore(Path(tmp) / f"c{i}.sqlite3")
                await store.open()
                try:
                    cpu, events, gaps = await concurrent_once(runs_count, n, delay, store)
                finally:
                    await store.close()
                if cpu < best:
                    best = cpu
                    gaps.sort()
                    gap = gaps[int(len(gaps) * 0.99)] * 1000 if gaps else float("nan")
            print(f"{name:<8} {events:>7} {best / events * 1e6:>13.2f} {gap:>11.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--concurrent", type=int, default=0, help="runs at once (paced by --delay)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between deltas with --concurrent")
    parser.add_argument("--gc", choices=["server", "default"], default="server",
                        help="with --concurrent: the server's garbage-collector settings or Python's")
    args = parser.parse_args()
    if args.concurrent:
        if args.gc == "server":
            from headwater.server.serving import tune_gc

            tune_gc()
        asyncio.run(concurrent(args.concurrent, args.n, args.delay, args.repeats))
    else:
        asyncio.run(main(args.n, args.repeats))
