"""Benchmark of Headwater's protocol core against the Python peers: SSE bytes -> typed events (-> accumulated response).

Run (from the repository root, in the project's venv with the dev peers installed: openai, openresponses-py):

    python bench/bench_protocol.py            # full run: 20k-delta text stream, best of >= 7 (about 3 minutes)
    python bench/bench_protocol.py --quick    # smoke run: 2k deltas, best of 3
    python bench/bench_protocol.py --json     # the same, as one JSON document on stdout

Everything runs in one process, on the same byte streams, with no network and no HTTP server. Streams:

* ``text``: a generated assistant message, ``response.created`` / ``in_progress`` / ``output_item.added`` /
  ``content_part.added``, N ``response.output_text.delta`` (1-6 words, ``logprobs: []``, ``obfuscation``), the
  three ``.done`` events and ``response.completed`` with the full snapshot (shaped like a real gpt-5.2 capture);
* ``function call``: a generated function call whose JSON arguments stream as N/4 argument deltas;
* three real captures from ``tests/fixtures/captures/openai`` (exact upstream bytes, one response each), each
  framed as SSE (``event: <type>\\ndata: <line>\\n\\n``) and run as its own stream.

Peers (all but "whole buffer" and the limit proxy are fed the bytes in 1 KiB chunks, as a socket read loop would,
and as issue 14 measures; ``--chunk`` changes it):

* ``headwater decode``: ``headwater.protocol.stream.iter_events`` (SSE framing + typed msgspec events);
* ``headwater decode+accumulate``: the same, each event fed to ``headwater.protocol.accumulate.Accumulator``,
  ``.response`` read once at the end;
* ``openai decode``: the real ``openai.Stream[ResponseStreamEvent]`` (its ``SSEDecoder`` + ``construct_type`` via
  ``client._process_response_data``) over an in-memory ``httpx2.Response`` (the HTTP library this openai
  version uses), built with the ``cast_to``, client and ``FinalRequestOptions`` that ``client.responses.create(
  stream=True)`` uses, taken from one real call through a mock transport; a one-time check asserts that this
  yields exactly the events the full client call yields;
* ``openai decode+accumulate``: what ``client.responses.stream()`` does: ``ResponseStreamManager`` /
  ``ResponseStream`` (``ResponseStreamState.handle_event`` per event) over that ``Stream``, then
  ``get_final_response()``;
* ``openresponses (openai mode)``: openresponses-py's ``openresponses.streaming.ResponseStream`` (its
  ``SSEParser`` + pydantic validation + stream-state checks) with ``response_compatibility="openai"`` (the
  setting for api.openai.com), over an in-memory ``httpx.Response``;
* ``openresponses (strict)``: the same in its default strict mode (full Open Responses typing). Strict mode
  refuses a stream without the ``data: [DONE]`` terminator, which OpenAI does not send, so its copy of the
  bytes gets one appended (no event is added); n/a where strict validation rejects the payloads;
* ``limit proxy``: ``bytes.find(b"\\n\\n")`` framing of the whole buffer, slicing out the ``data:`` payload and
  one prebuilt ``msgspec.json.Decoder(KnownEvent)`` typed decode: no SSE rules, no fallbacks, nothing kept.

Each peer is run once untimed (warm-up, and the event count is checked against the stream's), then timed with
``time.perf_counter``, its best run over ``--repeats`` turns (more, up to 25, while the timed runs add up to less
than ``--min-time`` seconds), the peers of a stream taking turns (a turn: one run, or back-to-back runs for
10 ms), with the garbage collector disabled across them (run once before the first, not before each: see
``measure``); every stream so, in ``--passes`` passes over all the streams (default 2), each peer's best
across the passes (see ``run_all``). Correctness (stream
``text``; likewise the arguments on ``function call``): Headwater's accumulated output text, read right after the
last delta (so it is built from the deltas) and at the end, must equal openai-python's (last delta snapshot,
``get_final_response().output_text``) and the text the generator produced; the exit status is 1 otherwise.
Goals: Headwater decode >= 30x openai decode, decode+accumulate >= 50x; decode >= 0.8x the limit proxy and
decode+accumulate >= 0.6x the limit proxy (issue 14).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec

import _streams
import headwater.protocol
from headwater.protocol.events import KnownEvent
from headwater.protocol.resources import FunctionCall, Message, OutputText
from headwater.protocol.stream import iter_events

SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8"}
URL = "http://bench.invalid/v1/responses"

MAX_RUNS = 25  # turns (see measure)
TURN_S = 0.01  # a turn of a peer: runs back to back until it has lasted this long (one run at least)
GOALS = {"decode_vs_openai": 30.0, "accumulate_vs_openai": 50.0, "decode_vs_limit": 0.8, "accumulate_vs_limit": 0.6}


# --- peers ----------------------------------------------------------------------------------------------------


@dataclass
class Peer:
    key: str
    label: str
    # make(stream, chunk_size) -> a zero-argument callable that processes the whole stream once and returns the
    # number of events it produced; all preparation (chunking, clients) happens in make, outside the timing.
    make: Callable[[_streams.Stream, int], Callable[[], int]]


def _headwater_whole(stream: _streams.Stream, chunk: int) -> Callable[[], int]:
    chunks = [stream.data]

    def run() -> int:
        n = 0
        for _ in iter_events(chunks):
            n += 1
        return n

    return run


def _headwater_chunks(stream: _streams.Stream, chunk: int) -> Callable[[], int]:
    chunks = _streams.chunked(stream.data, chunk)

    def run() -> int:
        n = 0
        for _ in iter_events(chunks):
            n += 1
        return n

    return run


def _headwater_accumulate(stream: _streams.Stream, chunk: int) -> Callable[[], int]:
    from headwater.protocol.accumulate import Accumulator

    chunks = _streams.chunked(stream.data, chunk)

    def run() -> int:
        n = 0
        acc = Accumulator()
        feed = acc.feed
        for event in iter_events(chunks):
            feed(event)
            n += 1
        acc.response  # noqa: B018 - read once, as a caller would
        return n

    return run


class _OpenAI:
    """openai-python's own objects, as ``client.responses.create(stream=True)`` sets them up."""

    def __init__(self) -> None:
        import httpx2
        import openai

        self.httpx2 = httpx2
        self.body: list[bytes] = []
        self.client = openai.OpenAI(
            api_key="bench",
            base_url=URL.rsplit("/", 1)[0],
            max_retries=0,
            http_client=httpx2.Client(transport=httpx2.MockTransport(self._handler)),
        )
        self.body = [b""]
        probe = self.client.responses.create(model="gpt-5.2", input="hi", stream=True)
        list(probe)
        self.stream_cls = type(probe)
        self.cast_to = probe._cast_to
        self.options = probe._options
        self.request = probe.response.request

    def _handler(self, request: Any) -> Any:
        return self.httpx2.Response(200, headers=SSE_HEADERS, content=iter(self.body), request=request)

    def stream(self, chunks: list[bytes]) -> Any:
        """A ``Stream[ResponseStreamEvent]`` over an in-memory response, as ``APIResponse._parse`` builds it."""
        response = self.httpx2.Response(200, headers=SSE_HEADERS, content=iter(chunks), request=self.request)
        return self.stream_cls(
            cast_to=self.cast_to, response=response, client=self.client, options=self.options
        )

    def full_client_events(self, chunks: list[bytes]) -> list[Any]:
        """The events of a real ``client.responses.create(stream=True)`` call (mock transport serving chunks)."""
        self.body = chunks
        try:
            return list(self.client.responses.create(model="gpt-5.2", input="hi", stream=True))
        finally:
            self.body = [b""]


