"""Byte streams for the benches: generated Responses-API SSE streams shaped like OpenAI's, and the real captures.

Every stream is what an HTTP client would read off the wire: ``event: <type>\\ndata: <compact JSON>\\n\\n`` per
event, JSON keys in the order OpenAI sends them, ``ensure_ascii=False`` (raw UTF-8, as OpenAI sends it).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CAPTURES",
    "Stream",
    "capture_stream",
    "chunked",
    "function_call_stream",
    "sse_frame",
    "text_stream",
]

ROOT = Path(__file__).resolve().parent.parent
CAPTURE_DIR = ROOT / "tests" / "fixtures" / "captures" / "openai"
# Untouched (exact upstream bytes, one response each) and large: see tests/fixtures/captures/SOURCES.md.
CAPTURES = (
    "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl",
    "openai-compaction.1.jsonl",
    "openai-mcp-tool.1.jsonl",
)

CAPTURE_SHORT = {
    "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl": "azure",
    "openai-compaction.1.jsonl": "compact",
    "openai-mcp-tool.1.jsonl": "mcp",
}

RESP_ID = "resp_0e2ed64344ac7f31016994b30480ac819785e6e4cd43a28c52"
MSG_ID = "msg_0e2ed64344ac7f31016994b30597248197afefe0ff4bfd83ec"
FC_ID = "fc_01830d662ab3856501693c32151234819091cfca267e98cc5f"
CALL_ID = "call_AB6AaRZ1FYZB2RwS6A5vbdqn"

_WORD_TEXT = (
    "the of and to a in is that for it as with was on be by this are from or an at which but not have has "
    "stream response token event delta model output function server client latency throughput buffer "
    "über naïve café déjà 日本語 テスト — “quoted” **bold** `code` (see) 42, 3.14; e.g. i.e.:"
)
_WORDS = tuple(_WORD_TEXT.split())
_OBF_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Stream:
    name: str
    data: bytes  # the SSE bytes
    events: int  # number of events (SSE frames with a JSON payload)
    text: str | None = None  # the expected accumulated output text, when known
    short: str = ""  # a column title for summary tables


def sse_frame(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"event: {payload['type']}\ndata: {body}\n\n".encode()


def chunked(data: bytes, size: int) -> list[bytes]:
    """``data`` cut in ``size``-byte chunks (as a socket read loop would hand them over)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def _obfuscation(rng: random.Random) -> str:
    return "".join(rng.choice(_OBF_ALPHABET) for _ in range(rng.randint(2, 15)))


def _response(
    status: str, output: list[Any], *, completed: bool = False, tools: list[Any] | None = None
) -> dict:
    """A response snapshot shaped like OpenAI's (the field set and order of a real gpt-5.2 capture)."""
    return {
        "id": RESP_ID,
        "object": "response",
        "created_at": 1771352836,
        "status": status,
        "background": False,
        "completed_at": 1771352864 if completed else None,
        "error": None,
        "frequency_penalty": 0,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "gpt-5.2-2025-12-11",
        "output": output,
        "parallel_tool_calls": True,
        "presence_penalty": 0,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": "none", "summary": None},
        "safety_identifier": None,
        "service_tier": "default" if completed else "auto",
        "store": False,
        "temperature": 1,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": tools or [],
        "top_logprobs": 0,
        "top_p": 0.98,
        "truncation": "disabled",
        "usage": (
            {
                "input_tokens": 51097,
                "input_tokens_details": {"cached_tokens": 49792},
                "output_tokens": 2505,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 53602,
            }
            if completed
            else None
        ),
        "user": None,
        "metadata": {},
    }


def _text_deltas(n: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 6))]
        delta = " " + " ".join(words)
        if i % 97 == 96:
            delta += ".\n\n"
        out.append(delta)
    return out


