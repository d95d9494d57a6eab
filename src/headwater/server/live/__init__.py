"""The live event log of running responses, chosen by URL: ``memory://`` (in this process, the default) or
``redis://...`` (shared by every replica). ``create_live_log(url)`` imports only the one the URL names.

Every live log implements ``LiveLog`` from ``base``; ``tests/test_live.py`` holds each to the same contract.
"""

from __future__ import annotations

import importlib

from .base import Entry, LiveLog, LiveRead

__all__ = ["LIVE_SCHEMES", "Entry", "LiveLog", "LiveRead", "create_live_log"]

# URL scheme -> (module in this package, class). The class is built with the URL (memory: without).
LIVE_SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("memory", "MemoryLiveLog"),
    "redis": ("redis", "RedisLiveLog"),
    "rediss": ("redis", "RedisLiveLog"),
}


def create_live_log(url: str) -> LiveLog:
    """The live log a URL names: ``memory://`` or ``redis://host:port/db``."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in LIVE_SCHEMES:
        known = ", ".join(f"{s}://" for s in LIVE_SCHEMES)
        raise ValueError(f"unknown live log URL {url!r}: it must start with one of {known}")
    module_name, class_name = LIVE_SCHEMES[scheme]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        raise ValueError(f"the {scheme}:// live log is not available: {exc}") from None
    cls = getattr(module, class_name)
    live: LiveLog = cls() if scheme == "memory" else cls(url)
    return live
