"""``headwater``: the command line. ``serve`` runs the server; ``chat`` talks to any Open Responses endpoint;
``check`` audits recorded streams against the conformance rules; ``replay`` renders a recorded stream as it would
stream, through the accumulator.

Exit codes of ``check``: 0 no errors (warnings allowed), 1 errors found, 2 input unreadable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import click
import msgspec

from headwater.protocol import events as ev
from headwater.protocol.accumulate import Accumulator
from headwater.protocol.conformance import check, split_responses
from headwater.protocol.errors import ProtocolError
from headwater.protocol.events import Event
from headwater.protocol.resources import to_builtins
from headwater.protocol.stream import EventDecoder


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="headwater")
def main() -> None:
    """Headwater: the Open Responses streaming protocol, done right and fast."""


def read_events(path: str) -> list[Event]:
    """Every event of a recorded stream: an SSE transcript or JSONL (one payload a line), auto-detected.

    Payloads that do not fit their schema are kept (as ``UnknownEvent`` with a ``problem``) so that the checker
    can report them; unreadable bytes raise ``ProtocolError`` / ``OSError``.
    """
    decoder = EventDecoder(lenient=True)
    out: list[Event] = []
    with open(path, "rb") if path != "-" else sys.stdin.buffer as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


@main.command(name="check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--split/--no-split",
    default=False,
    help="Treat each response.created as the start of a new stream (recordings of several responses).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line.")
def check_command(paths: tuple[str, ...], split: bool, quiet: bool) -> None:
    """Check recorded streams (SSE or JSONL) against the conformance rules.

    Prints each finding as PATH:INDEX: RULE-ID message. Exits 0 when there are no errors, 1 when there are,
    2 when an input cannot be read.
    """
    errors = warnings = 0
    unreadable = False
    for path in paths:
        try:
            events = read_events(path)
        except (OSError, ProtocolError) as exc:
            click.echo(f"{path}: unreadable: {exc}", err=True)
            unreadable = True
            continue
        if not events:
            click.echo(f"{path}: unreadable: no events found", err=True)
            unreadable = True
            continue
        streams = split_responses(events) if split else [events]
        offset = 0
        for stream in streams:
            for violation in check(stream):
                if violation.severity == "error":
                    errors += 1
                else:
                    warnings += 1
                if not quiet:
                    click.echo(
                        f"{path}:{offset + violation.index}: {violation.rule_id} "
                        f"[{violation.severity}] {violation.message}"
                    )
            offset += len(stream)
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


@main.command(name="replay")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print only the final accumulated response as wire JSON.")
@click.option("--delay", type=float, default=0.0, show_default=True, help="Seconds to wait between deltas.")
def replay_command(path: str, as_json: bool, delay: float) -> None:
    """Replay a recorded stream through the accumulator, rendering it as it would stream."""
    try:
        events = read_events(path)
    except (OSError, ProtocolError) as exc:
        click.echo(f"{path}: unreadable: {exc}", err=True)
        sys.exit(2)
    if not events:
        click.echo(f"{path}: unreadable: no events found", err=True)
        sys.exit(2)
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    if as_json:
        click.echo(msgspec.json.encode(to_builtins(acc.response)).decode())
        return
    for piece in _render(events, delay):
        click.echo(piece, nl=False)
        sys.stdout.flush()
    response = acc.response
    usage = response.usage
    tokens = f", {usage.input_tokens} in / {usage.output_tokens} out tokens" if usage else ""
    reason = ""
    if response.incomplete_details is not None and response.incomplete_details.reason:
        reason = f" ({response.incomplete_details.reason})"
    if response.error is not None:
        reason = f" ({response.error.code}: {response.error.message})"
    click.echo("\n" + click.style(f"-- {response.status}{reason}{tokens}", bold=True))
    for problem in acc.problems:
        click.echo(click.style(f"   problem: {problem.message}", fg="yellow"), err=True)


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


def _add_chat() -> None:
    from headwater.chat import chat_command

    main.add_command(chat_command, name="chat")


_add_chat()
