"""One class per stream event type, and the tagged union over them. Nothing else lives here.

Events are frozen: a decoded event keeps the exact bytes it came from (``raw_json``) so that a stream passed
through Headwater is re-emitted byte-for-byte, provider extras (``obfuscation``, ``copilot_usage``) included.
Attribute names are the wire's. ``UnknownEvent`` carries any type this version does not know.
"""

from __future__ import annotations

from typing import Any, ClassVar, Union, get_args

from msgspec import UNSET, Struct, UnsetType, field

from .resources import AnnotationField, ContentPartField, ItemField, LogProb, Response

__all__ = [
    "ALL_EVENT_TYPES",
    "EVENT_CLASSES",
    "TERMINAL_EVENT_TYPES",
    "ApplyPatchCallOperationDiffDelta",
    "ApplyPatchCallOperationDiffDone",
    "CodeInterpreterCallCodeDelta",
    "CodeInterpreterCallCodeDone",
    "CodeInterpreterCallCompleted",
    "CodeInterpreterCallInProgress",
    "CodeInterpreterCallInterpreting",
    "CustomToolCallInputDelta",
    "CustomToolCallInputDone",
    "ErrorEvent",
    "ErrorPayload",
    "Event",
    "FileSearchCallCompleted",
    "FileSearchCallInProgress",
    "FileSearchCallSearching",
    "FunctionCallArgumentsDelta",
    "FunctionCallArgumentsDone",
    "ImageGenerationCallCompleted",
    "ImageGenerationCallGenerating",
    "ImageGenerationCallInProgress",
    "ImageGenerationCallPartialImage",
    "KnownEvent",
    "McpCallArgumentsDelta",
    "McpCallArgumentsDone",
    "McpCallCompleted",
    "McpCallFailed",
    "McpCallInProgress",
    "McpListToolsCompleted",
    "McpListToolsFailed",
    "McpListToolsInProgress",
    "ResponseCompleted",
    "ResponseContentPartAdded",
    "ResponseContentPartDone",
    "ResponseCreated",
    "ResponseFailed",
    "ResponseInProgress",
    "ResponseIncomplete",
    "ResponseOutputItemAdded",
    "ResponseOutputItemDone",
    "ResponseOutputTextAnnotationAdded",
    "ResponseOutputTextDelta",
    "ResponseOutputTextDone",
    "ResponseQueued",
    "ResponseReasoningDelta",
    "ResponseReasoningDone",
    "ResponseReasoningSummaryPartAdded",
    "ResponseReasoningSummaryPartDone",
    "ResponseReasoningSummaryTextDelta",
    "ResponseReasoningSummaryTextDone",
    "ResponseReasoningTextDelta",
    "ResponseReasoningTextDone",
    "ResponseRefusalDelta",
    "ResponseRefusalDone",
    "ShellCallCommandAdded",
    "ShellCallCommandDelta",
    "ShellCallCommandDone",
    "ShellCallOutputContentDelta",
    "ShellCallOutputContentDone",
    "UnknownEvent",
    "WebSearchCallCompleted",
    "WebSearchCallInProgress",
    "WebSearchCallSearching",
]

Number = Union[int, float]


class _Event(Struct, tag_field="type", kw_only=True, frozen=True, dict=True, repr_omit_defaults=True):
    """Base of every known event. ``type`` is a class attribute equal to the wire tag."""

    type: ClassVar[str]
    # The spec requires it; some recordings and sloppy providers leave it out (None then; the checker says so).
    sequence_number: int | None = None

    @property
    def raw_json(self) -> bytes | None:
        """The bytes this event was decoded from, or None for an event built in code."""
        return self.__dict__.get("_raw")


# --- response lifecycle -------------------------------------------------------------------------------------


class _ResponseEvent(_Event, kw_only=True, frozen=True):
    response: Response


class ResponseCreated(_ResponseEvent, tag="response.created", kw_only=True, frozen=True):
    pass


class ResponseQueued(_ResponseEvent, tag="response.queued", kw_only=True, frozen=True):
    pass


class ResponseInProgress(_ResponseEvent, tag="response.in_progress", kw_only=True, frozen=True):
    pass


class ResponseCompleted(_ResponseEvent, tag="response.completed", kw_only=True, frozen=True):
    pass


class ResponseIncomplete(_ResponseEvent, tag="response.incomplete", kw_only=True, frozen=True):
    pass


