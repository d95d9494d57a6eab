"""The inspector's HTTP side: the page and its assets, and the API it reads (behind the server's API keys).

Every stream the page shows is analysed here by ``analysis`` (the protocol core's decoder, checker and
Accumulator); the page only draws. A live request and a stored response are fetched over real HTTP from this
same server (so they stream exactly as a client sees them, auth and validation included) or, for a live
request, from the Responses upstream it relays. Analyses are kept in memory per API key, newest 32.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from headwater.protocol.errors import ProtocolError
from headwater.server.errors import APIError
from headwater.server.http.auth import key_owner

from .analysis import ResponseStream, StreamAnalysis, analyse_recording

__all__ = ["Inspector", "Session", "mount", "read_recording"]

MAX_RECORDING_BYTES = 64 * 1024 * 1024
MAX_SESSIONS = 32
_STATIC = Path(str(importlib.resources.files("headwater.inspect").joinpath("static")))
# The page may talk to this server only: no CDN, font or script from elsewhere.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(slots=True)
class Session:
    """One analysed stream: a recording, a live request or a stored response, owned by the key that made it."""

    id: str
    owner: str | None
    name: str
    source: str  # "recording", "live" or "stored"
    analysis: StreamAnalysis
    live: bool = False  # still receiving events
    status: dict[str, Any] = field(default_factory=dict)  # the inspected stream's HTTP status and headers

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "live": self.live,
            "events": self.analysis.count,
            "responses": [r.summary() for r in self.analysis.responses],
        }


class Inspector:
    """What the inspector's handlers share (``app.state.inspector``): who may call, the sessions, and the
    server it is mounted in (None for ``headwater inspect``, which has recordings only)."""

    def __init__(self, api_key_digests: frozenset[str], server: Any = None) -> None:
        self.api_key_digests = api_key_digests
        self.server = server
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self._ids = itertools.count(1)

    def add(self, owner: str | None, name: str, source: str, analysis: StreamAnalysis) -> Session:
        session = Session(f"s{next(self._ids)}-{secrets.token_hex(4)}", owner, name, source, analysis)
        self.sessions[session.id] = session
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def get(self, owner: str | None, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.owner != owner:  # another key's session is as unknown as a missing one
            raise APIError.not_found(f"inspector session '{session_id}' not found")
        return session

    @property
    def upstream(self) -> Any:
        """The Responses upstream the server relays, if it relays one (``--backend responses``)."""
        backend = getattr(self.server, "backend", None)
        if backend is None or getattr(backend, "name", None) != "responses":
            return None
        return getattr(backend, "upstream", None)


def _inspector(conn: HTTPConnection) -> Inspector:
    state = conn.app.state
    inspector: Inspector | None = getattr(state, "inspector", None)
    if inspector is None:  # mounted in `headwater serve`: the server's keys, and the server itself
        server = state.headwater
        inspector = state.inspector = Inspector(server.config.api_key_digests, server)
    return inspector


def _authenticate(conn: HTTPConnection) -> tuple[Inspector, str | None]:
    """The inspector and the caller's key digest; 401 in the server's own words without an accepted key."""
    inspector = _inspector(conn)
    return inspector, key_owner(conn, inspector.api_key_digests)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(obj), status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _response_json(stream: ResponseStream) -> dict[str, Any]:
    return {**stream.summary(), "rows": stream.rows, "findings": stream.findings}


# --- the page ---------------------------------------------------------------------------------------------


async def page(request: Request) -> Response:
    html = (_STATIC / "index.html").read_bytes()
    return Response(html, media_type="text/html; charset=utf-8",
                    headers={"content-security-policy": _CSP, "cache-control": "no-cache"})


# --- sessions: recordings ---------------------------------------------------------------------------------


async def info(request: Request) -> Response:
    inspector, owner = _authenticate(request)
    server = inspector.server
    models = server.backend.models() if server is not None else []
    return _json({
        "server": server is not None,
        "upstream": inspector.upstream.url if inspector.upstream is not None else None,
        "models": models,
        "sessions": [s.describe() for s in inspector.sessions.values() if s.owner == owner],
    })


async def upload(request: Request) -> Response:
    """POST a recording (SSE or JSONL bytes); ``?name=`` names it."""
    inspector, owner = _authenticate(request)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_RECORDING_BYTES:
            raise APIError(413, f"a recording may be at most {MAX_RECORDING_BYTES} bytes", code="request_too_large")
        chunks.append(chunk)
    name = request.query_params.get("name") or "recording"
    session = await asyncio.to_thread(read_recording, b"".join(chunks), name)
    return _json(_session_json(inspector.add(owner, name, "recording", session)))


def read_recording(data: bytes, name: str) -> StreamAnalysis:
    """A recording's analysis; 400 ``unreadable_recording`` when it gives no event (as ``headwater check``
    calls such a file unreadable)."""
    analysis = analyse_recording(data)
    if not analysis.count:
        what = "no readable events" if analysis.problems else "no events found (not an SSE or JSONL stream?)"
        raise APIError.invalid(f"{name}: unreadable: {what}", code="unreadable_recording")
    return analysis


def _session_json(session: Session) -> dict[str, Any]:
    return {**session.describe(), "status": session.status, "problems": session.analysis.problems,
            "responses": [_response_json(r) for r in session.analysis.responses]}


async def get_session(request: Request) -> Response:
    inspector, owner = _authenticate(request)
    return _json(_session_json(inspector.get(owner, request.path_params["session_id"])))


def _response_of(request: Request, session: Session) -> ResponseStream:
    raw = request.query_params.get("response", "0")
    responses = session.analysis.responses
    if not raw.isdigit() or int(raw) >= len(responses):
        raise APIError.invalid(f"'response' must be between 0 and {len(responses) - 1}", "response",
                               code="invalid_value")
    return responses[int(raw)]


async def snapshot(request: Request) -> Response:
    """The response as it stood at event ``index`` (of response ``response``), and that event's payload."""
    inspector, owner = _authenticate(request)
    stream = _response_of(request, inspector.get(owner, request.path_params["session_id"]))
    raw = request.query_params.get("index", "")
    try:
        index = int(raw)
    except ValueError:
        raise APIError.invalid(f"'index' must be an integer, not {raw!r}", "index", code="invalid_value") from None
    if not stream.events or not 0 <= index < len(stream.events):
        raise APIError.invalid(f"'index' must be between 0 and {len(stream.events) - 1}", "index",
                               code="invalid_value")
    body = stream.snapshot(index)
    body["event"] = msgspec.Raw(stream.events[index].data)
    return _json(body)


