"""First-token time of a conversation's follow-up turn on the embedded model, through a real server: with the
conversation's prefix reused (the default: the slot's own KV cache, or the prompt cache the slots share) and
without (`prompt_cache_bytes=0` and the slot ran another conversation in between, so the whole prompt is
evaluated again). Prints seconds to the first text delta and the response's cached_tokens.
Run: `python bench/bench_local_prefix.py [--words 700] [--repeats 3]`
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from headwater.protocol.stream import iter_events
from headwater.server.app import create_app
from headwater.server.config import ServerConfig
from headwater.server.testing import LiveServer

TEXT = "Flour, water, salt and yeast make a dough that rises overnight in a warm kitchen. "


def post(url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Seconds to the first text delta, and the final response."""
    start = time.perf_counter()
    first = 0.0
    final: dict[str, Any] = {}
    with httpx.stream("POST", url + "/v1/responses", json={**body, "stream": True}, timeout=600) as response:
        for event in iter_events(response.iter_bytes()):
            if event.type == "response.output_text.delta" and not first:
                first = time.perf_counter() - start
            if event.type in ("response.completed", "response.incomplete"):
                final = msgspec.to_builtins(event.response)
    return first, final


def follow_up(url: str, words: int, *, interleave: bool) -> tuple[float, int, int]:
    notes = "Here are my notes on bread. " + TEXT * max(words // 14, 1)
    first_turn = {"model": "local", "input": notes, "max_output_tokens": 16, "temperature": 0}
    _, previous = post(url, first_turn)
    if interleave:  # another conversation takes the slot (and, with one slot, overwrites its KV cache)
        post(url, {"model": "local", "input": "Tell me about the sea. " * 40, "max_output_tokens": 16})
    seconds, final = post(url, {"model": "local", "input": "And what else?", "previous_response_id": previous["id"],
                                "max_output_tokens": 16, "temperature": 0})
    usage = final["usage"]
    return seconds, usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=700)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = [
        ("no reuse (prompt cache off, slot reused in between)", {"prompt_cache_bytes": 0, "slots": 1}, True),
        ("reuse from the shared prompt cache (slot reused in between)", {"slots": 1}, True),
        ("reuse from the slot's own KV cache (next turn at once)", {"slots": 1}, False),
    ]
    for label, options, interleave in cases:
        with tempfile.TemporaryDirectory() as data_dir:
            config = ServerConfig(backend="local", backend_options=options, data_dir=Path(data_dir))
            with LiveServer(create_app(config)) as live:
                runs = [follow_up(live.url, args.words, interleave=interleave) for _ in range(args.repeats)]
        seconds = [r[0] for r in runs]
        print(f"{label}: first token {statistics.median(seconds):.2f}s (median of {len(runs)}; "
              f"min {min(seconds):.2f}s), input_tokens {runs[-1][1]}, cached_tokens {runs[-1][2]}")


if __name__ == "__main__":
    main()
