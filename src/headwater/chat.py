"""``headwater chat``: talk to an Open Responses endpoint from a terminal, a local ``headwater serve`` by default.

One prompt as an argument, or an interactive session when none is given (each turn continues the last through
``previous_response_id``; line editing and history through readline; ``/help`` lists the commands). Text is shown
as it streams, word-wrapped on a terminal, reasoning dimmed, tool calls with their arguments, then one closing
line: status, tokens, cost when the provider reports it, time to first token. ``--json`` prints the events as
JSONL instead. Drops are resumed by the client; failures end in one line that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from headwater.client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Client,
    NotFoundError,
    Stream,
    StreamError,
    StreamInterruptedError,
)
from headwater.client.core import DEFAULT_BASE_URL
from headwater.protocol.codec import encode_event
from headwater.protocol.events import (
    Event,
    FunctionCallArgumentsDelta,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputTextDelta,
    ResponseReasoningDelta,
    ResponseReasoningSummaryTextDelta,
    ResponseReasoningTextDelta,
    ResponseRefusalDelta,
)
from headwater.protocol.resources import FunctionCall, Response

__all__ = ["COMMANDS", "Renderer", "WordWrap", "chat_command", "closing_line"]

_REASONING = (ResponseReasoningTextDelta, ResponseReasoningDelta, ResponseReasoningSummaryTextDelta)
_FIRST_TOKEN = (ResponseOutputTextDelta, ResponseRefusalDelta, FunctionCallArgumentsDelta, *_REASONING)


class WordWrap:
    """Streamed text to lines of at most ``width`` columns, broken between words (a word longer than a line is
    broken where the line ends). A word, and the space before it, wait until the word ends, so that a wrap never
    splits a word nor leaves a space at the end of a line."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.column = 0
        self.word = ""
        self.space = False  # a space waits before the word

    def feed(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            if char == "\n":
                out.append(self.flush())
                out.append("\n")
                self.column, self.space = 0, False
            elif char == " " or char == "\t":
                out.append(self.flush())
                self.space = self.column > 0
            else:
                self.word += char
                if len(self.word) >= self.width:
                    out.append(self.flush())
        return "".join(out)

    def flush(self) -> str:
        """The word held back, placed on this line or the next."""
        word, self.word = self.word, ""
        if not word:
            return ""
        lead = " " if self.space else ""
        self.space = False
        if self.column > 0 and self.column + len(lead) + len(word) > self.width:
            lead, self.column = "\n", 0
        self.column += len(lead.strip("\n")) + len(word)
        return lead + word


def _terminal_width() -> int:
    """Columns to wrap at on a terminal; 0 (no wrapping) when the output is not one."""
    if not sys.stdout.isatty():
        return 0
    return max(20, shutil.get_terminal_size().columns)


class Renderer:
    """Writes a stream's events for a person: text as it comes, reasoning dim, tool calls as ``name(arguments)``.
    Each kind of output starts on a line of its own; text is word-wrapped at ``width`` columns (0: not)."""

    def __init__(self, width: int = 0) -> None:
        self.kind: str | None = None
        self.at_line_start = True
        self.first_token: float | None = None
        self._streamed_arguments: set[int] = set()
        self._wrap = WordWrap(width) if width > 0 else None
        self._style: dict[str, Any] = {}  # the style of the prose being wrapped

    def write(self, text: str, **style: Any) -> None:
        if not text:
            return
        click.echo(click.style(text, **style) if style else text, nl=False)
        self.at_line_start = text.endswith("\n")
        sys.stdout.flush()

    def prose(self, text: str, **style: Any) -> None:
        """Text a person reads: word-wrapped (the unfinished last word waits for the next delta)."""
        if self._wrap is None:
            self.write(text, **style)
            return
        self._style = style
        self.write(self._wrap.feed(text), **style)

    def newline(self) -> None:
        if self._wrap is not None:
            self.write(self._wrap.flush(), **self._style)
            self._wrap.column, self._wrap.space = 0, False
        if not self.at_line_start:
            self.write("\n")

    def _switch(self, kind: str) -> None:
        if kind != self.kind:
            self.newline()
            self.kind = kind

    def event(self, event: Event) -> None:
        if self.first_token is None and isinstance(event, _FIRST_TOKEN):
            self.first_token = time.monotonic()
        if isinstance(event, ResponseOutputTextDelta):
            self._switch("text")
            self.prose(event.delta)
        elif isinstance(event, _REASONING):
            self._switch("reasoning")
            self.prose(event.delta, dim=True)
        elif isinstance(event, ResponseRefusalDelta):
            self._switch("refusal")
            self.prose(event.delta, fg="red")
        elif isinstance(event, ResponseOutputItemAdded) and isinstance(event.item, FunctionCall):
            self._switch("tool")
            self.write(f"[tool call] {event.item.name}(", fg="cyan", bold=True)
        elif isinstance(event, FunctionCallArgumentsDelta):
            self._streamed_arguments.add(event.output_index)
            self.write(event.delta, fg="cyan")
        elif isinstance(event, ResponseOutputItemDone) and isinstance(event.item, FunctionCall):
            if event.output_index not in self._streamed_arguments:
                self.write(event.item.arguments, fg="cyan")
            self.write(")", fg="cyan", bold=True)
            self.newline()
            self.kind = None


def closing_line(response: Response, *, started: float, first_token: float | None, resumes: int = 0,
                 repairs: int = 0) -> str:
    """``[completed | 7 in, 3 out tokens | cost $0.0004 | first token 0.21s | 1.30s | resp_...]``."""
    status = response.status
    if status == "incomplete" and response.incomplete_details is not None and response.incomplete_details.reason:
        status += f" ({response.incomplete_details.reason})"
    elif status == "failed" and response.error is not None:
        status += f": {response.error.message}" + (f" ({response.error.code})" if response.error.code else "")
    parts = [status]
    usage = response.usage
    if usage is not None:
        parts.append(f"{usage.input_tokens} in, {usage.output_tokens} out tokens")
        cost = usage.cost
        if isinstance(cost, (int, float)):
            parts.append(f"cost ${cost:.6f}".rstrip("0").rstrip("."))
    if first_token is not None:
        parts.append(f"first token {first_token - started:.2f}s")
    parts.append(f"{time.monotonic() - started:.2f}s")
    if resumes:
        parts.append(f"resumed {resumes}x")
    if repairs:
        parts.append(f"{repairs} kind(s) of repair")
    if response.id:
        parts.append(response.id)
    return "[" + " | ".join(parts) + "]"


def describe_error(error: APIError, base_url: str) -> str:
    """One line saying what went wrong and, where it helps, what to do."""
    if isinstance(error, (StreamInterruptedError, APITimeoutError)):
        return str(error)
    if isinstance(error, APIConnectionError):
        return (f"{error} -- is a server running at {base_url}? Start a local one with `headwater serve`, "
                "or pass --base-url")
    if isinstance(error, AuthenticationError):
        return f"{error} -- pass --api-key or set HEADWATER_API_KEY"
    if isinstance(error, NotFoundError) and not urlsplit(base_url).path.rstrip("/").endswith("/v1"):
        return f"{error} -- the base URL usually ends in /v1: try --base-url {base_url.rstrip('/')}/v1"
    if context_full(error):
        return f"{error} -- the conversation no longer fits the model's context: /compact or /new"
    if isinstance(error, APIStatusError):
        return str(error)
    return str(error)


def context_full(error: APIError) -> bool:
    """Whether the request failed because the conversation is longer than the model's context."""
    return isinstance(error, BadRequestError) and error.code == "context_length_exceeded"


# The interactive session's commands: (name, what it does). A line starting with "/" is never sent to the model.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("/help", "this list"),
    ("/new", "start a new conversation (forget the earlier turns)"),
    ("/compact", "shrink the conversation into a summary, then go on from it (when the context is full)"),
    ("/exit", "leave (also /quit, or Ctrl-D); Ctrl-C stops an answer, or clears the line"),
)


