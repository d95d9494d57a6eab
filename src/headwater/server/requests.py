"""``POST /v1/responses`` bodies: the spec's ``CreateResponseBody`` declared as msgspec Structs, and the policy
for what a request may ask of this server.

``parse_request`` turns bytes into a ``ValidatedRequest`` or raises ``APIError`` (400) naming the offending
``param`` (``input[2].content[0].type``). Unknown top-level fields are accepted and ignored; tools the backend
cannot run are dropped and reported (or refused under ``strict_tools``); spec fields a text-only chat backend
cannot honour (logprobs, penalties, truncation ``auto``, images) are refused, never silently ignored. Nesting,
item counts and sizes are held to ``InputLimits`` before anything is converted or stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from headwater.protocol.resources import Response
from headwater.protocol.writer import new_id

from .backends.base import ChatMessage, GenerationRequest
from .compaction import compaction_summary
from .errors import APIError
from .input_limits import DEFAULT_LIMITS, InputLimits, check_nesting, decode_object, shown

__all__ = [
    "CompactionItem",
    "CreateResponseBody",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputItem",
    "MessageItem",
    "ReasoningInputItem",
    "ValidatedRequest",
    "decode_input_items",
    "encode_input_item",
    "item_from_output",
    "parse_compact_request",
    "parse_request",
    "with_references",
]

ToolName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
CallId = Annotated[str, Meta(min_length=1, max_length=64)]
# Ids, model names and other short strings the server keeps and sends back.
ShortText = Annotated[str, Meta(max_length=256)]

# --- content parts ------------------------------------------------------------------------------------------


class InputTextPart(Struct, tag="input_text", tag_field="type", kw_only=True):
    text: str


class OutputTextPart(Struct, tag="output_text", tag_field="type", kw_only=True):
    text: str
    annotations: list[dict[str, Any]] | UnsetType = UNSET


class RefusalPart(Struct, tag="refusal", tag_field="type", kw_only=True):
    refusal: str


class InputImagePart(Struct, tag="input_image", tag_field="type", kw_only=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto"] | None = None


class InputFilePart(Struct, tag="input_file", tag_field="type", kw_only=True):
    file_id: str | None = None
    file_url: str | None = None
    file_data: str | None = None
    filename: str | None = None


class InputVideoPart(Struct, tag="input_video", tag_field="type", kw_only=True):
    video_url: str


ContentPart = InputTextPart | OutputTextPart | RefusalPart | InputImagePart | InputFilePart | InputVideoPart
TEXT_PARTS = (InputTextPart, OutputTextPart)


class SummaryTextPart(Struct, tag="summary_text", tag_field="type", kw_only=True):
    text: str


class ReasoningTextPart(Struct, tag="reasoning_text", tag_field="type", kw_only=True):
    text: str


# --- input items --------------------------------------------------------------------------------------------


class MessageItem(Struct, tag="message", tag_field="type", kw_only=True, omit_defaults=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: ShortText | None = None
    status: ShortText | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(Struct, tag="function_call", tag_field="type", kw_only=True, omit_defaults=True):
    call_id: CallId
    name: ToolName
    arguments: str
    id: ShortText | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(Struct, tag="function_call_output", tag_field="type", kw_only=True, omit_defaults=True):
    call_id: CallId
    output: str | list[ContentPart]
    id: ShortText | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningInputItem(Struct, tag="reasoning", tag_field="type", kw_only=True, omit_defaults=True):
    summary: list[SummaryTextPart] = []
    content: list[ReasoningTextPart] | None = None
    encrypted_content: str | None = None
    id: ShortText | None = None
    status: ShortText | None = None


class ItemReference(Struct, tag="item_reference", tag_field="type", kw_only=True):
    id: ShortText


class CompactionItem(Struct, tag="compaction", tag_field="type", kw_only=True):
    encrypted_content: str
    id: ShortText | None = None


InputItem = (
    MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningInputItem | ItemReference | CompactionItem
)
StoredItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningInputItem | CompactionItem

# --- tools, text, reasoning ---------------------------------------------------------------------------------


class FunctionTool(Struct, tag="function", tag_field="type", kw_only=True):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(Struct, tag="text", tag_field="type"):
    pass


class JsonObjectFormat(Struct, tag="json_object", tag_field="type"):
    pass


class JsonSchemaFormat(Struct, tag="json_schema", tag_field="type", kw_only=True):
    name: ToolName
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class TextParam(Struct, kw_only=True):
    format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(Struct, kw_only=True):
    include_obfuscation: bool | None = None


class ReasoningParam(Struct, kw_only=True):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)
]


class CreateResponseBody(Struct, kw_only=True):
    """The spec's ``CreateResponseBody``. Fields not declared here are accepted and ignored."""

    model: ShortText | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: ShortText | None = None
    store: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    background: bool = False
    max_output_tokens: Annotated[int, Meta(ge=16)] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: Metadata | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: Annotated[list[ShortText], Meta(max_length=64)] | None = None
    safety_identifier: Annotated[str, Meta(max_length=64)] | None = None
    prompt_cache_key: Annotated[str, Meta(max_length=64)] | None = None
    service_tier: Literal["auto", "default", "flex", "priority", "scale"] | None = None
    # OpenAI fields outside the spec that change the answer: refused rather than ignored (see ``_refuse``).
    conversation: Any = None
    prompt: Any = None