def text_stream(n_deltas: int, *, seed: int = 1) -> Stream:
    """One assistant message streamed as ``n_deltas`` output_text.delta events, bracketed as OpenAI does."""
    rng = random.Random(seed)
    deltas = _text_deltas(n_deltas, rng)
    text = "".join(deltas)
    seq = iter(range(10**9))
    frames = [
        sse_frame(
            {
                "type": "response.created",
                "response": _response("in_progress", []),
                "sequence_number": next(seq),
            }
        ),
        sse_frame(
            {
                "type": "response.in_progress",
                "response": _response("in_progress", []),
                "sequence_number": next(seq),
            }
        ),
        sse_frame(
            {
                "type": "response.output_item.added",
                "item": {
                    "id": MSG_ID,
                    "type": "message",
                    "status": "in_progress",
                    "content": [],
                    "role": "assistant",
                },
                "output_index": 0,
                "sequence_number": next(seq),
            }
        ),
        sse_frame(
            {
                "type": "response.content_part.added",
                "content_index": 0,
                "item_id": MSG_ID,
                "output_index": 0,
                "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
                "sequence_number": next(seq),
            }
        ),
    ]
    for delta in deltas:
        frames.append(
            sse_frame(
                {
                    "type": "response.output_text.delta",
                    "content_index": 0,
                    "delta": delta,
                    "item_id": MSG_ID,
                    "logprobs": [],
                    "obfuscation": _obfuscation(rng),
                    "output_index": 0,
                    "sequence_number": next(seq),
                }
            )
        )
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {"id": MSG_ID, "type": "message", "status": "completed", "content": [part], "role": "assistant"}
    frames += [
        sse_frame(
            {
                "type": "response.output_text.done",
                "content_index": 0,
                "item_id": MSG_ID,
                "logprobs": [],
                "output_index": 0,
                "sequence_number": next(seq),
                "text": text,
            }
        ),
        sse_frame(
            {
                "type": "response.content_part.done",
                "content_index": 0,
                "item_id": MSG_ID,
                "output_index": 0,
                "part": part,
                "sequence_number": next(seq),
            }
        ),
        sse_frame(
            {
                "type": "response.output_item.done",
                "item": item,
                "output_index": 0,
                "sequence_number": next(seq),
            }
        ),
        sse_frame(
            {
                "type": "response.completed",
                "response": _response("completed", [item], completed=True),
                "sequence_number": next(seq),
            }
        ),
    ]
    return Stream(f"text ({n_deltas} deltas)", b"".join(frames), len(frames), text, "text")


_TOOL = {
    "type": "function",
    "description": "Store rows in the warehouse table.",
    "name": "insert_rows",
    "parameters": {
        "type": "object",
        "properties": {"table": {"type": "string"}, "rows": {"type": "array", "items": {"type": "object"}}},
        "required": ["table", "rows"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _argument_deltas(n: int, rng: random.Random) -> list[str]:
    """``n`` deltas (1-8 characters each, cut like tokens) of one JSON arguments string."""
    rows = []
    text = ""
    while len(text) < n * 5:
        rows.append(
            {
                "id": len(rows),
                "name": " ".join(rng.choice(_WORDS) for _ in range(2)),
                "score": rng.randint(0, 999),
            }
        )
        text = json.dumps({"table": "events", "rows": rows}, ensure_ascii=False)
    out = []
    pos = 0
    for i in range(n):
        take = rng.randint(1, 8) if i < n - 1 else len(text) - pos
        out.append(text[pos : pos + take])
        pos += take
    if pos < len(text):  # fewer deltas than characters: the last one takes the rest
        out[-1] += text[pos:]
    return [d for d in out if d] or [text]


def function_call_stream(n_deltas: int, *, seed: int = 2) -> Stream:
    """One function call whose JSON arguments stream as ``n_deltas`` function_call_arguments.delta events."""
    rng = random.Random(seed)
    deltas = _argument_deltas(n_deltas, rng)
    args = "".join(deltas)
    seq = iter(range(10**9))
    added = {
        "id": FC_ID,
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": CALL_ID,
        "name": "insert_rows",
    }
    done = dict(added, status="completed", arguments=args)
    frames = [
        sse_frame(
            {
                "type": "response.created",
                "response": _response("in_progress", [], tools=[_TOOL]),
                "sequence_number": next(seq),
            }
        ),
        sse_frame(
            {
                "type": "response.in_progress",
                "response": _response("in_progress", [], tools=[_TOOL]),
                "sequence_number": next(seq),
            }
        ),
        sse_frame(
            {
                "type": "response.output_item.added",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": added,
            }
        ),
    ]
    for delta in deltas:
        frames.append(
            sse_frame(
                {
                    "type": "response.function_call_arguments.delta",
                    "sequence_number": next(seq),
                    "item_id": FC_ID,
                    "output_index": 0,
                    "delta": delta,
                    "obfuscation": _obfuscation(rng),
                }
            )
        )
    frames += [
        sse_frame(
            {
                "type": "response.function_call_arguments.done",
                "sequence_number": next(seq),
                "item_id": FC_ID,
                "output_index": 0,
                "arguments": args,
            }
        ),
        sse_frame(
            {
                "type": "response.output_item.done",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": done,
            }
        ),
        sse_frame(
            {
                "type": "response.completed",
                "sequence_number": next(seq),
                "response": _response("completed", [done], completed=True, tools=[_TOOL]),
            }
        ),
    ]
    return Stream(f"function call ({len(deltas)} deltas)", b"".join(frames), len(frames), None, "fcall")


def _capture_lines(path: Path) -> Iterator[bytes]:
    for line in path.read_bytes().splitlines():
        if line.strip():
            yield line


def capture_stream(filename: str) -> Stream:
    """A recorded capture (one JSON payload per line) framed as SSE: ``event: <type>\\ndata: <line>\\n\\n``."""
    frames = []
    for line in _capture_lines(CAPTURE_DIR / filename):
        etype = json.loads(line)["type"]
        frames.append(b"event: " + etype.encode() + b"\ndata: " + line + b"\n\n")
    name = filename.removesuffix(".jsonl")
    return Stream(f"capture {name}", b"".join(frames), len(frames), None, CAPTURE_SHORT.get(filename, name))
