"""Replicas when a shared part goes away: a private PostgreSQL (initdb + pg_ctl) that the test stops, a private
``redis-server`` that it restarts mid-run, and an owner frozen (SIGSTOP) past its lease, then thawed: fenced.

The behaviour checked is the one docs/scale-out.md promises: 503 in the spec's shape and nothing half-written
while PostgreSQL is away; no event lost or duplicated across a Redis restart; a replica that lost its lease
never writes again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from headwater.server.testing import ServeProcess, free_port
from services import LEASE, Frames, PrivateRedis, Replicas, payload, stored_log


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A PostgreSQL of this test's own on a free port: its URL and ``control("stop" | "start")``."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI needs initdb and pg_ctl (PostgreSQL's server binaries) on PATH", pytrace=False)
        pytest.skip("initdb/pg_ctl not on PATH: install PostgreSQL's server binaries")
    data = Path(tempfile.mkdtemp(prefix="headwater-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(_as_postgres(["initdb", "-D", str(data / "db"), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"

    def control(action: str) -> None:
        args = ["pg_ctl", "-D", str(data / "db"), "-w", "-l", str(data / "log")]
        if action == "start":
            args += ["-o", options, "start"]
        else:
            args += ["-m", "fast", "stop"]
        subprocess.run(_as_postgres(args), check=True, capture_output=True)

    control("start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", control
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data / "db"), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _count(url: str, sql: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            value: int = await conn.fetchval(sql)
            return value
        finally:
            await conn.close()

    return asyncio.run(count())


def test_postgresql_unreachable_is_503_in_the_spec_shape_with_nothing_half_written(
    private_postgres: tuple[str, Callable[[str], None]], tmp_path: Path
) -> None:
    url, control = private_postgres
    with ServeProcess("--backend", "scripted", "--backend-option", 'script=[{"text": "hi"}, {"finish": "stop"}]',
                      "--store", url, "--events", "memory://", log_path=str(tmp_path / "replica.log")) as server:
        first = httpx.post(f"{server.url}/v1/responses", json={"input": "before"}, timeout=30).json()
        assert first["status"] == "completed"
        control("stop")
        for send in (
            lambda: httpx.post(f"{server.url}/v1/responses", json={"input": "during"}, timeout=30),
            lambda: httpx.post(f"{server.url}/v1/responses", json={"input": "during", "stream": True}, timeout=30),
            lambda: httpx.post(f"{server.url}/v1/responses", json={"input": "during", "background": True},
                               timeout=30),
            lambda: httpx.get(f"{server.url}/v1/responses/{first['id']}", timeout=30),
            lambda: httpx.get(f"{server.url}/v1/responses/{first['id']}/input_items", timeout=30),
        ):
            answer = send()
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert set(error) == {"type", "code", "message", "param"}
            assert error["type"] == "server_error" and error["code"] == "store_unavailable"
        control("start")
        for _ in range(20):  # the pool replaces its broken connections
            again = httpx.get(f"{server.url}/v1/responses/{first['id']}", timeout=30)
            if again.status_code == 200:
                break
            time.sleep(0.2)
        assert again.status_code == 200 and again.json()["output"] == first["output"]
        for _ in range(20):  # and the writer of group commits replaces its own connection
            later = httpx.post(f"{server.url}/v1/responses", json={"input": "after"}, timeout=30)
            if later.status_code == 200:
                break
            time.sleep(0.2)
        assert later.status_code == 200 and later.json()["status"] == "completed"
    assert _count(url, "SELECT count(*) FROM responses") == 2  # nothing of the refused requests
    assert _count(url, "SELECT count(*) FROM input_items") == 2
    assert _count(url, "SELECT count(DISTINCT response) FROM events") == 2


def test_a_redis_restart_mid_run_loses_and_duplicates_no_event(
    replicas: Replicas, private_redis: PrivateRedis
) -> None:
    url = private_redis.url
    owner, other = replicas(2, steps=400, delay=0.01, events=url)
    created = httpx.post(f"{owner.url}/v1/responses", json={"input": "long", "background": True}, timeout=30).json()
    rid = created["id"]
    with httpx.stream("GET", f"{other.url}/v1/responses/{rid}", params={"stream": "true"}, timeout=60) as r:
        reader = Frames(r)
        frames = reader.take(20)
        private_redis.restart()
        frames += reader.take()
    assert payload(frames[-1])["type"] == "response.completed"
    assert frames == stored_log(owner.url, rid)
    # After the restart the cancel signal reaches the owner again.
    second = httpx.post(f"{owner.url}/v1/responses", json={"input": "long", "background": True}, timeout=30).json()
    cancelled = httpx.post(f"{other.url}/v1/responses/{second['id']}/cancel", timeout=30).json()
    assert cancelled["status"] == "cancelled"


def test_an_owner_that_lost_its_lease_is_fenced_and_its_streams_go_on_from_the_store(replicas: Replicas) -> None:
    owner, other = replicas(2, steps=3000, delay=0.01)
    created = httpx.post(f"{owner.url}/v1/responses", json={"input": "long", "background": True}, timeout=30).json()
    rid = created["id"]
    with httpx.stream("GET", f"{owner.url}/v1/responses/{rid}", params={"stream": "true"}, timeout=60) as mine:
        reader = Frames(mine)
        frames = reader.take(10)
        assert owner.process is not None
        owner.process.send_signal(signal.SIGSTOP)  # frozen: it cannot renew its lease
        try:
            deadline = time.monotonic() + 30
            while httpx.get(f"{other.url}/v1/responses/{rid}", timeout=10).json()["status"] != "failed":
                assert time.monotonic() < deadline, "no takeover"
                time.sleep(0.1)
        finally:
            owner.process.send_signal(signal.SIGCONT)  # it wakes up believing it still owns the run
        frames += reader.take()
    log = stored_log(other.url, rid)
    assert payload(log[-1])["type"] == "response.failed"
    assert frames == log  # the owner's own follower got the stored end, not what the fenced run made
    time.sleep(LEASE)
    assert stored_log(owner.url, rid) == log  # and the fenced owner wrote nothing more