_openai: _OpenAI | None = None


def openai_env() -> _OpenAI:
    global _openai
    if _openai is None:
        _openai = _OpenAI()
    return _openai


def _openai_decode(stream: _streams.Stream, chunk: int) -> Callable[[], int]:
    env = openai_env()
    chunks = _streams.chunked(stream.data, chunk)

    def run() -> int:
        n = 0
        for _ in env.stream(chunks):
            n += 1
        return n

    return run


def _openai_accumulate(stream: _streams.Stream, chunk: int) -> Callable[[], int]:
    from openai import omit
    from openai.lib.streaming.responses._responses import ResponseStreamManager

    env = openai_env()
    chunks = _streams.chunked(stream.data, chunk)

    def run() -> int:
        n = 0
        manager = ResponseStreamManager(
            lambda: env.stream(chunks), text_format=omit, input_tools=omit, starting_after=None
        )
        with manager as responses_stream:
            for _ in responses_stream:
                n += 1
            responses_stream.get_final_response()
        return n

    return run


def _openresponses(mode: str, terminator: bytes) -> Callable[[_streams.Stream, int], Callable[[], int]]:
    def make(stream: _streams.Stream, chunk: int) -> Callable[[], int]:
        import httpx
        from openresponses.streaming import ResponseStream

        chunks = _streams.chunked(stream.data + terminator, chunk)
        request = httpx.Request("POST", URL)

        @contextlib.contextmanager
        def http_stream() -> Iterator[httpx.Response]:
            # What ``httpx.Client.stream("POST", ...)`` hands ResponseStream, minus the network.
            response = httpx.Response(200, headers=SSE_HEADERS, content=iter(chunks), request=request)
            try:
                yield response
            finally:
                response.close()

        def run() -> int:
            n = 0
            with ResponseStream(http_stream(), mode) as events:
                for _ in events:
                    n += 1
            return n

        return run

    return make


