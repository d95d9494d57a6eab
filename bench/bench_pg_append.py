"""The PostgreSQL store's group commit alone: what one append of many runs costs, this tree beside another.

What the run pipeline does with PostgreSQL: each group commit hands ``append_many`` one batch per run that has
new events; at a steady pace that is about one event per run per commit. Here STREAMS responses are created,
then ROUNDS rounds each append one event (``--batch`` events) to every response in one ``append_many`` call,
the last round terminal (status and resource); ids are random, as the server's (``resp_`` and 32 hex digits).
``--history N`` first stores N finished responses of ``--history-events`` events each, as a database that has
served for a while holds (their index entries lie among the running ones'). Each side runs in a child process of its own
(``PYTHONPATH=SRC``): this checkout's ``src`` and ``--baseline SRC``, alternating ``--trials`` times, each on a
fresh schema of the PostgreSQL of tests/services.py. Reported per event: wall time of a round, CPU of the
client process (user + system) and of the PostgreSQL backends serving it (``/proc``, found by their client
ports), and WAL bytes (``pg_current_wal_lsn``: the whole server's, so other users' writes count too).
Before the rounds, the start round (``start_*``): every response's first batch as a run writes it
(response.created and response.in_progress, with the status and the resource its create stored), its wall
time, and PostgreSQL's CPU and the WAL bytes per response.

    python bench/bench_pg_append.py --baseline /tmp/base/src
    python bench/bench_pg_append.py --baseline /tmp/base/src --streams 500 --rounds 50 --trials 3
    python bench/bench_pg_append.py --baseline /tmp/base/src --streams 1000 --history 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_scale import _cpu_s

POSTGRES = os.environ.get("HEADWATER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


def _my_ports_to(remote_port: int) -> set[int]:
    """The local ports of this process's TCP connections to ``remote_port``."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def _history(store: Any, responses: int, events: int) -> None:
    """``responses`` finished responses of ``events`` events each, stored as the server stores them."""
    from headwater.server.store import Append, Entry, StoredResponse

    payload = b'{"type":"response.output_text.delta","delta":"old ","sequence_number":0}' + b" " * 150
    for start in range(0, responses, 1000):
        ids = [f"resp_{secrets.token_hex(16)}" for _ in range(min(1000, responses - start))]
        await asyncio.gather(*(store.create(StoredResponse(rid, None, "in_progress", 1, b"{}"), []) for rid in ids))
        for seq in range(0, events, 10):
            last = seq + 10 >= events
            await store.append_many([Append(rid, [Entry(n, "response.output_text.delta", payload)
                                                  for n in range(seq, min(seq + 10, events))],
                                            status="completed" if last else None, data=b"{}" if last else None)
                                     for rid in ids])


