"""``headwater chat`` in a real terminal: a pseudo-terminal runs ``python -m headwater.chat`` against a real
headwater server on loopback (scripted backend that echoes what it was asked). The test reads what a person would
see: streamed text, dim reasoning (ANSI styles appear only on a terminal), the closing line, one-line errors; and
that an interactive session carries the conversation through ``previous_response_id``."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.chat import COMMANDS, Renderer, WordWrap, closing_line
from headwater.protocol.resources import IncompleteDetails, Response, Usage
from headwater.server.app import create_app
from headwater.server.backends.base import (
    BackendError,
    Finish,
    GenerationRequest,
    ReasoningDelta,
    TextDelta,
    UsageStep,
)
from headwater.server.backends.scripted import Fail, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CLOSING = re.compile(r"\[completed \| (\d+) in, (\d+) out tokens \| first token [\d.]+s \| [\d.]+s \| (resp_\w+)\]")


def echo(request: GenerationRequest) -> list[ScriptItem]:
    said = request.messages[-1].content
    return [ReasoningDelta("considering "), ReasoningDelta("it"), TextDelta("You said: "), TextDelta(said),
            UsageStep(len(request.messages), 4), Finish("stop")]


def _control_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # A runner started in the background ignores SIGINT, and children inherit that; a person's shell does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """A process on a pseudo-terminal: ``expect`` what it prints, ``send`` what a person types."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1", **(env or {})}
        env.pop("NO_COLOR", None)
        # The terminal is the process's controlling terminal (its own session), so that Ctrl-C is a SIGINT.
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                        preexec_fn=_control_terminal)
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
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    """``terminal(*args, COLUMNS="40")``: ``headwater chat`` on a pseudo-terminal, its history in ``tmp_path``."""
    opened: list[Terminal] = []

    def open_terminal(*args: str, **env: str) -> Terminal:
        env = {"HEADWATER_DATA_DIR": str(tmp_path), **env}
        term = Terminal([sys.executable, "-m", "headwater.chat", *args], env)
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
    assert "\x1b[2mconsidering\x1b[0m" in term.seen  # reasoning is dim, on a real terminal


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


def _said(backend: ScriptedBackend) -> list[str]:
    """What the user said last in each request the backend received."""
    return [request.messages[-1].content for request in backend.requests]


def test_slash_commands_are_not_sent_to_the_model(server: tuple[str, ScriptedBackend], terminal: Any) -> None:
    url, backend = server
    term = terminal("--base-url", url)
    term.expect(r"> ")
    term.send("/help\n")
    listed = term.expect(r"/exit +leave")
    for name, _ in COMMANDS:
        assert name in term.plain
    term.send("/frobnicate\n")
    unknown = term.expect(r"unknown command /frobnicate: /help lists them", listed.end())
    term.expect(r"> ", unknown.end())
    term.send("/exit\n")
    assert term.wait() == 0
    assert backend.requests == []


def test_new_starts_over(server: tuple[str, ScriptedBackend], terminal: Any) -> None:
    url, backend = server
    term = terminal("--base-url", url)
    term.expect(r"> ")
    term.send("first question\n")
    first = term.expect(CLOSING)
    term.send("/new\n")
    fresh = term.expect(r"\(a new conversation\)", first.end())
    term.send("second question\n")
    second = term.expect(CLOSING, fresh.end())
    term.send("/exit\n")
    assert term.wait() == 0
    stored = httpx.get(f"{url}/responses/{second.group(3)}").json()
    assert stored["previous_response_id"] is None
    assert [m.content for m in backend.requests[1].messages] == ["second question"]


def test_ctrl_c_at_the_prompt_clears_the_line_and_the_session_goes_on(
    server: tuple[str, ScriptedBackend], terminal: Any
) -> None:
    url, backend = server
    term = terminal("--base-url", url)
    term.expect(r"> ")
    term.send("half a thou")
    term.expect(r"> half a thou")  # readline is reading (a Ctrl-C before that only flushes the line)
    hint = None
    for _ in range(5):
        # CPython's readline loses a SIGINT that lands between two of its reads (a window a typing person never
        # hits, but a loaded test machine can): press Ctrl-C again until it is seen.
        term.send("\x03")
        try:
            hint = term.expect(r"\(Ctrl-D or /exit to quit\)", guard=3.0)
            break
        except AssertionError:
            continue
    assert hint is not None, term.plain
    term.expect(r"> ", hint.end())
    term.send("a whole question\n")
    answered = term.expect(CLOSING, hint.end())
    term.expect(r"> ", answered.end())
    term.send("\x04")
    assert term.wait() == 0
    assert _said(backend) == ["a whole question"]


