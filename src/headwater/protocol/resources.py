"""The response resource and everything inside it, declared once as msgspec Structs.

These declarations are the wire format (snake_case) and the decoder. Fields the spec requires are always
encoded (null when unknown); fields only some providers send default to ``UNSET`` and are omitted when absent,
so a re-encoded object says what the provider said. Unknown item, part and annotation types become
``UnknownItem`` / ``UnknownPart`` / ``UnknownAnnotation`` (see ``codec``), never a decode failure.

Fidelity (one mechanism): an item, part, annotation or usage object taken from a provider's event remembers the
JSON object it came from (``keep_wire``, or ``wires.keep_wire_lazily`` that decodes that JSON only when it is
asked for; ``replace`` keeps it). ``to_builtins`` then gives that object back as
the provider sent it, with its current values for the fields Headwater declares (ids and statuses the relay
rewrote, texts the deltas built), every field it does not declare, and no declared field the provider left out
unless its value was changed (a default like ``title: ""`` is never invented).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Union, get_args

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

from .wires import (
    WIRE,
    WireSource,
    has_wire,
    keep_wire_lazily,
    resolved,
    wire_builtins,
)

__all__ = [
    "UNSET",
    "Annotation",
    "AnnotationField",
    "ApplyPatchCall",
    "ApplyPatchCallOutput",
    "CodeInterpreterCall",
    "Compaction",
    "ContainerFileCitation",
    "ContentPart",
    "ContentPartField",
    "CostDetails",
    "CustomToolCall",
    "CustomToolCallOutput",
    "FileCitation",
    "FilePath",
    "FileSearchCall",
    "FunctionCall",
    "FunctionCallOutput",
    "ImageGenerationCall",
    "IncompleteDetails",
    "InputFile",
    "InputImage",
    "InputText",
    "InputTokensDetails",
    "Item",
    "ItemField",
    "LocalShellCall",
    "LocalShellCallOutput",
    "LogProb",
    "McpApprovalRequest",
    "McpApprovalResponse",
    "McpCall",
    "McpListTools",
    "Message",
    "OutputText",
    "OutputTokensDetails",
    "ReasoningItem",
    "ReasoningText",
    "Refusal",
    "Response",
    "ResponseError",
    "ShellCall",
    "ShellCallOutput",
    "SummaryText",
    "Text",
    "TopLogProb",
    "UnknownAnnotation",
    "UnknownItem",
    "UnknownPart",
    "UnsetType",
    "UrlCitation",
    "Usage",
    "WebSearchCall",
    "WireSource",
    "has_wire",
    "keep_wire",
    "keep_wire_lazily",
    "replace",
    "to_builtins",
]


class _Unknown:
    """A nested object of a type this version does not know: its ``type`` and its payload, kept as sent."""

    __slots__ = ("data", "type")

    def __init__(self, data: dict[str, Any]) -> None:
        self.type: str = str(data.get("type"))
        self.data = data

    @property
    def id(self) -> str | None:
        value = self.data.get("id")
        return value if isinstance(value, str) else None

    def __getattr__(self, name: str) -> Any:
        # Reading a field the known classes have (status, call_id, ...) gives what the payload says, or UNSET.
        if name.startswith("__"):
            raise AttributeError(name)
        return self.data.get(name, UNSET)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unknown) and type(other) is type(self) and other.data == self.data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type!r}, data={self.data!r})"

    def to_builtins(self) -> dict[str, Any]:
        return self.data


class UnknownItem(_Unknown):
    """An output item whose ``type`` Headwater does not know (``program``, ``tool_search_call``, ...)."""


class UnknownPart(_Unknown):
    """A content part whose ``type`` Headwater does not know."""


class UnknownAnnotation(_Unknown):
    """An annotation whose ``type`` Headwater does not know."""


# --- annotations --------------------------------------------------------------------------------------------


class _Annotation(Struct, tag_field="type", kw_only=True, repr_omit_defaults=True, dict=True):
    type: ClassVar[str]  # the wire tag, set below for every class


class UrlCitation(_Annotation, tag="url_citation"):
    url: str = ""
    title: str = ""
    start_index: int = 0
    end_index: int = 0


class FileCitation(_Annotation, tag="file_citation"):
    file_id: str = ""
    index: int = 0
    filename: str | UnsetType = UNSET


class ContainerFileCitation(_Annotation, tag="container_file_citation"):
    container_id: str = ""
    file_id: str = ""
    start_index: int = 0
    end_index: int = 0
    filename: str | UnsetType = UNSET


class FilePath(_Annotation, tag="file_path"):
    file_id: str = ""
    index: int = 0


Annotation = Union[UrlCitation, FileCitation, ContainerFileCitation, FilePath]
if TYPE_CHECKING:
    AnnotationField = Union[Annotation, UnknownAnnotation]
else:  # msgspec decodes the known union; the codec substitutes UnknownAnnotation for unknown tags.
    AnnotationField = Annotation


# --- content parts ------------------------------------------------------------------------------------------


class TopLogProb(Struct, kw_only=True, repr_omit_defaults=True, dict=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class LogProb(Struct, kw_only=True, repr_omit_defaults=True, dict=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogProb] = field(default_factory=list)


class _Part(Struct, tag_field="type", kw_only=True, repr_omit_defaults=True, dict=True):
    type: ClassVar[str]  # the wire tag, set below for every class


class OutputText(_Part, tag="output_text"):
    text: str = ""
    annotations: list[AnnotationField] = field(default_factory=list)
    logprobs: list[LogProb] | UnsetType = UNSET


class Refusal(_Part, tag="refusal"):
    refusal: str = ""


class ReasoningText(_Part, tag="reasoning_text"):
    text: str = ""


class SummaryText(_Part, tag="summary_text"):
    text: str = ""


class Text(_Part, tag="text"):
    text: str = ""


class InputText(_Part, tag="input_text"):
    text: str = ""


class InputImage(_Part, tag="input_image"):
    image_url: str | None = None
    file_id: str | None | UnsetType = UNSET
    detail: str | UnsetType = UNSET


class InputFile(_Part, tag="input_file"):
    file_id: str | None | UnsetType = UNSET
    file_url: str | None | UnsetType = UNSET
    file_data: str | None | UnsetType = UNSET
    filename: str | None | UnsetType = UNSET


ContentPart = Union[OutputText, Refusal, ReasoningText, SummaryText, Text, InputText, InputImage, InputFile]
if TYPE_CHECKING:
    ContentPartField = Union[ContentPart, UnknownPart]
else:
    ContentPartField = ContentPart


# --- output items -------------------------------------------------------------------------------------------


class _Item(Struct, tag_field="type", kw_only=True, repr_omit_defaults=True, dict=True):
    type: ClassVar[str]  # the wire tag, set below for every class
    id: str | None = None


class Message(_Item, tag="message"):
    role: str = "assistant"
    status: str | None = None
    content: list[ContentPartField] = field(default_factory=list)
    phase: str | None | UnsetType = UNSET


class FunctionCall(_Item, tag="function_call"):
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    status: str | None = None
    namespace: str | None | UnsetType = UNSET


class FunctionCallOutput(_Item, tag="function_call_output"):
    call_id: str = ""
    output: str | list[Any] = ""
    status: str | None = None


class ReasoningItem(_Item, tag="reasoning"):
    summary: list[ContentPartField] = field(default_factory=list)
    content: list[ContentPartField] | None | UnsetType = UNSET
    encrypted_content: str | None | UnsetType = UNSET
    status: str | None | UnsetType = UNSET


class Compaction(_Item, tag="compaction"):
    encrypted_content: str = ""
    created_by: str | UnsetType = UNSET


class ImageGenerationCall(_Item, tag="image_generation_call"):
    status: str | None = None
    result: str | None = None
    revised_prompt: str | None | UnsetType = UNSET
    background: str | None | UnsetType = UNSET
    output_format: str | None | UnsetType = UNSET
    quality: str | None | UnsetType = UNSET
    size: str | None | UnsetType = UNSET


class WebSearchCall(_Item, tag="web_search_call"):
    status: str | None = None
    action: Any = UNSET


class FileSearchCall(_Item, tag="file_search_call"):
    status: str | None = None
    queries: list[str] = field(default_factory=list)
    results: list[Any] | None = None


class CodeInterpreterCall(_Item, tag="code_interpreter_call"):
    status: str | None = None
    code: str | None = None
    container_id: str | UnsetType = UNSET
    outputs: list[Any] | None = None


class McpCall(_Item, tag="mcp_call"):
    server_label: str = ""
    name: str = ""
    arguments: str = ""
    output: str | None = None
    error: Any = None
    status: str | None | UnsetType = UNSET
    approval_request_id: str | None | UnsetType = UNSET


class McpListTools(_Item, tag="mcp_list_tools"):
    server_label: str = ""
    tools: list[Any] = field(default_factory=list)
    error: Any = UNSET


class McpApprovalRequest(_Item, tag="mcp_approval_request"):
    server_label: str = ""
    name: str = ""
    arguments: str = ""


class McpApprovalResponse(_Item, tag="mcp_approval_response"):
    approval_request_id: str = ""
    approve: bool = False
    reason: str | None | UnsetType = UNSET


class CustomToolCall(_Item, tag="custom_tool_call"):
    call_id: str = ""
    name: str = ""
    input: str = ""
    status: str | None | UnsetType = UNSET


class CustomToolCallOutput(_Item, tag="custom_tool_call_output"):
    call_id: str = ""
    output: str | list[Any] = ""
    status: str | None | UnsetType = UNSET


class ApplyPatchCall(_Item, tag="apply_patch_call"):
    call_id: str = ""
    operation: Any = None
    status: str | None = None


class ApplyPatchCallOutput(_Item, tag="apply_patch_call_output"):
    call_id: str = ""
    output: str | None = None
    status: str | None = None


class ShellCall(_Item, tag="shell_call"):
    call_id: str = ""
    action: Any = None
    status: str | None = None
    environment: Any = UNSET


class ShellCallOutput(_Item, tag="shell_call_output"):
    call_id: str = ""
    output: list[Any] = field(default_factory=list)
    status: str | None | UnsetType = UNSET
    max_output_length: int | None | UnsetType = UNSET


class LocalShellCall(_Item, tag="local_shell_call"):
    call_id: str = ""
    action: Any = None
    status: str | None = None


class LocalShellCallOutput(_Item, tag="local_shell_call_output"):
    output: str = ""
    status: str | None | UnsetType = UNSET


Item = Union[
    Message,
    FunctionCall,
    FunctionCallOutput,
    ReasoningItem,
    Compaction,
    ImageGenerationCall,
    WebSearchCall,
    FileSearchCall,
    CodeInterpreterCall,
    McpCall,
    McpListTools,
    McpApprovalRequest,
    McpApprovalResponse,
    CustomToolCall,
    CustomToolCallOutput,
    ApplyPatchCall,
    ApplyPatchCallOutput,
    ShellCall,
    ShellCallOutput,
    LocalShellCall,
    LocalShellCallOutput,
]
if TYPE_CHECKING:
    ItemField = Union[Item, UnknownItem]
else:
    ItemField = Item


for _cls in (*get_args(Annotation), *get_args(ContentPart), *get_args(Item)):
    _cls.type = _cls.__struct_config__.tag
del _cls

# --- the response -------------------------------------------------------------------------------------------


class InputTokensDetails(Struct, kw_only=True, repr_omit_defaults=True, dict=True):
    cached_tokens: int = 0
    # OpenAI's (its SDK's types require it); providers that report it: Bedrock, OpenRouter, the Codex backend.
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct, kw_only=True, repr_omit_defaults=True, dict=True):
    reasoning_tokens: int = 0


class CostDetails(Struct, kw_only=True, repr_omit_defaults=True, dict=True):
    """OpenRouter's breakdown of ``cost``."""

    upstream_inference_cost: float | None = None
    upstream_inference_input_cost: float | None = None
    upstream_inference_output_cost: float | None = None


