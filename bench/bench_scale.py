"""Concurrent streams through real `headwater serve` replicas, from a load generator in its own process.

The replicas run the scripted backend, paced (`--backend-option delay=`: one text delta every DELAY seconds per
stream). The load generator (a child process, raw asyncio sockets, HTTP/1.0 so the body is the bare SSE bytes)
opens STREAMS streams at once, spread round-robin over the replicas, and records per stream the time to the
first event and the gaps between reads that brought events. Reported: errors, time to first event p50/p99,
inter-event gap p99, aggregate events/s, peak memory (RSS) per server process, Redis commands per event.

    python bench/bench_scale.py                       # all three set-ups, 1000 streams
    python bench/bench_scale.py --streams 200 --only sqlite
    python bench/bench_scale.py --only kill           # two replicas, one killed mid-run: lost streams

Set-ups: `sqlite` (one process, SQLite, in-process live log: the embedded default), `pg-redis` (`--workers 2`:
two worker processes on one port, each a replica, sharing PostgreSQL and Redis), `kill` (the same, and one replica is killed with SIGKILL halfway: every stream
whose connection died is resumed on the other replica with starting_after; a stream is lost if it never gets
its terminal event). Needs the PostgreSQL and Redis of tests/services.py for the last two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from headwater.server.testing import ServeProcess  # noqa: E402

POSTGRES = os.environ.get("HEADWATER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("HEADWATER_TEST_REDIS", "redis://127.0.0.1:6379/0")


# --- the load generator (runs in its own process) -------------------------------------------------------------


async def _stream(host: str, port: int, path: str, body: bytes | None, out: dict[str, Any]) -> bytes:
    """One HTTP/1.0 request; returns the body while recording event timings into ``out``."""
    reader, writer = await asyncio.open_connection(host, port)
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.0\r\nHost: {host}\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body or b'')}\r\n\r\n"
    writer.write(head.encode() + (body or b""))
    await writer.drain()
    start = out.setdefault("start", time.perf_counter())
    data = b""
    headers_done = False
    last = None
    gaps: list[float] = out.setdefault("gaps", [])
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            now = time.perf_counter()
            data += chunk
            if not headers_done:
                if b"\r\n\r\n" not in data:
                    continue
                status = data.split(b" ", 2)[1]
                if status != b"200":
                    out["error"] = f"HTTP {status.decode()}"
                    break
                headers_done = True
            if b"\n\n" in chunk:
                if "first" not in out:
                    out["first"] = now - start
                elif last is not None:
                    gaps.append(now - last)
                last = now
    except OSError as exc:
        out["cut"] = str(exc)
    finally:
        writer.close()
    return data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def _events(body: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in body.split(b"\n\n"):
        if b"\ndata: " in frame:
            out.append(json.loads(frame.split(b"\ndata: ", 1)[1]))
    return out


async def _one(targets: list[tuple[str, int]], n: int, out: dict[str, Any]) -> None:
    body = json.dumps({"input": f"stream {n}", "stream": True, "store": True}).encode()
    events: list[dict[str, Any]] = []
    for attempt in range(len(targets)):  # a create that got no event (its replica died first) is sent again
        host, port = targets[(n + attempt) % len(targets)]
        events = _events(await _stream(host, port, "/v1/responses", body, out))
        if events:
            break
        out["recreated"] = attempt + 1
        out.pop("error", None)
    # A stream whose replica died is resumed on another one, after the last event it got.
    tries = 0
    while (not events or events[-1]["type"] not in ("response.completed", "response.failed")) and tries < 20:
        if not events:
            out["error"] = out.get("error") or "no event"
            return
        tries += 1
        out["resumed"] = tries
        host, port = targets[(n + tries) % len(targets)]
        rid = events[0]["response"]["id"]
        after = events[-1]["sequence_number"]
        more = _events(await _stream(host, port, f"/v1/responses/{rid}?stream=true&starting_after={after}", None,
                                     out))
        events += more
        if not more:
            await asyncio.sleep(0.5)
    out["events"] = len(events)
    out["end"] = time.perf_counter()
    out["terminal"] = events[-1]["type"] if events else None


async def _drive(targets: list[tuple[str, int]], streams: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in range(streams)]
    await asyncio.gather(*(_one(targets, n, results[n]) for n in range(streams)))
    return results


def load(targets: list[tuple[str, int]], streams: int) -> list[dict[str, Any]]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_drive(targets, streams))


# --- servers and figures ------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _workers(pid: int) -> list[int]:
    """The processes that serve: the worker children of a ``--workers`` parent, else the process itself."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    return children or [pid]


