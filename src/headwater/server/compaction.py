"""Compaction's pure parts: the compaction item's payload codec, the transcript the model summarises, the summary's
budget and the extractive stand-in. No I/O and no server module above it: validation and the conversation import it.

``POST /v1/responses/compact`` (``service.compact``) makes a conversation short enough to go on with. The body is the spec's ``CompactResponseMethodPublicBody`` (``model`` required; ``input``,
``previous_response_id``, ``instructions``, ``prompt_cache_key``). The answer is a ``CompactResource`` whose
``output`` is the compacted window: every user message of the conversation, word for word and in order, then
one ``compaction`` item standing for everything else (assistant answers, tool calls and their results,
developer messages, earlier compaction items). Sent back as ``input`` (with the next user message), it
continues the conversation.

The compaction item's summary is written by the backend's model: the conversation is rendered as a transcript
and the model is asked, in an ordinary run (``runs``) that is not stored, to summarise it within a budget; the
usage of that run is the resource's ``usage``. The summary is always shorter than what it replaces (the
transcript of the non-user turns): the budget is half of it (at least 300 characters, never all of it, at most
1,500), the model's output tokens are capped to match, and a summary that does not comply (empty, cut by the
cap, over the budget, or writing conversation turns of its own, as small models do) is replaced by a
deterministic extractive one: the replaced turns, newest first, each clipped to its share of the budget. Headwater does not encrypt: ``encrypted_content`` is the base64 of a small JSON object
``{"format": "headwater.compaction/1", "summary": ..., "model": ..., "created_at": ...}``, readable by whoever
holds it. A compaction item given as input becomes a developer message carrying the summary
(``conversation.to_chat_messages``); one this server did not make is refused with a 400 naming its
``encrypted_content``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import msgspec

from headwater.protocol.resources import Message, Usage

from .backends.base import ChatMessage, GenerationRequest

__all__ = [
    "COMPACTION_FORMAT",
    "compaction_context",
    "compaction_summary",
    "encode_compaction",
    "extractive_summary",
    "output_text",
    "render_transcript",
    "replaced_turns",
    "summary_budget",
    "summary_request",
    "usable_summary",
    "usage_json",
]

COMPACTION_FORMAT = "headwater.compaction/1"
# The summary's budget, in characters (see ``summary_budget``).
MAX_SUMMARY_CHARS = 1500
MIN_SUMMARY_CHARS = 300
# Characters per output token assumed when capping the model's summary (English text runs ~4).
CHARS_PER_TOKEN = 4

SUMMARY_INSTRUCTIONS = (
    "You compact conversations. Summarise the conversation you are given so that it can go on without its "
    "original turns: keep what was asked and answered, facts, names, numbers, decisions, code, tool calls with "
    "their results, and what is still to be done. Leave out greetings and filler. Write only the summary."
)
CONTEXT_HEADING = "Summary of the earlier conversation (its turns were compacted into this summary):"


# --- the compaction item's content ----------------------------------------------------------------------------


class _Payload(msgspec.Struct, kw_only=True):
    format: str
    summary: str
    model: str | None = None
    created_at: int | None = None


_payload_decoder = msgspec.json.Decoder(_Payload)


def encode_compaction(summary: str, *, model: str, created_at: int) -> str:
    """A compaction item's ``encrypted_content``: base64 of a JSON object holding the plain-text summary."""
    payload = _Payload(format=COMPACTION_FORMAT, summary=summary, model=model, created_at=created_at)
    return base64.b64encode(msgspec.json.encode(payload)).decode("ascii")


def compaction_summary(encrypted_content: str) -> str | None:
    """The summary in a compaction item this server made, or None for any other content (another server's
    encrypted blob, garbage)."""
    try:
        payload = _payload_decoder.decode(base64.b64decode(encrypted_content, validate=True))
    except (binascii.Error, ValueError, msgspec.DecodeError, RecursionError):
        return None
    return payload.summary if payload.format == COMPACTION_FORMAT else None


def compaction_context(encrypted_content: str) -> str | None:
    """What the model sees for a compaction item: the summary under a heading; None if it is not ours or
    stands for nothing (an empty summary)."""
    summary = compaction_summary(encrypted_content)
    return f"{CONTEXT_HEADING}\n{summary}" if summary else None


# --- the summary ------------------------------------------------------------------------------------------------


