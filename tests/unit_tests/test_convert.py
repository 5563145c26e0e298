"""Pure conversions: messages and tools to the wire, payloads, replies and stream chunks back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_fastpipe.errors import (
    ConfigError,
    ProtocolViolationError,
    RateLimitError,
    ServerError,
)
from langchain_fastpipe.providers import OllamaProvider, OpenAIProvider, get_provider
from langchain_fastpipe.providers._base import ChatRequest
from langchain_fastpipe.providers._convert import (
    convert_tools,
    messages_to_ollama,
    messages_to_openai,
    parse_ollama_tool_calls,
    parse_openai_tool_calls,
    tool_choice_to_openai,
)
from langchain_fastpipe.providers._ollama import ollama_stream_chunk
from langchain_fastpipe.providers._openai import openai_stream_chunk

PNG_B64 = "iVBORw0KGgo="


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Weather(BaseModel):
    """Weather in a city."""

    city: str


CONVERSATION: list[BaseMessage] = [
    SystemMessage("be brief"),
    HumanMessage("what is 2+3?", name="alice"),
    AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1"}]),
    ToolMessage("5", tool_call_id="call_1", name="add"),
    AIMessage("It is 5."),
]


def _merge(chunks: list[ChatGenerationChunk]) -> AIMessageChunk:
    merged = chunks[0].message
    for chunk in chunks[1:]:
        merged = merged + chunk.message
    assert isinstance(merged, AIMessageChunk)
    return merged


# ---------------------------------------------------------------- messages


def test_messages_to_openai_roles_tool_calls_and_names() -> None:
    wire = messages_to_openai(CONVERSATION)
    assert wire == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is 2+3?", "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "id": "call_1",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "assistant", "content": "It is 5."},
    ]


def test_messages_to_ollama_roles_tool_calls() -> None:
    wire = messages_to_ollama(CONVERSATION)
    assert wire[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": {"a": 2, "b": 3}},
            }
        ],
    }
    assert wire[3] == {"role": "tool", "content": "5", "tool_call_id": "call_1", "tool_name": "add"}
    assert [m["role"] for m in wire] == ["system", "user", "assistant", "tool", "assistant"]
    assert "name" not in wire[1]


def test_multimodal_image_content() -> None:
    message = HumanMessage(
        content=[
            {"type": "text", "text": "describe"},
            {"type": "image", "base64": PNG_B64, "mime_type": "image/png"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ]
    )
    openai = messages_to_openai([message])[0]
    assert openai["content"] == [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    inline = HumanMessage(
        content=[
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        ]
    )
    assert messages_to_ollama([inline]) == [
        {"role": "user", "content": "describe", "images": [PNG_B64]}
    ]
    with pytest.raises(ConfigError, match="base64"):
        messages_to_ollama([message])  # a remote URL cannot go to Ollama


def test_text_blocks_join_for_ollama_and_chat_message_role() -> None:
    message = HumanMessage(content=[{"type": "text", "text": "a"}, "b"])
    assert messages_to_ollama([message])[0]["content"] == "a\nb"
    assert messages_to_openai([ChatMessage(role="developer", content="x")]) == [
        {"role": "developer", "content": "x"}
    ]


@pytest.mark.parametrize("convert", [messages_to_openai, messages_to_ollama])
def test_empty_conversation_is_config_error(convert: Any) -> None:
    with pytest.raises(ConfigError, match="messages must not be empty"):
        convert([])


@pytest.mark.parametrize("convert", [messages_to_openai, messages_to_ollama])
def test_unknown_message_type_is_config_error(convert: Any) -> None:
    class Odd(BaseMessage):
        type: str = "odd"

    with pytest.raises(ConfigError, match="unsupported message type Odd"):
        convert([Odd(content="x")])


def test_unsupported_block_is_config_error() -> None:
    audio = HumanMessage(content=[{"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}])
    with pytest.raises(ConfigError, match="'audio'"):
        messages_to_openai([audio])
    with pytest.raises(ConfigError, match="'audio'"):
        messages_to_ollama([audio])


# ---------------------------------------------------------------- tools


def test_convert_tools_and_tool_choice() -> None:
    tools = convert_tools([add, Weather])
    names = [t["function"]["name"] for t in tools]
    assert names == ["add", "Weather"]
    assert tools[0]["function"]["parameters"]["required"] == ["a", "b"]
    assert tool_choice_to_openai("any", names) == "required"
    assert tool_choice_to_openai(True, names) == "required"
    assert tool_choice_to_openai("required", names) == "required"
    assert tool_choice_to_openai("auto", names) == "auto"
    assert tool_choice_to_openai("none", names) == "none"
    assert tool_choice_to_openai(None, names) is None
    assert tool_choice_to_openai("add", names) == {"type": "function", "function": {"name": "add"}}
    custom = {"type": "function", "function": {"name": "Weather"}}
    assert tool_choice_to_openai(custom, names) == custom
    with pytest.raises(ConfigError, match="'mul' is neither"):
        tool_choice_to_openai("mul", names)
    with pytest.raises(ConfigError, match="must be a str, bool or dict"):
        tool_choice_to_openai(3, names)  # type: ignore[arg-type]


def test_convert_tools_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="cannot convert tool"):
        convert_tools([42])


def test_parse_tool_calls_valid_and_invalid() -> None:
    calls, invalid = parse_openai_tool_calls(
        [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}},
            {"id": "c2", "type": "function", "function": {"name": "add", "arguments": "{oops"}},
        ]
    )
    assert calls == [{"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]
    assert invalid[0]["id"] == "c2"
    assert invalid[0]["args"] == "{oops"
    ids = iter(["gen-1"])
    parsed = parse_ollama_tool_calls(
        [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}], new_id=lambda: next(ids)
    )
    assert parsed == [{"name": "add", "args": {"a": 1, "b": 2}, "id": "gen-1", "type": "tool_call"}]


# ---------------------------------------------------------------- payloads


def _request(**kw: Any) -> ChatRequest:
    base: dict[str, Any] = {"model": "m", "messages": [HumanMessage("hi")]}
    return ChatRequest(**{**base, **kw})


def test_openai_payload() -> None:
    tools = convert_tools([add])
    payload = OpenAIProvider().build_payload(
        _request(
            temperature=0.2,
            max_tokens=7,
            stop=["\n"],
            tools=tools,
            tool_choice="required",
            response_format={"type": "json_object"},
            extra={"seed": 1, "model": "ignored"},
        ),
        stream=True,
    )
    assert payload == {
        "seed": 1,
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_tokens": 7,
        "stop": ["\n"],
        "tools": tools,
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
    }
    plain = OpenAIProvider().build_payload(_request(tool_choice="auto"), stream=False)
    assert plain == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def test_ollama_payload_options_format_keep_alive() -> None:
    tools = convert_tools([add, Weather])
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    payload = OllamaProvider().build_payload(
        _request(
            temperature=0.0,
            max_tokens=5,
            stop=["x"],
            keep_alive="10m",
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "Weather"}},
            response_format={"type": "json_schema", "json_schema": {"name": "W", "schema": schema}},
            extra={
                "num_ctx": 4096,
                "options": {"top_k": 3},
                "think": False,
                "parallel_tool_calls": False,
            },
        ),
        stream=True,
    )
    assert payload == {
        "think": False,
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "options": {
            "top_k": 3,
            "num_ctx": 4096,
            "temperature": 0.0,
            "num_predict": 5,
            "stop": ["x"],
        },
        "keep_alive": "10m",
        "tools": [tools[1]],  # tool_choice emulated: only the named tool
        "format": schema,
    }
    json_mode = OllamaProvider().build_payload(
        _request(response_format={"type": "json_object"}, tools=tools, tool_choice="none"),
        stream=False,
    )
    assert json_mode["format"] == "json"
    assert "tools" not in json_mode


def test_warmup_payloads() -> None:
    request = _request(
        messages=(), temperature=0.1, max_tokens=9, keep_alive=-1, extra={"num_ctx": 8192}
    )
    real = OllamaProvider().build_payload(
        _request(temperature=0.1, max_tokens=9, extra={"num_ctx": 8192}), stream=True
    )
    warm = OllamaProvider().warmup_payload(request)
    assert warm.path == "/api/generate"
    assert warm.payload == {
        "model": "m",
        "stream": False,
        "options": real["options"],
        "keep_alive": -1,
    }
    assert "prompt" not in warm.payload
    openai = OpenAIProvider().warmup_payload(request)
    assert openai.path == "/chat/completions"
    assert openai.payload["max_tokens"] == 1
    assert openai.payload["stream"] is False


def test_get_provider() -> None:
    assert get_provider("openai").name == "openai"
    assert get_provider("ollama").chat_path == "/api/chat"
    with pytest.raises(ConfigError, match=r"'openai', 'ollama'.*'anthropic'"):
        get_provider("anthropic")


# ---------------------------------------------------------------- replies


def test_openai_parse_response() -> None:
    body = {
        "id": "chatcmpl-1",
        "model": "m-1",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "total_tokens": 8,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
    }
    result = OpenAIProvider().parse_response(body)
    message = result.generations[0].message
    assert isinstance(message, AIMessage)
    assert message.content == ""
    assert message.tool_calls == [
        {"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}
    ]
    assert message.usage_metadata == {
        "input_tokens": 5,
        "output_tokens": 3,
        "total_tokens": 8,
        "input_token_details": {"cache_read": 2},
    }
    assert message.response_metadata["model_name"] == "m-1"
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert message.response_metadata["model_provider"] == "openai"
    assert message.id == "chatcmpl-1"


def test_openai_parse_response_errors() -> None:
    with pytest.raises(ProtocolViolationError, match="no choices"):
        OpenAIProvider().parse_response({"object": "chat.completion"}, endpoint="http://h:1/v1")
    with pytest.raises(RateLimitError):
        OpenAIProvider().parse_response({"error": {"message": "slow down", "code": 429}})


def test_ollama_parse_response() -> None:
    body = {
        "model": "llama",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
        },
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 4,
        "eval_count": 6,
        "total_duration": 123,
    }
    message = OllamaProvider().parse_response(body).generations[0].message
    assert isinstance(message, AIMessage)
    assert message.tool_calls[0]["name"] == "add"
    assert message.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert message.tool_calls[0]["id"]
    assert message.usage_metadata == {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["total_duration"] == 123
    with pytest.raises(ProtocolViolationError, match="reply message"):
        OllamaProvider().parse_response({"done": True})
    with pytest.raises(ServerError, match="model crashed"):
        OllamaProvider().parse_response({"error": "model crashed"})


# ---------------------------------------------------------------- stream chunks


def _sse(*objs: Any) -> bytes:
    return b"".join(
        b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs
    )


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "x",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _args(text: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}


OPENAI_TOOL_STREAM = _sse(
    _delta({"role": "assistant", "content": ""}),
    _delta({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                            "function": {"name": "add", "arguments": ""}}]}),
    _delta(_args('{"a": 1,')),
    _delta(_args(' "b": 2}')),
    _delta({}, "tool_calls"),
    {"id": "x", "model": "m", "choices": [],
     "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    b"[DONE]",
)  # fmt: skip


def test_openai_stream_parser_tool_calls_and_usage() -> None:
    parser = OpenAIProvider().stream_parser(endpoint="http://h:1/v1")
    chunks: list[ChatGenerationChunk] = []
    for i in range(len(OPENAI_TOOL_STREAM)):  # byte by byte
        chunks.extend(parser.feed(OPENAI_TOOL_STREAM[i : i + 1]))
    chunks.extend(parser.finish())
    assert parser.done
    merged = _merge(chunks)
    assert merged.tool_calls == [
        {"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}
    ]
    assert merged.usage_metadata == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert merged.response_metadata["finish_reason"] == "tool_calls"
    assert merged.response_metadata["model_name"] == "m"
    assert merged.response_metadata["model_provider"] == "openai"
    # usage comes only on the final chunk, finish_reason on the one before it
    assert chunks[-1].message.usage_metadata is not None
    assert all(c.message.usage_metadata is None for c in chunks[:-1])
    assert chunks[-2].generation_info == {"finish_reason": "tool_calls"}


def test_openai_stream_chunk_text_and_empty_event() -> None:
    chunk = openai_stream_chunk({"choices": [{"delta": {"content": "hi"}}]})
    assert chunk is not None
    assert chunk.text == "hi"
    assert chunk.message.response_metadata == {"model_provider": "openai"}
    assert openai_stream_chunk({"choices": []}) is None


def test_openai_stream_truncated_and_error_event() -> None:
    parser = OpenAIProvider().stream_parser(endpoint="http://h:1/v1")
    parser.feed(_sse({"choices": [{"delta": {"content": "partial"}}]}))
    with pytest.raises(ProtocolViolationError, match=r"http://h:1/v1 ended before \[DONE\]"):
        parser.finish()
    parser = OpenAIProvider().stream_parser()
    with pytest.raises(ServerError, match="overloaded"):
        parser.feed(_sse({"error": {"message": "overloaded", "type": "server_error"}}))
    parser = OpenAIProvider().stream_parser()
    with pytest.raises(ProtocolViolationError, match="not valid JSON"):
        parser.feed(b"data: {broken\n\n")


def test_openai_stream_done_then_more_bytes_are_still_read() -> None:
    parser = OpenAIProvider().stream_parser()
    out = parser.feed(_sse(b"[DONE]") + b": trailing comment\n\n")
    assert out == []
    assert parser.done
    assert parser.finish() == []


def _ndjson(*objs: Any) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_ollama_stream_parser() -> None:
    body = _ndjson(
        {"model": "m", "message": {"role": "assistant", "content": "He"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "llo", "thinking": "hmm"},
         "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "add", "arguments": {"a": 1, "b": 2}}},
            {"function": {"name": "add", "arguments": {"a": 3, "b": 4}}}]}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
         "done_reason": "stop", "prompt_eval_count": 2, "eval_count": 5},
    )  # fmt: skip
    parser = OllamaProvider().stream_parser()
    chunks = [c for i in range(0, len(body), 7) for c in parser.feed(body[i : i + 7])]
    chunks.extend(parser.finish())
    merged = _merge(chunks)
    assert merged.content == "Hello"
    assert merged.additional_kwargs["reasoning_content"] == "hmm"
    assert [tc["args"] for tc in merged.tool_calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert merged.usage_metadata == {"input_tokens": 2, "output_tokens": 5, "total_tokens": 7}
    assert merged.response_metadata["finish_reason"] == "stop"
    assert merged.response_metadata["model_name"] == "m"


def test_ollama_stream_truncated_and_error() -> None:
    parser = OllamaProvider().stream_parser(endpoint="http://h:1")
    parser.feed(_ndjson({"message": {"content": "a"}, "done": False}))
    with pytest.raises(ProtocolViolationError, match="truncated"):
        parser.finish()
    with pytest.raises(ServerError, match="out of memory"):
        OllamaProvider().stream_parser().feed(_ndjson({"error": "out of memory"}))


def test_ollama_stream_chunk_tool_index_advances() -> None:
    obj = {"message": {"tool_calls": [{"function": {"name": "f", "arguments": {}}, "id": "i"}]}}
    chunk, nxt = ollama_stream_chunk(obj, tool_index=4)
    assert nxt == 5
    assert isinstance(chunk.message, AIMessageChunk)
    assert chunk.message.tool_call_chunks[0]["index"] == 4
    assert chunk.message.tool_call_chunks[0]["id"] == "i"


@pytest.mark.parametrize("convert", [messages_to_openai, messages_to_ollama])
def test_unknown_chat_message_role_is_config_error(convert: Any) -> None:
    with pytest.raises(ConfigError, match="'wizard'"):
        convert([ChatMessage(role="wizard", content="abracadabra")])
    assert convert([ChatMessage(role="user", content="hi")])[0]["role"] == "user"


def test_tool_whose_name_is_not_a_string_is_config_error() -> None:
    with pytest.raises(ConfigError, match="name is not a string"):
        convert_tools([{"name": 5}])
