"""CPU-heavy request work runs in a worker thread, so that one big request does not stall every live stream:
parsing and validating a big body, decoding a long stored conversation, encoding many input items.

Small inputs stay on the event loop (a thread hop costs more than they do). The GIL is still shared, but a
worker thread yields it every few milliseconds, so the loop keeps serving streams while the work goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from . import requests
from .requests import ValidatedRequest

__all__ = ["OFF_LOOP_BYTES", "OFF_LOOP_ITEMS", "call", "parse_request"]

T = TypeVar("T")

# Above these sizes, work goes to a thread: bytes of JSON to decode or encode, items to convert.
OFF_LOOP_BYTES = 64 * 1024
OFF_LOOP_ITEMS = 1000


async def call(heavy: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``: in a worker thread when ``heavy``, else here and now."""
    if not heavy:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def parse_request(data: bytes, **options: Any) -> ValidatedRequest:
    """``requests.parse_request(data, **options)``, in a worker thread for a body over ``OFF_LOOP_BYTES``."""
    return await call(len(data) > OFF_LOOP_BYTES, requests.parse_request, data, **options)
