"""Shared test helpers: a real uvicorn server on a loopback socket, in a thread, for any ASGI app."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import services
from headwater.server.testing import LiveServer


@pytest.fixture
def serve() -> Iterator[Callable[[Any], LiveServer]]:
    """``serve(app)`` starts ``app`` on a free loopback port; every server started is stopped afterwards."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()


def _wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(predicate, timeout=10)``: poll until ``predicate()`` is true; fail the test after ``timeout``."""
    return _wait_until


# --- PostgreSQL and Redis (tests/services.py says how they are found, and when a test fails or skips) ---------


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL URL with a fresh schema of its own (``?schema=``), dropped after the test."""
    async with services.postgres_schema() as url:
        yield url


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The Redis URL with a fresh key prefix (``?prefix=``); its keys are deleted after the test."""
    async with services.redis_prefix() as url:
        yield url


@pytest.fixture
def replicas(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[services.Replicas]:
    """``replicas(n, steps=, delay=, events=, store=)``: n ``headwater serve`` processes of one deployment on
    this test's PostgreSQL schema and Redis prefix (stopped after the test)."""
    with services.replica_set(postgres_url, redis_url, tmp_path) as start:
        yield start


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[services.PrivateRedis]:
    """A redis-server of this test's own, started; killed at the end."""
    redis = services.PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()
