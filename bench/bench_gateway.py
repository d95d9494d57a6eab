"""What a gateway adds: Headwater relaying a paced upstream (`--backend responses` and `--backend chat`, memory and
SQLite stores) against LiteLLM's proxy relaying the same upstream and against reading the upstream directly.

Three kinds of process, all on loopback, all started by this script in one run:
- the mock upstream (its own process, uvloop + a minimal HTTP/1.1 server): every POST streams 64 text deltas
  20 ms apart (`/v1/responses`: Responses events; `/v1/chat/completions`: Chat Completions chunks). Each delta's
  text carries the mock's send time (CLOCK_MONOTONIC, shared by every process on the machine).
- the load generator (its own process, uvloop + a minimal keep-alive HTTP/1.1 client): N streams in a closed
  loop (each worker starts its next stream when its last one ends) for a fixed time.
  The mock and the load generator keep the cyclic collector out of their timings (``_quiet_gc``).
- the target: nothing (direct to the mock), `headwater serve` (one process, its default stack: uvicorn on
  uvloop + httptools), or `litellm --config` (one process; telemetry off) from its own virtualenv, created here
  from `bench/requirements-litellm-proxy.txt` (litellm[proxy] 1.108 conflicts with the project's pinned deps).

Figures per target and stream count: first event p50/p99 (request sent -> first SSE event read), each later delta
p50/p99 (mock's send -> load generator's read), events/s (all SSE events read), stalled streams (a gap > 1 s
between two reads of one stream) and the target's CPU per relayed event. Also, with `--clients`, the upstream
HTTP clients a relay could use, reading the same mock in one process: CPU per event and events/s.

    python bench/bench_gateway.py                        # 1, 64 and 512 streams, every target
    python bench/bench_gateway.py --quick                # shorter runs, 1 and 64 streams
    python bench/bench_gateway.py --streams 512 --targets direct,hw-responses-memory
    python bench/bench_gateway.py --clients-only         # just the upstream-client comparison
    python bench/bench_gateway.py --baseline /tmp/base/src --targets hw-responses-memory@base,hw-responses-memory
                                                          # A/B: the same target from another source tree
    python bench/bench_gateway.py --baseline /tmp/base/src --turns 4 --targets direct,hw-responses-memory@base,hw-responses-memory
                                                          # the A/B in turns: every target up at once, each
                                                          # measured a quarter of the time, 4 times, in turns

`hw-*-pg-x2` runs `headwater serve --workers 2` (two forked replicas accepting on one port; PostgreSQL + Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DELTAS = 64
INTERVAL = 0.020
# (--deltas, --interval: a short stream's fixed costs, the create and the end, weigh more: ``cpu us/st``)
STALL_S = 1.0
LITELLM_VENV = HERE / ".venv-litellm-proxy"
LITELLM_REQUIREMENTS = HERE / "requirements-litellm-proxy.txt"
# The proxy refuses to start without a master key; the load generator sends it (a fresh one each run).
MASTER_KEY = os.environ.get("BENCH_LITELLM_KEY") or f"sk-bench-{secrets.token_hex(32)}"

TARGETS = (
    "direct",
    "hw-responses-memory",
    "hw-responses-sqlite",
    "hw-chat-memory",
    "hw-chat-sqlite",
    "litellm",
)
# Not in the default set: a byte forwarder between the load generator and the mock (no HTTP, no parsing), the
# floor that a relay's extra process hop costs on this machine.
FLOOR_TARGETS = ("raw-proxy",)
# Also measurable (--targets): PostgreSQL store + Redis live log (`BENCH_PG_URL`, `BENCH_REDIS_URL`), one
# process, or `--workers 2` (one replica per core, accepting on one port).
EXTRA_TARGETS = ("hw-responses-pg", "hw-responses-pg-x2", "hw-chat-pg-x2")
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# --base-port: the ports of this run's processes are taken from there up (the first free ones), not from the
# kernel's ephemeral range (a lane of a shared machine keeps to its own range).
BASE_PORT: int | None = None


def free_port() -> int:
    global BASE_PORT
    while BASE_PORT is not None:
        port, BASE_PORT = BASE_PORT, BASE_PORT + 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _shape() -> list[str]:
    """The stream's shape (--deltas, --interval), for the mock's and the load generator's processes."""
    return ["--deltas", str(DELTAS), "--interval", repr(INTERVAL)]


