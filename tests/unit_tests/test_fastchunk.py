"""Text-delta chunks built from a template equal the validated ones, and share nothing."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from langchain_fastpipe.providers import _fastchunk
from langchain_fastpipe.providers._fastchunk import (
    fast_path_enabled,
    text_chunk,
    validated_text_chunk,
)
from langchain_fastpipe.providers._openai import OpenAIStreamParser, openai_stream_chunk


def test_fast_path_is_enabled_with_installed_langchain_core() -> None:
    assert fast_path_enabled()


@pytest.mark.parametrize(
    ("content", "msg_id"), [("", None), ("h\u00e9llo", "chatcmpl-9"), (" \U0001f680\n", "x")]
)
def test_text_chunk_equals_validated_construction(content: str, msg_id: str | None) -> None:
    meta = {"model_provider": "openai"}
    fast = text_chunk(content, dict(meta), msg_id)
    ref = validated_text_chunk(content, dict(meta), msg_id)
    assert type(fast) is ChatGenerationChunk
    assert type(fast.message) is AIMessageChunk
    assert fast == ref
    assert fast.message.__dict__ == ref.message.__dict__
    assert fast.message.model_fields_set == ref.message.model_fields_set
    assert fast.text == content
    assert fast.message.model_dump() == ref.message.model_dump()
    assert (fast + fast).text == content * 2
    assert (fast.message + ref.message).content == content * 2


def test_text_chunks_share_no_mutable_state() -> None:
    a = text_chunk("a", {"model_provider": "openai"}, None)
    b = text_chunk("b", {"model_provider": "openai"}, None)
    a.message.additional_kwargs["k"] = 1
    a.message.response_metadata["k"] = 1
    a.message.tool_call_chunks.append({"name": "t", "args": "", "id": "1", "index": 0})
    a.message.tool_calls.append({"name": "t", "args": {}, "id": "1"})
    assert b.message.additional_kwargs == {}
    assert b.message.response_metadata == {"model_provider": "openai"}
    assert b.message.tool_call_chunks == []
    assert b.message.tool_calls == []
    assert text_chunk("c", {}, None).message.additional_kwargs == {}


def test_falls_back_to_validation_when_template_is_unusable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_fastchunk, "_TEMPLATE", None)
    monkeypatch.setattr(_fastchunk, "_CHECKED", False)
    monkeypatch.setattr(_fastchunk, "_same", lambda fast, ref: False)
    assert not fast_path_enabled()
    calls: list[str] = []
    real = _fastchunk.validated_text_chunk

    def spy(*args: Any) -> ChatGenerationChunk:
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(_fastchunk, "validated_text_chunk", spy)
    assert text_chunk("z", {}, None).text == "z"
    assert calls == ["z"]


def _slow_stream_chunk(obj: dict[str, Any]) -> ChatGenerationChunk | None:
    """The pre-fast-path conversion of a plain text delta (the reference)."""
    choice = obj["choices"][0]
    content = choice["delta"].get("content") or ""
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=content,
            additional_kwargs={},
            tool_call_chunks=[],
            usage_metadata=None,
            response_metadata={"model_provider": "openai"},
            id=obj.get("id"),
        ),
        generation_info=None,
    )


@pytest.mark.parametrize(
    "delta",
    [{"role": "assistant", "content": ""}, {"content": "hi"}, {}, {"content": None}],
)
def test_openai_text_delta_matches_validated_chunk(delta: dict[str, Any]) -> None:
    obj = {"id": "c1", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    assert openai_stream_chunk(obj) == _slow_stream_chunk(obj)


def test_openai_non_text_deltas_still_carry_their_fields() -> None:
    tool = {
        "id": "c1",
        "choices": [{"delta": {"tool_calls": [{"index": 0, "id": "t", "function": {
            "name": "f", "arguments": "{}"}}]}, "finish_reason": None}],
    }  # fmt: skip
    chunk = openai_stream_chunk(tool)
    assert chunk is not None
    assert isinstance(chunk.message, AIMessageChunk)
    assert chunk.message.tool_call_chunks[0]["name"] == "f"
    done = {"id": "c1", "model": "m", "choices": [{"delta": {}, "finish_reason": "stop"}]}
    chunk = openai_stream_chunk(done)
    assert chunk is not None
    assert chunk.generation_info == {"finish_reason": "stop"}
    assert chunk.message.response_metadata["model_name"] == "m"
    reasoning = {"choices": [{"delta": {"content": "", "reasoning_content": "think"}}]}
    chunk = openai_stream_chunk(reasoning)
    assert chunk is not None
    assert chunk.message.additional_kwargs == {"reasoning_content": "think"}


def test_parser_output_aggregates_like_before() -> None:
    body = (
        b"".join(
            b'data: {"id":"c","choices":[{"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % w
            for w in (b"a", b" b", b" c")
        )
        + b'data: {"id":"c","choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    parser = OpenAIStreamParser()
    chunks = parser.feed(body) + parser.finish()
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.text == "a b c"
    assert total.message.response_metadata["finish_reason"] == "stop"
    assert total.message.id == "c"