class Usage(Struct, kw_only=True, repr_omit_defaults=True, dict=True):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails | None = field(default_factory=OutputTokensDetails)
    # OpenRouter's additions.
    cost: float | None | UnsetType = UNSET
    is_byok: bool | None | UnsetType = UNSET
    cost_details: CostDetails | None | UnsetType = UNSET


class ResponseError(Struct, kw_only=True, repr_omit_defaults=True):
    """``response.error``: why a response failed."""

    code: str | None = None
    message: str = ""
    param: str | None | UnsetType = UNSET
    type: str | None | UnsetType = UNSET


class IncompleteDetails(Struct, kw_only=True, repr_omit_defaults=True):
    reason: str | None = None


Number = Union[int, float]


class Response(Struct, kw_only=True, repr_omit_defaults=True):
    """The ``ResponseResource``: what a stream describes, and what ``GET /responses/{id}`` returns.

    Every field the spec requires is encoded, null when unknown. ``user`` and ``output_text`` are OpenRouter's;
    ``output_text`` is also a property on every response, as in openai-python.
    ``max_tool_calls`` and ``top_logprobs`` take any number, as the seed's schema does.
    """

    id: str = ""
    object: str = "response"
    created_at: Number = 0
    completed_at: Number | None = None
    status: str = "in_progress"
    incomplete_details: IncompleteDetails | None = None
    model: str = ""
    previous_response_id: str | None = None
    instructions: str | list[Any] | None = None
    output: list[ItemField] = field(default_factory=list)
    error: ResponseError | None = None
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"
    truncation: str | None = "disabled"
    parallel_tool_calls: bool = True
    text: Any = field(default_factory=lambda: {"format": {"type": "text"}})
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_logprobs: Number | None = None
    temperature: float | None = None
    reasoning: Any = None
    usage: Usage | None = None
    max_output_tokens: Number | None = None
    max_tool_calls: Number | None = None
    store: bool | None = None
    background: bool | None = None
    service_tier: str | None = None
    metadata: Any = field(default_factory=dict)
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    user: str | None | UnsetType = UNSET
    # OpenRouter's own `output_text` field, kept (and re-encoded) as it was sent; read `output_text` instead.
    sent_output_text: str | None | UnsetType = field(default=UNSET, name="output_text")
    prompt: Any = UNSET

    @property
    def output_text(self) -> str:
        """The text of every ``output_text`` part of every message, joined, as openai-python's
        ``Response.output_text`` (a provider's own ``output_text`` when the output holds no text)."""
        text = "".join(
            part.text
            for item in self.output
            if type(item) is Message
            for part in item.content
            if type(part) is OutputText
        )
        if not text and isinstance(self.sent_output_text, str):
            return self.sent_output_text
        return text