async def _side(streams: int, rounds: int, batch: int, schema: str, history: tuple[int, int]) -> dict[str, Any]:
    import asyncpg

    from headwater.server.store import Append, Entry, StoredResponse
    from headwater.server.store.postgres import PostgresStore

    store = PostgresStore(f"{POSTGRES}?schema={schema}")
    admin = await asyncpg.connect(POSTGRES)
    await store.open()
    try:
        await _history(store, *history)
        def initial(rid: str) -> bytes:
            return b'{"id": "%s"}' % rid.encode() + b" " * 1000

        payload = b'{"type":"response.output_text.delta","delta":"w1 ","sequence_number":0}' + b" " * 150
        # warm-up (statements prepared, pool connections made), on responses of its own
        warm = [f"resp_{secrets.token_hex(16)}" for _ in range(10)]
        for rid in warm:
            await store.create(StoredResponse(rid, None, "in_progress", 1, initial(rid)), [])
        await store.append_many([Append(rid, [Entry(0, "response.created", payload)], "in_progress", initial(rid))
                                 for rid in warm])
        await store.append_many([Append(rid, [Entry(1, "response.output_text.delta", payload)]) for rid in warm])
        ids = [f"resp_{secrets.token_hex(16)}" for _ in range(streams)]
        await asyncio.gather(*(store.create(StoredResponse(rid, None, "in_progress", 1, initial(rid)), [])
                               for rid in ids))
        port = int(POSTGRES.rsplit(":", 1)[1].split("/")[0]) if POSTGRES.count(":") >= 2 else 5432
        ports = _my_ports_to(port)
        pids = [row[0] for row in await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])", list(ports))]
        # The start round: every response's first batch, as a run writes it (response.created and
        # response.in_progress, with the status and the resource its create stored).
        wal0 = await admin.fetchval("SELECT pg_current_wal_lsn()")
        pg0 = sum(_cpu_s(pid) for pid in pids)
        start = time.perf_counter()
        await store.append_many([Append(rid, [Entry(0, "response.created", payload),
                                              Entry(1, "response.in_progress", payload)], "in_progress", initial(rid))
                                 for rid in ids])
        first = {"start_round_ms": round((time.perf_counter() - start) * 1000, 2),
                 "start_pg_us_per_response": round((sum(_cpu_s(pid) for pid in pids) - pg0) / streams * 1e6, 1),
                 "start_wal_bytes_per_response": round(float(await admin.fetchval(
                     "SELECT pg_current_wal_lsn() - $1::pg_lsn", wal0)) / streams, 1)}
        wal0 = await admin.fetchval("SELECT pg_current_wal_lsn()")
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        pg0 = sum(_cpu_s(pid) for pid in pids)
        start = time.perf_counter()
        seq = 2
        for n in range(rounds):
            last = n == rounds - 1
            appends = [Append(rid, [Entry(seq + k, "response.output_text.delta", payload) for k in range(batch)],
                              status="completed" if last else None, data=b'{"done": true}' if last else None)
                       for rid in ids]
            seq += batch
            outcomes = await store.append_many(appends)
            assert all(o is None for o in outcomes), outcomes[:3]
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        pg1 = sum(_cpu_s(pid) for pid in pids)
        wal1 = await admin.fetchval("SELECT pg_current_wal_lsn()")
        wal = await admin.fetchval("SELECT $1::pg_lsn - $2::pg_lsn", wal1, wal0)
        events = streams * rounds * batch
        client = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {"round_ms": round(wall / rounds * 1000, 2), "client_us_per_event": round(client / events * 1e6, 2),
                "pg_us_per_event": round((pg1 - pg0) / events * 1e6, 2), "pg_backends": len(pids),
                "wal_bytes_per_event": round(float(wal) / events, 1), **first}
    finally:
        await store.drop_schema()
        await store.close()
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another tree's src directory, run beside this checkout's")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1, help="events per response per round")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--history", type=int, default=0, help="finished responses stored before the rounds")
    parser.add_argument("--history-events", type=int, default=30, help="events of each of them")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # (a child: one measurement, JSON on stdout)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(asyncio.run(_side(args.streams, args.rounds, args.batch, args.side,
                                           (args.history, args.history_events)))))
        return
    sides = {"tree": str(ROOT / "src")}
    if args.baseline:
        sides = {"baseline": args.baseline, **sides}
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: --streams {args.streams} --rounds "
          f"{args.rounds} --batch {args.batch} --history {args.history} --history-events {args.history_events}; load average {os.getloadavg()[0]:.2f}", flush=True)
    for trial in range(args.trials):
        for name, src in sides.items():
            schema = f"hw_bench_pg_{os.getpid()}_{trial}_{name}"
            done = subprocess.run([sys.executable, __file__, "--side", schema, "--streams", str(args.streams),
                                   "--rounds", str(args.rounds), "--batch", str(args.batch),
                                   "--history", str(args.history), "--history-events", str(args.history_events)],
                                  env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, check=False)
            if done.returncode:
                print(name, "failed:", done.stderr[-2000:], file=sys.stderr)
                continue
            print(json.dumps({"side": name, "trial": trial, "load_1min": round(os.getloadavg()[0], 2),
                              **json.loads(done.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
