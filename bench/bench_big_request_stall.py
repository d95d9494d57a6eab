"""How long one big request stalls everyone else: 30 live streams and a /healthz probe run against a
`headwater serve` process (scripted backend, memory store) while a ~7.6 MB body with 200,000 input items
arrives; prints the worst /healthz latency and the worst gap between writes in any stream.

    .venv/bin/python bench/bench_big_request_stall.py

Bounded: about 15 s. The clients run in this process, the server in its own (as in production).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from headwater.server.testing import ServeProcess

STREAMS = 30
ITEMS = 200_000


def main() -> None:
    script = Path(tempfile.mkdtemp()) / "script.json"
    script.write_text(json.dumps([{"text": f"w{i} "} for i in range(3000)] + [{"finish": "stop"}]))
    gaps: list[float] = []
    health: list[float] = []
    stop = threading.Event()
    with ServeProcess("--backend", "scripted", "--backend-option", f"script={script}",
                      "--backend-option", "delay=0.01", "--store", "memory") as server:

        def stream() -> None:
            last, worst = None, 0.0
            with httpx.Client(base_url=server.url, timeout=60) as client, client.stream(
                    "POST", "/v1/responses", json={"input": "hi", "stream": True, "store": False}) as response:
                for _ in response.iter_raw():
                    now = time.monotonic()
                    if last is not None:
                        worst = max(worst, now - last)
                    last = now
                    if stop.is_set():
                        break
            gaps.append(worst)

        def probe() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    start = time.monotonic()
                    client.get("/healthz")
                    health.append(time.monotonic() - start)
                    time.sleep(0.02)

        threads = [threading.Thread(target=stream) for _ in range(STREAMS)] + [threading.Thread(target=probe)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        body = json.dumps({"input": [{"role": "user", "content": "x" * 5} for _ in range(ITEMS)],
                           "store": False, "stream": True}).encode()
        start = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=120) as client, client.stream(
                "POST", "/v1/responses", content=body, headers={"content-type": "application/json"}) as big:
            status = big.status_code  # the headers: parsed, validated, conversation built
        took = time.monotonic() - start
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join()
    print(f"body {len(body) / 1e6:.1f} MB, {ITEMS} items: headers ({status}) after {took:.2f}s; /healthz worst "
          f"{max(health):.3f}s (median {statistics.median(health):.3f}s); worst gap in {STREAMS} live streams "
          f"{max(gaps):.3f}s")


if __name__ == "__main__":
    main()