# --- parsing ------------------------------------------------------------------------------------------------

_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`")


@dataclass(slots=True)
class ValidatedRequest:
    """A request that passed validation and policy: what the run and the conversation need."""

    body: CreateResponseBody
    items: list[StoredItem]  # the request's own input, normalized (ids given, string content as parts)
    tools: list[FunctionTool]
    dropped_tools: list[str] = field(default_factory=list)
    # item_reference entries not resolved yet: (where in ``items`` the item goes, its input index, its id);
    # ``conversation.resolve_references`` puts the items there.
    references: list[tuple[int, int, str]] = field(default_factory=list)
    # Ids of the items that came from references (already stored once, so not checked again as new input).
    referenced: set[str] = field(default_factory=set)

    def tool_choice(self) -> str | dict[str, Any]:
        choice = self.body.tool_choice
        return "auto" if choice is None else choice

    def generation_request(self, model: str, messages: list[ChatMessage]) -> GenerationRequest:
        """What the backend is asked to do: the conversation and every sampling field of the request."""
        body = self.body
        text_format = None
        if body.text is not None and body.text.format is not None:
            text_format = msgspec.to_builtins(body.text.format)
        return GenerationRequest(
            model=model,
            messages=messages,
            tools=[{"name": t.name, "description": t.description, "parameters": t.parameters} for t in self.tools],
            tool_choice=self.tool_choice(),
            parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
            temperature=body.temperature,
            top_p=body.top_p,
            max_output_tokens=body.max_output_tokens,
            text_format=text_format,
            reasoning=msgspec.to_builtins(body.reasoning) if body.reasoning is not None else None,
            verbosity=body.text.verbosity if body.text is not None else None,
        )

    def response_template(
        self,
        *,
        response_id: str,
        model: str,
        created_at: int,
        default_temperature: float = 1.0,
        default_top_p: float = 1.0,
        default_max_output_tokens: int | None = None,
    ) -> Response:
        """The response resource as it starts: every spec-required field filled with what this run uses (the
        ``default_*`` values stand for the fields the request leaves unset; see ``sampling_defaults``)."""
        body = self.body
        reasoning = None
        if body.reasoning is not None:
            reasoning = {"effort": body.reasoning.effort, "summary": body.reasoning.summary}
        text: dict[str, Any] = {"format": {"type": "text"}}
        if body.text is not None:
            if body.text.format is not None:
                text["format"] = msgspec.to_builtins(body.text.format)
            if body.text.verbosity is not None:
                text["verbosity"] = body.text.verbosity
        return Response(
            id=response_id,
            created_at=created_at,
            status="queued" if body.background else "in_progress",
            model=model,
            previous_response_id=body.previous_response_id,
            instructions=body.instructions,
            tools=[
                {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
                 "strict": t.strict}
                for t in self.tools
            ],
            tool_choice=self.tool_choice(),
            truncation=body.truncation or "disabled",
            parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
            text=text,
            top_p=default_top_p if body.top_p is None else body.top_p,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            top_logprobs=body.top_logprobs or 0,
            temperature=default_temperature if body.temperature is None else body.temperature,
            reasoning=reasoning,
            max_output_tokens=default_max_output_tokens if body.max_output_tokens is None else body.max_output_tokens,
            max_tool_calls=body.max_tool_calls,
            store=body.store,
            background=body.background,
            service_tier="default",  # what "auto" (or nothing) resolves to; other tiers are refused (``_refuse``)
            metadata=dict(body.metadata or {}),
            safety_identifier=body.safety_identifier,
            prompt_cache_key=body.prompt_cache_key,
        )


def parse_request(data: bytes, *, strict_tools: bool = False, limits: InputLimits = DEFAULT_LIMITS) -> ValidatedRequest:
    """Validate a request body; raise ``APIError`` (400, with ``param``) on the first problem found."""
    obj = decode_object(data, "the request body", limits=limits)
    _check_limits(obj, limits)
    items = obj.get("input")
    if isinstance(items, list):
        for item in items:
            # The "easy" message form ({"role", "content"}) that every client sends leaves out the type; so
            # does the bare reference form ({"id"}).
            if isinstance(item, dict) and "type" not in item:
                if "role" in item:
                    item["type"] = "message"
                elif set(item) == {"id"}:
                    item["type"] = "item_reference"
    try:
        body = msgspec.convert(obj, CreateResponseBody)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc)) from None
    _refuse(body)
    tools, dropped = _split_tools(body.tools or [], strict_tools)
    choice = _check_tool_choice(body.tool_choice, {t.name for t in tools}, dropped)
    if choice is not body.tool_choice:
        body = msgspec.structs.replace(body, tool_choice=choice)
    if body.previous_response_id is None and not body.input:
        # Without it the model would answer nothing at all, inventing a conversation.
        raise APIError.invalid("missing required parameter 'input': send the conversation's input (or a "
                               "'previous_response_id' to continue one)", "input", code="missing_required_parameter")
    items, references = _normalize_input(body.input)
    return ValidatedRequest(body=body, items=items, tools=tools, dropped_tools=dropped, references=references)


# The fields of CompactResponseMethodPublicBody; anything else in the body is ignored, as for create.
_COMPACT_FIELDS = ("model", "input", "previous_response_id", "instructions", "prompt_cache_key")


def parse_compact_request(
    data: bytes, *, strict_tools: bool = False, limits: InputLimits = DEFAULT_LIMITS
) -> tuple[ValidatedRequest, str]:
    """A ``POST /v1/responses/compact`` body: the same validation as create on the fields compact shares with
    it (input items, compaction items, sizes), and its ``model`` (required: a 400 naming it when missing)."""
    obj = decode_object(data, "the request body", limits=limits)
    model = obj.get("model")
    if model is None:
        raise APIError.invalid("missing required parameter 'model'", "model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise APIError.invalid("'model' must be a non-empty string", "model", code="invalid_value")
    fields = {name: obj[name] for name in _COMPACT_FIELDS if name in obj}
    for name, value in fields.items():  # before they are encoded again for parse_request
        check_nesting(value, limits.nesting_depth, path=name, level=2)
    validated = parse_request(msgspec.json.encode({**fields, "store": False}), strict_tools=strict_tools,
                              limits=limits)
    return validated, model


# Top-level fields whose values the server keeps as free-form JSON (tools, tool_choice) or could hold any
# nesting before conversion; ``input`` is checked item by item. Fields the server ignores are not looked at.
_CHECKED_FIELDS = tuple(name for name in CreateResponseBody.__struct_fields__ if name != "input")


def _check_limits(obj: dict[str, Any], limits: InputLimits) -> None:
    """Nesting, counts and sizes (``InputLimits``), on the decoded body before it is converted."""
    depth = limits.nesting_depth
    for name in _CHECKED_FIELDS:
        if name in obj:
            check_nesting(obj[name], depth, path=name, level=2)
    instructions = obj.get("instructions")
    if isinstance(instructions, str) and len(instructions) > limits.instructions_chars:
        raise _too_long("instructions", limits.instructions_chars, len(instructions))
    tools = obj.get("tools")
    if isinstance(tools, list):
        if len(tools) > limits.tools:
            raise _too_many("tools", limits.tools, len(tools))
        size = len(msgspec.json.encode(tools))
        if size > limits.tools_bytes:
            raise APIError.invalid(f"'tools' is {size} bytes as JSON; at most {limits.tools_bytes} are accepted",
                                   "tools", code="tools_too_large")
    text = obj.get("text")
    if isinstance(text, dict) and len(msgspec.json.encode(text)) > limits.tools_bytes:
        raise APIError.invalid(f"'text' (its JSON schema) is larger than {limits.tools_bytes} bytes as JSON",
                               "text.format", code="schema_too_large")
    _check_input(obj.get("input"), limits)


def _check_input(value: Any, limits: InputLimits) -> None:
    if isinstance(value, str):
        if len(value) > limits.text_chars:
            raise _too_long("input", limits.text_chars, len(value))
        return
    if not isinstance(value, list):
        return
    if len(value) > limits.input_items:
        raise _too_many("input", limits.input_items, len(value))
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            continue  # conversion names it
        for key, field_value in item.items():
            where = f"input[{i}].{shown(key, 40, quote=False)}"
            if isinstance(field_value, str):
                if len(field_value) > limits.text_chars:
                    raise _too_long(where, limits.text_chars, len(field_value))
            elif isinstance(field_value, list):
                if len(field_value) > limits.content_parts:
                    raise _too_many(where, limits.content_parts, len(field_value))
                for j, part in enumerate(field_value):
                    if isinstance(part, dict):
                        _check_part(part, f"{where}[{j}]", limits)
            elif isinstance(field_value, dict):
                check_nesting(field_value, limits.nesting_depth, path=where, level=4)


def _check_part(part: dict[str, Any], where: str, limits: InputLimits) -> None:
    for key, value in part.items():
        if isinstance(value, str):
            if len(value) > limits.text_chars:
                raise _too_long(f"{where}.{shown(key, 40, quote=False)}", limits.text_chars, len(value))
        else:  # annotations and any other container: levels body, input, item, list, part, value
            check_nesting(value, limits.nesting_depth, path=f"{where}.{shown(key, 40, quote=False)}", level=6)


def _too_long(param: str, limit: int, size: int) -> APIError:
    return APIError.invalid(f"'{param}' is {size} characters long; at most {limit} are accepted", param,
                            code="string_above_max_length")


def _too_many(param: str, limit: int, count: int) -> APIError:
    return APIError.invalid(f"'{param}' has {count} entries; at most {limit} are accepted", param,
                            code="array_above_max_length")


def _validation_error(message: str, prefix: str = "") -> APIError:
    """msgspec's message (``... - at `$.input[0].content```) as a 400 naming ``input[0].content``."""
    match = _AT_PATH.search(message)
    text = message[: match.start()] if match else message
    text = shown(text, 300, quote=False)  # msgspec quotes the bad value, which may be 100 kB long
    # A dict's values show as `[...]` in the path: name the dict itself.
    param = (prefix + (match.group("path") if match else "")).replace("[...]", "").lstrip(".") or None
    missing = _MISSING.match(text)
    if missing:
        param = f"{param}.{missing.group('name')}" if param else missing.group("name")
        return APIError.invalid(f"missing required parameter '{param}'", param, code="missing_required_parameter")
    if param:
        text = f"invalid value for '{param}': {text}"
    return APIError.invalid(text, param, code="invalid_value")


def _refuse(body: CreateResponseBody) -> None:
    """Spec fields this server cannot honour: a clear 400 rather than a silently different answer."""
    if body.background and not body.store:
        raise APIError.invalid("background responses must be stored: 'background': true needs 'store': true", "store")
    if body.top_logprobs:
        raise APIError.invalid("log probabilities are not available from this server's backends", "top_logprobs",
                               code="unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise APIError.invalid(f"'{name}' is not supported by this server's backends; send 0 or leave it out",
                                   name, code="unsupported_parameter")
    if body.truncation == "auto":
        raise APIError.invalid("truncation 'auto' is not supported: this server never drops input; send "
                               "'disabled' or leave it out", "truncation", code="unsupported_value")
    for i, value in enumerate(body.include or ()):
        if value == "message.output_text.logprobs":
            raise APIError.invalid("log probabilities are not available from this server's backends",
                                   f"include[{i}]", code="unsupported_value")
    if body.service_tier not in (None, "auto", "default"):
        raise APIError.invalid(f"service_tier '{body.service_tier}' is not offered: this server has one tier; send "
                               "'auto' or 'default' or leave it out", "service_tier", code="unsupported_value")
    if body.conversation is not None:
        raise APIError.invalid("the Conversations API is not supported; chain turns with 'previous_response_id'",
                               "conversation", code="unsupported_parameter")
    if body.prompt is not None:
        raise APIError.invalid("prompt templates are not supported; send 'instructions' and 'input'", "prompt",
                               code="unsupported_parameter")
    if isinstance(body.input, list):
        for i, item in enumerate(body.input):
            if isinstance(item, CompactionItem) and compaction_summary(item.encrypted_content) is None:
                raise APIError.invalid("this compaction item was not made by this server: only the output of its "
                                       "/v1/responses/compact can be sent back", f"input[{i}].encrypted_content",
                                       code="invalid_encrypted_content")
            parts = item.content if isinstance(item, MessageItem) else (
                item.output if isinstance(item, FunctionCallOutputItem) else None)
            if isinstance(parts, list):
                for j, part in enumerate(parts):
                    if not isinstance(part, (*TEXT_PARTS, RefusalPart)):
                        where = "content" if isinstance(item, MessageItem) else "output"
                        raise APIError.invalid(
                            f"'{part.__struct_config__.tag}' content is not supported: this server's backends "
                            "read text only", f"input[{i}].{where}[{j}]", code="unsupported_content")


def _split_tools(tools: list[dict[str, Any]], strict: bool) -> tuple[list[FunctionTool], list[str]]:
    functions: list[FunctionTool] = []
    dropped: list[str] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise APIError.invalid("each tool needs a string 'type'", f"tools[{i}].type",
                                   code="missing_required_parameter")
        if kind != "function":
            if strict:
                raise APIError.invalid(f"tools of type {shown(kind)} cannot run on this server (it runs function "
                                       "tools only; started with --strict-tools)", f"tools[{i}]",
                                       code="unsupported_tool")
            dropped.append(kind)
            continue
        try:
            functions.append(msgspec.convert(tool, FunctionTool))
        except msgspec.ValidationError as exc:
            raise _validation_error(str(exc), f"tools[{i}]") from None
    names = [t.name for t in functions]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise APIError.invalid(f"two function tools are named '{dup}'", "tools", code="duplicate_tool_name")
    return functions, dropped


def _check_tool_choice(
    choice: str | dict[str, Any] | None, names: set[str], dropped: list[str]
) -> str | dict[str, Any] | None:
    """The tool choice checked field by field, as the response echoes it: an object keeps only its spec fields
    (a client's extra keys are not sent back three times a stream)."""
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise APIError.invalid(f"tool_choice must be 'none', 'auto', 'required' or an object, not "
                                   f"{shown(choice)}", "tool_choice", code="invalid_value")
        if choice == "required" and not names:
            raise APIError.invalid("tool_choice 'required' needs at least one function tool the model can call",
                                   "tool_choice", code="invalid_value")
        return choice
    kind = choice.get("type")
    if kind is None:
        raise APIError.invalid("missing required parameter 'tool_choice.type'", "tool_choice.type",
                               code="missing_required_parameter")
    if not isinstance(kind, str):
        raise APIError.invalid("tool_choice.type must be a string", "tool_choice.type", code="invalid_type")
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise APIError.invalid("tool_choice.name must be the name (a string) of a function tool",
                                   "tool_choice.name", code="invalid_type")
        if name not in names:
            raise APIError.invalid(f"tool_choice names function {shown(name)}, which is not among the tools",
                                   "tool_choice", code="invalid_value")
        return {"type": "function", "name": name}
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        if mode not in ("none", "auto", "required"):
            raise APIError.invalid("allowed_tools mode must be 'none', 'auto' or 'required'", "tool_choice.mode",
                                   code="invalid_value")
        allowed = choice.get("tools")
        if not isinstance(allowed, list) or not allowed:
            raise APIError.invalid("allowed_tools needs a non-empty 'tools' list", "tool_choice.tools",
                                   code="invalid_value")
        kept: list[dict[str, Any]] = []
        for i, entry in enumerate(allowed):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or entry.get("type") != "function" or not isinstance(name, str) \
                    or name not in names:
                raise APIError.invalid("allowed_tools may list only function tools given in 'tools'",
                                       f"tool_choice.tools[{i}]", code="invalid_value")
            kept.append({"type": "function", "name": name})
        return {"type": "allowed_tools", "mode": mode, "tools": kept}
    if kind in dropped:
        raise APIError.invalid(f"tool_choice forces a {shown(kind)} tool, which cannot run on this server",
                               "tool_choice", code="unsupported_tool")
    raise APIError.invalid(f"unsupported tool_choice type {shown(kind)}", "tool_choice.type", code="invalid_value")


# --- normalized input items ---------------------------------------------------------------------------------

_ID_PREFIX = {MessageItem: "msg_", FunctionCallItem: "fc_", FunctionCallOutputItem: "fco_", ReasoningInputItem: "rs_",
              CompactionItem: "cmp_"}


def _normalize_input(value: str | list[InputItem] | None) -> tuple[list[StoredItem], list[tuple[int, int, str]]]:
    """The request's input as stored: ids on every item, string message content as one text part; and the item
    references, to be resolved from the store."""
    if value is None:
        return [], []
    if isinstance(value, str):
        text = MessageItem(role="user", content=[InputTextPart(text=value)], id=new_id("msg_"), status="completed")
        return [text], []
    out: list[StoredItem] = []
    references: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        if isinstance(item, ItemReference):
            references.append((len(out), index, item.id))
            continue
        if item.id is not None and item.id in seen:
            # A client re-sending history may repeat an item; ids stay unique per response so that the
            # input_items cursor (``after=<id>``) is never ambiguous.
            item = msgspec.structs.replace(item, id=None)
        if isinstance(item, MessageItem) and isinstance(item.content, str):
            part: ContentPart = (
                OutputTextPart(text=item.content) if item.role == "assistant" else InputTextPart(text=item.content)
            )
            item = msgspec.structs.replace(item, content=[part])
        if item.id is None:
            item = msgspec.structs.replace(item, id=new_id(_ID_PREFIX[type(item)]))
        if isinstance(item, MessageItem) and item.status is None:
            item = msgspec.structs.replace(item, status="completed")
        seen.add(item.id)  # type: ignore[arg-type]  # every item has an id by now
        out.append(item)
    return out, references


def with_references(request: ValidatedRequest, resolved: list[StoredItem | None]) -> ValidatedRequest:
    """``request`` with its references replaced by the items found (``resolved``, one per reference, in order;
    None: an item with no meaning as input, left out). Ids stay unique per response, as for repeated items."""
    items = list(request.items)
    inserted: set[int] = set()
    for (position, _, _), item in reversed(list(zip(request.references, resolved, strict=True))):
        if item is not None:
            items.insert(position, item)
            inserted = {i + 1 if i >= position else i for i in inserted} | {position}
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            items[i] = item = msgspec.structs.replace(item, id=new_id(_ID_PREFIX[type(item)]))
        seen.add(item.id or "")
    return ValidatedRequest(body=request.body, items=items, tools=request.tools, dropped_tools=request.dropped_tools,
                            referenced={items[i].id or "" for i in inserted})


_item_encoder = msgspec.json.Encoder()
_item_decoder = msgspec.json.Decoder(StoredItem)


def encode_input_item(item: StoredItem) -> bytes:
    return _item_encoder.encode(item)


def decode_input_items(data: list[bytes]) -> list[StoredItem]:
    return [_item_decoder.decode(d) for d in data]


def item_from_output(item: Any) -> StoredItem | None:
    """An output item of an earlier response (a ``resources`` Struct) as an input item, or None when it has no
    meaning as input (hosted-tool calls and unknown types)."""
    try:
        builtins = item.to_builtins() if hasattr(item, "to_builtins") else msgspec.to_builtins(item)
        return msgspec.convert(builtins, StoredItem)
    except msgspec.ValidationError:
        return None