_EXPORTS = {
    "sse": ("text/event-stream; charset=utf-8", ".sse"),
    "jsonl": ("application/x-ndjson", ".jsonl"),
    "check": ("text/plain; charset=utf-8", ".check.txt"),
}


async def export(request: Request) -> Response:
    """The stream as SSE or JSONL (``?response=`` for one response of it), or its findings as ``headwater check``
    prints them (``format=check``)."""
    inspector, owner = _authenticate(request)
    session = inspector.get(owner, request.path_params["session_id"])
    kind = request.query_params.get("format", "sse")
    if kind not in _EXPORTS:
        raise APIError.invalid("'format' must be sse, jsonl or check", "format", code="invalid_value")
    media, suffix = _EXPORTS[kind]
    if kind == "check":
        data = ("\n".join(session.analysis.check_lines(session.name)) + "\n").encode()
    else:
        response = _response_of(request, session) if "response" in request.query_params else None
        index = session.analysis.responses.index(response) if response is not None else None
        data = session.analysis.export(kind, index)
    stem = Path(session.name).stem or "stream"
    return Response(data, media_type=media, headers={
        "content-disposition": f'attachment; filename="{stem}{suffix}"', "cache-control": "no-store"})


# --- sessions: live requests and stored responses ---------------------------------------------------------