_limit_decoder = msgspec.json.Decoder(KnownEvent)


def _limit_proxy(stream: _streams.Stream, chunk: int) -> Callable[[], int]:
    data = stream.data
    decode = _limit_decoder.decode

    def run() -> int:
        find = data.find
        n = 0
        pos = 0
        while True:
            end = find(b"\n\n", pos)
            if end < 0:
                return n
            start = find(b"data: ", pos, end) + 6
            decode(data[start:end])
            n += 1
            pos = end + 2

    return run


PEERS = [
    Peer("hw_decode_whole", "headwater decode (whole buffer)", _headwater_whole),
    Peer("hw_decode", "headwater decode", _headwater_chunks),
    Peer("hw_accumulate", "headwater decode+accumulate", _headwater_accumulate),
    Peer("openai_decode", "openai decode (Stream)", _openai_decode),
    Peer("openai_accumulate", "openai decode+accumulate (responses.stream)", _openai_accumulate),
    Peer("openresponses_openai", "openresponses (openai mode)", _openresponses("openai", b"")),
    Peer(
        "openresponses_strict",
        "openresponses (strict, +[DONE])",
        _openresponses("strict", b"data: [DONE]\n\n"),
    ),
    Peer("limit", "limit proxy (find + msgspec, whole buffer)", _limit_proxy),
]


# --- timing ---------------------------------------------------------------------------------------------------


@dataclass
class Result:
    events: int = 0
    best_s: float = 0.0
    error: str | None = None
    runs: int = 0

    @property
    def us_per_event(self) -> float:
        return self.best_s / self.events * 1e6

    @property
    def events_per_s(self) -> float:
        return self.events / self.best_s


