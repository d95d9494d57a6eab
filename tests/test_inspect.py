"""The inspector's analysis and its HTTP API, over real loopback HTTP (no browser: see test_inspect_browser.py).

Rows, findings and snapshots must be exactly what the protocol core says: the checker's findings as
``headwater check --split`` prints them, the Accumulator's response at each event.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from headwater.cli import main as cli_main
from headwater.cli import read_events
from headwater.inspect.analysis import analyse_recording
from headwater.protocol.accumulate import Accumulator
from headwater.protocol.conformance import check, split_responses
from headwater.protocol.resources import to_builtins
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta, UsageStep
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "openai"
UPSTREAM = Path(__file__).parent / "fixtures" / "upstream" / "responses"
PHASE = CAPTURES / "openai-phase.1.jsonl"  # findings at events 6, 7, ... (a sequence gap, texts that differ)
TWO = CAPTURES / "openai-shell-tool.1.jsonl"  # two responses back to back
KEY = "sk-inspector-test"
HELLO = [TextDelta("Hello"), TextDelta(", inspector"), TextDelta("!"), UsageStep(5, 3), Finish("stop")]


def check_output(path: Path) -> list[str]:
    """What ``headwater check PATH`` prints: read problems (stderr), findings (stdout), the summary (stderr).
    Its note that a file holds several responses is left out: the inspector shows them as tabs instead."""
    result = CliRunner().invoke(cli_main, ["check", str(path)])
    err = [line for line in result.stderr.splitlines() if "responses back to back" not in line]
    return [*err[:-1], *result.stdout.splitlines(), err[-1]]


def fold(events: list[Any]) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    return acc


# --- the analysis -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PHASE, TWO, UPSTREAM / "vllm-shared-output-index.sse",
                                  CAPTURES / "github-copilot-id-rotation.1.jsonl",
                                  CAPTURES / "issue-19067-parallel-tool-call-wrapper.jsonl",
                                  Path(__file__).parent / "fixtures" / "sloppy" / "cut-mid-message.sse"],
                         ids=lambda p: p.name)
def test_analysis_is_the_checker_and_the_accumulator(path: Path) -> None:
    events = read_events(str(path))
    analysis = analyse_recording(path.read_bytes())
    several = sum(e.type == "response.created" for e in events) > 1
    groups = split_responses(events) if several else [events]
    assert [len(r.rows) for r in analysis.responses] == [len(g) for g in groups]
    for stream, group in zip(analysis.responses, groups, strict=True):
        assert [row["type"] for row in stream.rows] == [e.type for e in group]
        assert [(f["row"], f["rule"], f["message"]) for f in stream.findings] == [
            (min(v.index, len(group) - 1), v.rule_id, v.message) for v in check(group)
        ]
        for row in stream.rows:  # each row points at its own findings
            assert all(stream.findings[k]["row"] == row["i"] for k in row["f"])
        assert stream.snapshot(len(group) - 1)["response"] == to_builtins(fold(group).response)
    assert list(analysis.check_lines(str(path))) == check_output(path)


def test_a_recording_cut_mid_event_keeps_the_events_around_the_cut(tmp_path: Path) -> None:
    cut = tmp_path / "cut.jsonl"
    lines = PHASE.read_bytes().splitlines(keepends=True)
    cut.write_bytes(b"".join(lines[:5]) + lines[5][:40] + b"\n" + b"".join(lines[6:]))
    analysis = analyse_recording(cut.read_bytes())
    assert analysis.count == len(lines) - 1
    assert [p["line"] for p in analysis.problems] == [6] and analysis.problems[0]["severity"] == "error"
    assert list(analysis.check_lines(str(cut))) == check_output(cut)


def test_rows_name_their_item_part_and_size() -> None:
    analysis = analyse_recording(PHASE.read_bytes())
    rows = analysis.responses[0].rows
    lines = PHASE.read_bytes().splitlines()
    assert [row["size"] for row in rows] == [len(line) for line in lines if line.strip()]
    delta = next(row for row in rows if row["type"] == "response.output_text.delta")
    assert delta["oi"] == 0 and delta["part"] == "c0" and delta["item"].startswith("msg_")
    added = next(row for row in rows if row["type"] == "response.output_item.added")
    assert added["item"].startswith("msg_")
    assert rows[0]["dt"] is None  # a recording keeps no times


def test_sse_names_that_differ_are_kept_and_exported() -> None:
    path = Path(__file__).parent / "fixtures" / "sloppy" / "mismatched-event-names.sse"
    analysis = analyse_recording(path.read_bytes())
    named = [row for row in analysis.responses[0].rows if "sse" in row]
    assert named and all(row["sse"] != row["type"] for row in named)
    again = analyse_recording(analysis.export("sse"))
    assert [f["rule"] for f in again.responses[0].findings] == [f["rule"] for f in analysis.responses[0].findings]
    assert "SSE-NAME" in {f["rule"] for f in again.responses[0].findings}


# --- the HTTP API -----------------------------------------------------------------------------------------


@pytest.fixture
def server(serve: Callable[[Any], Any]) -> Iterator[tuple[str, ScriptedBackend]]:
    backend = ScriptedBackend(HELLO, models=["scripted"])
    config = ServerConfig.with_keys([KEY, "sk-other"], store="memory")
    live = serve(create_app(config, backend=backend, store=MemoryStore()))
    yield live.url, backend


def client(url: str, key: str | None = KEY) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url + "/inspect/api/", headers=headers, timeout=20)


def upload(http: httpx.Client, path: Path) -> dict[str, Any]:
    answer = http.post("sessions", params={"name": path.name}, content=path.read_bytes())
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def ndjson(answer: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in answer.text.splitlines() if line]


def test_upload_snapshot_and_exports(server: tuple[str, ScriptedBackend]) -> None:
    url, _ = server
    events = read_events(str(PHASE))
    with client(url) as http:
        session = upload(http, PHASE)
        [response] = session["responses"]
        assert len(response["rows"]) == len(events) == session["events"]
        assert response["errors"] == sum(1 for v in check(events) if v.severity == "error")
        middle = len(events) // 2
        snap = http.get(f"sessions/{session['id']}/snapshot", params={"response": 0, "index": middle}).json()
        partial = fold(events[: middle + 1])
        assert snap["index"] == middle
        assert snap["response"] == to_builtins(partial.response)
        assert snap["output_text"] == partial.output_text
        assert snap["event"]["sequence_number"] == events[middle].sequence_number
        jsonl = http.get(f"sessions/{session['id']}/export", params={"format": "jsonl"})
        assert jsonl.content.splitlines() == [line for line in PHASE.read_bytes().splitlines() if line.strip()]
        sse = http.get(f"sessions/{session['id']}/export", params={"format": "sse"})
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert [e.type for e in read_events_bytes(sse.content)] == [e.type for e in events]
        found = http.get(f"sessions/{session['id']}/export", params={"format": "check"})
        assert found.text.splitlines() == [line.replace(str(PHASE), PHASE.name) for line in check_output(PHASE)]
        assert found.headers["content-disposition"] == 'attachment; filename="openai-phase.1.check.txt"'


def read_events_bytes(data: bytes) -> list[Any]:
    return [e for r in analyse_recording(data).responses for e in (rec.event for rec in r.events)]


def test_several_responses_are_shown_separately(server: tuple[str, ScriptedBackend]) -> None:
    url, _ = server
    with client(url) as http:
        session = upload(http, TWO)
        groups = split_responses(read_events(str(TWO)))
        assert [len(r["rows"]) for r in session["responses"]] == [len(g) for g in groups]
        assert [r["id"] for r in session["responses"]] == [g[0].response.id for g in groups]
        one = http.get(f"sessions/{session['id']}/export", params={"format": "jsonl", "response": 1})
        assert len(one.content.splitlines()) == len(groups[1])


def test_without_the_key_nothing_is_told(server: tuple[str, ScriptedBackend]) -> None:
    url, _ = server
    with client(url) as http:
        session = upload(http, PHASE)
    sid = session["id"]
    calls = [("GET", "info"), ("POST", "sessions"), ("GET", f"sessions/{sid}"),
             ("GET", f"sessions/{sid}/snapshot?index=0"), ("GET", f"sessions/{sid}/export?format=jsonl"),
             ("POST", "live"), ("GET", "stored/resp_x")]
    for key in (None, "sk-wrong"):
        with client(url, key) as http:
            for method, path in calls:
                answer = http.request(method, path, content=b"{}")
                assert answer.status_code == 401, (key, path, answer.text)
                assert set(answer.json()["error"]) == {"type", "code", "message", "param"}
                assert "SEQ-STEP" not in answer.text and "response.created" not in answer.text
    with client(url, "sk-other") as http:  # another key: the session is as unknown as a missing one
        assert http.get(f"sessions/{sid}").status_code == 404
        assert http.get("info").json()["sessions"] == []
    page = httpx.get(url + "/inspect/")  # the page itself holds no data, and loads nothing from elsewhere
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")


def test_bad_input_gets_typed_errors(server: tuple[str, ScriptedBackend]) -> None:
    url, _ = server
    with client(url) as http:
        bad = http.post("sessions", params={"name": "x.sse"}, content=b"data: {not json\n\n")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unreadable_recording"
        assert "no readable events" in bad.json()["error"]["message"]
        empty = http.post("sessions", content=b"\n\n")
        assert empty.status_code == 400 and "no events" in empty.json()["error"]["message"]
        session = upload(http, PHASE)
        for params in ({"index": "x"}, {"index": 10_000}, {"index": 0, "response": 3}):
            answer = http.get(f"sessions/{session['id']}/snapshot", params=params)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_value"
        assert http.get(f"sessions/{session['id']}/export", params={"format": "pdf"}).status_code == 400
        assert http.post("live", content=b"[1]").status_code == 400
        assert http.post("live", json={"target": "mars", "request": {}}).status_code == 400
        assert http.post("live", json={"target": "upstream", "request": {}}).status_code == 400  # none relayed


def test_live_request_streams_rows_then_reopens_by_id(server: tuple[str, ScriptedBackend]) -> None:
    url, backend = server
    with client(url) as http:
        answer = http.post("live", json={"request": {"model": "scripted", "input": "hi"}})
        lines = ndjson(answer)
        assert [m["kind"] for m in lines][:2] == ["session", "status"] and lines[-1]["kind"] == "end"
        rows = [item["row"] for m in lines if m["kind"] == "rows" for item in m["rows"]]
        assert backend.runs[-1].request.messages  # the request really reached the backend
        served = httpx.get(url + "/v1/responses/" + lines[-1]["responses"][0]["id"],
                           params={"stream": "true"}, headers={"authorization": f"Bearer {KEY}"})
        stored_events = [rec.event for rec in analyse_recording(served.content).responses[0].events]
        assert [r["type"] for r in rows] == [e.type for e in stored_events]
        assert all(r["dt"] is not None for r in rows[1:])  # a live stream has times
        session = http.get(f"sessions/{lines[0]['id']}").json()
        assert session["responses"][0]["findings"] == [] and not session["live"]
        snap = http.get(f"sessions/{lines[0]['id']}/snapshot", params={"index": len(rows) - 1}).json()
        assert snap["output_text"] == "Hello, inspector!"
        response_id = lines[-1]["responses"][0]["id"]
        reopened = ndjson(http.get(f"stored/{response_id}"))
        again = [item["row"]["type"] for m in reopened if m["kind"] == "rows" for item in m["rows"]]
        assert again == [r["type"] for r in rows]
        missing = ndjson(http.get("stored/resp_missing"))
        assert [m["kind"] for m in missing] == ["session", "status", "error", "end"]
        assert missing[2]["status"] == 404
    with client(url, "sk-other") as http:  # the stored response belongs to the key that made it
        other = ndjson(http.get(f"stored/{response_id}"))
        assert [m.get("status") for m in other if m["kind"] == "error"] == [404]


def test_live_request_refused_by_the_server_shows_its_error(server: tuple[str, ScriptedBackend]) -> None:
    url, _ = server
    with client(url) as http:
        lines = ndjson(http.post("live", json={"request": {"model": "scripted", "input": "hi", "temperature": 9}}))
        error = next(m for m in lines if m["kind"] == "error")
        assert error["status"] == 400 and error["body"]["error"]["param"] == "temperature"


def test_headwater_inspect_serves_recordings_behind_its_own_key(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "inspect", str(PHASE), str(TWO)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("headwater inspect: http://127.0.0.1:"), first
        url, _, key = first.split()[-1].partition("#key=")
        base = url.rsplit("/inspect/", 1)[0]
        with client(base, key) as http:
            info = http.get("info").json()
            assert info["server"] is False and info["models"] == []
            assert [s["name"] for s in info["sessions"]] == [PHASE.name, TWO.name]
            assert http.post("live", json={"request": {}}).json()["error"]["code"] == "no_server"
        with client(base, None) as http:
            assert http.get("info").status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_headwater_inspect_refuses_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sse"
    bad.write_bytes(b"data: {oops\n\n")
    result = CliRunner().invoke(cli_main, ["inspect", str(bad)])
    assert result.exit_code == 2 and "unreadable" in result.stderr


def test_live_request_to_the_relayed_upstream(serve: Callable[[Any], Any]) -> None:
    from headwater.server.backends.responses import ResponsesBackend

    upstream_backend = ScriptedBackend(HELLO, models=["scripted"])
    upstream = serve(create_app(ServerConfig.with_keys(["sk-up"], store="memory"), backend=upstream_backend,
                                store=MemoryStore()))
    relay = ResponsesBackend(upstream.url, api_key="sk-up")
    front = serve(create_app(ServerConfig.with_keys([KEY], store="memory"), backend=relay, store=MemoryStore()))
    with client(front.url) as http:
        assert http.get("info").json()["upstream"] == upstream.url + "/v1/responses"
        lines = ndjson(http.post("live", json={"target": "upstream",
                                               "request": {"model": "scripted", "input": "hi", "store": True}}))
    rows = [item["row"] for m in lines if m["kind"] == "rows" for item in m["rows"]]
    response_id = lines[-1]["responses"][0]["id"]
    # The stream came from the upstream itself (stored there under its key), not through the front server.
    served = httpx.get(f"{upstream.url}/v1/responses/{response_id}", params={"stream": "true"},
                       headers={"authorization": "Bearer sk-up"})
    assert [r["type"] for r in rows] == [rec.event.type for rec in analyse_recording(served.content).responses[0].events]
    assert httpx.get(f"{front.url}/v1/responses/{response_id}",
                     headers={"authorization": f"Bearer {KEY}"}).status_code == 404
    asyncio.run(relay.aclose())
