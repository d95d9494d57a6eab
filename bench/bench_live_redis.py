"""The Redis live log's append path alone, before and after a change, side by side in one process.

What the run pipeline does with a Redis live log: after each group commit, every run with new entries appends
them (`await asyncio.gather(*(live.append(id, entries, ended=...) ...))`). Here STREAMS responses append one
batch of BATCH entries each per round, ROUNDS rounds, the last batch terminal, against a redis-server of the
bench's own; the `RedisLiveLog` of this checkout and the one of git ref `--before` take turns (`--trials` each).
Reported per event: CPU of this process (user + system: the client's cost, redis-py included), Redis's CPU
(`INFO cpu`), commands Redis ran (`INFO commandstats`, those inside scripts too) and script calls.

    python bench/bench_live_redis.py --before e332c44              # 1,000 streams x 20 rounds x 1 entry
    python bench/bench_live_redis.py --before e332c44 --batch 10
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_scale import _redis_counts, private_redis
from headwater.server.entries import Entry

ROOT = Path(__file__).resolve().parent.parent


def _live_log_at(ref: str, workdir: Path) -> Any:
    """``RedisLiveLog`` as it was at git ``ref`` (loaded beside this checkout's, into the same package)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:src/headwater/server/live/redis.py"],
                            check=True, capture_output=True, text=True).stdout
    path = workdir / "redis_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("headwater.server.live.redis_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.RedisLiveLog


async def trial(cls: Any, url: str, prefix: str, streams: int, rounds: int, batch: int) -> dict[str, float]:
    live = cls(f"{url}?prefix={prefix}&local=0")
    await live.open()
    payload = b'{"type":"response.output_text.delta","sequence_number":0,"delta":"w12 ","item_id":"msg_1"}' * 2
    try:
        await asyncio.gather(*(live.append(f"r{n}", []) for n in range(streams)))
        redis_before = _redis_counts(url)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        for round_ in range(rounds):
            ended = round_ == rounds - 1
            first = round_ * batch
            await asyncio.gather(*(
                live.append(f"r{n}", [Entry(first + i, "response.output_text.delta", payload) for i in range(batch)],
                            ended=ended)
                for n in range(streams)))
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        redis_after = _redis_counts(url)
    finally:
        await live.close()
    events = streams * rounds * batch
    return {
        "client_cpu_us_per_event": cpu * 1e6 / events,
        "redis_cpu_us_per_event": (redis_after["cpu"] - redis_before["cpu"]) * 1e6 / events,
        "commands_per_event": (redis_after["run"] - redis_before["run"]) / events,
        "script_calls_per_event": (redis_after.get("evalsha", 0) - redis_before.get("evalsha", 0)) / events,
        "wall_ms_per_round": wall * 1000 / rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git ref of the RedisLiveLog to compare with")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1, help="entries per append")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    from headwater.server.live.redis import RedisLiveLog

    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {args.streams} streams x {args.rounds} rounds"
          f" x {args.batch} entries; load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as url:
        variants = {f"before ({args.before})": _live_log_at(args.before, Path(tmp)), "after": RedisLiveLog}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for number in range(args.trials):
            for name, cls in variants.items():
                got = asyncio.run(trial(cls, url, f"t{number}{len(results[name])}{name[0]}", args.streams,
                                        args.rounds, args.batch))
                results[name].append(got)
        for name, rows in results.items():
            figures = {key: round(sorted(r[key] for r in rows)[len(rows) // 2], 3) for key in rows[0]}
            print(f"{name:>20}: median of {len(rows)}: {figures}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
