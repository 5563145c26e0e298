"""The records a stream is made of: :class:`StreamingChunk`, :class:`StreamResult`, text and names.

Everything here is pure: what an item's text is, which message it carries, which model name a
stream is aggregated under.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk
from langchain_core.runnables import Runnable

from langchain_fastpipe.streaming._stats import StreamStats

__all__ = [
    "UNKNOWN_MODEL",
    "ChunkBuilder",
    "StreamResult",
    "StreamingChunk",
    "content_text",
    "extract_text",
    "message_of",
    "model_from_metadata",
    "new_chunk",
    "resolve_model_name",
]

#: The model name of a stream nothing names.
UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamingChunk:
    """One timed chunk of a stream.

    Attributes:
        index: Position in the stream, from 0.
        text: The chunk's text ("" for tool-call, usage-only, structured or terminal records).
        since_start: Seconds from the start of the stream to this chunk.
        since_previous: Seconds from the previous chunk (from the start for the first one).
        is_first: True for the first chunk of the stream.
        is_last: True for the last chunk: the item the source flags as last
            (``AIMessageChunk.chunk_position == "last"``), else an empty terminal record.
        usage: The item's ``usage_metadata`` when it carries one.
        metadata: The item's ``response_metadata`` when non-empty (model name, finish reason):
            the message's own dict, not a copy; copy it before changing it.
        value: The item exactly as the source yielded it (None for a terminal record).
        stats: The stream's statistics, on the ``is_last`` chunk only.
    """

    index: int
    text: str
    since_start: float
    since_previous: float
    is_first: bool
    is_last: bool
    usage: UsageMetadata | None = None
    metadata: dict[str, Any] | None = None
    value: Any = None
    stats: StreamStats | None = None


@dataclass(slots=True)
class ChunkBuilder:
    """A mutable twin of :class:`StreamingChunk` (same slots, same order), built positionally.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__`` with
    keyword arguments (about 1 us for ten fields); this twin's plain positional ``__init__``
    costs a fifth of that. :func:`new_chunk` builds one and re-labels it as a
    :class:`StreamingChunk` (identical slot layouts make ``__class__`` assignment legal), so
    the result is an ordinary frozen ``StreamingChunk`` in every respect.
    """

    index: int
    text: str
    since_start: float
    since_previous: float
    is_first: bool
    is_last: bool
    usage: UsageMetadata | None
    metadata: dict[str, Any] | None
    value: Any
    stats: StreamStats | None


assert ChunkBuilder.__slots__ == StreamingChunk.__slots__  # noqa: S101 - layout contract


def new_chunk(
    index: int,
    text: str,
    since_start: float,
    since_previous: float,
    is_first: bool,
    is_last: bool,
    usage: UsageMetadata | None,
    metadata: dict[str, Any] | None,
    value: Any,
    stats: StreamStats | None,
) -> StreamingChunk:
    """A :class:`StreamingChunk`, built at a fraction of its keyword constructor's cost."""
    chunk: Any = ChunkBuilder(
        index, text, since_start, since_previous, is_first, is_last, usage, metadata, value, stats
    )
    chunk.__class__ = StreamingChunk
    return chunk  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamResult:
    """A whole stream, as :func:`~langchain_fastpipe.streaming.acollect` returns it.

    Attributes:
        text: The concatenated text of every chunk.
        chunks: Every chunk, the ``is_last`` one included.
        stats: The stream's statistics.
        usage: The sum of every chunk's usage, or None when no chunk carried usage.
    """

    text: str
    chunks: list[StreamingChunk]
    stats: StreamStats
    usage: UsageMetadata | None = None


def extract_text(item: Any) -> str:
    """The text carried by one streamed item, "" when it carries none.

    Handles message chunks and messages (``content`` as a string or a list of content blocks),
    generation chunks, strings (``StrOutputParser`` chains), bytes, and single-key dicts wrapping
    one of those (``{"answer": chunk}`` from a ``RunnableParallel``). Other structured values
    (multi-key dicts, pydantic models) give "": keep them from ``StreamingChunk.value``.

    Args:
        item: What the source yielded.

    Returns:
        The text, possibly empty.
    """
    if isinstance(item, str):
        return item
    if isinstance(item, BaseMessage):
        return content_text(item.content)
    if isinstance(item, ChatGenerationChunk):
        return content_text(item.message.content)
    if isinstance(item, GenerationChunk):
        return item.text
    if isinstance(item, (bytes, bytearray)):
        return bytes(item).decode("utf-8", errors="replace")
    if isinstance(item, Mapping) and len(item) == 1:
        (inner,) = item.values()
        if isinstance(inner, (str, BaseMessage, ChatGenerationChunk, GenerationChunk)):
            return extract_text(inner)
    return ""


def content_text(content: str | list[str | dict[Any, Any]] | list[str | dict[str, Any]]) -> str:
    """Text of a message content: a string, or the text blocks of a content-block list."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "".join(parts)


def message_of(item: Any) -> BaseMessage | None:
    """The message inside an item (itself, a generation chunk's, a single-key dict's)."""
    if isinstance(item, BaseMessage):
        return item
    if isinstance(item, ChatGenerationChunk):
        return item.message
    if isinstance(item, Mapping) and len(item) == 1:
        return message_of(next(iter(item.values())))
    return None


def model_from_metadata(metadata: Mapping[str, Any] | None) -> str | None:
    """A model name from response metadata (``model_name`` or ``model``)."""
    if not metadata:
        return None
    for key in ("model_name", "model"):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _walk_runnables(obj: Any, depth: int = 0) -> Iterator[Any]:
    """``obj`` and the runnables it wraps (bindings, fallbacks, sequence steps), depth first."""
    yield obj
    if depth >= 8:  # guards against pathological nesting
        return
    for attr in ("bound", "runnable", "default"):  # RunnableBinding, fallbacks, configurable
        inner = getattr(obj, attr, None)
        if isinstance(inner, Runnable):
            yield from _walk_runnables(inner, depth + 1)
    steps = getattr(obj, "steps", None)  # RunnableSequence
    if isinstance(steps, list):
        for step in steps:
            yield from _walk_runnables(step, depth + 1)


def _model_attribute(obj: Any) -> str | None:
    """A ``model_name``/``model`` attribute of a runnable or of what it wraps."""
    for node in _walk_runnables(obj):
        for attr in ("model_name", "model"):
            value = getattr(node, attr, None)
            if isinstance(value, str) and value:
                return value
    return None


def _language_model_name(obj: Any) -> str | None:
    """The class-level name of the first language model inside a runnable."""
    for node in _walk_runnables(obj):
        if isinstance(node, BaseLanguageModel):
            return node.get_name()
    return None


def resolve_model_name(runnable: Any, metadata: Mapping[str, Any] | None = None) -> str:
    """The name a stream of ``runnable`` is aggregated under.

    Order: the runnable's ``model_name``/``model`` attribute (looking through bindings, fallbacks
    and the steps of a sequence), then ``response_metadata`` seen in the stream, then the name
    of the first language model inside it, then the runnable's name, else ``"unknown"``.

    Args:
        runnable: The runnable being streamed (or None).
        metadata: Response metadata seen in the stream, if any.

    Returns:
        The model name.
    """
    found = _model_attribute(runnable) if runnable is not None else None
    if found:
        return found
    found = model_from_metadata(metadata) or _language_model_name(runnable)
    if found:
        return found
    if isinstance(runnable, Runnable):
        return runnable.get_name()
    return UNKNOWN_MODEL
