"""Several real ``headwater serve`` processes sharing this machine's PostgreSQL and Redis (a schema and a key
prefix per test), on loopback ports, with a paced scripted backend: any request may land on any replica.

What is checked: every endpoint round-robin; a stream cut at a random point and resumed on another replica is
byte-identical to the stored log (many seeds); a cancel sent to one replica stops a run owned by another;
kill -9 of the owner mid-run ends the response failed within the lease bound, its followers on other replicas get
the terminal events and the stored log passes ``headwater check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from headwater.server.serving import shares_ports
from services import TAKEOVER_BOUND, Replicas, frames_of, payload, stored_log, wait_status
from test_metrics import figures


def test_every_endpoint_answers_on_any_replica(replicas: Replicas) -> None:
    urls = [p.url for p in replicas(3, steps=5)]
    turn = iter(urls * 10)
    created = httpx.post(f"{next(turn)}/v1/responses", json={"input": "hi", "model": "m"}, timeout=30).json()
    assert created["status"] == "completed"
    rid = created["id"]
    assert httpx.get(f"{next(turn)}/v1/responses/{rid}", timeout=10).json()["output"] == created["output"]
    items = httpx.get(f"{next(turn)}/v1/responses/{rid}/input_items", timeout=10).json()
    assert [i["content"][0]["text"] for i in items["data"]] == ["hi"]
    chained = httpx.post(f"{next(turn)}/v1/responses", json={"input": "more", "previous_response_id": rid},
                         timeout=30).json()
    assert chained["status"] == "completed" and chained["previous_response_id"] == rid
    background = httpx.post(f"{next(turn)}/v1/responses", json={"input": "x", "background": True}, timeout=30).json()
    assert background["status"] == "queued"
    assert wait_status(next(turn), background["id"])["status"] == "completed"
    replay = stored_log(next(turn), background["id"])
    assert payload(replay[-1])["type"] == "response.completed"
    assert [payload(f)["sequence_number"] for f in replay] == list(range(len(replay)))
    with httpx.stream("POST", f"{next(turn)}/v1/responses", json={"input": "s", "stream": True}, timeout=30) as r:
        streamed = frames_of(r)
    assert payload(streamed[-1])["type"] == "response.completed"
    not_cancellable = httpx.post(f"{next(turn)}/v1/responses/{rid}/cancel", timeout=10)
    assert not_cancellable.status_code == 400
    assert httpx.delete(f"{next(turn)}/v1/responses/{rid}", timeout=10).json()["deleted"] is True
    gone = httpx.get(f"{next(turn)}/v1/responses/{rid}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{next(turn)}/v1/responses/{rid}/input_items", timeout=10).status_code == 404
    for url in urls:
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200
    scraped = [figures(url) for url in urls]
    assert sum(f["headwater_events_total"] for f in scraped) > 0
    assert all(f["headwater_store_seconds_count{operation=get}"] > 0 for f in scraped)


def test_a_stream_cut_anywhere_and_resumed_on_another_replica_is_the_stored_log(replicas: Replicas) -> None:
    urls = [p.url for p in replicas(3, steps=30, delay=0.01)]
    for seed in range(12):
        rng = random.Random(seed)
        first, second, third = rng.sample(urls, 3)
        body = {"input": f"seed {seed}", "stream": True, "background": rng.random() < 0.5}
        cut = rng.randint(1, 40)
        with httpx.stream("POST", f"{first}/v1/responses", json=body, timeout=30) as r:
            got = frames_of(r, limit=cut)
        rid = payload(got[0])["response"]["id"]
        last = payload(got[-1])["sequence_number"]
        if payload(got[-1])["type"] != "response.completed":
            with httpx.stream("GET", f"{second}/v1/responses/{rid}",
                              params={"stream": "true", "starting_after": str(last)}, timeout=30) as r:
                got += frames_of(r)
        assert got == stored_log(third, rid), f"seed {seed}"
        assert payload(got[-1])["type"] == "response.completed"


def test_a_cancel_sent_to_one_replica_stops_a_run_owned_by_another(replicas: Replicas) -> None:
    owner, other = replicas(2, steps=2000, delay=0.01)
    created = httpx.post(f"{owner.url}/v1/responses", json={"input": "long", "background": True}, timeout=30).json()
    rid = created["id"]
    with httpx.stream("GET", f"{other.url}/v1/responses/{rid}", params={"stream": "true"}, timeout=30) as r:
        frames_of(r, limit=5)  # it is generating
    cancelled = httpx.post(f"{other.url}/v1/responses/{rid}/cancel", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    log = stored_log(other.url, rid)
    terminal = payload(log[-1])
    assert terminal["type"] == "response.incomplete"
    assert terminal["response"]["status"] == "cancelled" and terminal["response"]["incomplete_details"] is None
    deltas = sum(1 for f in log if payload(f)["type"] == "response.output_text.delta")
    assert deltas < 2000
    assert stored_log(owner.url, rid) == log  # nothing generated after the terminal event


def test_kill_9_of_the_owner_fails_the_response_and_every_follower_gets_the_end(
    replicas: Replicas, tmp_path: Path
) -> None:
    owner, second, third = replicas(3, steps=5000, delay=0.01)
    created = httpx.post(f"{owner.url}/v1/responses", json={"input": "long", "background": True}, timeout=30).json()
    rid = created["id"]
    received: dict[str, list[bytes]] = {}
    started = threading.Barrier(3)

    def follow(url: str) -> None:
        with httpx.stream("GET", f"{url}/v1/responses/{rid}", params={"stream": "true"}, timeout=60) as r:
            frames: list[bytes] = []
            buffer = b""
            for chunk in r.iter_bytes():
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    if not frame.startswith(b":"):
                        frames.append(frame + b"\n\n")
                        if len(frames) == 3:
                            started.wait(30)
            received[url] = frames

    followers = [threading.Thread(target=follow, args=(url,)) for url in (second.url, third.url)]
    for thread in followers:
        thread.start()
    started.wait(30)
    owner.kill()
    killed = time.monotonic()
    for thread in followers:
        thread.join(60)
    ended = time.monotonic() - killed
    for url in (second.url, third.url):
        frames = received[url]
        assert [payload(f)["type"] for f in frames[-2:]] == ["error", "response.failed"]
        assert frames == stored_log(url, rid)
    print(f"kill -9 to terminal event at the followers: {ended:.2f}s")
    assert ended < TAKEOVER_BOUND * 3, f"takeover took {ended:.1f}s"
    assert sum(figures(url)["headwater_lease_takeovers_total"] for url in (second.url, third.url)) == 1
    final = httpx.get(f"{second.url}/v1/responses/{rid}", timeout=10).json()
    assert final["status"] == "failed" and final["error"]["code"] == "server_lost"
    recording = tmp_path / "stored.sse"
    recording.write_bytes(b"".join(stored_log(third.url, rid)))
    check = subprocess.run([sys.executable, "-m", "headwater", "check", str(recording)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def _sockets_on(port: int) -> dict[int, str]:
    """The TCP sockets on local ``port`` (IPv4 and IPv6): inode -> state ('0A' listening, '01' established)."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found[int(fields[9])] = fields[3]
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.skipif(not shares_ports(), reason="workers share one listening socket on this system")
def test_workers_listen_on_sockets_of_their_own_and_connections_spread_over_them(replicas: Replicas) -> None:
    # One shared listening socket lets whichever worker wakes first accept a whole burst of connections; with
    # a socket per worker (SO_REUSEPORT) the kernel spreads them. The parent only holds the port.
    (server,) = replicas(1, steps=3, extra=("--workers", "2"))
    assert server.process is not None
    parent = server.process.pid
    workers = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    assert len(workers) == 2
    listening = {inode for inode, state in _sockets_on(server.port).items() if state == "0A"}
    assert len(listening) == 2
    assert not listening & _socket_inodes(parent)
    assert all(len(listening & _socket_inodes(pid)) == 1 for pid in workers)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(64)]
    try:
        for conn in held:  # (a request answered: the connection has been accepted by its worker)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        established = {inode for inode, state in _sockets_on(server.port).items() if state == "01"}
        accepted = [len(established & _socket_inodes(pid)) for pid in workers]
        assert sum(accepted) == 64
        assert min(accepted) >= 8, accepted  # (binomial(64, 1/2) below 8: about 1e-10)
    finally:
        for conn in held:
            conn.close()


