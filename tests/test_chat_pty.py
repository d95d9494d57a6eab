"""``headwater chat`` in a real terminal: a pseudo-terminal runs ``python -m headwater.chat`` against a real
headwater server on loopback (scripted backend that echoes what it was asked). The test reads what a person would
see: streamed text, dim reasoning (ANSI styles appear only on a terminal), the closing line, one-line errors; and
that an interactive session carries the conversation through ``previous_response_id``."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from headwater.chat import Renderer, closing_line
from headwater.protocol.resources import IncompleteDetails, Response, Usage
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, GenerationRequest, ReasoningDelta, TextDelta, UsageStep
from headwater.server.backends.scripted import ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CLOSING = re.compile(r"\[completed \| (\d+) in, (\d+) out tokens \| first token [\d.]+s \| [\d.]+s \| (resp_\w+)\]")


def echo(request: GenerationRequest) -> list[ScriptItem]:
    said = request.messages[-1].content
    return [ReasoningDelta("considering "), ReasoningDelta("it"), TextDelta("You said: "), TextDelta(said),
            UsageStep(len(request.messages), 4), Finish("stop")]


class Terminal:
    """A process on a pseudo-terminal: ``expect`` what it prints, ``send`` what a person types."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}
        env.pop("NO_COLOR", None)
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.seen = ""

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the process closed the terminal
            return False
        if not data:
            return False
        self.seen += data.decode("utf-8", "replace")
        return True

    def expect(self, pattern: str | re.Pattern[str], start: int = 0, guard: float = 30.0) -> re.Match[str]:
        """Read until ``pattern`` shows in the plain text (styles stripped) after ``start``; ``guard`` only stops a
        hung test."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + guard
        while True:
            match = regex.search(self.plain, start)
            if match is not None:
                return match
            if time.monotonic() > deadline or not self._read(0.2):
                raise AssertionError(f"{regex.pattern!r} never appeared; the terminal shows:\n{self.plain}")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, guard: float = 30.0) -> int:
        deadline = time.monotonic() + guard
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05) and select.select([self.master], [], [], 0)[0]:
            pass
        return self.process.wait(timeout=5)

    @property
    def plain(self) -> str:
        return ANSI.sub("", self.seen).replace("\r\n", "\n")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@pytest.fixture
def server(serve: Callable[[Any], Any]) -> tuple[str, ScriptedBackend]:
    backend = ScriptedBackend(echo, models=["scripted-1"])
    live = serve(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore()))
    return live.url + "/v1", backend


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(*args: str) -> Terminal:
        term = Terminal([sys.executable, "-m", "headwater.chat", *args])
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def test_one_prompt_streams_the_answer_and_a_closing_line(server: tuple[str, Any], terminal: Any) -> None:
    url, _ = server
    term = terminal("hello there", "--base-url", url)
    closing = term.expect(CLOSING)
    assert term.wait() == 0
    assert "considering it\nYou said: hello there\n[completed" in term.plain
    assert closing.group(1, 2) == ("1", "4")
    assert "\x1b[2mconsidering \x1b[0m" in term.seen  # reasoning is dim, on a real terminal


def test_interactive_session_keeps_the_conversation(server: tuple[str, ScriptedBackend], terminal: Any) -> None:
    url, backend = server
    term = terminal("--base-url", url, "--instructions", "Be brief.")
    term.expect(r"/exit or Ctrl-D to quit\n> ")
    term.send("first question\n")
    first = term.expect(CLOSING)
    term.expect(r"> ", first.end())
    term.send("second question\n")
    second = term.expect(CLOSING, first.end())
    assert "You said: second question" in term.plain[first.end():]
    term.expect(r"> ", second.end())
    term.send("/exit\n")
    assert term.wait() == 0
    first_id, second_id = first.group(3), second.group(3)
    stored = httpx.get(f"{url}/responses/{second_id}").json()
    assert stored["previous_response_id"] == first_id and stored["instructions"] == "Be brief."
    # The backend saw the whole conversation on the second turn.
    contents = [(m.role, m.content) for m in backend.requests[1].messages]
    assert ("user", "first question") in contents and ("assistant", "You said: first question") in contents
    assert contents[-1] == ("user", "second question")


def test_ctrl_d_ends_the_session(server: tuple[str, Any], terminal: Any) -> None:
    url, _ = server
    term = terminal("--base-url", url)
    term.expect(r"> ")
    term.send("\x04")
    assert term.wait() == 0


def test_json_prints_the_events_as_jsonl(server: tuple[str, Any], terminal: Any) -> None:
    url, _ = server
    term = terminal("hi", "--json", "--base-url", url)
    assert term.wait() == 0
    lines = [line for line in term.plain.splitlines() if line.strip()]
    assert lines[0].startswith('{"type":"response.created"') and '"type":"response.completed"' in lines[-1]


def test_no_server_is_one_clear_line(terminal: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    term = terminal("hi", "--base-url", f"http://127.0.0.1:{port}/v1")
    assert term.wait() == 1
    errors = [line for line in term.plain.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "`headwater serve`" in errors[0]
    assert "Traceback" not in term.plain


# --- the pieces, without a terminal --------------------------------------------------------------------------


def test_closing_line_shows_cost_and_reasons() -> None:
    started = time.monotonic()
    done = Response(id="resp_1", status="completed", usage=Usage(input_tokens=3, output_tokens=5, cost=0.00042))
    line = closing_line(done, started=started, first_token=started + 0.25, resumes=2)
    assert line.startswith("[completed | 3 in, 5 out tokens | cost $0.00042 | first token 0.25s | ")
    assert line.endswith(" | resumed 2x | resp_1]")
    cut = Response(status="incomplete", incomplete_details=IncompleteDetails(reason="max_output_tokens"))
    assert closing_line(cut, started=started, first_token=None).startswith("[incomplete (max_output_tokens) | ")


def test_renderer_marks_the_first_token_once(capsys: pytest.CaptureFixture[str]) -> None:
    from headwater.protocol.events import ResponseOutputTextDelta

    renderer = Renderer()
    renderer.event(ResponseOutputTextDelta(item_id="m", output_index=0, content_index=0, delta="a"))
    first = renderer.first_token
    renderer.event(ResponseOutputTextDelta(item_id="m", output_index=0, content_index=0, delta="b"))
    assert first is not None and renderer.first_token == first and capsys.readouterr().out == "ab"