def _error(exc: Exception) -> Result:
    return Result(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")


def measure(
    runs: dict[str, Callable[[], int]],
    expected: int,
    repeats: int,
    min_time: float,
    collect_each: bool = False,
) -> dict[str, Result]:
    """Each peer's best timed run, over ``repeats`` turns, more (up to MAX_RUNS) while its timed total is under
    ``min_time`` seconds: a fast peer gets more tries, which keeps its best-of stable on a shared machine.

    The peers take turns, one turn each a round (each while it still needs turns): a busy moment of the
    machine slows a turn of every peer, not all the runs of one, so the ratios hold through it. A turn is one
    run, or back-to-back runs until it has lasted TURN_S: after another peer's turn the caches hold that
    peer's work, and a short run (mcp's are ~0.5 ms) would measure their refill; the turn's later runs do not.

    The garbage collector is off from before the first timed run to after the last: it is run once before
    them, not before each. No peer leaves cyclic garbage behind a run (``gc.collect()`` after one finds none,
    on every stream), so nothing builds up; but a full collection walks the whole heap (the peers' imports
    make it ~100 MB), which empties the CPU caches, and a short run (mcp's are ~0.5 ms) then measures their
    refill more than the peer: bench/README.md, "Proto lane, session 21", has the figures. ``collect_each``
    (``--collect-each-run``): the way it was measured before, a collection before each timed run."""
    results: dict[str, Result] = {}
    pending: dict[str, Callable[[], int]] = {}
    for key, run in runs.items():
        try:
            n = run()  # warm-up (imports, caches) and the sanity count
        except Exception as exc:  # a peer that cannot take this stream is reported, not fatal
            results[key] = _error(exc)
            continue
        if n != expected:
            results[key] = Result(n, 0.0, f"decoded {n} events, expected {expected}")
        else:
            results[key] = Result(n, float("inf"), None, 0)
            pending[key] = run
    totals = dict.fromkeys(pending, 0.0)
    turns = dict.fromkeys(pending, 0)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        while pending:
            for key, run in list(pending.items()):
                result = results[key]
                turn = 0.0
                try:
                    while turn < TURN_S:
                        if collect_each:
                            gc.collect()
                        t0 = time.perf_counter()
                        run()
                        elapsed = time.perf_counter() - t0
                        result.runs += 1
                        result.best_s = min(result.best_s, elapsed)
                        turn += elapsed
                except Exception as exc:
                    results[key] = _error(exc)
                    del pending[key]
                    continue
                totals[key] += turn
                turns[key] += 1
                if turns[key] >= repeats and (totals[key] >= min_time or turns[key] >= MAX_RUNS):
                    del pending[key]
    finally:
        if gc_was_enabled:
            gc.enable()
        else:
            gc.disable()
    return results


# --- correctness ----------------------------------------------------------------------------------------------


def _headwater_text(response: Any) -> str:
    return "".join(
        part.text
        for item in response.output
        if isinstance(item, Message)
        for part in item.content
        if isinstance(part, OutputText)
    )


def _headwater_arguments(response: Any) -> str:
    return "".join(item.arguments for item in response.output if isinstance(item, FunctionCall))


_DELTA_TYPES = {"response.output_text.delta", "response.function_call_arguments.delta"}


def check_accumulation(stream: _streams.Stream, chunk: int, what: str) -> dict[str, Any]:
    """Accumulated text (or function arguments) after the last delta and at the end: Headwater vs openai."""
    from openai import omit
    from openai.lib.streaming.responses._responses import ResponseStreamManager

    from headwater.protocol.accumulate import Accumulator

    chunks = _streams.chunked(stream.data, chunk)
    extract = _headwater_text if what == "text" else _headwater_arguments
    acc = Accumulator()
    events = list(iter_events(chunks))
    last_delta = max(i for i, e in enumerate(events) if e.type in _DELTA_TYPES)
    for event in events[: last_delta + 1]:
        acc.feed(event)
    hw_mid = extract(acc.response)
    for event in events[last_delta + 1 :]:
        acc.feed(event)
    hw_final = extract(acc.response)

    env = openai_env()
    oai_mid = None
    manager = ResponseStreamManager(
        lambda: env.stream(chunks), text_format=omit, input_tools=omit, starting_after=None
    )
    with manager as responses_stream:
        for event in responses_stream:
            if event.type in _DELTA_TYPES:
                oai_mid = event.snapshot
        final = responses_stream.get_final_response()
    if what == "text":
        oai_final = final.output_text
    else:
        oai_final = "".join(item.arguments for item in final.output if item.type == "function_call")
    expected = stream.text if stream.text is not None else oai_final
    ok = hw_mid == oai_mid == expected and hw_final == oai_final == expected
    return {
        "what": what,
        "ok": ok,
        "chars": len(expected),
        "headwater_after_deltas": hw_mid == expected,
        "headwater_final": hw_final == expected,
        "openai_after_deltas": oai_mid == expected,
        "openai_final": oai_final == expected,
    }


def check_openai_faithful(stream: _streams.Stream, chunk: int) -> bool:
    """The in-memory ``Stream`` yields exactly what the full ``client.responses.create(stream=True)`` yields."""
    env = openai_env()
    chunks = _streams.chunked(stream.data, chunk)
    return list(env.stream(chunks)) == env.full_client_events(chunks)


# --- driver ---------------------------------------------------------------------------------------------------


@dataclass
class StreamReport:
    name: str
    short: str
    bytes: int
    events: int
    results: dict[str, Result] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)

    def ratio(self, fast: str, slow: str) -> float | None:
        a, b = self.results.get(fast), self.results.get(slow)
        if a is None or b is None or a.error or b.error:
            return None
        return b.us_per_event / a.us_per_event

    def ratios(self) -> dict[str, float | None]:
        return {
            "decode_vs_openai": self.ratio("hw_decode", "openai_decode"),
            "accumulate_vs_openai": self.ratio("hw_accumulate", "openai_accumulate"),
            "decode_vs_limit": self.ratio("hw_decode", "limit"),
            "accumulate_vs_limit": self.ratio("hw_accumulate", "limit"),
            "decode_whole_vs_limit": self.ratio("hw_decode_whole", "limit"),
            "decode_vs_openresponses_openai": self.ratio("hw_decode", "openresponses_openai"),
            "decode_vs_openresponses_strict": self.ratio("hw_decode", "openresponses_strict"),
        }


