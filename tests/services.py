"""The shared services of scale-out tests: this machine's PostgreSQL and Redis, a schema / key prefix per test.

In CI (``CI=true``) they must answer: a test that needs one fails when it is missing. Elsewhere such a test is
skipped with a reason that says what to start. ``HEADWATER_TEST_POSTGRES`` / ``HEADWATER_TEST_REDIS`` point
the tests at other servers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("HEADWATER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HEADWATER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def need(service: str, url: str, default_port: int, start: str, variable: str) -> None:
    if answers(url, default_port):
        return
    message = f"{service} does not answer at {url}: {start} (or point ${variable} at one)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs {message}", pytrace=False)
    pytest.skip(message)


def need_postgres() -> None:
    need("PostgreSQL", POSTGRES_URL, 5432, "start PostgreSQL on 127.0.0.1:5432 (user postgres, database test)",
         "HEADWATER_TEST_POSTGRES")


def need_redis() -> None:
    need("Redis", REDIS_URL, 6379, "start redis-server on 127.0.0.1:6379", "HEADWATER_TEST_REDIS")


def unique_name(kind: str) -> str:
    """A name no other test run on this machine uses (schemas, key prefixes)."""
    return f"hw_{kind}_{os.getpid()}_{secrets.token_hex(4)}"


def with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A PostgreSQL URL with a fresh schema (``?schema=``), dropped afterwards."""
    need_postgres()
    import asyncpg

    schema = unique_name("pg")
    try:
        yield with_query(POSTGRES_URL, schema=schema)
    finally:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """The Redis URL with a fresh key prefix (``?prefix=``); its keys are deleted afterwards."""
    need_redis()
    import redis.asyncio as aioredis

    prefix = unique_name("redis")
    try:
        yield with_query(REDIS_URL, prefix=prefix)
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
