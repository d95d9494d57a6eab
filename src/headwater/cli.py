"""``headwater``: the command line. ``serve`` runs the server; ``chat`` talks to any Open Responses endpoint;
``check`` audits recorded streams against the conformance rules; ``replay`` renders a recorded stream as it would
stream, through the accumulator; ``inspect`` opens recorded streams in the inspector's web page.

Exit codes of ``check`` and ``replay``: 0 all well (warnings allowed), 1 errors found (or, for replay, a response
with no terminal event), 2 input unreadable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import click
import msgspec

from headwater.protocol import events as ev
from headwater.protocol.accumulate import Accumulator
from headwater.protocol.conformance import Violation, check, report_lines, split_responses
from headwater.protocol.events import Event
from headwater.protocol.recording import Recording, read_recording
from headwater.protocol.resources import to_builtins


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="headwater")
def main() -> None:
    """Headwater: the Open Responses streaming protocol, done right and fast."""


def read_recording_file(path: str) -> Recording:
    """A recorded stream from a file (``-``: standard input): its events and what could not be read.

    Payloads that do not fit their schema are kept (as ``UnknownEvent`` with a ``problem``) so that the checker
    can report them; an unreadable file raises ``OSError``.
    """
    if path == "-":
        return read_recording(sys.stdin.buffer.read())
    with open(path, "rb") as handle:
        return read_recording(handle.read())


def read_events(path: str) -> list[Event]:
    """Every readable event of a recorded stream (SSE transcript or JSONL, auto-detected)."""
    return read_recording_file(path).events


def _open(path: str) -> Recording | None:
    """The recording at ``path``, its read problems printed; None (after saying why) if it gives no event."""
    try:
        recording = read_recording_file(path)
    except OSError as exc:
        click.echo(f"{path}: unreadable: {exc.strerror or exc}", err=True)
        return None
    for problem in recording.problems:
        click.echo(f"{path}: {problem}", err=True)
    if not recording.events:
        what = "no readable events" if recording.problems else "no events found (not an SSE or JSONL stream?)"
        click.echo(f"{path}: unreadable: {what}", err=True)
        return None
    return recording


def _streams(path: str, recording: Recording, split: bool | None) -> list[list[Event]]:
    """One list of events per response: split at each ``response.created`` when asked, or when the recording
    holds several and nothing was said (then it says so)."""
    several = recording.responses > 1
    if split is None and several:
        click.echo(
            f"{path}: {recording.responses} responses back to back ({recording.responses} response.created "
            "events): each is taken on its own (--no-split: as one stream)",
            err=True,
        )
    if split or (split is None and several):
        return split_responses(recording.events)
    return [recording.events]


_SPLIT_HELP = (
    "Take each response.created as the start of a new response (default: when the recording holds several)."
)


@main.command(name="check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--split/--no-split", default=None, help=_SPLIT_HELP)
@click.option(
    "--after",
    "starting_after",
    type=click.IntRange(min=-1),
    default=None,
    metavar="N",
    help="The stream is resumed: it begins after sequence_number N (as GET ...?starting_after=N gives it).",
)
@click.option("--all", "show_all", is_flag=True, help="Print every finding (default: repeats are grouped).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line.")
def check_command(
    paths: tuple[str, ...], split: bool | None, starting_after: int | None, show_all: bool, quiet: bool
) -> None:
    """Check recorded streams (SSE or JSONL) against the conformance rules.

    Prints each finding as PATH:INDEX: RULE-ID [severity] message, where INDEX counts the file's events from 0;
    a finding that recurs is printed once with where else it stands (--all prints each). Bytes that are not
    events (a file cut mid-event) are reported with their line and count as errors; the events before and after
    them are checked. Exits 0 when there are no errors, 1 when there are, 2 when an input cannot be read.
    """
    errors = warnings = 0
    unreadable = False
    for path in paths:
        recording = _open(path)
        if recording is None:
            unreadable = True
            continue
        errors += sum(problem.severity == "error" for problem in recording.problems)
        warnings += sum(problem.severity != "error" for problem in recording.problems)
        offset = 0
        found: list[tuple[int, Violation]] = []
        for number, stream in enumerate(_streams(path, recording, split)):
            after = starting_after if number == 0 else None
            for violation in check(stream, starting_after=after):
                if violation.severity == "error":
                    errors += 1
                else:
                    warnings += 1
                found.append((offset + violation.index, violation))
            offset += len(stream)
        if quiet:
            continue
        for line in report_lines(path, found, show_all=show_all):
            click.echo(line)
    click.echo(f"{len(paths)} file(s): {errors} error(s), {warnings} warning(s)", err=True)
    if unreadable:
        sys.exit(2)
    sys.exit(1 if errors else 0)


def _render(events: list[Event], delay: float) -> Iterator[str]:
    """The text a person would have watched stream by: text, reasoning (dimmed) and tool calls."""
    current: str | None = None
    for event in events:
        kind = type(event)
        if kind is ev.ResponseOutputTextDelta or kind is ev.ResponseRefusalDelta:
            if current != "text":
                yield "\n" if current else ""
                current = "text"
            yield event.delta  # type: ignore[union-attr]
        elif kind in (ev.ResponseReasoningSummaryTextDelta, ev.ResponseReasoningTextDelta, ev.ResponseReasoningDelta):
            if current != "reasoning":
                yield ("\n" if current else "") + click.style("[reasoning] ", dim=True)
                current = "reasoning"
            yield click.style(event.delta, dim=True)  # type: ignore[union-attr]
        elif kind is ev.ResponseReasoningSummaryPartAdded:
            if current == "reasoning":  # the next summary part of the same reasoning: a paragraph of its own
                yield "\n\n"
        elif kind is ev.FunctionCallArgumentsDelta or kind is ev.CustomToolCallInputDelta:
            if current != "tool":
                yield "\n" if current else ""
                current = "tool"
            yield click.style(event.delta, fg="cyan")  # type: ignore[union-attr]
        elif kind is ev.ResponseOutputItemAdded:
            item = event.item  # type: ignore[union-attr]
            name = getattr(item, "name", None)
            if item.type in ("function_call", "custom_tool_call", "mcp_call") and name:
                yield ("\n" if current else "") + click.style(f"[{item.type} {name}] ", fg="cyan", bold=True)
                current = "tool-head"
        else:
            continue
        if delay:
            time.sleep(delay)


def _summary(acc: Accumulator) -> str:
    response = acc.response
    usage = response.usage
    tokens = f", {usage.input_tokens} in / {usage.output_tokens} out tokens" if usage else ""
    reason = ""
    if response.incomplete_details is not None and response.incomplete_details.reason:
        reason = f" ({response.incomplete_details.reason})"
    if response.error is not None:
        reason = f" ({response.error.code}: {response.error.message})"
    if not acc.done:
        reason += " - the stream has no terminal event (cut, or not a Responses stream)"
    return f"-- {response.status}{reason}{tokens}"


@main.command(name="replay")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--split/--no-split", default=None, help=_SPLIT_HELP)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print only the final accumulated response as wire JSON (one line per response).",
)
@click.option("--delay", type=float, default=0.0, show_default=True, help="Seconds to wait between deltas.")
def replay_command(path: str, split: bool | None, as_json: bool, delay: float) -> None:
    """Replay a recorded stream through the accumulator, rendering it as it would stream.

    Exits 0 when every response reached a terminal event (completed, incomplete or failed), 1 when one did not
    or bytes of the recording could not be read, 2 when the file gives no event at all.
    """
    recording = _open(path)
    if recording is None:
        sys.exit(2)
    streams = _streams(path, recording, split)
    unfinished = 0
    for number, stream in enumerate(streams):
        acc = Accumulator()
        for event in stream:
            acc.feed(event)
        unfinished += not acc.done
        if as_json:
            click.echo(msgspec.json.encode(to_builtins(acc.response)).decode())
            continue
        if len(streams) > 1:
            title = f"== response {number + 1} of {len(streams)}: {acc.response.id or '(no id)'} =="
            click.echo(("\n" if number else "") + click.style(title, bold=True))
        for piece in _render(stream, delay):
            click.echo(piece, nl=False)
            sys.stdout.flush()
        click.echo("\n" + click.style(_summary(acc), bold=True))
        kinds: dict[str, list[str]] = {}
        for problem in acc.problems:
            kinds.setdefault(problem.code, []).append(problem.message)
        for code, messages in kinds.items():
            more = f" (and {len(messages) - 1} more {code})" if len(messages) > 1 else ""
            click.echo(click.style(f"   problem: {messages[0]}{more}", fg="yellow"), err=True)
    failed = any(problem.severity == "error" for problem in recording.problems)
    sys.exit(1 if unfinished or failed else 0)


def _add_serve() -> None:
    # The server's dependencies are an extra; without them ``check`` and ``replay`` still work.
    try:
        from headwater.server.cli import serve_command
    except ImportError as exc:
        missing = str(exc)

        @main.command(name="serve", context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def serve_unavailable(args: tuple[str, ...]) -> None:
            """Run the Open Responses server (needs: pip install 'headwater[server]')."""
            raise click.ClickException(
                f"the server is not installed ({missing}); install it with: pip install 'headwater[server]'"
            )
    else:
        main.add_command(serve_command, name="serve")


_add_serve()


@main.command(name="inspect")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Port to listen on [default: any free port].")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
def inspect_command(paths: tuple[str, ...], host: str, port: int, open_browser: bool) -> None:
    """Open recorded streams (SSE or JSONL) in the stream inspector, a web page on a local port: no model is
    loaded, more recordings can be dropped on the page. Its URL carries a key made for this run."""
    import secrets
    import socket
    import webbrowser

    try:
        import uvicorn

        from headwater.inspect.app import create_inspector_app
        from headwater.server.errors import APIError
    except ImportError as exc:
        raise click.ClickException(
            f"the inspector needs the server extra ({exc}): pip install 'headwater[server]'"
        ) from None
    key = secrets.token_urlsafe(18)
    try:
        app = create_inspector_app(paths, key)
    except (OSError, APIError) as exc:
        click.echo(f"unreadable: {exc}", err=True)
        sys.exit(2)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog from the moment the URL is printed
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/inspect/#key={key}"
    click.echo(f"headwater inspect: {url}")
    click.echo(f"  {len(paths)} recording(s) loaded; Ctrl-C stops")
    sys.stdout.flush()
    if open_browser:
        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])


def _add_chat() -> None:
    from headwater.chat import chat_command

    main.add_command(chat_command, name="chat")


_add_chat()