def _redis_commands(prefix_url: str) -> int:
    import redis

    client = redis.Redis.from_url(prefix_url.partition("?")[0])
    try:
        info = client.info("stats")
        return int(info["total_commands_processed"])
    finally:
        client.close()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(setup: str, streams: int, steps: int, delay: float, workdir: Path) -> dict[str, Any]:
    script = workdir / f"script-{setup}.json"
    script.write_text(json.dumps([{"text": f"w{n} "} for n in range(steps)] + [{"finish": "stop"}]))
    common = ["--backend", "scripted", "--backend-option", f"script={script}", "--backend-option",
              f"delay={delay}", "--keepalive", "5", "--max-running", str(max(streams, 1))]
    schema = f"hw_bench_{os.getpid()}_{setup.replace('-', '_')}"
    prefix = f"hw_bench_{os.getpid()}_{setup}"
    if setup == "sqlite":
        servers = [ServeProcess(*common, "--store", f"sqlite://{workdir / 'bench.sqlite3'}",
                                log_path=str(workdir / f"{setup}.log"))]
    elif setup == "pg-redis":  # one port, two worker processes (each a replica)
        servers = [ServeProcess(*common, "--store", f"{POSTGRES}?schema={schema}", "--events",
                                f"{REDIS}?prefix={prefix}", "--workers", "2", log_path=str(workdir / f"{setup}.log"))]
    else:  # two replicas on two ports; one is killed halfway
        store = f"{POSTGRES}?schema={schema}"
        events = f"{REDIS}?prefix={prefix}"
        servers = [ServeProcess(*common, "--store", store, "--events", events, "--lease", "3",
                                log_path=str(workdir / f"{setup}-{n}.log")) for n in range(2)]
    for server in servers:
        server.start(60)
    commands_before = _redis_commands(REDIS) if setup != "sqlite" else 0
    targets = [("127.0.0.1", s.port) for s in servers]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pending = pool.apply_async(load, (targets, streams))
        if setup == "kill":
            time.sleep(steps * delay / 2)
            servers[0].kill()
        results = pending.get(timeout=600)
    commands = (_redis_commands(REDIS) - commands_before) if setup != "sqlite" else 0
    memory = [round(_rss_mb(pid), 1) for s in servers if s.process and s.process.poll() is None
              for pid in _workers(s.process.pid)]
    for server in servers:
        server.stop()
    if setup != "sqlite":
        _cleanup(schema, prefix)
    ok = [r for r in results if not r.get("error") and r.get("terminal")]
    total_events = sum(r.get("events", 0) for r in results)
    start = min(r["start"] for r in results if "start" in r)
    end = max(r.get("end", start) for r in results)
    gaps = [g for r in results for g in r.get("gaps", [])]
    return {
        "setup": setup,
        "streams": streams,
        "errors": len(results) - len(ok),
        "error_kinds": dict(Counter(str(r.get("error")) for r in results if r.get("error"))),
        "lost": sum(1 for r in results if r.get("terminal") not in ("response.completed", "response.failed")),
        "resumed": sum(1 for r in results if r.get("resumed")),
        "recreated": sum(1 for r in results if r.get("recreated")),
        "ttfe_p50_ms": round(_pct([r["first"] for r in results if "first" in r], 0.5) * 1000, 1),
        "ttfe_p99_ms": round(_pct([r["first"] for r in results if "first" in r], 0.99) * 1000, 1),
        "gap_p99_ms": round(_pct(gaps, 0.99) * 1000, 1),
        "events_per_s": round(total_events / (end - start)),
        "rss_mb_per_process": memory,
        "redis_commands_per_event": round(commands / total_events, 3) if total_events and commands else None,
    }


def _cleanup(schema: str, prefix: str) -> None:
    import asyncpg
    import redis

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
    client = redis.Redis.from_url(REDIS)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100, help="text deltas per stream")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between deltas (the pace)")
    parser.add_argument("--only", choices=["sqlite", "pg-redis", "kill"], action="append")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.only or ["sqlite", "pg-redis", "kill"]:
            print(json.dumps(run(setup, args.streams, args.steps, args.delay, Path(tmp))), flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
