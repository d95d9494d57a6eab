"""The live event log of running responses, chosen by URL: ``memory://`` (in this process, the default) or
``redis://...`` (shared by every replica). ``create_live_log(url)`` imports only the one the URL names.

Every live log implements ``LiveLog`` from ``base``; ``tests/test_live.py`` holds each to the same contract.
"""

from __future__ import annotations

from ..schemes import class_for_url
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
    scheme, cls = class_for_url(url, __name__, LIVE_SCHEMES, "live log")
    live: LiveLog = cls() if scheme == "memory" else cls(url)
    return live