# --- fidelity: what a provider sent survives ------------------------------------------------------------

_S = TypeVar("_S", bound=Struct)
_WIRE = WIRE


def keep_wire(obj: Any, wire: Any) -> None:
    """Remember on ``obj`` (a resource decoded from ``wire``) and on every resource nested in it the JSON object
    each came from. Objects whose declared fields cover the wire exactly are left alone (nothing to keep)."""
    if isinstance(obj, list):
        if isinstance(wire, list):
            for item, raw in zip(obj, wire, strict=False):
                keep_wire(item, raw)
        return
    if not isinstance(wire, dict) or not isinstance(obj, Struct):
        return
    fields = obj.__struct_fields__
    for name in fields:
        if name in wire:
            value = getattr(obj, name)
            if isinstance(value, (Struct, list)):
                keep_wire(value, wire[name])
    if hasattr(obj, "__dict__") and _differs(obj, wire, fields):
        obj.__dict__[_WIRE] = wire


def _wire_of(obj: Any) -> Any:
    """The JSON object ``obj`` remembers (None if none)."""
    attrs = getattr(obj, "__dict__", None)
    if not attrs:
        return None
    return resolved(attrs.get(_WIRE))


def _differs(obj: Struct, wire: dict[str, Any], fields: tuple[str, ...]) -> bool:
    """Whether encoding ``obj`` by its declared fields alone would lose or invent a field of ``wire``."""
    present = sum(1 for name in fields if getattr(obj, name) is not UNSET)
    tag = 1 if "type" in wire and type(obj).__struct_config__.tag is not None else 0
    return len(wire) != present + tag or any(name not in wire for name in fields if getattr(obj, name) is not UNSET)


def replace(obj: _S, /, **changes: Any) -> _S:
    """``msgspec.structs.replace`` that keeps what ``keep_wire`` remembered."""
    new = msgspec.structs.replace(obj, **changes)
    wire = getattr(obj, "__dict__", None)
    if wire and _WIRE in wire:
        new.__dict__[_WIRE] = wire[_WIRE]
    return new


def to_builtins(obj: Any) -> Any:
    """Any resource (or list of them) as plain JSON-ready Python objects, unknown nested objects included, and
    objects from a provider as it sent them (see the module's notes). The walk is ``wires.wire_builtins``
    (compiled): msgspec converts, in C, whatever holds nothing that remembers a wire."""
    out = wire_builtins(obj, _enc_hook)
    return msgspec.to_builtins(obj, enc_hook=_enc_hook) if out is None else out


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=_enc_hook)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, _Unknown):
        return obj.data
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")