def test_line_editing_and_history_across_sessions(
    server: tuple[str, ScriptedBackend], terminal: Any, tmp_path: Path
) -> None:
    url, backend = server
    term = terminal("--base-url", url)
    term.expect(r"> ")
    term.send("helo world")
    term.send("\x1b[D" * 7 + "l")  # left arrow seven times (back over "o world"), then the missing letter
    term.send("\n")
    first = term.expect(CLOSING)
    term.expect(r"> ", first.end())
    term.send("\x1b[A\n")  # up arrow: the line before, again
    term.expect(CLOSING, first.end())
    term.send("/exit\n")
    assert term.wait() == 0
    assert _said(backend) == ["hello world", "hello world"]
    assert "hello world" in (tmp_path / "chat_history").read_text()
    # The next session starts with that history.
    again = terminal("--base-url", url)
    again.expect(r"> ")
    again.send("\x1b[A\x1b[A\n")  # "/exit" was the last line; the one before it
    answered = again.expect(CLOSING)
    again.expect(r"> ", answered.end())
    again.send("\x04")
    assert again.wait() == 0
    assert _said(backend)[-1] == "hello world"


def test_answers_are_wrapped_between_words_at_the_terminal_width(
    server: tuple[str, ScriptedBackend], terminal: Any
) -> None:
    url, _ = server
    words = "the quick brown fox jumps over the lazy dog and keeps running far away"
    term = terminal(words, "--base-url", url, COLUMNS="24")
    term.expect(CLOSING)
    assert term.wait() == 0
    answer = term.plain[term.plain.index("You said:") : term.plain.index("[completed")].strip()
    lines = answer.splitlines()
    assert len(lines) > 2 and all(len(line) <= 24 for line in lines), lines
    assert " ".join(lines) == f"You said: {words}"  # no word was cut in two


def test_a_full_context_says_what_to_do_and_compact_goes_on(serve: Callable[[Any], Any], terminal: Any) -> None:
    def small_context(request: GenerationRequest) -> list[ScriptItem]:
        # Room for four messages: the third turn (user, assistant, user, assistant, user) does not fit; after
        # compaction (the two user messages kept, the answers summarised into one) it does.
        if len(request.messages) > 4:
            return [Fail(BackendError("the prompt is 9000 tokens", code="context_length_exceeded", status=400))]
        return [TextDelta(f"answer {len(request.messages)}"), UsageStep(10, 2), Finish("stop")]

    backend = ScriptedBackend(small_context, models=["scripted-1"])
    live = serve(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore()))
    url = live.url + "/v1"
    term = terminal("--base-url", url)
    term.expect(r"> ")
    term.send("one\n")
    first = term.expect(CLOSING)
    term.send("two\n")
    second = term.expect(CLOSING, first.end())
    term.send("three\n")
    full = term.expect(r"error: .*context_length_exceeded.*/compact or /new", second.end())
    term.send("/compact\n")
    compacted = term.expect(r"\(the conversation is now \d+ item\(s\)\)", full.end())
    term.send("three\n")
    after = term.expect(CLOSING, compacted.end())
    term.send("/exit\n")
    assert term.wait() == 0
    stored = httpx.get(f"{url}/responses/{after.group(3)}").json()
    assert stored["previous_response_id"] is None and stored["status"] == "completed"
    # The turn after /compact carried the compacted conversation: a summary, and the user's messages kept.
    last = backend.requests[-1].messages
    assert any("Summary of the earlier conversation" in m.content for m in last)
    assert [m.content for m in last if m.role == "user"][-1] == "three"


def test_a_base_url_without_v1_gets_a_hint(server: tuple[str, Any], terminal: Any) -> None:
    url, _ = server
    root = url.removesuffix("/v1")
    term = terminal("hi", "--base-url", root)
    assert term.wait() == 1
    errors = [line for line in term.plain.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"try --base-url {root}/v1" in errors[0], term.plain


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


def test_word_wrap_breaks_between_words_and_cuts_only_words_longer_than_a_line() -> None:
    wrap = WordWrap(10)
    out = "".join(wrap.feed(piece) for piece in ["Hello the", "re big wor", "ld, an extraordinarily long word\nok"])
    out += wrap.flush()
    lines = out.split("\n")
    assert all(len(line) <= 10 for line in lines), lines
    assert lines[:3] == ["Hello", "there big", "world, an"]
    assert "".join(lines[3:-1]) == "extraordinarilylong word" or lines[-1] == "ok"
    assert lines[-1] == "ok"


def test_renderer_marks_the_first_token_once(capsys: pytest.CaptureFixture[str]) -> None:
    from headwater.protocol.events import ResponseOutputTextDelta

    renderer = Renderer()
    renderer.event(ResponseOutputTextDelta(item_id="m", output_index=0, content_index=0, delta="a"))
    first = renderer.first_token
    renderer.event(ResponseOutputTextDelta(item_id="m", output_index=0, content_index=0, delta="b"))
    assert first is not None and renderer.first_token == first and capsys.readouterr().out == "ab"
