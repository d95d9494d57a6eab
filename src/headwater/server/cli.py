"""``headwater serve``: run the Open Responses server with uvicorn.

Options come from the command line and the environment (``HEADWATER_DATA_DIR``, ``HEADWATER_API_KEYS``). The port
is bound first; once the server listens it says where, which backend and model run and what they can and cannot
do, and where data is kept. Exit codes: 0 after a shutdown (SIGINT/SIGTERM), 1 a backend or option that cannot
start, 2 a usage error, 3 a start-up failure (the store), 4 the address cannot be listened on (port taken).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import click

from .app import create_app
from .backends import UPSTREAM_BACKENDS
from .backends.base import BackendError
from .config import ServerConfig, default_data_dir
from .input_limits import InputLimits
from .live import create_live_log
from .serving import HeadwaterServer, bind, reserve, server_config, shares_ports
from .store import create_store

__all__ = ["EXIT_CANNOT_LISTEN", "serve_command"]

EXIT_CANNOT_LISTEN = 4


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--backend", default="local", show_default=True,
              help="What generates: local (llama.cpp), chat (a Chat Completions upstream), responses (a Responses "
                   "upstream) or scripted (a test double).")
@click.option("--upstream", default=None, metavar="URL",
              help="Base URL of the upstream API for --backend chat/responses, e.g. http://127.0.0.1:11434/v1.")
@click.option("--upstream-key", default=None, envvar="HEADWATER_UPSTREAM_KEY", show_envvar=True,
              help="API key sent to the upstream (Authorization: Bearer).")
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="An option for the backend (repeatable), e.g. script=capture.jsonl or n_ctx=4096; "
                   "VALUE is read as JSON when it parses as JSON.")
@click.option("--store", default="sqlite", show_default=True, metavar="URL",
              help="Where responses and event logs are kept: sqlite (a file in --data-dir), memory (gone at exit), "
                   "or a URL: sqlite:///path/file.sqlite3, memory://, postgresql://user:pass@host/db.")
@click.option("--events", default="memory://", show_default=True, metavar="URL",
              help="The live event log of running responses: memory:// (this process) or a shared one "
                   "(redis://host:port/db).")
@click.option("--lease", "lease_seconds", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="With a shared store (postgresql://): seconds after which a replica that stopped renewing its "
                   "lease is taken for dead, and another closes its unfinished responses as failed.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the SQLite store [default: $HEADWATER_DATA_DIR or ~/.local/share/headwater].")
@click.option("--api-key", "api_keys", multiple=True,
              help="Accept this API key (repeatable; also $HEADWATER_API_KEYS, comma-separated). "
                   "Without any, the server needs no key.")
@click.option("--strict-tools", is_flag=True,
              help="Refuse requests with tools the backend cannot run, instead of dropping them.")
@click.option("--keepalive", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
              help="Seconds of model silence before an SSE keep-alive comment.")
@click.option("--disconnect-grace", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds a stored stream whose client left keeps generating, so that the client can resume it "
                   "(GET ...?stream=true&starting_after=N), before it is cancelled.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds a request line and headers may take to arrive (then 408 and the connection closes).")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds a request body may take to arrive after its headers (then 408).")
@click.option("--idle-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds a connection with no request in progress is kept open.")
@click.option("--max-running", type=click.IntRange(min=1), default=None,
              help="Responses generating at once; more wait in the queue [default: the backend's slots (local: "
                   "one per core), else 512].")
@click.option("--max-running-per-key", type=click.IntRange(min=1), default=None,
              help="Responses generating at once for one API key [default: no cap of its own].")
@click.option("--max-queued", type=click.IntRange(min=0), default=None,
              help="Responses waiting for a turn (FIFO); beyond it requests get 429 with Retry-After "
                   "[default: 16 per --max-running, at most 1024].")
@click.option("--max-queued-per-key", type=click.IntRange(min=0), default=None,
              help="Responses of one API key waiting for a turn [default: no cap of its own].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on the one port (each a replica of its own); more than 1 needs a shared "
                   "store and live log (--store postgresql://... --events redis://...).")
@click.option("--limit", "limits", multiple=True, metavar="NAME=N",
              help="Change an input limit (repeatable), e.g. input_items=50000; names and defaults in "
                   "docs/limits.md: " + ", ".join(InputLimits.names()) + ".")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve_command(
    host: str,
    port: int,
    backend: str,
    upstream: str | None,
    upstream_key: str | None,
    backend_options: tuple[str, ...],
    store: str,
    events: str,
    lease_seconds: float,
    data_dir: Path | None,
    api_keys: tuple[str, ...],
    strict_tools: bool,
    keepalive: float,
    disconnect_grace: float,
    header_timeout: float,
    body_timeout: float,
    idle_timeout: float,
    max_running: int | None,
    max_running_per_key: int | None,
    max_queued: int | None,
    max_queued_per_key: int | None,
    workers: int,
    limits: tuple[str, ...],
    log_level: str,
) -> None:
    """Run the Open Responses server (POST /v1/responses and its companions)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = [*api_keys, *(k.strip() for k in os.environ.get("HEADWATER_API_KEYS", "").split(","))]
    options = dict(_option(text) for text in backend_options)
    if backend in UPSTREAM_BACKENDS:
        if not upstream:
            raise click.UsageError(f"--backend {backend} needs --upstream URL (the upstream API's base URL)")
        options.setdefault("upstream", upstream)
        if upstream_key:
            options.setdefault("api_key", upstream_key)
    elif upstream:
        raise click.UsageError(f"--upstream is for --backend chat or responses, not {backend!r}")
    config = ServerConfig.with_keys(
        keys,
        host=host,
        port=port,
        backend=backend,
        backend_options=options,
        store=store,
        events=events,
        lease_seconds=lease_seconds,
        data_dir=(data_dir or default_data_dir()).expanduser(),
        strict_tools=strict_tools,
        keepalive_seconds=keepalive,
        disconnect_grace_seconds=disconnect_grace,
        header_timeout_seconds=header_timeout,
        body_timeout_seconds=body_timeout,
        idle_timeout_seconds=idle_timeout,
        max_running=max_running,
        max_running_per_key=max_running_per_key,
        max_queued=max_queued,
        max_queued_per_key=max_queued_per_key,
        input_limits=_limits(limits),
        load_backend_at_start=True,
    )
    try:
        create_store(config.store_url)  # a bad URL is a usage error, said before the backend loads a model
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--store") from None
    try:
        create_live_log(events)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--events") from None
    if workers > 1 and not (config.store_url.startswith(("postgresql://", "postgres://"))
                            and events.startswith(("redis://", "rediss://"))):
        raise click.UsageError("--workers above 1 needs --store postgresql://... and --events redis://... (the "
                               "workers are replicas: they share what they store and stream)")
    # --workers: each worker listens on a socket of its own on the port, which this process only holds (where
    # the system spreads connections over such sockets; else they all accept on this one).
    own_sockets = workers > 1 and shares_ports()
    try:
        sock = reserve(host, port) if own_sockets else bind(host, port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        click.echo(f"headwater: cannot listen on {host}:{port}: {reason}", err=True)
        sys.exit(EXIT_CANNOT_LISTEN)
    try:
        app = create_app(config)
    except (BackendError, ValueError) as exc:
        sock.close()
        raise click.ClickException(f"cannot start backend {backend!r}: {exc}") from None
    state = app.state.headwater
    bound = sock.getsockname()[1]

    def banner() -> None:
        click.echo(f"headwater: listening on http://{_url_host(host)}:{bound}/v1/responses")
        click.echo(f"  backend: {state.backend.describe()}")
        click.echo(f"  models:  {', '.join(state.backend.models())}")
        click.echo(f"  store:   {state.store.describe()}")
        click.echo(f"  events:  {state.runs.live.describe()}")
        if config.api_key_digests:
            click.echo(f"  auth:    {len(config.api_key_digests)} API key(s); each response belongs to its key")
        else:
            click.echo("  auth:    none (no --api-key): anyone who can reach the port can use the server")
        limits = state.runs.admission.limits
        click.echo(f"  limits:  {limits.max_running} running, {limits.max_queued} queued (then 429); "
                   f"timeouts: headers {header_timeout:g}s, body {body_timeout:g}s, idle {idle_timeout:g}s")
        click.echo("  tools:   function tools only; others are " + (
            "refused (--strict-tools)" if strict_tools else "dropped and reported in x-headwater-dropped-tools"))

    def serve(app: Any, on_started: Any, listener: socket.socket) -> None:
        uvicorn_config = server_config(app, header_timeout=header_timeout, idle_timeout=idle_timeout,
                                       log_level=log_level, timeout_graceful_shutdown=5)
        server = HeadwaterServer(uvicorn_config, before_shutdown=app.state.headwater.runs.shut_down,
                                 on_started=on_started)
        server.run(sockets=[listener])

    def listener() -> socket.socket:
        """A worker's listening socket: its own on the port (``own_sockets``), else the one of this process."""
        if not own_sockets:
            return sock
        own = bind(host, bound, shared=True)
        sock.close()  # (the worker's copy of the reserving socket; this process keeps its own)
        return own

    if workers > 1:
        _serve_workers(workers, config, lambda app, on_started: serve(app, on_started, listener()), banner)
        return
    serve(app, banner, sock)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _serve_workers(workers: int, config: ServerConfig, serve: Any, banner: Any) -> None:
    """``--workers N``: N forked processes accept on the one bound socket, each with an app (a replica) of its
    own; this process says where it listens once every worker listens (and stops them all, exit 1, when one
    exits before), passes SIGTERM/SIGINT on and waits."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    shared = _shared_metrics(given)
    ready_read, ready_write = os.pipe()  # each worker writes one byte once it listens
    life_read, life_write = os.pipe()  # only this process holds the write end: EOF in a worker means it died
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: its own app, store pool, live log and lease
            code = 0
            os.close(ready_read)
            os.close(life_write)
            _stop_when_parent_dies(life_read)
            try:
                if shared is not None:
                    from .metrics import share_values

                    share_values()
                serve(create_app(config, shared_metrics=shared), lambda: os.write(ready_write, b"."))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    os.close(ready_write)
    os.close(life_read)

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    exited: list[int] = []
    listening = False

    def forget(pid: int) -> None:  # an exited worker's runs no longer count in /metrics
        if shared is not None:
            from .metrics import forget_worker

            forget_worker(pid, shared)

    try:
        listening = _all_listening(ready_read, children, exited)
        if listening:
            banner()  # (only now: a caller that waits for "listening on" finds every worker accepting)
            click.echo(f"  workers: {workers} processes, each a replica (lease {config.lease_seconds:g} s)")
        else:
            click.echo("headwater: a worker process exited before it listened (see its error above); stopping",
                       err=True)
            forward(signal.SIGTERM, None)
        for pid in exited:
            forget(pid)
        while len(exited) < len(children):
            exited.append(os.wait()[0])
            forget(exited[-1])
    finally:
        os.close(ready_read)
        if shared is not None and given is None:
            shutil.rmtree(shared, ignore_errors=True)
    if not listening:
        sys.exit(1)


def _stop_when_parent_dies(lifeline: int) -> None:
    """In a worker: a daemon thread blocks on ``lifeline``, a pipe whose only write end the parent holds. The
    parent's death (even kill -9) closes it; the read returns, and the worker sends itself SIGTERM: the same
    graceful shutdown as a forwarded signal, so that no worker outlives its parent, keeps the port or holds runs
    that another replica could take over."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(lifeline, 1):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="headwater-parent-watch", daemon=True).start()


def _all_listening(ready: int, children: list[int], exited: list[int]) -> bool:
    """Wait until every worker says it listens (one byte each on ``ready``); False as soon as one exits first
    (its pid is added to ``exited``)."""
    count = 0
    while count < len(children):
        readable, _, _ = select.select([ready], [], [], 0.2)
        if readable:
            count += len(os.read(ready, len(children) - count))
        for child in children:
            if child not in exited and os.waitpid(child, os.WNOHANG)[0] == child:
                exited.append(child)
                return False
    return True


def _shared_metrics(given: str | None) -> str | None:
    """The workers' metrics directory: ``given`` (``$PROMETHEUS_MULTIPROC_DIR``, emptied of an earlier run's
    files) or a fresh temporary one (removed at exit); None without prometheus-client."""
    try:
        from .metrics import prepare_shared
    except ImportError:
        return None
    if given is None:
        _remove_stale_metrics()
    directory = given or tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
    prepare_shared(directory)
    return directory


_METRICS_PREFIX = "headwater-metrics-"


def _remove_stale_metrics() -> None:
    """Temporary metrics directories (``headwater-metrics-PID-*``) of earlier ``--workers`` servers whose
    process no longer runs: one killed with -9 could not remove its own."""
    for path in Path(tempfile.gettempdir()).glob(f"{_METRICS_PREFIX}*-*"):
        pid = path.name[len(_METRICS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _limits(texts: tuple[str, ...]) -> InputLimits:
    """``--limit NAME=N`` options over the default ``InputLimits``: a positive integer for a known name."""
    values: dict[str, int] = {}
    for text in texts:
        name, equals, value = text.partition("=")
        if name not in InputLimits.names() or not equals:
            raise click.BadParameter(f"expected NAME=N with NAME one of {', '.join(InputLimits.names())}, got "
                                     f"{text!r}", param_hint="--limit")
        if not value.isascii() or not value.isdigit() or int(value) < 1:
            raise click.BadParameter(f"{name} must be a positive integer, got {value!r}", param_hint="--limit")
        values[name] = int(value)
    return InputLimits(**values)


def _option(text: str) -> tuple[str, Any]:
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--backend-option")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
