"""The shared services of scale-out tests: this machine's PostgreSQL and Redis, a schema / key prefix per test.

In CI (``CI=true``) they must answer: a test that needs one fails when it is missing. Elsewhere such a test is
skipped with a reason that says what to start. ``HEADWATER_TEST_POSTGRES`` / ``HEADWATER_TEST_REDIS`` point
the tests at other servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from headwater.server.testing import ServeProcess, free_port

POSTGRES_URL = os.environ.get("HEADWATER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HEADWATER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def need(service: str, url: str, default_port: int, start: str, variable: str) -> None:
    if answers(url, default_port):
        return
    message = f"{service} does not answer at {url}: {start} (or point ${variable} at one)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs {message}", pytrace=False)
    pytest.skip(message)


def need_postgres() -> None:
    need("PostgreSQL", POSTGRES_URL, 5432, "start PostgreSQL on 127.0.0.1:5432 (user postgres, database test)",
         "HEADWATER_TEST_POSTGRES")


def need_redis() -> None:
    need("Redis", REDIS_URL, 6379, "start redis-server on 127.0.0.1:6379", "HEADWATER_TEST_REDIS")


def unique_name(kind: str) -> str:
    """A name no other test run on this machine uses (schemas, key prefixes)."""
    return f"hw_{kind}_{os.getpid()}_{secrets.token_hex(4)}"


def with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A PostgreSQL URL with a fresh schema (``?schema=``), dropped afterwards."""
    need_postgres()
    import asyncpg

    schema = unique_name("pg")
    try:
        yield with_query(POSTGRES_URL, schema=schema)
    finally:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """The Redis URL with a fresh key prefix (``?prefix=``); its keys are deleted afterwards."""
    need_redis()
    import redis.asyncio as aioredis

    prefix = unique_name("redis")
    try:
        yield with_query(REDIS_URL, prefix=prefix)
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


# --- replicas: real `headwater serve` processes of one deployment --------------------------------------------

LEASE = 2.0  # seconds: a short lease, so a takeover comes quickly in tests
TAKEOVER_BOUND = LEASE + 2 * LEASE / 5 + 1.0  # lease + one renew interval + a scan (see docs/scale-out.md)

Replicas = Callable[..., list[ServeProcess]]


def script(path: Path, steps: int) -> Path:
    """A scripted backend's script: ``steps`` text deltas, usage, finish."""
    items: list[dict[str, Any]] = [{"text": f"w{n} "} for n in range(steps)]
    items += [{"usage": {"input_tokens": 3, "output_tokens": steps}}, {"finish": "stop"}]
    path.write_text(json.dumps(items))
    return path


@contextlib.contextmanager
def replica_set(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Replicas]:
    """``start(n, steps=, delay=, events=, store=, extra=)`` starts n replicas; all stop at the end."""
    started: list[ServeProcess] = []

    def start(n: int, *, steps: int = 20, delay: float = 0.0, events: str | None = None,
              store: str | None = None, extra: tuple[str, ...] = ()) -> list[ServeProcess]:
        path = script(tmp_path / f"script{len(started)}.json", steps)
        procs = []
        for _ in range(n):
            proc = ServeProcess(
                "--backend", "scripted", "--backend-option", f"script={path}", "--backend-option", f"delay={delay}",
                "--store", store or postgres_url, "--events", events or redis_url, "--lease", str(LEASE),
                "--disconnect-grace", "30", *extra,
                log_path=str(tmp_path / f"replica{len(started)}.log"),
            )
            started.append(proc)
            procs.append(proc.start())
        return procs

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


class PrivateRedis:
    """A redis-server of one test's own (no persistence, a free port, files in ``folder``), for tests that stop
    or restart Redis mid-run. ``stop()`` kills it (everything it held is gone), ``start()`` starts it empty,
    ``restart(pause)`` does both with ``pause`` seconds between."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("CI needs redis-server on PATH", pytrace=False)
            pytest.skip("redis-server not on PATH: install Redis")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(folder)]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        while subprocess.run(ping, capture_output=True).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
            self._process = None

    def restart(self, pause: float = 1.0) -> None:
        self.stop()
        time.sleep(pause)  # away for a while: appends and reads fail meanwhile
        self.start()


class Frames:
    """The SSE frames of a streamed response as bytes (keep-alive comments left out), read in parts."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_bytes()
        self._buffer = b""

    def take(self, limit: int | None = None) -> list[bytes]:
        """The next ``limit`` frames (all that are left when None)."""
        frames: list[bytes] = []
        while limit is None or len(frames) < limit:
            if b"\n\n" in self._buffer:
                frame, self._buffer = self._buffer.split(b"\n\n", 1)
                if not frame.startswith(b":"):
                    frames.append(frame + b"\n\n")
                continue
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        return frames


def frames_of(response: httpx.Response, limit: int | None = None) -> list[bytes]:
    return Frames(response).take(limit)


def payload(frame: bytes) -> dict[str, Any]:
    data = frame.split(b"\ndata: ", 1)[1].rstrip(b"\n")
    result: dict[str, Any] = json.loads(data)
    return result


def stored_log(url: str, response_id: str) -> list[bytes]:
    """The response's whole log as any replica replays it."""
    with httpx.stream("GET", f"{url}/v1/responses/{response_id}", params={"stream": "true"}, timeout=30) as r:
        assert r.status_code == 200
        return frames_of(r)


def wait_status(url: str, response_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx.get(f"{url}/v1/responses/{response_id}", timeout=10).json()
        if body["status"] not in ("queued", "in_progress") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def main() -> int:
    """``python tests/services.py``: say whether PostgreSQL and Redis answer; in CI, exit 1 when one does not
    (this machine kind starts both itself: nothing is started here)."""
    missing = [name for name, url, port in (("PostgreSQL", POSTGRES_URL, 5432), ("Redis", REDIS_URL, 6379))
               if not answers(url, port)]
    for name, url in (("PostgreSQL", POSTGRES_URL), ("Redis", REDIS_URL)):
        print(f"{name} at {url}: {'missing' if name in missing else 'answers'}")
    if missing and os.environ.get("CI", "").lower() == "true":
        print(f"CI needs {' and '.join(missing)} for the scale-out tests", file=sys.stderr)
        return 1
    if missing:
        print("the scale-out tests that need them will be skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
