"""Tokens/s of `LocalBackend.generate` (async: worker thread, queue, one TextDelta per token) against llama-cpp-python
called directly on the same model object with the same prompt tokens, sampling (greedy) and max tokens, in one
process; with `--server URL`, also through a running server (POST /v1/responses, stream=true, SSE over HTTP).
Run: `python bench/bench_local_tokens.py [--tokens 128] [--repeats 3] [--threads N] [--server http://127.0.0.1:8000]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from headwater.server.backends.base import ChatMessage, GenerationRequest, TextDelta, UsageStep
from headwater.server.backends.local import MIN_P, TOP_K, LocalBackend

PROMPT = "Write a long story about a dragon who learns to bake bread."


@dataclass
class Run:
    tokens: int
    first: float  # seconds from the call to the first text
    total: float  # seconds from the call to the last token
    text: str = ""

    @property
    def tok_s(self) -> float:
        return self.tokens / self.total if self.total else 0.0

    @property
    def decode_tok_s(self) -> float:
        """After the first token: the rate of generation proper, prompt evaluation left out."""
        return (
            (self.tokens - 1) / (self.total - self.first)
            if self.tokens > 1 and self.total > self.first
            else 0.0
        )


def direct_generate(backend: LocalBackend, request: GenerationRequest) -> Run:
    """The floor: llama-cpp-python's token generator, detokenized token by token, no thread and no queue."""
    from llama_cpp import llama_vocab_is_eog

    llama = backend.llama
    prompt = llama.tokenize(backend.render_prompt(request).encode(), add_bos=False, special=True)
    limit = request.max_output_tokens or 128
    start = time.perf_counter()
    first, pieces = 0.0, []
    for token in llama.generate(prompt, top_k=TOP_K, top_p=1.0, min_p=MIN_P, temp=0.0, repeat_penalty=1.0):
        if llama_vocab_is_eog(llama._model.vocab, token):
            break
        pieces.append(llama.detokenize([token]))
        if len(pieces) == 1:
            first = time.perf_counter() - start
        if len(pieces) >= limit:
            break
    return Run(len(pieces), first, time.perf_counter() - start, b"".join(pieces).decode("utf-8", "replace"))


def direct_completion(backend: LocalBackend, request: GenerationRequest) -> Run:
    """llama-cpp-python's public streaming API (`create_completion(stream=True)`), one chunk per token."""
    llama = backend.llama
    prompt = llama.tokenize(backend.render_prompt(request).encode(), add_bos=False, special=True)
    start = time.perf_counter()
    first, chunks, text = 0.0, 0, []
    stream = llama.create_completion(
        prompt,
        max_tokens=request.max_output_tokens,
        temperature=0.0,
        top_p=1.0,
        top_k=TOP_K,
        min_p=MIN_P,
        repeat_penalty=1.0,
        stream=True,
    )
    for chunk in stream:
        piece = chunk["choices"][0]["text"]  # type: ignore[index]
        if piece:
            chunks += 1
            text.append(piece)
            if chunks == 1:
                first = time.perf_counter() - start
    return Run(chunks, first, time.perf_counter() - start, "".join(text))


def through_backend(backend: LocalBackend, request: GenerationRequest) -> Run:
    async def run() -> Run:
        start = time.perf_counter()
        first, text, tokens = 0.0, [], 0
        async for step in backend.generate(request):
            if isinstance(step, TextDelta):
                if not text:
                    first = time.perf_counter() - start
                text.append(step.text)
            elif isinstance(step, UsageStep):
                tokens = step.output_tokens
        return Run(tokens, first, time.perf_counter() - start, "".join(text))

    return asyncio.run(run())


def through_server(url: str, model: str, max_tokens: int) -> Run:
    """POST /v1/responses with stream=true; counts output_text.delta events, takes usage.output_tokens."""
    import httpx

    body = {
        "model": model,
        "input": PROMPT,
        "stream": True,
        "max_output_tokens": max_tokens,
        "temperature": 0,
    }
    start = time.perf_counter()
    first, deltas, tokens, text = 0.0, 0, 0, []
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", url.rstrip("/") + "/v1/responses", json=body) as response,
    ):
        response.raise_for_status()
        for event in _sse_events(response.iter_lines()):
            kind = event.get("type")
            if kind == "response.output_text.delta":
                deltas += 1
                text.append(event.get("delta", ""))
                if deltas == 1:
                    first = time.perf_counter() - start
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                usage = (event.get("response") or {}).get("usage") or {}
                tokens = usage.get("output_tokens", deltas)
    return Run(tokens or deltas, first, time.perf_counter() - start, "".join(text))


def _sse_events(lines: Iterator[str]) -> Iterator[dict]:
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            payload, data = "\n".join(data), []
            if payload != "[DONE]":
                yield json.loads(payload)
    if data and data != ["[DONE]"]:
        yield json.loads("\n".join(data))


def report(name: str, runs: list[Run]) -> float:
    tok_s = statistics.median(r.tok_s for r in runs)
    print(
        f"{name:<34} {runs[0].tokens:>6} {statistics.median(r.first for r in runs) * 1000:>9.1f}"
        f" {tok_s:>10.1f} {statistics.median(r.decode_tok_s for r in runs):>12.1f}"
    )
    return tok_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=128, help="max output tokens per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: CPUs but one)")
    parser.add_argument(
        "--server", default=None, help="base URL of a running Headwater server to measure too"
    )
    parser.add_argument("--model", default="local", help="model name sent to the server")
    args = parser.parse_args()

    backend = LocalBackend(n_threads=args.threads)
    backend.load()
    request = GenerationRequest(
        model="local",
        messages=[ChatMessage("user", PROMPT)],
        temperature=0,
        top_p=1.0,
        max_output_tokens=args.tokens,
    )
    paths: dict[str, Callable[[], Run]] = {
        "llama.generate loop (direct)": lambda: direct_generate(backend, request),
        "create_completion stream (direct)": lambda: direct_completion(backend, request),
        "LocalBackend.generate (async)": lambda: through_backend(backend, request),
    }
    if args.server:
        paths["server: POST /v1/responses SSE"] = lambda: through_server(args.server, args.model, args.tokens)
    for run in paths.values():  # warm-up: page the weights in, fill the prompt cache
        run()
    results: dict[str, list[Run]] = {name: [] for name in paths}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every path alike
        for name, run in paths.items():
            results[name].append(run())

    print(
        f"{backend.describe()}\nprompt: {PROMPT!r}, greedy, max {args.tokens} tokens, median of {args.repeats}"
    )
    print(f"{'path':<34} {'tokens':>6} {'ttft ms':>9} {'tok/s':>10} {'decode tok/s':>12}")
    rates = {name: report(name, runs) for name, runs in results.items()}
    base = rates["llama.generate loop (direct)"]
    for name, rate in rates.items():
        print(f"ratio {name} / direct generate: {rate / base:.3f}")
    texts = {runs[0].text for name, runs in results.items() if not name.startswith("server")}
    print("same text on every in-process path:", len(texts) == 1)
    if args.server:
        print("server text matches:", results["server: POST /v1/responses SSE"][0].text in texts)
    asyncio.run(backend.aclose())


if __name__ == "__main__":
    main()
