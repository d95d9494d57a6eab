"""The long fuzz run: a real ``headwater serve`` process (scripted backend, SQLite store) gets generated requests
(``headwater.server.fuzz``: hypothesis bodies, query strings, WebSocket messages, and schemathesis cases from the
server's own /openapi.json) until the counts asked for are reached; then it prints what it sent, what came back,
every problem (a 5xx, an error not in the spec's shape, a broken stream or WebSocket) and the tracebacks and
ERROR lines in the server's log. Exit status 1 when anything was found.

    .venv/bin/python bench/fuzz_server.py               # about 100,000 requests
    .venv/bin/python bench/fuzz_server.py --scale 0.01  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.server.fuzz import MODEL, Fuzzer, bodies, mutate, openapi_cases, queries, ws_messages
from headwater.server.testing import ServeProcess

# Generated examples per kind at --scale 1. Each generated body (create, compact) is also sent as MUTATIONS
# cheap variants (``fuzz.mutate``): hypothesis' generation costs far more than a request. About 100,000 requests.
PLAN = {
    "bodies": 13_000,
    "compact bodies": 1_500,
    "query strings": 25_000,
    "websocket messages": 14_000,
    "schemathesis positive": 1_500,
    "schemathesis negative": 1_500,
}
MUTATIONS = 3
CHUNK = 1_000
SCRIPT = [{"text": "Hel"}, {"text": "lo"}, {"tool_call": {"call_id": "call_1", "name": "weather",
                                                        "arguments": "{\"city\": \"Oslo\"}"}},
          {"usage": {"input_tokens": 3, "output_tokens": 2}}, {"finish": "stop"}]


def start_server(workdir: Path, log: Path) -> ServeProcess:
    script = workdir / "script.json"
    script.write_text(json.dumps(SCRIPT))
    return ServeProcess("--backend", "scripted", "--backend-option", f"script={script}",
                        "--backend-option", f'models=["{MODEL}"]', "--store", "sqlite",
                        "--data-dir", str(workdir / "data"), log_path=str(log)).start()


def run_kind(name: str, count: int, strategy: st.SearchStrategy[Any], send: Callable[[Any], None],
             fuzzer: Fuzzer, started: float) -> None:
    done = 0
    while done < count:
        n = min(CHUNK, count - done)

        @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(value=strategy)
        def chunk(value: Any) -> None:
            send(value)

        chunk()
        done += n
        print(f"  {name}: {done}/{count}  (requests {fuzzer.counts['requests']}, problems "
              f"{len(fuzzer.problems)}, {time.monotonic() - started:.0f} s)", flush=True)


def with_mutations(fuzzer: Fuzzer, body: bytes, path: str, rng: random.Random) -> None:
    fuzzer.post(body, path)
    for _ in range(MUTATIONS):
        fuzzer.counts["mutated requests"] += 1
        fuzzer.post(mutate(body, rng), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count of the plan")
    parser.add_argument("--seed", type=int, default=9, help="seed of the mutations")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data and server log)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="headwater-fuzz-"))
    log = workdir / "server.log"
    server = start_server(workdir, log)
    fuzzer = Fuzzer(server.url, strict=False)
    rng = random.Random(args.seed)
    started = time.monotonic()
    try:
        fuzzer.seed()
        plan: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], None]]] = [
            ("bodies", bodies(), lambda body: with_mutations(fuzzer, body, "/v1/responses", rng)),
            ("compact bodies", bodies(), lambda body: with_mutations(fuzzer, body, "/v1/responses/compact", rng)),
            ("query strings", queries, fuzzer.query),
            ("websocket messages", ws_messages(), fuzzer.ws_send),
            ("schemathesis positive", openapi_cases(negative=False), fuzzer.case),
            ("schemathesis negative", openapi_cases(negative=True), fuzzer.case),
        ]
        for name, strategy, send in plan:
            run_kind(name, max(1, int(PLAN[name] * args.scale)), strategy, send, fuzzer, started)
        healthy = fuzzer.healthy()
    finally:
        fuzzer.close()
        server.stop(30)
    text = server.stdout + server.stderr
    tracebacks = text.count("Traceback (most recent call last)")
    error_lines = [line for line in text.splitlines() if " ERROR " in line or line.startswith("ERROR")]
    counts = dict(sorted(fuzzer.counts.items()))
    print(json.dumps({"seconds": round(time.monotonic() - started), "counts": counts,
                      "error_codes": dict(fuzzer.codes.most_common()),
                      "problems": len(fuzzer.problems), "server_still_answered": healthy,
                      "tracebacks_in_server_log": tracebacks, "error_lines_in_server_log": len(error_lines),
                      "server_exit_code": server.process.returncode if server.process else None}, indent=2))
    for problem in fuzzer.problems[:20]:
        print("problem:", problem)
    for line in error_lines[:20]:
        print("log:", line[:300])
    if args.keep:
        print(f"work directory: {workdir}")
    else:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 1 if fuzzer.problems or tracebacks or error_lines or not healthy else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
