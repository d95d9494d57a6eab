"""When to try again and how long to wait: backoff with jitter, ``Retry-After``, which statuses are worth a retry.

Pure decisions (no sleeping, no sockets): the sync and async clients ask, then sleep in their own way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "retry_after"]

# 408 request timeout, 429 rate limited, and any 5xx: the same request may well succeed later.
RETRYABLE_STATUSES = frozenset({408, 429})


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def retry_after(headers: Mapping[str, str], *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return max(when.timestamp() - now(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries``: new attempts at a request that got no event yet (connection errors, 408/429/5xx).
    ``max_resumes``: reconnects in a row that bring no new event before a stream is given up.
    Delays grow as ``backoff * 2**n`` up to ``backoff_max``, less up to 25% jitter. A ``Retry-After`` longer
    than ``max_retry_after`` is not waited for: the error is raised instead."""

    max_retries: int = 2
    max_resumes: int = 5
    backoff: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, server_said: float | None = None) -> float:
        """The wait before attempt number ``attempt`` (1 = the first retry)."""
        if server_said is not None:
            return server_said
        base = min(self.backoff * (2 ** max(attempt - 1, 0)), self.backoff_max)
        return base * (1.0 - 0.25 * self.rng.random())
