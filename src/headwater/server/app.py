"""``create_app(config)``: the Starlette application, with its backend, store and runs wired together.

At start-up the store is opened and responses an earlier process left unfinished are closed as failed; at
shutdown live runs are stopped (their streams end with ``response.failed``) before the store closes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from headwater.inspect.routes import mount as inspector_mount

from . import direct
from .admission import admission_limits
from .backends.base import Backend
from .config import ServerConfig
from .errors import APIError
from .http import routes
from .http.errors import error_response, exception_handlers
from .http.routes import create_response
from .live import LiveLog, create_live_log
from .live.memory import MemoryLiveLog
from .replicas import Replica, has_leases
from .runs import Runs, close_orphan, close_orphans
from .service import Service
from .store import Store, StoreUnavailable, create_store

__all__ = ["CREATES_PER_TURN", "CreateTurns", "HeadwaterApp", "create_app"]

log = logging.getLogger("headwater.server")


def create_app(
    config: ServerConfig,
    *,
    backend: Backend | None = None,
    store: Store | None = None,
    live: LiveLog | None = None,
    shared_metrics: str | None = None,
) -> Starlette:
    """The server as an ASGI app. ``backend``/``store``/``live`` replace the ones ``config`` names (tests,
    embedding); the app opens and closes the store and the live log, and closes only a backend it created.
    ``shared_metrics``: the metrics directory of the worker processes this app is one of (``metrics``)."""
    owns_backend = backend is None
    if backend is None:
        from .backends import create_backend

        backend = create_backend(config.backend, **config.backend_options)
    if store is None:
        store = create_store(config.store_url)
    if live is None:
        live = create_live_log(config.events)
    runs = Runs(store, backend, live, limits=admission_limits(config, backend))
    replica = None
    if has_leases(store) or not isinstance(live, MemoryLiveLog):  # several replicas may share them
        replica = Replica(store, live, running=runs.running, cancel=runs.cancel, close=close_orphan,
                          lease=config.lease_seconds, renew=config.lease_seconds / 5)
    state = Service(config=config, backend=backend, store=store, runs=runs, replica=replica)
    metrics = _metrics(state, shared_metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.store.open()
        await state.runs.live.open()
        try:
            # With leases, another replica may be running what is unfinished: the takeover closes only the
            # responses of replicas that stopped renewing (``replicas``); without, each is an orphan of a crash.
            if replica is None or not replica.leased:
                closed = await close_orphans(state.store)
                if closed:
                    log.warning("closed %d response(s) left unfinished by an earlier run as failed", len(closed))
            if replica is not None:
                await replica.start()
            if metrics is not None:
                await metrics.start()
            loading = _load_backend(state.backend) if config.load_backend_at_start else None
            yield
        finally:
            if loading is not None:
                loading.cancel()
            if replica is not None:
                await replica.stop()
            await state.runs.shut_down()
            if metrics is not None:
                await metrics.stop()
            if owns_backend:
                await state.backend.aclose()
            await state.runs.live.close()
            await state.store.close()

    handlers = {**exception_handlers, StoreUnavailable: _store_unavailable}
    extra = [metrics.route()] if metrics is not None else []
    app = HeadwaterApp(routes=[*routes, *extra, inspector_mount("/inspect")], exception_handlers=handlers,
                       lifespan=lifespan)
    app.state.headwater = state
    return app


class HeadwaterApp(Starlette):
    """Starlette, but a create (``POST /v1/responses``, every stream's first request) goes to its route's handler
    without the middleware and router layers: each is a coroutine (or a wrapper of ``send``) that every resumption
    of the request's task passes through again, for a route and error handling that are fixed. The exceptions
    are answered as those layers would: by the app's handler for the exception's class (``APIError``,
    ``StoreUnavailable``...) while the response has not started; anything else by the ``Exception`` handler (a
    logged 500), then raised on for the server. Once middleware is added (``app.add_middleware``, by an
    application embedding Headwater), every request, a create included, goes through it and Starlette.

    The server's ``direct.DirectBody`` (the connection's body, read and written without ``receive`` and ``send``)
    is kept in the scope only while nothing stands between this app and the connection: an ASGI app wrapping this
    one (its ``receive`` or ``send`` not the connection's own) or middleware added here would not see what it
    reads or writes."""

    _turns: CreateTurns

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = CreateTurns(CREATES_PER_TURN)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions = scope.get("extensions")
            connection = extensions.get(direct.EXTENSION) if extensions else None
            if connection is not None and (self.user_middleware or not connection.serves(receive, send)):
                scope = _without_direct_body(scope)  # (middleware sees every byte it wraps ``send`` for)
            if scope["path"] == "/v1/responses" and scope["method"] == "POST" and not self.user_middleware:
                scope["app"] = self
                await self._create(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        turn = self._turns.take()  # (one create begins per turn of the loop: ``CreateTurns``)
        if turn is not None:
            await turn
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        request = Request(scope, receive, sending)
        try:
            answer = await create_response(request)
            await answer(scope, receive, sending)
        except Exception as exc:
            handlers = self.exception_handlers
            handler = None
            if not started:
                handler = next((handlers[kind] for kind in type(exc).__mro__ if kind is not Exception
                                and kind in handlers), None)
            unexpected = handler is None
            if unexpected:
                handler = handlers.get(Exception)
                if handler is None:
                    raise
            response = await handler(request, exc)  # type: ignore[misc]
            if not started:
                await response(scope, receive, send)
            if unexpected:
                raise


# At most this many creates begin in one turn of the event loop (``CreateTurns``). bench_gateway, base (no limit)
# -> 8, in one run each (2026-12-04, load 0.3-1.3): 64 streams (--seconds 32 --turns 8), each later event p99 over
# direct memory +4.44 -> +2.32 and +4.08 -> +3.46 ms, SQLite +12.29 -> +9.67, first p50 -2.4 ms, CPU per event +2 µs;
# 512 streams (--seconds 20 --turns 2) 0.92x -> 0.91x direct, later p99 +63 -> +37 ms. 1 (a create a turn) cost
# 512 streams 0.93x -> 0.85x (a wave of 512 creates over 512 turns, a poll each); 16 gained less at 64.
CREATES_PER_TURN = 8


class CreateTurns:
    """At most ``per_turn`` creates (``HeadwaterApp``'s path) begin in one turn of the event loop: the others of
    that turn begin ``per_turn`` a turn after it, each batch after the loop has read its sockets again. A turn
    runs every callback that was ready when it began, then polls; creates that arrive together (a closed loop's
    wave of stream ends and new requests) would otherwise run back to back, a few hundred µs of CPU each, while
    the running streams' next deltas, already on their sockets, wait for the poll behind all of them. A create
    that finds room in the turn starts at once; the turn's count starts again at the next turn (a callback the
    first create leaves)."""

    __slots__ = ("_left", "_loop", "_per_turn", "_waiters")

    def __init__(self, per_turn: int = 1) -> None:
        self._per_turn = per_turn
        self._left = 0  # creates that may still begin in this turn
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose turn is taken (None: it is free)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> asyncio.Future[None] | None:
        """None when this turn had room (begin now); else a future that is done at the turn the caller may
        begin in."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # free (or taken on a loop that has stopped since: a test's, say)
            self._loop = loop
            self._waiters.clear()
            self._left = self._per_turn - 1
            loop.call_soon(self._next)
            return None
        if self._left > 0 and not self._waiters:
            self._left -= 1
            return None
        waiter = loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def _next(self) -> None:
        """A new turn: the next waiting creates (up to ``per_turn``) begin in it, or the turn is free."""
        waiters = self._waiters
        left = self._per_turn
        while waiters and left:
            waiter = waiters.popleft()
            if not waiter.done():  # (a create cancelled while it waited is passed over)
                waiter.set_result(None)
                left -= 1
        if left < self._per_turn:
            self._left = left
            asyncio.get_running_loop().call_soon(self._next)
            return
        self._loop = None


def _without_direct_body(scope: Scope) -> Scope:
    """``scope`` without the server's ``direct.DirectBody``: the request's body is read with ``receive`` and the
    response written with ``send``, through the middleware that wraps them (an ASGI app around this one, or one
    added with ``add_middleware``), which would not see what the body wrote to the connection itself."""
    extensions = {key: value for key, value in scope["extensions"].items() if key != direct.EXTENSION}
    return {**scope, "extensions": extensions}


def _metrics(state: Service, shared: str | None) -> Any:
    """``/metrics`` over this app's runs, store and live log (none when prometheus-client is missing);
    ``shared``: over every worker's, through their shared directory."""
    try:
        from .metrics import Metrics
    except ImportError:
        return None
    store, live, replica = state.store, state.runs.live, state.replica

    def sources() -> dict[str, int]:
        return {
            **state.runs.figures(),
            "takeovers": replica.takeovers if replica is not None else 0,
            "store_errors": getattr(store, "errors", 0),
            "live_errors": getattr(live, "errors", 0),
        }

    metrics = Metrics(sources, shared=shared)
    if hasattr(store, "latency"):
        store.latency = metrics.observe_store
    if hasattr(live, "latency"):
        live.latency = metrics.observe_live
    return metrics


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The shared store is away: 503 in the spec's error shape (nothing of the request was written)."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(APIError(503, "the response store cannot be reached; try again shortly",
                                   code="store_unavailable", headers={"retry-after": "1"}))


def _load_backend(backend: Backend) -> asyncio.Task[None] | None:
    """The backend's optional ``preload()`` (its model's weights) as a background task: a failure is logged here
    and said again to the first request, which tries to load them itself."""
    load = getattr(backend, "preload", None)
    if load is None:
        return None

    async def run() -> None:
        started = time.monotonic()
        try:
            await load()
        except Exception as exc:  # e.g. a missing model file: each request reports it in the error shape
            log.warning("could not load the %s backend's model at start-up: %s", backend.name, exc)
        else:
            log.info("%s backend loaded in %.1f s", backend.name, time.monotonic() - started)

    return asyncio.get_running_loop().create_task(run(), name="headwater-backend-load")