def test_two_workers_on_one_port_are_two_replicas(replicas: Replicas, postgres_url: str) -> None:
    (server,) = replicas(1, steps=30, delay=0.01, extra=("--workers", "2"))
    for seed in range(6):  # the kernel spreads connections over the workers: resumes cross them
        rng = random.Random(seed)
        with httpx.stream("POST", f"{server.url}/v1/responses", json={"input": "w", "stream": True,
                                                                        "background": True}, timeout=30) as r:
            got = frames_of(r, limit=rng.randint(1, 30))
        rid = payload(got[0])["response"]["id"]
        with httpx.stream("GET", f"{server.url}/v1/responses/{rid}",
                          params={"stream": "true", "starting_after": str(payload(got[-1])["sequence_number"])},
                          timeout=30) as r:
            got += frames_of(r)
        assert got == stored_log(server.url, rid)
    base, _, schema = postgres_url.partition("?schema=")

    async def count() -> int:
        conn = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            value: int = await conn.fetchval("SELECT count(*) FROM replicas")
            return value
        finally:
            await conn.close()

    seen = 0
    for _ in range(150):  # each worker registers its replica row when it starts: wait for both (a guard)
        seen = asyncio.run(count())
        if seen == 2:
            break
        time.sleep(0.1)
    assert seen == 2


def _alive(pid: int) -> bool:
    """Running (a zombie, awaiting a reaper that a container may not have, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_workers_stop_when_their_parent_is_killed_and_its_metrics_directory_is_swept(replicas: Replicas) -> None:
    (server,) = replicas(1, steps=400, delay=0.05, extra=("--workers", "2"))
    assert server.process is not None
    parent = server.process.pid
    children = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    assert len(children) == 2
    shared = list(Path(tempfile.gettempdir()).glob(f"headwater-metrics-{parent}-*"))
    assert len(shared) == 1  # the workers' metrics directory, named after the parent
    running = httpx.post(f"{server.url}/v1/responses", json={"input": "long", "background": True}, timeout=30)
    assert running.json()["status"] in ("queued", "in_progress")
    server.kill()  # kill -9 of the parent: it cannot forward a signal nor remove its directory
    server.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children), "a worker outlived its parent"
    with socket.socket() as probe:  # nobody accepts on the port any more
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0
    assert shared[0].exists()
    (again,) = replicas(1, steps=5, extra=("--workers", "2"))  # the next --workers server sweeps it
    assert not shared[0].exists()
    ended = httpx.get(f"{again.url}/v1/responses/{running.json()['id']}", timeout=10).json()
    assert ended["status"] == "failed" and ended["error"]["code"] == "server_shutdown"
