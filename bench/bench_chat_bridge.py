"""The chat bridge: Chat Completions chunks in, Responses events out. Headwater against litellm, same bytes.

Part 1, throughput: the same Chat Completions SSE stream, one chunk per event as a server flushes them, is
served over loopback by a mock upstream in a child process (each bridge reads it through its own HTTP client:
aiohttp for Headwater, openai-python's httpx for litellm) to
  - headwater: ``ChatBackend.generate`` (SSE framing + chunk mapping) driven by the server's run driver
    (``headwater.server.runs.Run``: ``ResponseWriter`` + JSON + SSE encoding; no store), and to
  - litellm: ``litellm.aresponses(..., use_chat_completions_api=True)``, the chat-to-Responses bridge
    (openai SDK chunk parsing, ``CustomStreamWrapper``, ``LiteLLMCompletionStreamingIterator``), each event
    SSE-encoded as its proxy does (``model_dump_json(exclude_none=True)``).
Reported: downstream events/s and upstream chunks/s (best of N runs, GC off while timed), and the ratios.
Checked: both bridges give the same output text, the same function calls, and the same reasoning text
(a bridge that drops reasoning is reported, not failed).

Part 2, time to first event (loopback, three processes): a mock upstream serving a short stream at once, a
Headwater server (uvicorn) with a ChatBackend pointed at it, and the client. Reported: the client's time to the
upstream's first chunk when calling it directly, and through Headwater to ``response.created`` and to the first
``response.output_text.delta``; the added latency is the difference of medians.

Run: ``python bench/bench_chat_bridge.py [--quick] [--chunks 2000] [--repeats 5] [--requests 200] [--json]``
(litellm is the ``bench`` extra: ``pip install -e '.[bench]'``; ``--no-litellm`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of litellm's price list at import

import httpx

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.resources import Response
from headwater.protocol.sse import encode_frame
from headwater.protocol.stream import iter_events
from headwater.protocol.writer import ResponseWriter
from headwater.server.backends.base import ChatMessage, GenerationRequest
from headwater.server.backends.chat import ChatBackend
from headwater.server.runs import Run

MODEL = "gpt-4o-2024-08-06"
WEATHER = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "or",
    "an",
    "at",
    "which",
    "but",
    "not",
    "stream",
    "response",
    "token",
    "event",
    "delta",
    "model",
    "output",
    "function",
    "server",
    "client",
    "latency",
    "über",
    "café",
    "日本語",
    "—",
    "“quoted”",
    "42,",
]


# --- the upstream streams -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    name: str
    data: bytes
    chunks: int  # data: frames
    tools: bool = False


def _chunk(
    delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None
) -> bytes:
    """One chunk as OpenAI sends it (every metadata field), as an SSE event."""
    body = {
        "id": "chatcmpl-B9mWq2Lx0pZr7sT1uV3wY5",
        "object": "chat.completion.chunk",
        "created": 1733000000,
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_7f6be3efb0",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
    return b"data: " + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _end(finish: str, completion_tokens: int) -> list[bytes]:
    usage = {
        "prompt_tokens": 120,
        "completion_tokens": completion_tokens,
        "total_tokens": 120 + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    return [_chunk({}, finish), _chunk(None, usage=usage), b"data: [DONE]\n\n"]


def _word(i: int) -> str:
    return " " + _WORDS[(i * 7) % len(_WORDS)]


def text_stream(n: int) -> Stream:
    chunks = [_chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [_chunk({"content": _word(i)}) for i in range(n)]
    chunks += _end("stop", n)
    return Stream("text", b"".join(chunks), len(chunks) - 1)


def reasoning_stream(n: int) -> Stream:
    chunks = [_chunk({"role": "assistant", "content": None, "reasoning_content": ""})]
    chunks += [_chunk({"content": None, "reasoning_content": _word(i)}) for i in range(n // 2)]
    chunks += [_chunk({"content": _word(i), "reasoning_content": None}) for i in range(n - n // 2)]
    chunks += _end("stop", n)
    return Stream("reasoning", b"".join(chunks), len(chunks) - 1)


def tools_stream(n: int) -> Stream:
    """Two parallel calls; each call's id only on its first piece (as OpenAI sends them)."""
    chunks = [_chunk({"role": "assistant", "content": None, "refusal": None})]
    for call in range(2):
        chunks.append(
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": call,
                            "id": f"call_{call}xYz",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            )
        )
        pieces = ['{"location": "'] + [_word(i).strip() + "," for i in range(n // 2 - 2)] + ['"}']
        chunks += [_chunk({"tool_calls": [{"index": call, "function": {"arguments": p}}]}) for p in pieces]
    chunks += _end("tool_calls", n)
    return Stream("tools", b"".join(chunks), len(chunks) - 1, tools=True)


class _Upstream:
    """``_serve_upstream`` in a child process, serving ``data`` to every POST, for the time of a ``with``."""

    def __init__(self, data: bytes) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process = multiprocessing.get_context("spawn").Process(
            target=_serve_upstream, args=(self.port, data), daemon=True
        )

    async def __aenter__(self) -> _Upstream:
        self.process.start()
        await _wait_listening(self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(10)


@dataclass
class Outcome:
    events: int = 0
    text: str = ""
    reasoning: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)


# --- part 1: the two bridges ------------------------------------------------------------------------------------


def _request(stream: Stream) -> GenerationRequest:
    tools = [{"name": "get_weather", "description": "weather", "parameters": WEATHER}] if stream.tools else []
    return GenerationRequest(model=MODEL, messages=[ChatMessage("user", "hi")], tools=tools)


async def headwater_once(stream: Stream, backend: ChatBackend) -> tuple[float, list[bytes]]:
    request = _request(stream)
    start = time.perf_counter()
    run = Run(
        writer=ResponseWriter(Response(model=MODEL)),
        backend=backend,
        request=request,
        store=None,
        owner=None,
        background=False,
    )
    run.start()
    frames = [encode_frame(e.type, e.payload) async for batch in run.follow() for e in batch]
    await run.wait()
    return time.perf_counter() - start, frames


def headwater_outcome(frames: list[bytes]) -> Outcome:
    acc = Accumulator()
    events = list(iter_events(frames))
    for event in events:
        acc.feed(event)
    reasoning = "".join(
        p.text for i in acc.response.output if i.type == "reasoning" for p in (i.content or [])
    )
    return Outcome(
        len(events), acc.output_text, reasoning, [(c.name, c.arguments) for c in acc.function_calls]
    )


async def litellm_once(stream: Stream, client: Any, api_base: str) -> tuple[float, list[bytes], Any]:
    import litellm

    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}] if stream.tools else None
    start = time.perf_counter()
    events: Any = await litellm.aresponses(
        model=f"openai/{MODEL}",
        input="hi",
        stream=True,
        use_chat_completions_api=True,
        api_key="sk-bench",
        api_base=api_base,
        client=client,
        tools=tools,
    )
    frames: list[bytes] = []
    final = None
    async for event in events:
        kind = getattr(event.type, "value", event.type)
        frames.append(f"event: {kind}\ndata: {event.model_dump_json(exclude_none=True)}\n\n".encode())
        if kind == "response.completed":
            final = event.response
    return time.perf_counter() - start, frames, final


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def litellm_outcome(frames: list[bytes], final: Any) -> Outcome:
    text, reasoning, calls = "", "", []
    for item in getattr(final, "output", None) or []:
        kind = _field(item, "type")

        def get(name: str, item: Any = item) -> Any:
            return _field(item, name)

        if kind == "message":
            for part in get("content") or []:
                value = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
                text += value or ""
        elif kind == "reasoning":
            for part in (get("content") or []) + (get("summary") or []):
                value = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
                reasoning += value or ""
        elif kind == "function_call":
            calls.append((str(get("name")), str(get("arguments"))))
    return Outcome(len(frames), text, reasoning, calls)


