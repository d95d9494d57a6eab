"""The run pipeline without HTTP: backend steps -> ``ResponseWriter`` (with its snapshot) -> JSON encode -> store
-> live log -> one follower, in one process, for N text deltas from the scripted backend.

Reported per store (none: a ``store: false`` response; memory; SQLite in a temporary directory): CPU µs per event
(``time.process_time``, which a loaded machine disturbs far less than wall time; the SQLite writer thread's CPU
is included, its fsync waits are not) and wall µs per event, best of N, GC off while timed.

    python bench/bench_pipeline.py [-n 5000] [--repeats 7]
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
from headwater.server.backends.base import ChatMessage, Finish, GenerationRequest, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.live.memory import MemoryLiveLog
from headwater.server.runs import Run, encode_response
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.repeats))
