"""The crash loop: a real ``headwater serve`` killed with SIGKILL again and again while background runs, a stream
and a deeply nested request are in flight, restarted each time on the same data directory. The server always
starts, every response stays readable and ends in a terminal state, and every stored log passes
``headwater check``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from headwater.server.testing import ServeProcess

CYCLES = 6
TERMINAL = {"completed", "incomplete", "failed", "cancelled"}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def insert_unreadable_record(database: Path) -> None:
    """What a kill leaves of a response stored before there was a nesting limit: its record, an input item and
    a log, nested deeper than any decoder here goes."""
    resource = (f'{{"id":"resp_deep","object":"response","created_at":1,"status":"in_progress","model":"m",'
                f'"output":[],"tools":[{{"type":"function","name":"f","parameters":{{"x":{deep(5000)}}}}}]}}')
    with sqlite3.connect(database) as db:
        db.execute("INSERT INTO responses (id, owner, status, created_at, data) "
                   "VALUES ('resp_deep', NULL, 'in_progress', 1, ?)", (resource.encode(),))
        db.execute("INSERT INTO input_items (response_id, position, item_id, data) VALUES ('resp_deep', 0, 'm1', ?)",
                   (f'{{"type":"message","role":"user","content":"hi","x":{deep(5000)}}}'.encode(),))
        db.execute("INSERT INTO events (response, seq, type, data) VALUES "
                   "((SELECT key FROM responses WHERE id = 'resp_deep'), 0, 'response.created', ?)",
                   (f'{{"type":"response.created","sequence_number":0,"response":{resource}}}'.encode(),))


def nested_tools_request(levels: int) -> bytes:
    """A background request whose one tool's JSON Schema is nested ``levels`` deep."""
    schema = '{"type":"object","properties":{"x":' + deep(levels) + "}}"
    return (b'{"input":"hi","background":true,"tools":[{"type":"function","name":"f","parameters":'
            + schema.encode() + b"}]}")


def test_kill_9_in_a_loop_never_breaks_start_up_nor_any_stored_response(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": f"w{i} "} for i in range(200)] + [{"finish": "stop"}]))
    data = tmp_path / "data"
    server = ServeProcess("--backend", "scripted", "--backend-option", f"script={script}",
                          "--backend-option", "delay=0.02", "--data-dir", str(data), "--log-level", "info",
                          log_path=str(tmp_path / "serve.log"))
    ids: set[str] = set()
    server.start()
    server.stop()
    insert_unreadable_record(data / "headwater.sqlite3")
    ids.add("resp_deep")
    for cycle in range(CYCLES):
        server.start()  # raises if the server does not start
        client = httpx.Client(base_url=server.url, timeout=30)
        for _ in range(3):
            ids.add(client.post("/v1/responses", json={"input": f"cycle {cycle}", "background": True}).json()["id"])
        # Deeply nested, yet under the request nesting limit (deeper bodies are refused; deeper stored records
        # are the one inserted above).
        nested = client.post("/v1/responses", content=nested_tools_request(48),
                             headers={"content-type": "application/json"})
        assert nested.status_code == 200, nested.text
        ids.add(nested.json()["id"])
        streamed: list[str] = []

        def stream(client: httpx.Client = client, streamed: list[str] = streamed) -> None:
            try:
                with client.stream("POST", "/v1/responses", json={"input": "s", "stream": True}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: ") and not streamed:
                            streamed.append(json.loads(line[6:])["response"]["id"])
            except httpx.HTTPError:
                pass  # the server was killed under it

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 10
        while not streamed and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1 * (cycle % 3))  # kill at different points of the runs
        server.kill()
        reader.join(10)
        ids.update(streamed)
        client.close()
    server.start()
    client = httpx.Client(base_url=server.url, timeout=30)
    logs = []
    for response_id in sorted(ids):
        record = client.get(f"/v1/responses/{response_id}")
        assert record.status_code == 200, (response_id, record.text)
        # (read without the json module: a record may be nested too deep for it; the resource's own status is
        # the first "status" of its JSON, before any output item's)
        status = record.content.split(b'"status":"', 1)[1].split(b'"', 1)[0].decode()
        assert status in TERMINAL, (response_id, status)
        replay = client.get(f"/v1/responses/{response_id}", params={"stream": "true"})
        assert replay.status_code == 200
        path = tmp_path / f"{response_id}.sse"
        path.write_bytes(replay.content)
        logs.append(str(path))
    client.close()
    server.stop()
    checked = subprocess.run([sys.executable, "-m", "headwater", "check", "--quiet", *logs],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log
    assert log.count("listening on") == CYCLES + 2
    assert log.count("by an earlier run of the server; closed as failed") >= 3 * CYCLES  # kills hit live runs
    assert "resp_deep: its stored record cannot be read" in log