class ResponseFailed(_ResponseEvent, tag="response.failed", kw_only=True, frozen=True):
    pass


class ErrorPayload(Struct, kw_only=True, frozen=True):
    """The spec's nested error (and OpenAI's production shape)."""

    type: str | None | UnsetType = UNSET
    code: str | None = None
    message: str = ""
    param: str | None = None
    headers: dict[str, str] | UnsetType = UNSET


class ErrorEvent(_Event, tag="error", kw_only=True, frozen=True):
    """``error``. Two shapes occur: top-level ``code``/``message``/``param`` (the seed) and a nested
    ``error`` object (the spec, OpenAI). Both decode; read ``error_code``/``error_message``/``error_param``."""

    code: str | None | UnsetType = UNSET
    message: str | UnsetType = UNSET
    param: str | None | UnsetType = UNSET
    error: ErrorPayload | UnsetType = UNSET

    @property
    def error_code(self) -> str | None:
        if isinstance(self.code, str):
            return self.code
        return self.error.code if isinstance(self.error, ErrorPayload) else None

    @property
    def error_message(self) -> str:
        if isinstance(self.message, str):
            return self.message
        return self.error.message if isinstance(self.error, ErrorPayload) else ""

    @property
    def error_param(self) -> str | None:
        if isinstance(self.param, str):
            return self.param
        return self.error.param if isinstance(self.error, ErrorPayload) else None


# --- output items and content parts -------------------------------------------------------------------------


class ResponseOutputItemAdded(_Event, tag="response.output_item.added", kw_only=True, frozen=True):
    output_index: int
    item: ItemField


class ResponseOutputItemDone(_Event, tag="response.output_item.done", kw_only=True, frozen=True):
    output_index: int
    item: ItemField


class _PartEvent(_Event, kw_only=True, frozen=True):
    item_id: str
    output_index: int
    content_index: int


class ResponseContentPartAdded(_PartEvent, tag="response.content_part.added", kw_only=True, frozen=True):
    part: ContentPartField


class ResponseContentPartDone(_PartEvent, tag="response.content_part.done", kw_only=True, frozen=True):
    part: ContentPartField


class ResponseOutputTextDelta(_PartEvent, tag="response.output_text.delta", kw_only=True, frozen=True):
    delta: str
    logprobs: list[LogProb] | UnsetType = UNSET
    obfuscation: str | UnsetType = UNSET


class ResponseOutputTextDone(_PartEvent, tag="response.output_text.done", kw_only=True, frozen=True):
    text: str
    logprobs: list[LogProb] | UnsetType = UNSET


class ResponseOutputTextAnnotationAdded(_PartEvent, tag="response.output_text.annotation.added", kw_only=True, frozen=True):
    annotation_index: int
    annotation: AnnotationField


