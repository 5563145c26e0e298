"""Build the common streamed chunk (a text delta) without re-running pydantic validation.

A streamed reply is mostly text deltas: ``AIMessageChunk(content="...", id=...,
response_metadata={"model_provider": ...})`` wrapped in a ``ChatGenerationChunk``.
Validating those two pydantic models costs ~5 us per chunk, a large share of the whole
per-chunk cost. Our inputs are already known-good (a ``str`` content, a ``str`` or None
id, a fresh metadata dict), so :func:`text_chunk` copies the ``__dict__`` of a template
built once by the real constructors, with fresh mutable containers per chunk.

The template is checked once, on first use, against the validated constructors (equal
objects, same set fields); when a langchain-core or pydantic upgrade changes the layout
that check fails and :func:`text_chunk` falls back to the validated constructors, so a
mismatch costs speed, never correctness. Chunks carrying tool calls, usage or a finish
reason always go through the validated constructors.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

__all__ = ["fast_path_enabled", "text_chunk", "validated_text_chunk"]

_new = object.__new__
_set = object.__setattr__


def validated_text_chunk(
    content: str, response_metadata: dict[str, Any], msg_id: str | None
) -> ChatGenerationChunk:
    """The reference construction of a text-delta chunk (full pydantic validation).

    Args:
        content: The text delta.
        response_metadata: The message's ``response_metadata`` (used as is, not copied).
        msg_id: The message id, or None.

    Returns:
        ``ChatGenerationChunk(message=AIMessageChunk(...))``.
    """
    message = AIMessageChunk(
        content=content,
        additional_kwargs={},
        tool_call_chunks=[],
        usage_metadata=None,
        response_metadata=response_metadata,
        id=msg_id,
    )
    return ChatGenerationChunk(message=message, generation_info=None)


class _Template:
    """The ``__dict__`` layouts copied by :func:`text_chunk` (built and checked once)."""

    __slots__ = ("gen_dict", "gen_fields", "msg_dict", "msg_fields", "mutable")

    def __init__(self) -> None:
        ref = validated_text_chunk("", {}, None)
        message = ref.message
        self.msg_dict: dict[str, Any] = dict(message.__dict__)
        self.msg_fields = frozenset(message.__pydantic_fields_set__)
        self.gen_dict: dict[str, Any] = dict(ref.__dict__)
        self.gen_fields = frozenset(ref.__pydantic_fields_set__)
        # Every list/dict of the template must be fresh in each chunk (callers mutate them).
        self.mutable = tuple(
            (key, type(value))
            for key, value in self.msg_dict.items()
            if isinstance(value, (list, dict)) and key != "response_metadata"
        )


def _build(template: _Template, content: str, meta: dict[str, Any], msg_id: str | None) -> Any:
    msg_dict = template.msg_dict.copy()
    for key, kind in template.mutable:
        msg_dict[key] = kind()
    msg_dict["content"] = content
    msg_dict["response_metadata"] = meta
    msg_dict["id"] = msg_id
    message = _new(AIMessageChunk)
    _set(message, "__dict__", msg_dict)
    _set(message, "__pydantic_fields_set__", set(template.msg_fields))
    _set(message, "__pydantic_extra__", {})
    _set(message, "__pydantic_private__", None)
    gen_dict = template.gen_dict.copy()
    gen_dict["message"] = message
    gen_dict["text"] = content
    chunk = _new(ChatGenerationChunk)
    _set(chunk, "__dict__", gen_dict)
    _set(chunk, "__pydantic_fields_set__", set(template.gen_fields))
    _set(chunk, "__pydantic_extra__", None)
    _set(chunk, "__pydantic_private__", None)
    return chunk


def _same(fast: Any, ref: ChatGenerationChunk) -> bool:
    """Whether a fast-built chunk is indistinguishable from the validated one."""
    try:
        return bool(
            fast == ref
            and fast.message == ref.message
            and fast.message.__dict__ == ref.message.__dict__
            and fast.__dict__ == ref.__dict__
            and fast.message.__pydantic_fields_set__ == ref.message.__pydantic_fields_set__
            and fast.__pydantic_fields_set__ == ref.__pydantic_fields_set__
            and fast.message.__pydantic_extra__ == ref.message.__pydantic_extra__
            and fast.__pydantic_extra__ == ref.__pydantic_extra__
            and fast.text == ref.text
            and fast.message.model_dump() == ref.message.model_dump()
        )
    except Exception:
        return False


def _make_template() -> _Template | None:
    """The template when it reproduces the validated constructors exactly, else None."""
    try:
        template = _Template()
        samples = [("", {}, None), ("caf\u00e9 ", {"model_provider": "openai"}, "chatcmpl-1")]
        for content, meta, msg_id in samples:
            fast = _build(template, content, dict(meta), msg_id)
            if not _same(fast, validated_text_chunk(content, dict(meta), msg_id)):
                return None
        return template
    except Exception:  # pragma: no cover - a future layout we cannot copy
        return None


_TEMPLATE: _Template | None = None
_CHECKED = False


def fast_path_enabled() -> bool:
    """Whether :func:`text_chunk` copies a template (True) or validates (False)."""
    global _TEMPLATE, _CHECKED
    if not _CHECKED:
        _TEMPLATE = _make_template()
        _CHECKED = True
    return _TEMPLATE is not None


def text_chunk(
    content: str, response_metadata: dict[str, Any], msg_id: str | None
) -> ChatGenerationChunk:
    """A text-delta chunk equal to :func:`validated_text_chunk`'s, built ~5x faster.

    Args:
        content: The text delta (a ``str``).
        response_metadata: A fresh dict owned by the chunk from now on.
        msg_id: The message id (a ``str``) or None.

    Returns:
        ``ChatGenerationChunk(message=AIMessageChunk(content=content, ...))``.
    """
    template = _TEMPLATE
    if template is None:
        if _CHECKED or not fast_path_enabled():
            return validated_text_chunk(content, response_metadata, msg_id)
        template = _TEMPLATE
        assert template is not None  # noqa: S101 - set by fast_path_enabled()
    chunk: ChatGenerationChunk = _build(template, content, response_metadata, msg_id)
    return chunk