def _turn_lines(message: ChatMessage) -> list[str]:
    """One turn as transcript lines: ``Assistant: ...``, ``Assistant called f(...)``, ``Tool result (...)``."""
    if message.role == "tool":
        return [f"Tool result ({message.tool_call_id or 'a call'}): {message.content}"]
    label = {"system": "Instructions", "developer": "Developer"}.get(message.role, message.role.capitalize())
    lines = [f"{label}: {message.content}"] if message.content else []
    for call in message.tool_calls:
        lines.append(f"{label} called {call.get('name', '')}({call.get('arguments', '')}) [call {call.get('id', '')}]")
    return lines


def render_transcript(messages: list[ChatMessage]) -> str:
    """The conversation as plain text, one turn a paragraph, for the model that summarises it."""
    return "\n\n".join(line for message in messages for line in _turn_lines(message))


def replaced_turns(messages: list[ChatMessage]) -> list[ChatMessage]:
    """What the compaction item stands for: every turn but the user's messages (the window keeps those)."""
    return [m for m in messages if m.role != "user"]


def summary_budget(replaced: str) -> int:
    """How many characters the summary of ``replaced`` may have: half of it, at least ``MIN_SUMMARY_CHARS``
    but always fewer than it has, at most ``MAX_SUMMARY_CHARS``."""
    n = len(replaced)
    return max(0, min(MAX_SUMMARY_CHARS, max(n // 2, min(n - 1, MIN_SUMMARY_CHARS))))


def summary_request(model: str, transcript: str, budget: int = MAX_SUMMARY_CHARS) -> GenerationRequest:
    """The generation request that asks the model for a summary of at most ``budget`` characters (its output
    tokens capped to match)."""
    words = max(budget // 6, 1)
    return GenerationRequest(
        model=model,
        messages=[
            ChatMessage(role="system", content=SUMMARY_INSTRUCTIONS),
            ChatMessage(role="user", content=f"The conversation:\n\n{transcript}\n\n"
                                             f"Write the summary, in at most {words} words."),
        ],
        max_output_tokens=max(budget // CHARS_PER_TOKEN, 16),
    )


# A line of a "summary" that is a conversation turn (the model carrying the transcript on).
_TURN_LINE = re.compile(r"^\W*(user|assistant|developer|system|instructions|tool result|human|ai)\b[^:\n]{0,24}:",
                        re.IGNORECASE | re.MULTILINE)


def usable_summary(text: str, *, complete: bool, budget: int) -> bool:
    """Whether the model's summary complies: something, not cut by the cap, within the budget, no turns."""
    return bool(text) and complete and len(text) <= budget and _TURN_LINE.search(text) is None


def extractive_summary(replaced: list[ChatMessage], budget: int) -> str:
    """The deterministic stand-in for a summary: the replaced turns' lines (what the assistant said without a
    label, its calls, tool results, an earlier summary without its heading), whole if they fit in ``budget``
    characters, else newest first, each clipped to its share."""
    lines = []
    for message in replaced:
        if message.role == "assistant":
            found = [message.content] if message.content else []
            found += [f"called {c.get('name', '')}({c.get('arguments', '')})" for c in message.tool_calls]
        elif message.role == "developer" and message.content.startswith(CONTEXT_HEADING):
            found = [message.content[len(CONTEXT_HEADING):]]
        else:
            found = _turn_lines(message)
        lines += [" ".join(line.split()) for line in found]
    lines = [line for line in lines if line]
    text = "\n".join(lines)
    if len(text) <= budget:
        return text
    share = max(budget // len(lines), 40)
    kept: list[str] = []
    used = -1
    for line in reversed(lines):
        piece = _clip(line, share)
        if used + 1 + len(piece) > budget:
            break
        kept.append(piece)
        used += 1 + len(piece)
    return "\n".join(reversed(kept)) if kept else _clip(lines[-1], budget)


def _clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut at a word where it can be, with an ellipsis."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return text[:limit]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + "…"


def output_text(output: list[Any]) -> str:
    texts: list[str] = []
    for item in output:
        if isinstance(item, Message):
            texts.extend(text for part in item.content if isinstance(text := getattr(part, "text", None), str))
    return "".join(texts).strip()


def usage_json(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        usage = Usage()
    data: dict[str, Any] = msgspec.to_builtins(usage)
    data["input_tokens_details"] = data.get("input_tokens_details") or {"cached_tokens": 0}
    data["output_tokens_details"] = data.get("output_tokens_details") or {"reasoning_tokens": 0}
    return data