class _Chat:
    def __init__(self, client: Client, *, model: str | None, instructions: str | None, as_json: bool) -> None:
        self.client = client
        self.model = model
        self.instructions = instructions
        self.as_json = as_json
        self.last_error: APIError | None = None

    def turn(self, prompt: str, previous_response_id: str | None, prefix: list[Any] | None = None) -> Response | None:
        """One request, rendered. The final response (None if there is none to continue from). ``prefix``: items
        to send before the prompt (a compacted conversation)."""
        body: dict[str, Any] = {"input": [*prefix, {"role": "user", "content": prompt}] if prefix else prompt}
        if self.model:
            body["model"] = self.model
        if self.instructions:
            body["instructions"] = self.instructions
        if previous_response_id:
            body["previous_response_id"] = previous_response_id
        started = time.monotonic()
        renderer = Renderer(0 if self.as_json else _terminal_width())
        stream: Stream | None = None
        error: APIError | None = None
        try:
            with self.client.responses.stream(**body) as stream:
                for event in stream:
                    if self.as_json:
                        sys.stdout.buffer.write(encode_event(event) + b"\n")
                        sys.stdout.buffer.flush()
                    else:
                        renderer.event(event)
            final: Response | None = stream.snapshot
        except StreamError as exc:
            final, error = exc.response, exc
        except APIError as exc:
            final, error = None, exc
        if not self.as_json:
            renderer.newline()
            if final is not None and stream is not None:
                click.echo(click.style(closing_line(final, started=started, first_token=renderer.first_token,
                                                   resumes=stream.resumes, repairs=len(stream.repairs)), dim=True))
        self.last_error = error
        if error is not None:
            click.echo(f"error: {describe_error(error, self.client.base_url)}", err=True)
        return final

    def compact(self, previous_response_id: str) -> list[Any] | None:
        """The conversation up to ``previous_response_id`` shrunk to items (None, after saying why, on failure)."""
        body: dict[str, Any] = {"previous_response_id": previous_response_id}
        if self.model:
            body["model"] = self.model
        else:
            models = self.client.models.list().data
            if not models:
                click.echo("error: the server lists no model to compact with; pass --model", err=True)
                return None
            body["model"] = models[0].id
        try:
            compacted = self.client.responses.compact(**body)
        except APIError as exc:
            click.echo(f"error: {describe_error(exc, self.client.base_url)}", err=True)
            return None
        return compacted.output


