"""``create_inspector_app``: the inspector alone, for ``headwater inspect FILE ...``: recordings only (no model,
no store), behind one API key made at start (the page gets it in its URL's fragment, which no request carries).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from headwater.server.config import key_digest
from headwater.server.http.errors import exception_handlers

from .routes import Inspector, mount, read_recording

__all__ = ["create_inspector_app"]


async def _home(request: Request) -> RedirectResponse:
    return RedirectResponse("/inspect/")


def create_inspector_app(paths: Iterable[str], key: str | None) -> Starlette:
    """The inspector with ``paths`` already analysed; ``key`` (None: no key at all) guards its API.

    Raises ``APIError`` (code ``unreadable_recording``) for a file that is no stream, ``OSError`` for one that
    cannot be read.
    """
    inspector = Inspector(frozenset({key_digest(key)}) if key else frozenset())
    owner = key_digest(key) if key else None
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        name = os.path.basename(path)
        inspector.add(owner, name, "recording", read_recording(data, name))
    app = Starlette(routes=[Route("/", _home), mount("/inspect")], exception_handlers=exception_handlers)
    app.state.inspector = inspector
    return app