class ResponseRefusalDelta(_PartEvent, tag="response.refusal.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class ResponseRefusalDone(_PartEvent, tag="response.refusal.done", kw_only=True, frozen=True):
    refusal: str


class ResponseReasoningTextDelta(_PartEvent, tag="response.reasoning_text.delta", kw_only=True, frozen=True):
    """The seed's (OpenRouter's and OpenAI's) name for a reasoning-text delta."""

    delta: str
    obfuscation: str | UnsetType = UNSET


class ResponseReasoningTextDone(_PartEvent, tag="response.reasoning_text.done", kw_only=True, frozen=True):
    text: str


class ResponseReasoningDelta(_PartEvent, tag="response.reasoning.delta", kw_only=True, frozen=True):
    """The Open Responses spec's name for a reasoning-text delta."""

    delta: str
    obfuscation: str | UnsetType = UNSET


class ResponseReasoningDone(_PartEvent, tag="response.reasoning.done", kw_only=True, frozen=True):
    text: str


# --- reasoning summaries ------------------------------------------------------------------------------------


class _SummaryEvent(_Event, kw_only=True, frozen=True):
    item_id: str
    output_index: int
    summary_index: int


class ResponseReasoningSummaryPartAdded(_SummaryEvent, tag="response.reasoning_summary_part.added", kw_only=True, frozen=True):
    part: ContentPartField


class ResponseReasoningSummaryPartDone(_SummaryEvent, tag="response.reasoning_summary_part.done", kw_only=True, frozen=True):
    part: ContentPartField


class ResponseReasoningSummaryTextDelta(_SummaryEvent, tag="response.reasoning_summary_text.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class ResponseReasoningSummaryTextDone(_SummaryEvent, tag="response.reasoning_summary_text.done", kw_only=True, frozen=True):
    text: str


# --- tool-call argument streams -----------------------------------------------------------------------------


class _ItemEvent(_Event, kw_only=True, frozen=True):
    item_id: str
    output_index: int


class FunctionCallArgumentsDelta(_ItemEvent, tag="response.function_call_arguments.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class FunctionCallArgumentsDone(_ItemEvent, tag="response.function_call_arguments.done", kw_only=True, frozen=True):
    arguments: str
    # The seed has it (OpenRouter's SDK rejects the event without it); OpenAI's stream leaves it out.
    name: str | UnsetType = UNSET


class CustomToolCallInputDelta(_ItemEvent, tag="response.custom_tool_call_input.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class CustomToolCallInputDone(_ItemEvent, tag="response.custom_tool_call_input.done", kw_only=True, frozen=True):
    input: str


class McpCallArgumentsDelta(_ItemEvent, tag="response.mcp_call_arguments.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class McpCallArgumentsDone(_ItemEvent, tag="response.mcp_call_arguments.done", kw_only=True, frozen=True):
    arguments: str


class CodeInterpreterCallCodeDelta(_ItemEvent, tag="response.code_interpreter_call_code.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class CodeInterpreterCallCodeDone(_ItemEvent, tag="response.code_interpreter_call_code.done", kw_only=True, frozen=True):
    code: str


class ApplyPatchCallOperationDiffDelta(_ItemEvent, tag="response.apply_patch_call_operation_diff.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class ApplyPatchCallOperationDiffDone(_ItemEvent, tag="response.apply_patch_call_operation_diff.done", kw_only=True, frozen=True):
    diff: str


# --- hosted-tool progress -----------------------------------------------------------------------------------


class _ProgressEvent(_Event, kw_only=True, frozen=True):
    item_id: str
    output_index: int


class _ImageEvent(_Event, kw_only=True, frozen=True):
    item_id: str
    # The seed's schema types these as ``number`` (its examples are fractional).
    output_index: Number


class ImageGenerationCallInProgress(_ImageEvent, tag="response.image_generation_call.in_progress", kw_only=True, frozen=True):
    pass


class ImageGenerationCallGenerating(_ImageEvent, tag="response.image_generation_call.generating", kw_only=True, frozen=True):
    pass


class ImageGenerationCallPartialImage(_ImageEvent, tag="response.image_generation_call.partial_image", kw_only=True, frozen=True):
    partial_image_b64: str
    partial_image_index: Number
    background: str | None | UnsetType = UNSET
    output_format: str | None | UnsetType = UNSET
    quality: str | None | UnsetType = UNSET
    size: str | None | UnsetType = UNSET


class ImageGenerationCallCompleted(_ImageEvent, tag="response.image_generation_call.completed", kw_only=True, frozen=True):
    pass


class WebSearchCallInProgress(_ProgressEvent, tag="response.web_search_call.in_progress", kw_only=True, frozen=True):
    pass


class WebSearchCallSearching(_ProgressEvent, tag="response.web_search_call.searching", kw_only=True, frozen=True):
    pass


class WebSearchCallCompleted(_ProgressEvent, tag="response.web_search_call.completed", kw_only=True, frozen=True):
    pass


class FileSearchCallInProgress(_ProgressEvent, tag="response.file_search_call.in_progress", kw_only=True, frozen=True):
    pass


class FileSearchCallSearching(_ProgressEvent, tag="response.file_search_call.searching", kw_only=True, frozen=True):
    pass


class FileSearchCallCompleted(_ProgressEvent, tag="response.file_search_call.completed", kw_only=True, frozen=True):
    pass


class CodeInterpreterCallInProgress(_ProgressEvent, tag="response.code_interpreter_call.in_progress", kw_only=True, frozen=True):
    pass


class CodeInterpreterCallInterpreting(_ProgressEvent, tag="response.code_interpreter_call.interpreting", kw_only=True, frozen=True):
    pass


class CodeInterpreterCallCompleted(_ProgressEvent, tag="response.code_interpreter_call.completed", kw_only=True, frozen=True):
    pass


class McpCallInProgress(_ProgressEvent, tag="response.mcp_call.in_progress", kw_only=True, frozen=True):
    pass


class McpCallCompleted(_ProgressEvent, tag="response.mcp_call.completed", kw_only=True, frozen=True):
    pass


class McpCallFailed(_ProgressEvent, tag="response.mcp_call.failed", kw_only=True, frozen=True):
    pass


class McpListToolsInProgress(_ProgressEvent, tag="response.mcp_list_tools.in_progress", kw_only=True, frozen=True):
    pass


class McpListToolsCompleted(_ProgressEvent, tag="response.mcp_list_tools.completed", kw_only=True, frozen=True):
    pass


class McpListToolsFailed(_ProgressEvent, tag="response.mcp_list_tools.failed", kw_only=True, frozen=True):
    pass


# --- shell tool (OpenAI): commands are addressed by output_index and command_index --------------------------


class _ShellCommandEvent(_Event, kw_only=True, frozen=True):
    output_index: int
    command_index: int
    item_id: str | UnsetType = UNSET


class ShellCallCommandAdded(_ShellCommandEvent, tag="response.shell_call_command.added", kw_only=True, frozen=True):
    command: str = ""


class ShellCallCommandDelta(_ShellCommandEvent, tag="response.shell_call_command.delta", kw_only=True, frozen=True):
    delta: str
    obfuscation: str | UnsetType = UNSET


class ShellCallCommandDone(_ShellCommandEvent, tag="response.shell_call_command.done", kw_only=True, frozen=True):
    command: str


class ShellCallOutputContentDelta(_ShellCommandEvent, tag="response.shell_call_output_content.delta", kw_only=True, frozen=True):
    delta: Any
    obfuscation: str | UnsetType = UNSET


class ShellCallOutputContentDone(_ShellCommandEvent, tag="response.shell_call_output_content.done", kw_only=True, frozen=True):
    output: Any = None


# --- the union ----------------------------------------------------------------------------------------------

KnownEvent = Union[
    ResponseCreated,
    ResponseQueued,
    ResponseInProgress,
    ResponseCompleted,
    ResponseIncomplete,
    ResponseFailed,
    ErrorEvent,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ResponseOutputTextAnnotationAdded,
    ResponseRefusalDelta,
    ResponseRefusalDone,
    ResponseReasoningTextDelta,
    ResponseReasoningTextDone,
    ResponseReasoningDelta,
    ResponseReasoningDone,
    ResponseReasoningSummaryPartAdded,
    ResponseReasoningSummaryPartDone,
    ResponseReasoningSummaryTextDelta,
    ResponseReasoningSummaryTextDone,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    CustomToolCallInputDelta,
    CustomToolCallInputDone,
    McpCallArgumentsDelta,
    McpCallArgumentsDone,
    CodeInterpreterCallCodeDelta,
    CodeInterpreterCallCodeDone,
    ApplyPatchCallOperationDiffDelta,
    ApplyPatchCallOperationDiffDone,
    ImageGenerationCallInProgress,
    ImageGenerationCallGenerating,
    ImageGenerationCallPartialImage,
    ImageGenerationCallCompleted,
    WebSearchCallInProgress,
    WebSearchCallSearching,
    WebSearchCallCompleted,
    FileSearchCallInProgress,
    FileSearchCallSearching,
    FileSearchCallCompleted,
    CodeInterpreterCallInProgress,
    CodeInterpreterCallInterpreting,
    CodeInterpreterCallCompleted,
    McpCallInProgress,
    McpCallCompleted,
    McpCallFailed,
    McpListToolsInProgress,
    McpListToolsCompleted,
    McpListToolsFailed,
    ShellCallCommandAdded,
    ShellCallCommandDelta,
    ShellCallCommandDone,
    ShellCallOutputContentDelta,
    ShellCallOutputContentDone,
]

EVENT_CLASSES: dict[str, type[_Event]] = {}
for _cls in get_args(KnownEvent):
    _tag = _cls.__struct_config__.tag
    assert isinstance(_tag, str)
    _cls.type = _tag
    EVENT_CLASSES[_tag] = _cls
del _cls, _tag

ALL_EVENT_TYPES: frozenset[str] = frozenset(EVENT_CLASSES)
TERMINAL_EVENT_TYPES: frozenset[str] = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


class UnknownEvent(Struct, frozen=True, dict=True):
    """An event this version cannot type: an unknown ``type``, or (lenient mode) a known type whose payload
    does not fit its schema, in which case ``problem`` says what did not fit and where."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def sequence_number(self) -> int | None:
        value = self.data.get("sequence_number")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def raw_json(self) -> bytes | None:
        return self.__dict__.get("_raw")


Event = Union[KnownEvent, UnknownEvent]