@click.command(name="chat", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prompt", required=False)
@click.option("--base-url", default=None, metavar="URL",
              help=f"The endpoint, up to /v1 [default: $HEADWATER_BASE_URL or {DEFAULT_BASE_URL}].")
@click.option("--model", "-m", default=None, envvar="HEADWATER_MODEL",
              help="Model name [default: $HEADWATER_MODEL, else the server's default].")
@click.option("--api-key", default=None, help="API key [default: $HEADWATER_API_KEY, else $OPENAI_API_KEY].")
@click.option("--instructions", default=None, help="System instructions for every turn.")
@click.option("--previous-response-id", default=None, metavar="ID", help="Continue from this stored response.")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSONL instead of rendering them.")
@click.option("--compat", is_flag=True, help="Repair sloppy provider streams (see docs/client.md).")
def chat_command(prompt: str | None, base_url: str | None, model: str | None, api_key: str | None,
                 instructions: str | None, previous_response_id: str | None, as_json: bool, compat: bool) -> None:
    """Chat with an Open Responses endpoint: one PROMPT, or an interactive session when none is given
    (/exit or Ctrl-D to quit)."""
    with Client(base_url=base_url, api_key=api_key, compat=compat) as client:
        chat = _Chat(client, model=model, instructions=instructions, as_json=as_json)
        if prompt is not None:
            final = chat.turn(prompt, previous_response_id)
            if final is None or final.status == "failed":
                sys.exit(1)
            return
        _interactive(chat, previous_response_id)


def _history_file() -> Path:
    base = os.environ.get("HEADWATER_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "headwater"
    )
    return Path(base) / "chat_history"


def _line_editing() -> Path | None:
    """Line editing and a history kept across sessions, where readline exists (the history file's path)."""
    try:
        import readline
    except ImportError:  # not on every platform: plain input() still works
        return None
    path = _history_file()
    with contextlib.suppress(OSError):  # no history yet
        readline.read_history_file(path)
    readline.set_history_length(1000)
    return path


def _save_history(path: Path | None) -> None:
    if path is None:
        return
    import readline

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError:
        pass  # a read-only home: the session worked, only its history is not kept


def _interactive(chat: _Chat, previous_response_id: str | None) -> None:
    if not chat.as_json:
        click.echo(click.style(f"headwater chat with {chat.client.base_url}"
                               f"{f' ({chat.model})' if chat.model else ''}; /help for commands, "
                               "/exit or Ctrl-D to quit", dim=True))
    history = None if chat.as_json or not sys.stdin.isatty() else _line_editing()
    prefix: list[Any] | None = None  # a compacted conversation, sent before the next prompt
    try:
        while True:
            try:
                line = input("" if chat.as_json else "> ")
            except EOFError:
                if not chat.as_json:
                    click.echo()
                return
            except KeyboardInterrupt:  # as in Python's own REPL: a fresh line, not the end
                click.echo(click.style("\n(Ctrl-D or /exit to quit)", dim=True))
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command = line.split()[0]
                if command in ("/exit", "/quit"):
                    return
                if command == "/help":
                    for name, what in COMMANDS:
                        click.echo(f"  {name:<10} {what}")
                elif command == "/new":
                    previous_response_id, prefix = None, None
                    click.echo(click.style("(a new conversation)", dim=True))
                elif command == "/compact":
                    if previous_response_id is None:
                        click.echo("nothing to compact yet", err=True)
                        continue
                    items = chat.compact(previous_response_id)
                    if items is not None:
                        previous_response_id, prefix = None, items
                        click.echo(click.style(f"(the conversation is now {len(items)} item(s))", dim=True))
                else:
                    click.echo(f"unknown command {command}: /help lists them", err=True)
                continue
            try:
                final = chat.turn(line, previous_response_id, prefix)
            except KeyboardInterrupt:
                click.echo("\n(interrupted)", err=True)
                continue
            if final is not None and final.id and final.store is not False:
                previous_response_id, prefix = final.id, None
    finally:
        _save_history(history)


if __name__ == "__main__":
    chat_command()