def build_streams(n: int) -> list[_streams.Stream]:
    return [
        _streams.text_stream(n),
        _streams.function_call_stream(max(1, n // 4)),
        *(_streams.capture_stream(name) for name in _streams.CAPTURES),
    ]


def run_all(args: argparse.Namespace, log: Callable[[str], None]) -> list[StreamReport]:
    """Every stream measured in ``args.passes`` passes over all the streams, each peer's best across them.

    One pass measures a stream in well under a second; a busy spell of this shared machine that long slows
    every turn of every peer of that stream alike, but not alike enough: the ratios of such a stream swing
    (session 21's end read mcp's decode 0.72x the limit proxy in one run of three, 1.02-1.11x in the others). A
    later pass measures it again a whole pass later, so one spell no longer decides a stream's figures."""
    streams = build_streams(args.events)
    reports = [StreamReport(s.name, s.short, len(s.data), s.events) for s in streams]
    made: list[dict[str, Callable[[], int]]] = []
    for stream, report in zip(streams, reports, strict=True):
        runs: dict[str, Callable[[], int]] = {}
        for peer in PEERS:
            try:
                runs[peer.key] = peer.make(stream, args.chunk)
            except Exception as exc:  # a peer that cannot take this stream is reported, not fatal
                report.results[peer.key] = _error(exc)
        made.append(runs)
    for n in range(args.passes):
        for stream, report, runs in zip(streams, reports, made, strict=True):
            log(f"{stream.name}: {len(stream.data):,} bytes, {stream.events:,} events, pass {n + 1}/{args.passes}")
            measured = measure(runs, stream.events, args.repeats, args.min_time, args.collect_each_run)
            for key, result in measured.items():
                if result.error is not None:
                    runs.pop(key, None)  # failed in this pass: reported, not measured again
                    report.results[key] = result
                    continue
                kept = report.results.get(key)  # the best of the earlier passes
                if kept is not None and kept.best_s <= result.best_s:
                    kept.runs += result.runs
                    continue
                if kept is not None:
                    result.runs += kept.runs
                report.results[key] = result
            for peer in PEERS:
                result = report.results[peer.key]
                log(f"  {peer.label}: " + (result.error or f"{result.us_per_event:.2f} us/event"))
    for stream, report in zip(streams, reports, strict=True):
        report.results = {peer.key: report.results[peer.key] for peer in PEERS}
        what = {"text": "text", "fcall": "arguments"}.get(stream.short)
        if what is not None:
            try:
                report.checks["accumulation"] = check_accumulation(stream, args.chunk, what)
            except Exception as exc:
                report.checks["accumulation"] = {"what": what, "ok": False, "chars": 0, "error": repr(exc)}
        report.checks["openai_stream_matches_full_client"] = check_openai_faithful(stream, args.chunk)
    return reports


def _fmt_ratio(value: float | None, goal: float | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.2f}x" if value < 10 else f"{value:.1f}x"
    if goal is not None:
        text += f" (goal >= {goal:g}x: {'met' if value >= goal else 'NOT met'})"
    return text


def print_table(reports: list[StreamReport], args: argparse.Namespace, env: dict[str, Any]) -> None:
    width = max(len(p.label) for p in PEERS) + 2
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    print(
        f"{env['date']}  python {env['python']}, {env['cpus']} cpus, load {env['loadavg_1min']:.2f}; {versions}; "
        f"headwater.protocol {'compiled (mypyc)' if env['compiled'] else 'pure Python'}"
    )
    print(
        f"chunk size {args.chunk} B (all rows but whole-buffer ones); best run of >= {args.repeats} turns "
        f"(more while under {args.min_time:g} s in total, at most {MAX_RUNS}); gc off during the runs, "
        f"{'collected before each' if args.collect_each_run else 'collected once before them'}; "
        f"{args.passes} pass{'es' if args.passes != 1 else ''} over the streams, the best across them\n"
    )
    for report in reports:
        print(f"== {report.name}: {report.bytes:,} bytes, {report.events:,} events")
        print(f"   {'peer':<{width}}{'events/s':>14}{'us/event':>11}")
        for peer in PEERS:
            r = report.results[peer.key]
            if r.error:
                print(f"   {peer.label:<{width}}{'n/a':>14}{'':>11}  ({r.error[:90]})")
            else:
                print(f"   {peer.label:<{width}}{r.events_per_s:>14,.0f}{r.us_per_event:>11.2f}")
        ratios = report.ratios()
        print(
            f"   headwater decode vs openai decode:                  "
            f"{_fmt_ratio(ratios['decode_vs_openai'], GOALS['decode_vs_openai'])}"
        )
        print(
            f"   headwater decode+accumulate vs openai's:            "
            f"{_fmt_ratio(ratios['accumulate_vs_openai'], GOALS['accumulate_vs_openai'])}"
        )
        print(
            f"   headwater decode vs limit proxy:                    "
            f"{_fmt_ratio(ratios['decode_vs_limit'], GOALS['decode_vs_limit'])}"
            f"; whole buffer: {_fmt_ratio(ratios['decode_whole_vs_limit'])}"
        )
        print(
            f"   headwater decode+accumulate vs limit proxy:         "
            f"{_fmt_ratio(ratios['accumulate_vs_limit'], GOALS['accumulate_vs_limit'])}"
        )
        print(
            f"   headwater decode vs openresponses (openai/strict):  "
            f"{_fmt_ratio(ratios['decode_vs_openresponses_openai'])} / "
            f"{_fmt_ratio(ratios['decode_vs_openresponses_strict'])}"
        )
        acc = report.checks.get("accumulation")
        if acc is not None:
            print(
                f"   check: accumulated {acc['what']} ({acc['chars']:,} chars) headwater == openai == expected, "
                f"after the deltas and at the end: {'OK' if acc['ok'] else 'MISMATCH ' + json.dumps(acc)}"
            )
        faithful = report.checks["openai_stream_matches_full_client"]
        print(
            f"   check: openai in-memory Stream == full client.responses.create(stream=True): "
            f"{'OK' if faithful else 'MISMATCH'}\n"
        )


SUMMARY_RATIOS = (
    ("decode_vs_openai", "decode vs openai"),
    ("accumulate_vs_openai", "decode+acc vs openai"),
    ("decode_vs_limit", "decode vs limit proxy"),
    ("accumulate_vs_limit", "decode+acc vs limit proxy"),
)


def print_summary(reports: list[StreamReport]) -> None:
    """One matrix: us/event per peer (rows) and stream (columns), then the goal ratios."""
    width = max(len(p.label) for p in PEERS) + 2
    cols = [max(9, len(r.short) + 2) for r in reports]
    print("summary: us/event (lower is better); ratios: how many times faster Headwater is")
    print(" " * width + "".join(f"{r.short:>{w}}" for r, w in zip(reports, cols, strict=True)))
    for peer in PEERS:
        cells = []
        for r, w in zip(reports, cols, strict=True):
            res = r.results[peer.key]
            cells.append(f"{'n/a' if res.error else f'{res.us_per_event:.2f}':>{w}}")
        print(f"{peer.label:<{width}}" + "".join(cells))
    for key, label in SUMMARY_RATIOS:
        name = f"{label} (goal {GOALS[key]:g}x)"
        cells = []
        for r, w in zip(reports, cols, strict=True):
            value = r.ratios()[key]
            cells.append(f"{'n/a' if value is None else f'{value:.2f}x':>{w}}")
        print(f"{name:<{width}}" + "".join(cells))


def environment() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_1min": os.getloadavg()[0],
        "compiled": headwater.protocol.COMPILED,  # the mypyc build (setup.py) or the pure-Python sources
        "versions": {
            d: version(d) for d in ("headwater", "openai", "openresponses-py", "msgspec", "pydantic")
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 text deltas, best of 3 (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--events", type=int, help="text deltas in the generated stream (default 20000)")
    parser.add_argument(
        "--repeats", type=int, help="timed turns per peer and stream; the best run counts (default 7)"
    )
    parser.add_argument(
        "--chunk", type=int, default=1024, help="chunk size in bytes (default 1024, issue 14's measure)"
    )
    parser.add_argument(
        "--min-time",
        type=float,
        help="keep repeating (up to 25 runs) until the timed runs add up to this many seconds (default 0.5)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="measure every stream this many times, a whole pass over the streams apart; each peer's best across "
        "the passes counts (default 2; 1 is the measure before session 22)",
    )
    parser.add_argument(
        "--collect-each-run",
        action="store_true",
        help="run the garbage collector before each timed run (the measure before session 21), not once per peer",
    )
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 2000 if args.quick else 20000
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 0.5

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    env = environment()
    if not args.json:
        log(
            f"python {env['python']} on {env['machine']} ({env['cpus']} cpus, load {env['loadavg_1min']:.2f}); "
            f"{env['versions']}"
        )
    reports = run_all(args, log)
    if args.json:
        doc = {
            "environment": env,
            "settings": {
                "events": args.events,
                "repeats": args.repeats,
                "min_time": args.min_time,
                "collect_each_run": args.collect_each_run,
                "passes": args.passes,
                "chunk": args.chunk,
            },
            "goals": GOALS,
            "peers": {p.key: p.label for p in PEERS},
            "streams": [
                {
                    "name": r.name,
                    "short": r.short,
                    "bytes": r.bytes,
                    "events": r.events,
                    "results": {
                        key: (
                            {"error": res.error}
                            if res.error
                            else {
                                "events": res.events,
                                "runs": res.runs,
                                "best_s": res.best_s,
                                "events_per_s": res.events_per_s,
                                "us_per_event": res.us_per_event,
                            }
                        )
                        for key, res in r.results.items()
                    },
                    "ratios": r.ratios(),
                    "checks": r.checks,
                }
                for r in reports
            ],
        }
        print(json.dumps(doc, indent=2))
    else:
        print()
        print_table(reports, args, env)
        print_summary(reports)
    ok = all(
        r.checks.get("accumulation", {"ok": True})["ok"] and r.checks["openai_stream_matches_full_client"]
        for r in reports
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
