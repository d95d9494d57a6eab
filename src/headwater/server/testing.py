"""Run an ASGI app (a Headwater server, or any other) on a free loopback port in a background thread, or a
whole ``headwater serve`` in a child process (``ServeProcess``: replicas that can be killed, restarted, signalled).

For tests and benchmarks: the real uvicorn server on a real socket, started and stopped from sync code.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any

__all__ = ["LiveServer", "ServeProcess", "drop_schema", "free_port"]


class LiveServer:
    """An ASGI app served by uvicorn on 127.0.0.1 (a free port) in a background thread, as ``headwater serve``
    serves it: with the connection time limits of a Headwater app's config, and its live runs ended first at
    shutdown. ``loop`` and ``http`` are uvicorn's options (``auto``: uvloop and httptools when installed, as
    ``headwater serve`` runs)."""

    def __init__(self, app: Any, *, loop: str = "auto", http: str = "auto") -> None:
        from .serving import HeadwaterServer, bind, server_config

        self.app = app
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        state = getattr(getattr(app, "state", None), "headwater", None)
        limits = {"header_timeout": 10.0, "idle_timeout": 5.0}
        if state is not None:
            limits = {"header_timeout": state.config.header_timeout_seconds,
                      "idle_timeout": state.config.idle_timeout_seconds}
        config = server_config(app, log_level="warning", timeout_graceful_shutdown=5, loop=loop, http=http,
                               **limits)
        self._server = HeadwaterServer(config, before_shutdown=state.runs.shut_down if state is not None else None)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, timeout: float = 10.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down as on SIGTERM (lifespan shutdown included); calling it again does nothing."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServeProcess:
    """``headwater serve ARGS`` in a child process on a free loopback port (``--port 0``, the port read from the
    banner's "listening on" line): a real replica, for tests and benchmarks. Its output is collected (``stdout``,
    ``stderr``; also appended to ``log_path`` when given). ``kill`` is kill -9, ``stop`` SIGTERM, ``signal`` any;
    ``start`` again after an exit runs a new process with the same arguments."""

    def __init__(self, *args: str, log_path: str | None = None, env: dict[str, str] | None = None) -> None:
        self.args = ["serve", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", *args]
        self.log_path = log_path
        self.env = env
        self.port = 0
        self.url = ""
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers: list[threading.Thread] = []
        self.process: subprocess.Popen[str] | None = None

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def start(self, timeout: float = 60.0) -> ServeProcess:
        """Start and wait for the "listening on" line; raises ``RuntimeError`` (with the output) if the process
        exits first or ``timeout`` passes."""
        self._out.clear()
        self._err.clear()
        self.port = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "headwater", *self.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env={**os.environ, **(self.env or {})},
        )
        self._readers = [threading.Thread(target=_collect, args=(stream, lines, self.log_path), daemon=True)
                         for stream, lines in ((self.process.stdout, self._out), (self.process.stderr, self._err))]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + timeout
        while not self.port:
            match = re.search(r"listening on http://\S+?:(\d+)/", self.stdout)
            if match:
                self.port = int(match.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                self.wait()
                raise RuntimeError(f"headwater serve did not start (exit {self.process.returncode}):\n"
                                   f"{self.stdout}{self.stderr}")
            else:
                time.sleep(0.02)
        return self

    def signal(self, sig: int) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code, once the process has exited and its output is all collected."""
        assert self.process is not None, "not started"
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (its leases expire)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout``; nothing once it has exited."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _collect(stream: IO[str] | None, lines: list[str], log_path: str | None) -> None:
    if stream is None:
        return
    with stream, open(log_path or os.devnull, "a") as log:
        for line in stream:
            lines.append(line)
            log.write(line)
            log.flush()


def free_port() -> int:
    """A loopback port free right now, for a helper server a test starts (a small race, fine in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def drop_schema(postgres_url: str, schema: str) -> None:
    """Drop ``schema`` (and all in it) from the PostgreSQL at ``postgres_url``: what a test or bench that ran
    servers on a schema of its own leaves behind. Needs asyncpg (the ``scale`` extra)."""
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