def mark(ns: int) -> str:
    """The text of one delta: the mock's send time, recognisable in any relay's output."""
    return f"~t{ns}~ "


# --- the mock upstream --------------------------------------------------------------------------------------

_RESP_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
_RESP_HEAD += b"transfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(event: str | None, obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + data + b"\n\n"


class _ResponsesStream:
    """The Responses events of one mock answer (OpenAI's shapes, compact JSON)."""

    def __init__(self, n: int) -> None:
        self.id = f"resp_mock{n}"
        self.msg = f"msg_mock{n}"
        self.seq = 0
        self.text: list[str] = []

    def _event(self, obj: dict[str, Any]) -> bytes:
        obj = {"type": obj["type"], "sequence_number": self.seq, **obj}
        self.seq += 1
        return _sse(obj["type"], obj)

    def _response(self, status: str, output: list[Any]) -> dict[str, Any]:
        return {"id": self.id, "object": "response", "created_at": 1, "status": status, "model": "mock",
                "output": output, "usage": None if status != "completed" else
                {"input_tokens": 5, "output_tokens": DELTAS, "total_tokens": 5 + DELTAS,
                 "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}

    def head(self) -> bytes:
        item = {"id": self.msg, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        return b"".join([
            self._event({"type": "response.created", "response": self._response("in_progress", [])}),
            self._event({"type": "response.in_progress", "response": self._response("in_progress", [])}),
            self._event({"type": "response.output_item.added", "output_index": 0, "item": item}),
            self._event({"type": "response.content_part.added", "item_id": self.msg, "output_index": 0,
                         "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        ])

    def delta(self, text: str) -> bytes:
        self.text.append(text)
        return self._event({"type": "response.output_text.delta", "item_id": self.msg, "output_index": 0,
                            "content_index": 0, "delta": text, "logprobs": []})

    def tail(self) -> bytes:
        text = "".join(self.text)
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"id": self.msg, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        return b"".join([
            self._event({"type": "response.output_text.done", "item_id": self.msg, "output_index": 0,
                         "content_index": 0, "text": text, "logprobs": []}),
            self._event({"type": "response.content_part.done", "item_id": self.msg, "output_index": 0,
                         "content_index": 0, "part": part}),
            self._event({"type": "response.output_item.done", "output_index": 0, "item": item}),
            self._event({"type": "response.completed", "response": self._response("completed", [item])}),
        ])


class _ChatStream:
    """The Chat Completions chunks of one mock answer (OpenAI's shapes)."""

    def __init__(self, n: int) -> None:
        self.base = {"id": f"chatcmpl-mock{n}", "object": "chat.completion.chunk", "created": 1, "model": "mock"}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse(None, {**self.base, "choices": [choice], **extra})

    def head(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def tail(self) -> bytes:
        usage = {"prompt_tokens": 5, "completion_tokens": DELTAS, "total_tokens": 5 + DELTAS}
        return self._chunk({}, "stop") + _sse(None, {**self.base, "choices": [], "usage": usage}) + (
            b"data: [DONE]\n\n"
        )


class _MockProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server: keep-alive, Content-Length bodies, one paced SSE answer per POST."""

    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.busy = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        if self.busy:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        path = head.split(" ", 2)[1]
        self.buf = self.buf[end + 4 + length :]
        self.busy = True
        _MockProtocol.count += 1
        stream = _ChatStream(self.count) if "chat/completions" in path else _ResponsesStream(self.count)
        asyncio.get_running_loop().create_task(self._answer(stream))

    async def _answer(self, stream: _ResponsesStream | _ChatStream) -> None:
        write = self.transport.write
        loop = asyncio.get_running_loop()
        start = loop.time()
        write(_RESP_HEAD + _chunk(stream.head() + stream.delta(mark(time.monotonic_ns()))))
        for i in range(1, DELTAS):
            await asyncio.sleep(max(0.0, start + i * INTERVAL - loop.time()))
            if self.transport.is_closing():
                return
            write(_chunk(stream.delta(mark(time.monotonic_ns()))))
        write(_chunk(stream.tail()) + b"0\r\n\r\n")
        self.busy = False
        self._next()


def _quiet_gc(threshold: int | None = None) -> None:
    """The measuring processes (the mock, the load generator) keep the cyclic collector out of the figures: what
    start-up made is frozen (never scanned again), and the collector is off (``threshold`` None) or collects the
    young generation only every ``threshold`` allocations. With Python's defaults (700, 10, 10) the load generator
    made 7-30 young collections a second and a full one of 6-9 ms per measurement, each a pause of the reader of
    every stream inside the latencies it reports (gc lane, session 22). Both allocate little that forms cycles."""
    gc.collect()
    gc.freeze()
    if threshold is None:
        gc.disable()
    else:
        gc.set_threshold(threshold, 50, 50)


def run_mock(port: int) -> None:
    import uvloop

    _quiet_gc(100_000)  # (it runs for the whole bench: it still collects, rarely)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_MockProtocol, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --- the raw proxy: the floor of a relay's extra process hop -------------------------------------------------


class _ProxySide(asyncio.Protocol):
    """One side of a forwarded connection: whatever it reads goes to its peer as it came (no parsing)."""

    def __init__(self) -> None:
        self.peer: _ProxySide | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # what the client sent before the upstream's connection was made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def run_proxy(port: int, upstream_port: int) -> None:
    """A byte forwarder (uvloop): every client connection gets one connection to the mock, bytes copied both
    ways. What any relay in its own process costs at the least on this machine: a read and a write per chunk."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        connecting: set[asyncio.Task[None]] = set()

        def accept() -> _ProxySide:
            client = _ProxySide()

            async def connect() -> None:
                _, upstream = await loop.create_connection(_ProxySide, "127.0.0.1", upstream_port)
                upstream.peer, client.peer = client, upstream
                assert upstream.transport is not None
                for data in client.pending:
                    upstream.transport.write(data)
                client.pending.clear()

            task = loop.create_task(connect())
            connecting.add(task)
            task.add_done_callback(connecting.discard)
            return client

        server = await loop.create_server(accept, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):  # (stopped by SIGINT, as every target is)
        uvloop.run(main())


# --- the load generator -------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    first_ms: float
    later_ms: list[float]
    events: int
    stalled: bool
    ok: bool


class _Conn:
    """One keep-alive HTTP/1.1 connection: POST, then read the chunked (or close-delimited) SSE body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def stream(self, path: str, body: bytes, headers: str) -> StreamResult:
        from headwater.protocol.sse import SSEDecoder

        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        reader, writer = self.reader, self.writer
        assert reader is not None
        request = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream\r\n{headers}content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        sent = time.monotonic_ns()
        writer.write(request)
        status = await reader.readline()
        chunked = False
        close = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            chunked |= name == "transfer-encoding" and "chunked" in value
            close |= name == "connection" and value == "close"
        if not status.startswith(b"HTTP/1.1 200"):
            rest = await reader.read(2000)
            raise RuntimeError(f"{path}: {status!r} {rest[:300]!r}")
        decoder = SSEDecoder(mode="sse")
        first = -1.0
        later: list[float] = []
        events = 0
        deltas = 0
        last_read = sent
        stalled = False
        ok = False
        while True:
            if chunked:
                size_line = await reader.readline()
                size = int(size_line.split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                data = data[:-2]
                if size == 0:
                    break
            else:
                data = await reader.read(65536)
                if not data:
                    break
            now = time.monotonic_ns()
            if now - last_read > STALL_S * 1e9:
                stalled = True
            last_read = now
            for frame in decoder.feed(data):
                payload = frame.data
                if payload == b"[DONE]":
                    ok = True
                    continue
                events += 1
                if first < 0:
                    first = (now - sent) / 1e6
                at = payload.find(b"~t")
                # A delta carries one mark; the .done events and the final response carry them all.
                if at >= 0 and payload.find(b"~t", at + 2) < 0:
                    deltas += 1
                    if deltas > 1:  # the first delta's latency is in the first event's
                        sent_ns = int(payload[at + 2 : payload.index(b"~", at + 2)])
                        later.append((now - sent_ns) / 1e6)
                if frame.event == "response.completed" or b'"finish_reason":"stop"' in payload:
                    ok = True
        if close or not chunked:
            writer.close()
            self.writer = None
        return StreamResult(first, later, events, stalled, ok)


def _target_request(kind: str) -> tuple[str, bytes, str]:
    if kind == "chat":
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "go"}]}
        return "/v1/chat/completions", json.dumps(body).encode(), f"authorization: Bearer {MASTER_KEY}\r\n"
    body = {"model": "mock", "stream": True, "input": "go", "store": True}
    return "/v1/responses", json.dumps(body).encode(), ""


# How the closed loop's streams start (--stagger): "interval", spread over one delta interval (20 ms: all 64
# streams start, and then restart, within one interval, so their creates come in waves and their deltas stay
# together), or "stream", spread over one stream's length (64 x 20 ms: about one create per interval, as
# independent clients would come; a steadier state).
STAGGER = "interval"


async def _load(ports: list[int], kind: str, streams: int, seconds: float, stagger: str = "interval") -> dict[str, Any]:
    path, body, headers = _target_request(kind)
    results: list[StreamResult] = []
    errors: list[str] = []
    t0 = time.monotonic()
    deadline = t0 + seconds

    async def worker(index: int) -> None:
        port = ports[index % len(ports)]  # several replicas: the streams are spread over them
        conn = _Conn("127.0.0.1", port)
        spread = INTERVAL if stagger == "interval" else DELTAS * INTERVAL
        await asyncio.sleep(index * spread / max(streams, 1))  # the starts spread (--stagger)
        while time.monotonic() < deadline:
            try:
                result = await conn.stream(path, body, headers)
            except Exception as exc:  # a failed stream counts; the worker goes on with a new connection
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                conn = _Conn("127.0.0.1", port)
                await asyncio.sleep(0.05)
                continue
            results.append(result)

    await asyncio.gather(*(worker(i) for i in range(streams)))
    elapsed = time.monotonic() - t0
    return _summary(results, errors, elapsed)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _summary(results: list[StreamResult], errors: list[str], elapsed: float) -> dict[str, Any]:
    firsts = [r.first_ms for r in results if r.first_ms >= 0]
    later = [x for r in results for x in r.later_ms]
    return {
        "streams_done": len(results),
        "streams_ok": sum(r.ok for r in results),
        "errors": len(errors),
        "error_sample": errors[:3],
        "stalled": sum(r.stalled for r in results),
        "events": sum(r.events for r in results),
        "events_per_s": sum(r.events for r in results) / elapsed,
        "first_p50": _pct(firsts, 0.5),
        "first_p99": _pct(firsts, 0.99),
        "later_p50": _pct(later, 0.5),
        "later_p99": _pct(later, 0.99),
        "elapsed": elapsed,
        "firsts": firsts,  # the samples, for pooling several turns (``_pooled``); not printed
        "later": later,
    }


def _pooled(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """Several measurements of one target (``--turns``) as one: counts summed, percentiles over every sample."""
    firsts = [x for t in turns for x in t["firsts"]]
    later = [x for t in turns for x in t["later"]]
    events = sum(t["events"] for t in turns)
    cpu = [t["cpu_s"] for t in turns if t.get("cpu_s") is not None]
    return {
        **{key: sum(t[key] for t in turns) for key in ("streams_done", "streams_ok", "errors", "stalled", "events",
                                                        "elapsed")},
        "error_sample": [e for t in turns for e in t["error_sample"]][:3],
        "events_per_s": events / sum(t["elapsed"] for t in turns),
        "first_p50": _pct(firsts, 0.5),
        "first_p99": _pct(firsts, 0.99),
        "later_p50": _pct(later, 0.5),
        "later_p99": _pct(later, 0.99),
        "cpu_s": sum(cpu) if cpu else None,
        "cpu_us_per_event": sum(cpu) / events * 1e6 if cpu and events else None,
        "cpu_us_per_stream": (sum(cpu) / sum(t["streams_done"] for t in turns) * 1e6
                              if cpu and any(t["streams_done"] for t in turns) else None),
        "mock_cpu_s": sum(t["mock_cpu_s"] for t in turns) if all(t.get("mock_cpu_s") is not None
                                                                  for t in turns) else None,
        "load_avg": max(t["load_avg"] for t in turns),
        "firsts": firsts,
        "later": later,
    }


def run_load(ports: list[int], kind: str, streams: int, seconds: float, out: str, stagger: str) -> None:
    import uvloop

    _quiet_gc()  # (one measurement, then the process ends)
    result = uvloop.run(_load(ports, kind, streams, seconds, stagger))
    Path(out).write_text(json.dumps(result))


# --- targets ------------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def ensure_litellm() -> Path:
    """LiteLLM's proxy in its own virtualenv (made once, from the pinned requirements file)."""
    python = LITELLM_VENV / "bin" / "python"
    stamp = LITELLM_VENV / ".requirements"
    wanted = LITELLM_REQUIREMENTS.read_text()
    if not python.exists() or not stamp.exists() or stamp.read_text() != wanted:
        uv = shutil.which("uv")
        if uv is None:
            raise RuntimeError("uv is needed to make LiteLLM's virtualenv (pip install uv)")
        print(f"making {LITELLM_VENV} from {LITELLM_REQUIREMENTS.name} ...", flush=True)
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(LITELLM_VENV)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "-r", str(LITELLM_REQUIREMENTS)],
                       check=True)
        stamp.write_text(wanted)
    return LITELLM_VENV / "bin" / "litellm"


@dataclass
class Target:
    name: str
    kind: str  # what the load generator speaks to it: "responses" or "chat"
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    schema: str | None = None  # a PostgreSQL schema of this run's own, dropped at the end

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.schema is not None:
            _drop_schema(self.schema)
        if self.tmp is not None:
            self.tmp.cleanup()


def _drop_schema(schema: str) -> None:
    from headwater.server.testing import drop_schema

    drop_schema(PG_URL, schema)


def start_target(name: str, mock_port: int, baseline: str | None = None) -> Target:
    """``name@base``: the same Headwater target, run from the source tree ``baseline`` (an A/B in one run)."""
    name, at, _ = name.partition("@")
    if at and not baseline:
        raise SystemExit(f"{name}@base needs --baseline SRC (a source tree to run the baseline from)")
    if name == "direct":
        return Target(name, "responses", [mock_port])
    if name == "raw-proxy":
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--role", "proxy", "--port", str(port),
                                 "--ports", str(mock_port)])
        target = Target(name, "responses", [port], procs=[proc])
        _wait_port(port, proc)
        measure(target, 4, 0.1)
        return target
    tmp = tempfile.TemporaryDirectory(prefix="hw-gateway-")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if at:
        env["PYTHONPATH"] = str(baseline)  # imported before the installed (editable) headwater
    schema = None
    if name == "litellm":
        config = Path(tmp.name) / "litellm.yaml"
        config.write_text(
            "model_list:\n  - model_name: mock\n    litellm_params:\n      model: openai/mock\n"
            f"      api_base: http://127.0.0.1:{mock_port}/v1\n      api_key: sk-mock\n"
            "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
            "general_settings:\n  disable_spend_logs: true\n"
        )
        env.update(LITELLM_MASTER_KEY=MASTER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
                   LITELLM_LOG="ERROR", DISABLE_SCHEMA_UPDATE="true", NO_DOCS="True")
        port = free_port()
        commands = [[str(ensure_litellm()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                     "--num_workers", "1"]]
        ports, kind = [port], "chat"
    else:
        _, backend, store, *copies = name.split("-")
        workers = int(copies[0][1:]) if copies else 1
        options = ["--store", store, "--data-dir", tmp.name]
        if store == "pg":
            schema = f"hwbench_{secrets.token_hex(4)}"
            options = ["--store", f"{PG_URL}?schema={schema}", "--events", f"{REDIS_URL}?prefix={schema}"]
        if workers > 1:  # one port, `--workers N` processes (each a replica) accepting on it
            options += ["--workers", str(workers)]
        port = free_port()
        commands = [
            [sys.executable, "-m", "headwater", "serve", "--backend", backend,
             "--upstream", f"http://127.0.0.1:{mock_port}/v1", *options, "--port", str(port),
             "--log-level", "warning"]
        ]
        ports, kind = [port], "responses"
    target = Target(name, kind, ports, tmp=tmp, schema=schema)
    for i, cmd in enumerate(commands):
        log = open(Path(tmp.name) / f"server{i}.log", "wb")  # noqa: SIM115 - closed with the process
        target.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp.name))
    try:
        for port, proc in zip(ports, target.procs, strict=True):
            _wait_port(port, proc, timeout=120)
    except Exception:
        text = "".join(p.read_text(errors="replace")[-2000:] for p in Path(tmp.name).glob("server*.log"))
        target.stop()
        raise RuntimeError(f"{name} did not start: {text}") from None
    measure(target, 4, 0.1)  # warm-up: imports, connections to the mock, code paths (not counted)
    return target


def _pids(target: Target) -> list[int]:
    """The target's processes and their children (``--workers``' forked workers do the serving)."""
    pids = []
    for proc in target.procs:
        pids.append(proc.pid)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        if children.exists():
            pids.extend(int(pid) for pid in children.read_text().split())
    return pids


# The mock's process (set by main): its CPU per event read is printed beside each target's, for scale (a process
# that makes each event and writes it, one write per event: what any relay's write side costs at the least).
MOCK_PID: int | None = None


def measure(target: Target, streams: int, seconds: float) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(prefix="hw-load-", suffix=".json")[1])
    pids = _pids(target)
    cpu0 = sum(_cpu_seconds(pid) for pid in pids)
    mock0 = _cpu_seconds(MOCK_PID) if MOCK_PID is not None else None
    load = subprocess.run(
        [sys.executable, __file__, "--role", "load", "--ports", ",".join(map(str, target.ports)),
         "--kind", target.kind, "--streams", str(streams), "--seconds", str(seconds), "--out", str(out),
         "--stagger", STAGGER, *_shape()],
        check=False, env={**os.environ, "BENCH_LITELLM_KEY": MASTER_KEY},
    )
    cpu = (sum(_cpu_seconds(pid) for pid in pids) - cpu0) if target.procs else None
    mock_cpu = _cpu_seconds(MOCK_PID) - mock0 if MOCK_PID is not None and mock0 is not None else None
    if load.returncode != 0:
        raise RuntimeError(f"the load generator failed against {target.name}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    result["cpu_s"] = cpu
    result["cpu_us_per_event"] = cpu / result["events"] * 1e6 if cpu is not None and result["events"] else None
    result["cpu_us_per_stream"] = (cpu / result["streams_done"] * 1e6 if cpu is not None and result["streams_done"]
                                   else None)
    result["mock_cpu_s"] = mock_cpu
    result["load_avg"] = os.getloadavg()[0]
    return result


def measure_in_turns(names: list[str], mock_port: int, baseline: str | None, stream_counts: list[int],
                     seconds: float, turns: int) -> dict[int, dict[str, dict[str, Any]]]:
    """Every target started at once, then measured ``turns`` times for ``seconds / turns`` each, the targets in
    turns (forwards, then backwards), so that a drifting load falls on all of them alike; samples pooled."""
    targets: list[tuple[str, Target]] = []
    try:
        for name in names:
            targets.append((name, start_target(name, mock_port, baseline)))
        results: dict[int, dict[str, dict[str, Any]]] = {}
        for streams in stream_counts:
            total = max(seconds, 8 * DELTAS * INTERVAL * 1.1) if streams == 1 else seconds
            print(f"  {streams} streams: {turns} turns of {total / turns:.1f} s per target ...", flush=True)
            measured: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for turn in range(turns):
                for name, target in targets if turn % 2 == 0 else reversed(targets):
                    measured[name].append(measure(target, streams, total / turns))
            results[streams] = {name: _pooled(runs) for name, runs in measured.items()}
        return results
    finally:
        for _, target in targets:
            target.stop()


# --- upstream clients compared (one process, the same mock) --------------------------------------------------


async def _clients(mock_port: int, streams: int, rounds: int) -> dict[str, dict[str, float]]:
    import aiohttp
    import httpx

    url = f"http://127.0.0.1:{mock_port}/v1/responses"
    body = json.dumps({"model": "mock", "stream": True, "input": "go"}).encode()
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    out: dict[str, dict[str, float]] = {}

    async def run(name: str, one: Any) -> None:
        async def worker() -> int:
            n = 0
            for _ in range(rounds):
                n += await one()
            return n

        await asyncio.gather(*(one() for _ in range(min(streams, 8))))  # warm-up
        cpu0, t0 = time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(worker() for _ in range(streams)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        chunks = sum(counts)
        out[name] = {"chunks": chunks, "cpu_us_per_chunk": cpu / chunks * 1e6, "chunks_per_s": chunks / wall}

    from headwater.protocol.sse import SSEDecoder

    for name, limits in (
        ("httpx (Headwater's limits: keep-alive pool 100)", httpx.Limits(max_connections=None,
                                                                          max_keepalive_connections=100)),
        ("httpx (no pool caps)", httpx.Limits(max_connections=None, max_keepalive_connections=None)),
    ):
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def one_httpx(client: httpx.AsyncClient = client) -> int:
                decoder = SSEDecoder(mode="sse")
                n = 0
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    async for chunk in response.aiter_raw():
                        n += len(decoder.feed(chunk))
                return n

            await run(name, one_httpx)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def one_aiohttp() -> int:
            decoder = SSEDecoder(mode="sse")
            n = 0
            async with session.post(url, data=body, headers=headers) as response:
                async for chunk in response.content.iter_any():
                    n += len(decoder.feed(chunk))
            return n

        await run("aiohttp (no pool caps)", one_aiohttp)

    from headwater.server.backends._http import HTTPClient

    own = HTTPClient()

    async def one_own() -> int:
        decoder = SSEDecoder(mode="sse")
        n = 0
        answer = await own.post(url, list(headers.items()), body, connect_timeout=10, read_timeout=60)
        while chunk := await answer.read_chunk():
            n += len(decoder.feed(chunk))
        answer.release()
        return n

    await run("headwater's own (httptools, no pool caps)", one_own)
    own.close()
    return out


def run_clients(mock_port: int, streams: int, rounds: int, out: str) -> None:
    import uvloop

    Path(out).write_text(json.dumps(uvloop.run(_clients(mock_port, streams, rounds))))


# --- report -------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: dict[int, dict[str, dict[str, Any]]]) -> None:
    for streams, by_target in results.items():
        direct = by_target.get("direct")
        print(f"\n{streams} stream(s), closed loop; {DELTAS} deltas {INTERVAL * 1000:.0f} ms apart per stream")
        print(f"{'target':<26} {'first p50/p99 ms':>17} {'later p50/p99 ms':>17} {'events/s':>9} {'vs direct':>9} "
              f"{'stalled':>9} {'streams':>8} {'err':>4} {'cpu us/ev':>9} {'cpu us/st':>9} {'mock us/ev':>10} "
              f"{'load':>5}")
        for name, r in by_target.items():
            ratio = f"{r['events_per_s'] / direct['events_per_s']:.2f}x" if direct else "-"
            cpu = "-" if r.get("cpu_us_per_event") is None else f"{r['cpu_us_per_event']:.0f}"
            per_stream = "-" if r.get("cpu_us_per_stream") is None else f"{r['cpu_us_per_stream']:.0f}"
            mock = "-" if r.get("mock_cpu_s") is None or not r["events"] else f"{r['mock_cpu_s'] / r['events'] * 1e6:.0f}"
            print(f"{name:<26} {_ms(r['first_p50']):>8}/{_ms(r['first_p99']):<8} "
                  f"{_ms(r['later_p50']):>8}/{_ms(r['later_p99']):<8} {r['events_per_s']:>9,.0f} {ratio:>9} "
                  f"{r['stalled']:>4}/{r['streams_done']:<4} {r['streams_ok']:>8} {r['errors']:>4} {cpu:>9} "
                  f"{per_stream:>9} {mock:>10} {r['load_avg']:>5.2f}")
            if r["error_sample"]:
                print(f"{'':<26} errors, e.g.: {r['error_sample'][0]}")
        if direct:
            print("added over direct (ms):")
            for name, r in by_target.items():
                if name == "direct" or r["first_p99"] is None or r["later_p99"] is None:
                    continue
                print(f"  {name:<26} first p50 +{r['first_p50'] - direct['first_p50']:.2f} "
                      f"p99 +{r['first_p99'] - direct['first_p99']:.2f}; each later p50 "
                      f"+{r['later_p50'] - direct['later_p50']:.2f} p99 +{r['later_p99'] - direct['later_p99']:.2f}")


def main() -> None:
    global DELTAS, INTERVAL, BASE_PORT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["main", "mock", "proxy", "load", "clients"], default="main",
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="responses", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--streams", default="1,64,512", help="concurrent streams, comma-separated")
    parser.add_argument("--seconds", type=float, default=None, help="closed-loop time per measurement")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"of {', '.join(TARGETS + EXTRA_TARGETS + FLOOR_TARGETS)}")
    parser.add_argument("--quick", action="store_true", help="4 s per measurement, 1 and 64 streams")
    parser.add_argument("--clients", default="64,512", help="stream counts for the upstream-client comparison "
                                                           "('' to skip)")
    parser.add_argument("--clients-only", action="store_true")
    parser.add_argument("--turns", type=int, default=1,
                        help="measure in turns: every target started at once, then each measured for "
                             "SECONDS/TURNS at a time, in turns (forwards, then backwards), TURNS times, its "
                             "samples pooled (an A/B on a machine whose load drifts)")
    parser.add_argument("--stagger", choices=["interval", "stream"], default="interval",
                        help="spread each closed loop's stream starts over one delta interval (20 ms; the default: "
                             "creates in waves, deltas together) or over one stream's length (1.28 s: a steady "
                             "state)")
    parser.add_argument("--deltas", type=int, default=DELTAS,
                        help="text deltas per mock stream (default %(default)s); few (1) with --interval 0 make a "
                             "stream mostly its create and its end: read 'cpu us/st', the target's CPU per stream")
    parser.add_argument("--interval", type=float, default=INTERVAL,
                        help="seconds between two deltas of a mock stream (default %(default)s)")
    parser.add_argument("--base-port", type=int, default=None,
                        help="take the ports of the mock and the targets from this one up (the first free ones; "
                             "default: any free port)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--baseline", help="a headwater source tree (its src/ directory) that targets named "
                                           "NAME@base run from, e.g. `git worktree add /tmp/base <commit>`")
    args = parser.parse_args()
    DELTAS, INTERVAL, BASE_PORT = args.deltas, args.interval, args.base_port
    if args.role == "mock":
        run_mock(args.port)
        return
    if args.role == "proxy":
        run_proxy(args.port, int(args.ports))
        return
    if args.role == "load":
        run_load([int(p) for p in args.ports.split(",")], args.kind, int(args.streams), args.seconds, args.out,
                 args.stagger)
        return
    if args.role == "clients":
        run_clients(args.port, int(args.streams), args.rounds, args.out)
        return

    if args.quick and args.streams == "1,64,512":
        args.streams = "1,64"
    seconds = args.seconds or (4.0 if args.quick else 8.0)
    global STAGGER
    STAGGER = args.stagger
    mock_port = free_port()
    mock = subprocess.Popen([sys.executable, __file__, "--role", "mock", "--port", str(mock_port), *_shape()])
    global MOCK_PID
    MOCK_PID = mock.pid
    everything: dict[str, Any] = {"load_avg_start": os.getloadavg()[0], "python": sys.version.split()[0]}
    print(f"load average {os.getloadavg()[0]:.2f} at start; {os.cpu_count()} CPUs; stream starts spread over one "
          f"{'delta interval' if STAGGER == 'interval' else 'stream'} (--stagger {STAGGER})", flush=True)
    try:
        _wait_port(mock_port, mock)
        results: dict[int, dict[str, dict[str, Any]]] = {}
        if not args.clients_only and args.turns > 1:
            results = measure_in_turns(args.targets.split(","), mock_port, args.baseline,
                                       list(map(int, args.streams.split(","))), seconds, args.turns)
            report(results)
            everything["gateway"] = results
        elif not args.clients_only:
            for name in args.targets.split(","):
                target = start_target(name, mock_port, args.baseline)
                try:
                    for streams in map(int, args.streams.split(",")):
                        # 1 stream: at least 8 streams' worth of time, so that p99 means something.
                        time_for = max(seconds, 8 * DELTAS * INTERVAL * 1.1) if streams == 1 else seconds
                        print(f"  {name}: {streams} streams for {time_for:.0f} s ...", flush=True)
                        results.setdefault(streams, {})[name] = measure(target, streams, time_for)
                finally:
                    target.stop()
            report(results)
            everything["gateway"] = results
        if args.clients:
            print("\nupstream HTTP clients reading the mock in one process (uvloop), SSE-framed with "
                  "headwater's SSEDecoder; 2 streams in a row per worker")
            print(f"{'client':<48} {'streams':>7} {'chunks':>7} {'cpu us/chunk':>12} {'chunks/s':>9} {'load':>5}")
            everything["clients"] = {}
            for streams in map(int, args.clients.split(",")):
                out = Path(tempfile.mkstemp(prefix="hw-clients-", suffix=".json")[1])
                subprocess.run([sys.executable, __file__, "--role", "clients", "--port", str(mock_port),
                                "--streams", str(streams), "--out", str(out)], check=True)
                figures = json.loads(out.read_text())
                out.unlink()
                everything["clients"][streams] = figures
                for name, f in figures.items():
                    print(f"{name:<48} {streams:>7} {f['chunks']:>7} {f['cpu_us_per_chunk']:>12.1f} "
                          f"{f['chunks_per_s']:>9,.0f} {os.getloadavg()[0]:>5.2f}")
        if args.json:
            for by_target in everything.get("gateway", {}).values():
                for figures in by_target.values():
                    figures.pop("firsts", None)  # (the samples: only for pooling)
                    figures.pop("later", None)
            Path(args.json).write_text(json.dumps(everything, indent=1))
    finally:
        mock.terminate()
        mock.wait(10)


if __name__ == "__main__":
    main()
