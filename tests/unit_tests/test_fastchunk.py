"""Text-delta chunks built from a template equal the validated ones, and share nothing."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from langchain_fastpipe.providers import _fastchunk
from langchain_fastpipe.providers._fastchunk import (
    fast_path_enabled,
    text_chunk,
    text_chunk_builder,
    validated_text_chunk,
)
from langchain_fastpipe.providers._openai import OpenAIStreamParser, openai_stream_chunk


@pytest.mark.parametrize("with_id", [True, False])
def test_fast_path_is_enabled_with_installed_langchain_core(with_id: bool) -> None:
    assert fast_path_enabled(with_id=with_id)


def _assert_identical(fast: ChatGenerationChunk, ref: ChatGenerationChunk) -> None:
    assert type(fast) is ChatGenerationChunk
    assert type(fast.message) is AIMessageChunk
    assert fast == ref
    assert fast.__dict__ == ref.__dict__
    assert fast.message.__dict__ == ref.message.__dict__
    assert list(fast.message.__dict__) == list(ref.message.__dict__)  # same field order
    assert fast.model_fields_set == ref.model_fields_set
    assert fast.message.model_fields_set == ref.message.model_fields_set
    assert fast.message.__pydantic_extra__ == ref.message.__pydantic_extra__
    assert fast.__pydantic_extra__ == ref.__pydantic_extra__
    assert fast.message.__pydantic_private__ == ref.message.__pydantic_private__
    assert fast.text == ref.text
    assert fast.message.model_dump() == ref.message.model_dump()
    assert repr(fast) == repr(ref)


@pytest.mark.parametrize(
    ("content", "msg_id"), [("", None), ("h\u00e9llo", "chatcmpl-9"), (" \U0001f680\n", "x")]
)
def test_text_chunk_equals_validated_construction(content: str, msg_id: str | None) -> None:
    meta = {"model_provider": "openai"}
    fast = text_chunk(content, dict(meta), msg_id)
    ref = validated_text_chunk(content, dict(meta), msg_id)
    _assert_identical(fast, ref)
    assert fast.text == content
    assert (fast + fast).text == content * 2
    assert (fast.message + ref.message).content == content * 2


@pytest.mark.parametrize("content", ["", "h\u00e9llo", " \U0001f680\n"])
def test_builder_without_id_equals_validated_construction(content: str) -> None:
    build = text_chunk_builder(with_id=False)
    fast = build(content, {"model_provider": "ollama"}, None)
    ref = validated_text_chunk(content, {"model_provider": "ollama"}, None, with_id=False)
    _assert_identical(fast, ref)
    assert "id" not in fast.message.model_fields_set
    assert (fast + ref).text == content * 2


@pytest.mark.parametrize("with_id", [True, False])
def test_text_chunks_share_no_mutable_state(with_id: bool) -> None:
    build = text_chunk_builder(with_id=with_id)
    a = build("a", {"model_provider": "openai"}, None)
    b = build("b", {"model_provider": "openai"}, None)
    am, bm = a.message, b.message
    assert isinstance(am, AIMessageChunk)
    assert isinstance(bm, AIMessageChunk)
    b_fields = (set(b.model_fields_set), set(bm.model_fields_set))
    am.additional_kwargs["k"] = 1
    am.response_metadata["k"] = 1
    am.tool_call_chunks.append({"name": "t", "args": "", "id": "1", "index": 0})
    am.tool_calls.append({"name": "t", "args": {}, "id": "1"})
    am.invalid_tool_calls.append(
        {"type": "invalid_tool_call", "name": "t", "args": "", "id": "1", "error": None}
    )
    # What LangChain's astream does: pydantic records the assignment in the fields set.
    am.id = "run-1"
    am.name = "renamed"
    am.response_metadata = {"replaced": True}
    a.generation_info = {"finish_reason": "stop"}
    extra = am.__pydantic_extra__
    assert extra is not None
    extra["extra"] = 1
    assert bm.additional_kwargs == {}
    assert bm.response_metadata == {"model_provider": "openai"}
    assert bm.tool_call_chunks == []
    assert bm.tool_calls == []
    assert bm.invalid_tool_calls == []
    assert bm.id is None
    assert b.generation_info is None
    assert bm.__pydantic_extra__ == {}
    assert "name" in am.model_fields_set
    assert (set(b.model_fields_set), set(bm.model_fields_set)) == b_fields
    assert ("id" in bm.model_fields_set) is with_id
    assert build("c", {}, None).message.additional_kwargs == {}


def test_a_text_chunk_holds_only_the_containers_its_layout_needs() -> None:
    # Garbage collection cost grows with the tracked containers that live as long as the
    # chunks: two models, their __dict__ and fields sets and three lists, nothing else.
    build = text_chunk_builder()
    build("warm", {"model_provider": "openai"}, "id")
    n = 200
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects(generation=0))
        kept = [build(f"t{i}", {"model_provider": "openai"}, "chatcmpl-1") for i in range(n)]
        tracked = len(gc.get_objects(generation=0)) - before
    finally:
        gc.enable()
    assert len(kept) == n
    assert tracked <= 9 * n + 5  # 9 per chunk (+ the list holding them)
    assert not gc.is_tracked(kept[0].text)
    assert not gc.is_tracked(kept[0].message.response_metadata)


def test_falls_back_to_validation_when_template_is_unusable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_fastchunk, "_BUILDERS", {})
    monkeypatch.setattr(_fastchunk, "_FAST", {})
    monkeypatch.setattr(_fastchunk, "_same", lambda fast, ref: False)
    assert not fast_path_enabled()
    assert not fast_path_enabled(with_id=False)
    calls: list[str] = []
    real = _fastchunk.validated_text_chunk

    def spy(*args: Any, **kwargs: Any) -> ChatGenerationChunk:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(_fastchunk, "validated_text_chunk", spy)
    assert text_chunk("z", {}, None).text == "z"
    chunk = text_chunk_builder(with_id=False)("y", {}, None)
    assert "id" not in chunk.message.model_fields_set
    assert calls == ["z", "y"]


def test_an_unknown_layout_disables_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # A future AIMessageChunk with another mutable field: the builder would share it.
    monkeypatch.setattr(_fastchunk, "_BUILDERS", {})
    monkeypatch.setattr(_fastchunk, "_FAST", {})
    monkeypatch.setattr(_fastchunk, "_MUTABLE", {"additional_kwargs": dict})
    assert not fast_path_enabled()
    ref = validated_text_chunk("x", {}, None)
    _assert_identical(text_chunk("x", {}, None), ref)


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
