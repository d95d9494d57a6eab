"""``create_app(config)``: the Starlette application, with its backend, store and runs wired together.

At start-up the store is opened and responses an earlier process left unfinished are closed as failed; at
shutdown live runs are stopped (their streams end with ``response.failed``) before the store closes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from . import compact, websocket
from .backends.base import Backend
from .config import ServerConfig
from .errors import exception_handlers
from .live import LiveLog, create_live_log
from .routes import ServerState, routes
from .runs import Runs, close_orphans
from .store import Store, create_store

__all__ = ["create_app"]

log = logging.getLogger("headwater.server")


def create_app(
    config: ServerConfig, *, backend: Backend | None = None, store: Store | None = None, live: LiveLog | None = None
) -> Starlette:
    """The server as an ASGI app. ``backend``/``store``/``live`` replace the ones ``config`` names (tests,
    embedding); the app opens and closes the store and the live log, and closes only a backend it created."""
    owns_backend = backend is None
    if backend is None:
        from .backends import create_backend

        backend = create_backend(config.backend, **config.backend_options)
    if store is None:
        store = create_store(config.store_url)
    if live is None:
        live = create_live_log(config.events)
    state = ServerState(config=config, backend=backend, store=store, runs=Runs(store, backend, live))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.store.open()
        await state.runs.live.open()
        try:
            closed = await close_orphans(state.store)
            if closed:
                log.warning("closed %d response(s) left unfinished by an earlier run as failed", len(closed))
            yield
        finally:
            await state.runs.shut_down()
            if owns_backend:
                await state.backend.aclose()
            await state.runs.live.close()
            await state.store.close()

    app = Starlette(routes=[*routes, *compact.routes, *websocket.routes], exception_handlers=exception_handlers,
                    lifespan=lifespan)
    app.state.headwater = state
    return app