async def _best(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    await run()  # warm-up
    best, last = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            result = await run()
        finally:
            gc.enable()
        best = min(best, result[0])
        last = result
    return best, last


async def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for stream in (text_stream(args.chunks), reasoning_stream(args.chunks), tools_stream(args.chunks)):
        async with _Upstream(stream.data) as upstream:
            backend = ChatBackend(upstream.url, "sk-bench")
            hw_s, (_, hw_frames) = await _best(functools.partial(headwater_once, stream, backend), args.repeats)
            hw = headwater_outcome(hw_frames)
            row: dict[str, Any] = {
                "stream": stream.name,
                "upstream_chunks": stream.chunks,
                "headwater": {
                    "events": hw.events,
                    "best_s": hw_s,
                    "events_per_s": hw.events / hw_s,
                    "chunks_per_s": stream.chunks / hw_s,
                },
            }
            if args.litellm:
                from openai import AsyncOpenAI

                client = AsyncOpenAI(api_key="sk-bench", base_url=upstream.url)
                ll_s, (_, ll_frames, final) = await _best(
                    functools.partial(litellm_once, stream, client, upstream.url), args.repeats
                )
                ll = litellm_outcome(ll_frames, final)
                row["litellm"] = {
                    "events": ll.events,
                    "best_s": ll_s,
                    "events_per_s": ll.events / ll_s,
                    "chunks_per_s": stream.chunks / ll_s,
                }
                row["ratio_events_per_s"] = row["headwater"]["events_per_s"] / row["litellm"]["events_per_s"]
                row["ratio_chunks_per_s"] = ll_s / hw_s
                row["same_text"] = hw.text == ll.text
                row["same_calls"] = hw.calls == ll.calls
                row["same_reasoning"] = hw.reasoning == ll.reasoning
                row["litellm_reasoning_chars"] = len(ll.reasoning)
                await client.close()
            row["headwater_reasoning_chars"] = len(hw.reasoning)
            await backend.aclose()
            rows.append(row)
    return rows


# --- part 2: time to first event over loopback ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_upstream(port: int, data: bytes) -> None:
    """A mock Chat Completions server: any POST gets ``data`` at once, one chunk per event (HTTP/1.1 keep-alive)."""
    events = [piece + b"\n\n" for piece in data.split(b"\n\n") if piece]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                for event in events:
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _serve_headwater(port: int, upstream: str) -> None:
    import logging

    import uvicorn

    from headwater.server.app import create_app
    from headwater.server.config import ServerConfig

    logging.disable(logging.WARNING)
    app = create_app(ServerConfig(store="memory", backend="chat"), backend=ChatBackend(upstream))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


async def _wait_listening(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


async def time_to_first(args: argparse.Namespace) -> dict[str, Any]:
    stream = text_stream(20)
    up_port, hw_port = _free_port(), _free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=_serve_upstream, args=(up_port, stream.data), daemon=True)]
    processes.append(ctx.Process(target=_serve_headwater, args=(hw_port, upstream_url), daemon=True))
    for process in processes:
        process.start()
    try:
        await _wait_listening(up_port)
        await _wait_listening(hw_port)
        chat_body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        hw_body = {"model": MODEL, "input": "hi", "stream": True, "store": False}
        direct_first, direct_text, hw_created, hw_text = [], [], [], []
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(args.requests + 10):
                start = time.perf_counter()
                first = text = None
                async with client.stream(
                    "POST", upstream_url + "/v1/chat/completions", json=chat_body
                ) as answer:
                    async for chunk in answer.aiter_bytes():
                        now = time.perf_counter()
                        first = first or now
                        if text is None and b'"content":" ' in chunk:
                            text = now
                if i >= 10:  # the first requests warm both servers up
                    direct_first.append((first or 0) - start)
                    direct_text.append((text or 0) - start)
                start = time.perf_counter()
                created = delta = None
                async with client.stream(
                    "POST", f"http://127.0.0.1:{hw_port}/v1/responses", json=hw_body
                ) as answer:
                    async for chunk in answer.aiter_bytes():
                        now = time.perf_counter()
                        if created is None and b"event: response.created" in chunk:
                            created = now
                        if delta is None and b"event: response.output_text.delta" in chunk:
                            delta = now
                if i >= 10:
                    hw_created.append((created or 0) - start)
                    hw_text.append((delta or 0) - start)
    finally:
        for process in processes:
            process.terminate()
            process.join(5)

    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "median_ms": statistics.median(ordered) * 1e3,
            "p90_ms": ordered[int(len(ordered) * 0.9)] * 1e3,
        }

    out = {
        "requests": args.requests,
        "direct_first_chunk": stats(direct_first),
        "direct_first_text": stats(direct_text),
        "headwater_created": stats(hw_created),
        "headwater_first_text_delta": stats(hw_text),
    }
    out["added_ms_first_event"] = (
        out["headwater_created"]["median_ms"] - out["direct_first_chunk"]["median_ms"]
    )
    out["added_ms_first_text"] = (
        out["headwater_first_text_delta"]["median_ms"] - out["direct_first_text"]["median_ms"]
    )
    return out