def _self_url(request: Request, path: str) -> str:
    """This server's own address, as the socket the request came in on has it."""
    server = request.scope.get("server") or ("127.0.0.1", 80)
    host, port = server[0], server[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


async def live(request: Request) -> StreamingResponse:
    """POST ``{"target": "server"|"upstream", "request": {...}}``: send the request (streaming) and answer with
    NDJSON lines: the session, its rows as they arrive (with their findings), then the end."""
    inspector, owner = _authenticate(request)
    if inspector.server is None:
        raise APIError.invalid("live requests need `headwater serve`; `headwater inspect` opens recordings only",
                               code="no_server")
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError:
        raise APIError.invalid("the body is not JSON", code="invalid_json") from None
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        raise APIError.invalid("expected {'target': 'server' | 'upstream', 'request': {...}}", "request")
    payload = {**body["request"], "stream": True}
    target = body.get("target", "server")
    if target == "upstream":
        upstream = inspector.upstream
        if upstream is None:
            raise APIError.invalid("this server relays no Responses upstream (--backend responses)", "target")
        url, headers = upstream.url, dict(upstream.headers)
    elif target == "server":
        url, headers = _self_url(request, "/v1/responses"), _forwarded(request)
    else:
        raise APIError.invalid("'target' must be 'server' or 'upstream'", "target", code="invalid_value")
    name = f"live {payload.get('model') or ''}".strip()
    session = inspector.add(owner, name, "live", StreamAnalysis())
    return _follow(session, "POST", url, headers, msgspec.json.encode(payload))


async def stored(request: Request) -> StreamingResponse:
    """A stored response's event log, as ``GET /v1/responses/{id}?stream=true`` resumes it from the start (a
    response still running is followed to its end)."""
    inspector, owner = _authenticate(request)
    if inspector.server is None:
        raise APIError.invalid("stored responses need `headwater serve`", code="no_server")
    response_id = request.path_params["response_id"]
    url = _self_url(request, f"/v1/responses/{response_id}?stream=true&starting_after=-1")
    session = inspector.add(owner, response_id, "stored", StreamAnalysis())
    return _follow(session, "GET", url, _forwarded(request), None)


def _forwarded(request: Request) -> dict[str, str]:
    headers = {"accept": "text/event-stream", "content-type": "application/json"}
    if "authorization" in request.headers:  # the same key: the same owner, in the inspector and the server
        headers["authorization"] = request.headers["authorization"]
    return headers


def _follow(session: Session, method: str, url: str, headers: dict[str, str], body: bytes | None
            ) -> StreamingResponse:
    session.live = True
    return StreamingResponse(_relay(session, method, url, headers, body), media_type="application/x-ndjson",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def _line(obj: Any) -> bytes:
    return msgspec.json.encode(obj) + b"\n"


async def _relay(session: Session, method: str, url: str, headers: dict[str, str], body: bytes | None
                 ) -> AsyncIterator[bytes]:
    analysis = session.analysis
    yield _line({"kind": "session", **session.describe()})
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=300.0)) as client, \
                client.stream(method, url, headers=headers, content=body) as answer:
            session.status = {"status": answer.status_code, "content_type": answer.headers.get("content-type"),
                              "dropped_tools": answer.headers.get("x-headwater-dropped-tools")}
            yield _line({"kind": "status", **session.status})
            if answer.status_code != 200 or "text/event-stream" not in answer.headers.get("content-type", ""):
                error = await answer.aread()
                try:
                    detail: Any = msgspec.json.decode(error)
                except msgspec.DecodeError:
                    detail = error.decode("utf-8", "replace")[:2000]
                yield _line({"kind": "error", "status": answer.status_code, "body": detail})
            else:
                async for chunk in answer.aiter_raw():
                    added = analysis.feed(chunk, time.monotonic() - started)
                    if added:
                        yield _rows(analysis, added)
                yield _rows(analysis, analysis.close(time.monotonic() - started))
    except ProtocolError as exc:
        yield _line({"kind": "error", "status": None, "body": f"the stream is unreadable: {exc}"})
    except httpx.HTTPError as exc:
        yield _line({"kind": "error", "status": None, "body": f"{type(exc).__name__}: {exc}"})
    finally:
        for response in analysis.responses:
            response.finish()
        session.live = False
    end_findings = [{"response": r, **f} for r, stream in enumerate(analysis.responses)
                    for f in stream.findings if f["end"]]
    yield _line({"kind": "end", "findings": end_findings, **session.describe()})


def _rows(analysis: StreamAnalysis, added: list[tuple[int, dict[str, Any]]]) -> bytes:
    """One NDJSON line for the rows one chunk completed, with the findings each raised."""
    rows = []
    for r, row in added:
        findings = analysis.responses[r].findings
        rows.append({"response": r, "row": row, "findings": [findings[i] for i in row["f"]]})
    return _line({"kind": "rows", "rows": rows})


# --- the mount --------------------------------------------------------------------------------------------


def mount(path: str = "/inspect") -> Mount:
    """The inspector, for ``create_app`` (the page at ``path``, its API below ``path/api``)."""
    return Mount(path, routes=[
        Route("/", page, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=_STATIC), name="inspector-static"),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/sessions", upload, methods=["POST"]),
        Route("/api/sessions/{session_id}", get_session, methods=["GET"]),
        Route("/api/sessions/{session_id}/snapshot", snapshot, methods=["GET"]),
        Route("/api/sessions/{session_id}/export", export, methods=["GET"]),
        Route("/api/live", live, methods=["POST"]),
        Route("/api/stored/{response_id}", stored, methods=["GET"]),
    ])
