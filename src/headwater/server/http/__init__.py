"""The transports: HTTP routes with SSE delivery, WebSocket mode, error rendering and authentication.

They read, authenticate and validate, call one ``service`` operation and render its answer; they import neither
a store nor a backend. ``routes`` is what ``app.create_app`` mounts.
"""

from __future__ import annotations

from .routes import routes as http_routes
from .websocket import routes as websocket_routes

__all__ = ["routes"]

routes = [*http_routes, *websocket_routes]
