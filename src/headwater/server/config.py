"""The server's settings, in one frozen object: where to listen, which backend and store, who may call.

``ServerConfig`` holds values only; the command line (``server.cli``) and the environment fill it, and
``create_app`` reads it. API keys are kept as SHA-256 digests so no raw key lives longer than start-up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .input_limits import InputLimits

__all__ = ["ServerConfig", "default_data_dir", "key_digest"]


def default_data_dir() -> Path:
    """``$HEADWATER_DATA_DIR``, else ``$XDG_DATA_HOME/headwater``, else ``~/.local/share/headwater``."""
    explicit = os.environ.get("HEADWATER_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "headwater"


def key_digest(key: str) -> str:
    """The stored form of an API key: what identifies the owner of a response without keeping the key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    backend: str = "local"
    backend_options: dict[str, Any] = field(default_factory=dict)
    # Where responses and event logs are kept: a store URL (``memory://``, ``sqlite:///path``,
    # ``postgresql://...``), or ``sqlite`` (the file in ``data_dir``) or ``memory`` for short.
    store: str = "sqlite"
    # The live event log of running responses: ``memory://`` (this process) or a shared one's URL.
    events: str = "memory://"
    # Several replicas: a run's owner renews its lease every lease/5 s; a replica that has not renewed for this
    # long is taken for dead and its unfinished responses are closed as failed by another (``replicas``).
    lease_seconds: float = 5.0
    data_dir: Path = field(default_factory=default_data_dir)
    # Digests of the accepted API keys (see ``key_digest``); empty means no authentication.
    api_key_digests: frozenset[str] = frozenset()
    # Refuse requests carrying tools the backend cannot run, instead of dropping them and saying so.
    strict_tools: bool = False
    # An SSE comment is written after this many seconds without an event, so proxies keep the stream open.
    keepalive_seconds: float = 15.0
    # How long a stored non-background stream whose client left keeps generating, waiting for the client to
    # resume it, before it is cancelled. 0: cancelled at once (no compute for nobody).
    disconnect_grace_seconds: float = 0.0
    max_body_bytes: int = 10 * 1024 * 1024
    # Connection time limits (seconds; see ``serving``): a request line and headers must arrive within
    # ``header_timeout_seconds`` of their first byte, a request body within ``body_timeout_seconds`` of its
    # headers, and a connection with no request in progress is closed after ``idle_timeout_seconds``.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    idle_timeout_seconds: float = 5.0
    # Admission control (see ``admission``): responses generating at once, in all and per API key, and how many
    # more may wait in the FIFO queue (in all, per key) before requests get 429. None: the defaults
    # (``admission.default_limits``: the backend's slots, else 512, running; 16 per running one queued, <= 1024).
    max_running: int | None = None
    max_running_per_key: int | None = None
    max_queued: int | None = None
    max_queued_per_key: int | None = None
    # How many earlier responses a previous_response_id chain may reach back through.
    max_chain_length: int = 1000
    # Nesting, item counts and field sizes of one request (docs/limits.md).
    input_limits: InputLimits = field(default_factory=InputLimits)
    # Load the backend's model (its optional ``preload()``) in the background as the app starts, so that the first
    # request does not wait for it. ``headwater serve`` turns it on; embedded apps and tests load on first use.
    load_backend_at_start: bool = False

    @classmethod
    def with_keys(cls, keys: Iterable[str], **settings: Any) -> ServerConfig:
        """A config accepting ``keys`` (raw API keys); empty strings are ignored."""
        return cls(api_key_digests=frozenset(key_digest(k) for k in keys if k), **settings)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "headwater.sqlite3"

    @property
    def store_url(self) -> str:
        """``store`` as a URL: the short names ``sqlite`` and ``memory`` spelled out."""
        if self.store == "sqlite":
            return f"sqlite://{self.database_path.resolve()}"
        if self.store == "memory":
            return "memory://"
        return self.store
