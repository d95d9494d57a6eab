"""Request validation and policy, and the conversation a backend sees (the store contract is in test_store.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from headwater.server.backends.base import ChatMessage
from headwater.server.backends.chat import chat_request
from headwater.server.backends.responses import responses_request
from headwater.server.conversation import to_chat_messages
from headwater.server.errors import APIError
from headwater.server.requests import MessageItem, parse_request


def refused(body: Any, **options: Any) -> APIError:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(APIError) as info:
        parse_request(data, **options)
    assert info.value.status == 400
    return info.value


# --- validation ---------------------------------------------------------------------------------------------


def test_string_input_becomes_one_user_message_with_an_id() -> None:
    request = parse_request(b'{"model": "m", "input": "hi"}')
    [item] = request.items
    assert isinstance(item, MessageItem)
    assert item.role == "user" and item.id and item.id.startswith("msg_")
    assert item.status == "completed"


def test_unknown_top_level_fields_are_accepted_and_ignored() -> None:
    request = parse_request(b'{"input": "hi", "user": "u1", "some_future_field": {"x": 1}}')
    assert len(request.items) == 1


def test_easy_messages_without_type_are_messages() -> None:
    request = parse_request(b'{"input": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]}')
    assert [item.role for item in request.items if isinstance(item, MessageItem)] == ["developer", "user"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": ["hi", {"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0]"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": [{"type": "nope", "text": "x"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0]"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"max_output_tokens": 4}, "max_output_tokens"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tools": [{"type": "function", "name": "has space"}]}, "tools[0].name"),
        ({"tools": [{"name": "f"}]}, "tools[0].type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "missing"}}, "tool_choice"),
        ({"background": True, "store": False}, "store"),
        ({"truncation": "auto"}, "truncation"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format.name"),
        ({"conversation": "conv_1"}, "conversation"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    error = refused(body)
    assert error.param == param, error.message
    assert error.message


@pytest.mark.parametrize("verbosity", ["low", "medium", "high"])
def test_text_verbosity_is_echoed_and_passed_to_upstreams_that_take_it(verbosity: str) -> None:
    request = parse_request(json.dumps({"input": "hi", "text": {"verbosity": verbosity}}).encode())
    template = request.response_template(response_id="resp_1", model="m", created_at=0)
    assert template.text == {"format": {"type": "text"}, "verbosity": verbosity}
    generation = request.generation_request("m", [ChatMessage(role="user", content="hi")])
    assert generation.verbosity == verbosity
    # A Responses upstream (OpenAI's gpt-5 models take it) gets it in `text`; a chat upstream as OpenAI's
    # top-level chat parameter, unless it is the default everyone assumes.
    assert responses_request(generation, model="m")["text"] == {"verbosity": verbosity}
    chat = chat_request(generation, model="m")
    assert chat.get("verbosity") == (None if verbosity == "medium" else verbosity)


def test_bad_json_and_non_objects_are_400_without_param() -> None:
    for data in (b"{not json", b"[1, 2]", b""):
        error = refused(data)
        assert error.code == "invalid_json" and error.param is None


def test_tools_the_backend_cannot_run_are_dropped_and_reported() -> None:
    body = {"input": "hi",
            "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}, {"type": "mcp", "server_label": "x"}]}
    request = parse_request(json.dumps(body).encode())
    assert [t.name for t in request.tools] == ["f"]
    assert request.dropped_tools == ["web_search", "mcp"]


def test_strict_tools_refuses_them() -> None:
    error = refused({"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}, strict_tools=True)
    assert error.param == "tools[1]" and error.code == "unsupported_tool"


def test_forcing_a_dropped_tool_is_refused() -> None:
    error = refused({"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}})
    assert error.param == "tool_choice"


def test_response_template_fills_every_required_field() -> None:
    spec = json.loads((Path(__file__).parents[1] / "src/headwater/server/openapi.json").read_text())
    required = spec["components"]["schemas"]["ResponseResource"]["required"]
    request = parse_request(b'{"input": "hi", "tools": [{"type": "function", "name": "f"}], "metadata": {"a": "b"}}')
    template = request.response_template(response_id="resp_1", model="m", created_at=1)
    from headwater.server.runs import encode_response

    encoded = json.loads(encode_response(template))
    assert set(required) <= set(encoded)
    for name in ("top_p", "temperature", "presence_penalty", "frequency_penalty", "top_logprobs", "service_tier",
                 "store", "background", "parallel_tool_calls", "truncation"):
        assert encoded[name] is not None, name
    assert encoded["tools"] == [{"type": "function", "name": "f", "description": None, "parameters": None,
                                 "strict": None}]
    assert encoded["metadata"] == {"a": "b"}


# --- the conversation ---------------------------------------------------------------------------------------


def test_function_calls_join_the_assistant_turn_and_outputs_become_tool_turns() -> None:
    body = {
        "input": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "sun"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
        ]
    }
    messages = to_chat_messages(parse_request(json.dumps(body).encode()).items)
    assert messages == [
        ChatMessage("user", "weather?"),
        ChatMessage("assistant", "Let me look.", tool_calls=[
            {"id": "c1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"id": "c2", "name": "weather", "arguments": '{"city":"Rome"}'},
        ]),
        ChatMessage("tool", "rain", tool_call_id="c1"),
        ChatMessage("tool", "sun", tool_call_id="c2"),
    ]

