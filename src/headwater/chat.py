"""``headwater chat``: talk to an Open Responses endpoint from a terminal, a local ``headwater serve`` by default.

One prompt as an argument, or an interactive session when none is given (each turn continues the last through
``previous_response_id``). Text is shown as it streams, reasoning dimmed, tool calls with their arguments, then
one closing line: status, tokens, cost when the provider reports it, time to first token. ``--json`` prints the
events as JSONL instead. Drops are resumed by the client; failures end in one line that says what to do.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from headwater.client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    Client,
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

__all__ = ["Renderer", "chat_command", "closing_line"]

_REASONING = (ResponseReasoningTextDelta, ResponseReasoningDelta, ResponseReasoningSummaryTextDelta)
_FIRST_TOKEN = (ResponseOutputTextDelta, ResponseRefusalDelta, FunctionCallArgumentsDelta, *_REASONING)


class Renderer:
    """Writes a stream's events for a person: text as it comes, reasoning dim, tool calls as ``name(arguments)``.
    Each kind of output starts on a line of its own."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.at_line_start = True
        self.first_token: float | None = None
        self._streamed_arguments: set[int] = set()

    def write(self, text: str, **style: Any) -> None:
        if not text:
            return
        click.echo(click.style(text, **style) if style else text, nl=False)
        self.at_line_start = text.endswith("\n")
        sys.stdout.flush()

    def newline(self) -> None:
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
            self.write(event.delta)
        elif isinstance(event, _REASONING):
            self._switch("reasoning")
            self.write(event.delta, dim=True)
        elif isinstance(event, ResponseRefusalDelta):
            self._switch("refusal")
            self.write(event.delta, fg="red")
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
    if isinstance(error, APIStatusError):
        return str(error)
    return str(error)


class _Chat:
    def __init__(self, client: Client, *, model: str | None, instructions: str | None, as_json: bool) -> None:
        self.client = client
        self.model = model
        self.instructions = instructions
        self.as_json = as_json

    def turn(self, prompt: str, previous_response_id: str | None) -> Response | None:
        """One request, rendered. The final response (None if there is none to continue from)."""
        body: dict[str, Any] = {"input": prompt}
        if self.model:
            body["model"] = self.model
        if self.instructions:
            body["instructions"] = self.instructions
        if previous_response_id:
            body["previous_response_id"] = previous_response_id
        started = time.monotonic()
        renderer = Renderer()
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
        if error is not None:
            click.echo(f"error: {describe_error(error, self.client.base_url)}", err=True)
        return final


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


def _interactive(chat: _Chat, previous_response_id: str | None) -> None:
    if not chat.as_json:
        click.echo(click.style(f"headwater chat with {chat.client.base_url}"
                               f"{f' ({chat.model})' if chat.model else ''}; /exit or Ctrl-D to quit", dim=True))
    while True:
        try:
            line = input("" if chat.as_json else "> ")
        except EOFError:
            if not chat.as_json:
                click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        try:
            final = chat.turn(line, previous_response_id)
        except KeyboardInterrupt:
            click.echo("\n(interrupted)", err=True)
            continue
        if final is not None and final.id and final.store is not False:
            previous_response_id = final.id


if __name__ == "__main__":
    chat_command()