# --- report -----------------------------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], ttfe: dict[str, Any] | None, args: argparse.Namespace) -> None:
    print(
        f"chat bridge: {args.chunks} upstream chunks per stream, best of {args.repeats}; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'stream':<10} {'bridge':<10} {'events':>7} {'best ms':>9} {'events/s':>10} {'chunks/s':>10}")
    for row in rows:
        for name in ("headwater", "litellm"):
            if name in row:
                r = row[name]
                print(
                    f"{row['stream']:<10} {name:<10} {r['events']:>7} {r['best_s'] * 1e3:>9.1f} "
                    f"{r['events_per_s']:>10,.0f} {r['chunks_per_s']:>10,.0f}"
                )
        if "litellm" in row:
            print(
                f"{'':<10} ratio: events/s {row['ratio_events_per_s']:.1f}x, chunks/s {row['ratio_chunks_per_s']:.1f}x; "
                f"same text {row['same_text']}, same calls {row['same_calls']}, same reasoning "
                f"{row['same_reasoning']} (reasoning chars: headwater {row['headwater_reasoning_chars']}, "
                f"litellm {row['litellm_reasoning_chars']})"
            )
    if ttfe is not None:
        print(f"\ntime to first event over loopback ({ttfe['requests']} requests, median / p90 ms):")
        for key in (
            "direct_first_chunk",
            "direct_first_text",
            "headwater_created",
            "headwater_first_text_delta",
        ):
            print(f"  {key:<28} {ttfe[key]['median_ms']:7.2f} / {ttfe[key]['p90_ms']:7.2f}")
        print(
            f"  added by headwater: first event {ttfe['added_ms_first_event']:+.2f} ms, "
            f"first text {ttfe['added_ms_first_text']:+.2f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 chunks, best of 3, 50 requests")
    parser.add_argument("--chunks", type=int, default=2000, help="upstream chunks per stream")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="requests for the time-to-first-event part")
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    parser.add_argument("--no-ttfe", dest="ttfe", action="store_false")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.chunks, args.repeats, args.requests = 500, 3, 50
    if args.litellm:
        try:
            import litellm  # noqa: F401
        except ImportError:
            print("litellm is not installed (pip install -e '.[bench]'); running without it", file=sys.stderr)
            args.litellm = False
    rows = asyncio.run(throughput(args))
    ttfe = asyncio.run(time_to_first(args)) if args.ttfe else None
    if args.json:
        print(json.dumps({"throughput": rows, "time_to_first_event": ttfe}, indent=2))
    else:
        report(rows, ttfe, args)
    bad = [r["stream"] for r in rows if "litellm" in r and not (r["same_text"] and r["same_calls"])]
    if bad:
        print(f"MISMATCH between the bridges on: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
