"""What one request may hold (``InputLimits``: nesting depth, item counts, field sizes) and the JSON decode that
every request body and WebSocket message goes through (``decode_object``), so that no input can make a decoder
raise ``RecursionError``.

Why a nesting limit: msgspec's decoders (like the standard library's) recurse on the C stack and stop at the
interpreter's recursion limit (1000 frames in CPython), counted from wherever the decode is called. A value
nested 964 levels deep decodes at the top of a stack and fails later, inside a deeper call. Real request
bodies stay under ~20 levels (a JSON Schema for a tool), so 64 keeps a wide margin on both sides: every
stored record stays far below what any later decode can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import msgspec

from .errors import APIError

__all__ = [
    "DEFAULT_LIMITS",
    "InputLimits",
    "check_nesting",
    "decode_object",
    "shown",
]


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Bounds on one ``POST /v1/responses`` body or ``response.create`` message (docs/limits.md). The defaults
    are far above what real clients send (Codex CLI: ~6k-token instructions; agents: dozens of tools)."""

    # Levels of JSON nesting anywhere in a field the server reads (the body object is level 1).
    nesting_depth: int = 64
    # Items in ``input`` (a client that re-sends a long agent session sends thousands).
    input_items: int = 20_000
    # Content parts in one input item (``content`` of a message, ``output`` of a function_call_output).
    content_parts: int = 1_000
    # Characters in any one text of ``input``: a message part, a call's arguments, a tool output.
    text_chars: int = 4 * 1024 * 1024
    # Characters of ``instructions``: they come back in three events of every stream and in the stored resource.
    instructions_chars: int = 512 * 1024
    # Tools in ``tools``, and their size as JSON all together (they come back like ``instructions``); a
    # ``text.format`` JSON schema is held to the same size.
    tools: int = 512
    tools_bytes: int = 1024 * 1024

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


DEFAULT_LIMITS = InputLimits()

_decoder = msgspec.json.Decoder()


def decode_object(data: bytes, what: str, *, limits: InputLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """``data`` as a JSON object, or ``APIError`` 400: invalid JSON (or UTF-8), not an object, or nested beyond
    what the decoder can hold (then the message names the top-level field where it happens)."""
    try:
        obj = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 is bad JSON too
        raise APIError.invalid(f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        field = _deep_field(data, limits.nesting_depth)
        raise too_deep(field, limits.nesting_depth) from None
    if not isinstance(obj, dict):
        raise APIError.invalid(f"{what} must be a JSON object", code="invalid_json")
    return obj


def too_deep(param: str | None, limit: int) -> APIError:
    where = f"'{param}'" if param else "the body"
    return APIError.invalid(f"{where} is nested too deeply: at most {limit} levels of JSON nesting are accepted",
                            param, code="nesting_too_deep")


def check_nesting(value: Any, limit: int, *, path: str, level: int) -> None:
    """Raise ``APIError`` (400 ``nesting_too_deep``) when ``value``, found at ``path`` at nesting ``level`` of
    the body (the body object is level 1), has containers nested beyond ``limit``. Iterative: any depth is safe."""
    if not isinstance(value, dict | list):
        return
    stack = [(value, level)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            raise too_deep(_path_to_depth(value, path, limit - level + 1), limit)
        children = node.values() if type(node) is dict else node
        for child in children:
            if isinstance(child, dict | list):
                push((child, depth + 1))


def _path_to_depth(value: Any, path: str, levels: int) -> str:
    """The path of the first container more than ``levels`` below ``value``, cut to three steps past ``path``
    (enough to say where; a 64-step path helps nobody)."""

    def find(node: Any, left: int) -> list[str] | None:  # recursion bounded by ``levels`` (<= the limit)
        if left == 0:
            return []
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, dict | list):
                rest = find(child, left - 1)
                if rest is not None:
                    step = f"[{key}]" if isinstance(key, int) else f".{shown(str(key), 40, quote=False)}"
                    return [step, *rest]
        return None

    steps = find(value, levels) or []
    return path + "".join(steps[:3])


_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:]')


def _deep_field(data: bytes, limit: int) -> str | None:
    """The top-level key under which ``data`` (a body too deep to decode) nests beyond ``limit``, found by a
    scan of strings and brackets; None when the body is not an object. Only called for such bodies."""
    depth = 0
    last_string = key = None
    for match in _TOKEN.finditer(data):
        token = match.group()
        first = token[:1]
        if first == b'"':
            last_string = token
        elif token == b":":
            if depth == 1 and last_string is not None:
                key = last_string
        elif first in b"[{":
            if depth == 0 and first != b"{":
                return None
            depth += 1
            if depth > limit:
                break
        else:
            depth -= 1
    if key is None:
        return None
    try:
        name = msgspec.json.decode(key)
    except msgspec.DecodeError:
        return None
    return shown(name, 64, quote=False) if isinstance(name, str) else None


def shown(value: object, limit: int = 64, *, quote: bool = True) -> str:
    """``value`` as it may appear in an error message or a log line: printable, one line, at most ``limit``
    characters (a client's 100 kB string, or one with CR/LF, is not echoed back as it is); an object or an array
    is only named."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list):  # never repr: it recurses, and may be 900 levels deep
        return "an object" if isinstance(value, dict) else "an array"
    else:
        text = repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'" if quote else text
