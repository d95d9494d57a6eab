"""Micro-benchmark of SSE framing (`headwater.protocol.sse.SSEDecoder`): µs per event.

Compares a bare `bytes.find(b"\\n\\n")` splitting loop (the floor) with SSEDecoder fed the whole stream, 4 KiB and
64 B chunks (`feed`, which returns `Frame`s; and `feed_columns` in 4 KiB chunks, the names and data that
`EventDecoder` reads), on ~20k realistic `response.output_text.delta` events (LF and CRLF), then shows linear
scaling on one 2 MB event fed in 64 B vs 1 MB chunks. Run: `python bench/sse_framing_micro.py [--events N]`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from functools import partial

from headwater.protocol.sse import Frame, SSEDecoder


def make_stream(n_events: int, *, crlf: bool = False, seed: int = 7) -> bytes:
    """`n_events` output_text.delta events (JSON data ~200 bytes), framed as OpenAI sends them."""
    rng = random.Random(seed)
    words = ["the", "stream", "of", "tokens", "arrives", "quickly", "über", "naïve", "日本", "—", "ok", "\\n"]
    parts = []
    for seq in range(n_events):
        delta = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        payload = json.dumps(
            {
                "type": "response.output_text.delta",
                "sequence_number": seq,
                "item_id": "msg_0039ff4ed0aeca1e016ac948b4252887d2bae0ca8764f6a08e",
                "output_index": 0,
                "content_index": 0,
                "delta": delta,
                "logprobs": [],
                "obfuscation": "aZ3kQ9",
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        parts.append(b"event: response.output_text.delta\ndata: " + payload + b"\n\n")
    stream = b"".join(parts)
    return stream.replace(b"\n", b"\r\n") if crlf else stream


def bare_find_loop(stream: bytes) -> int:
    """The floor: split on blank lines and slice out the data, nothing else."""
    out: list[bytes] = []
    append = out.append
    find = stream.find
    pos = 0
    while True:
        end = find(b"\n\n", pos)
        if end < 0:
            break
        append(stream[pos:end])
        pos = end + 2
    return len(out)


def decode_chunks(stream: bytes, size: int) -> list[Frame]:
    decoder = SSEDecoder()
    frames: list[Frame] = []
    for i in range(0, len(stream), size):
        frames += decoder.feed(stream[i : i + size])
    frames += decoder.close()
    return frames


def columns_chunks(stream: bytes, size: int) -> list[Frame]:
    decoder = SSEDecoder()
    names: list[str | None] = []
    data: list[bytes] = []
    for i in range(0, len(stream), size):
        more_names, more_data = decoder.feed_columns(stream[i : i + size])
        names += more_names
        data += more_data
    frames = decoder.close()
    names += [frame.event for frame in frames]
    data += [frame.data for frame in frames]
    return [Frame(name, payload) for name, payload in zip(names, data, strict=True)]


def columns_only(stream: bytes, size: int) -> int:
    decoder = SSEDecoder()
    n = 0
    for i in range(0, len(stream), size):
        n += len(decoder.feed_columns(stream[i : i + size])[1])
    return n + len(decoder.close())


def best_times(cases: list[tuple[str, Callable[[], object]]], repeat: int) -> dict[str, float]:
    """Best wall time of each case over `repeat` rounds, the cases taking turns (fairer on a noisy machine)."""
    best = {name: float("inf") for name, _ in cases}
    for _ in range(repeat):
        for name, fn in cases:
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    n, repeat = args.events, args.repeat

    for label, crlf in (("LF", False), ("CRLF", True)):
        stream = make_stream(n, crlf=crlf)
        expected = decode_chunks(stream, len(stream))
        assert len(expected) == n, len(expected)
        print(f"{label} stream: {n} events, {len(stream) / 1e6:.2f} MB, {len(stream) / n:.0f} B/event")
        cases: list[tuple[str, Callable[[], object]]] = []
        if not crlf:
            cases.append(("bare bytes.find loop", partial(bare_find_loop, stream)))
        for name, size in (("whole stream", len(stream)), ("4 KiB chunks", 4096), ("64 B chunks", 64)):
            if decode_chunks(stream, size) != expected:
                raise SystemExit(f"mismatch: {label} {name}")
            cases.append((f"SSEDecoder, {name}", partial(decode_chunks, stream, size)))
        if columns_chunks(stream, 4096) != expected:
            raise SystemExit(f"mismatch: {label} feed_columns")
        cases.append(("feed_columns, 4 KiB chunks", partial(columns_only, stream, 4096)))
        for name, seconds in best_times(cases, repeat).items():
            print(f"  {name:<28} {seconds / n * 1e6:7.3f} µs/event")

    # Linearity: one 2 MB event, small chunks vs big chunks (a quadratic decoder would be ~1000x slower per byte).
    big = b"event: big\ndata: " + b"x" * (2 * 1024 * 1024) + b"\n\n"
    print(f"one {len(big) / 1e6:.1f} MB event:")
    big_cases: list[tuple[str, Callable[[], object]]] = [
        (name, partial(decode_chunks, big, size))
        for name, size in (("1 MB chunks", 1 << 20), ("64 B chunks", 64))
    ]
    for name, seconds in best_times(big_cases, 3).items():
        print(f"  {name:<28} {seconds * 1e9 / len(big):7.2f} ns/byte")


if __name__ == "__main__":
    main()
