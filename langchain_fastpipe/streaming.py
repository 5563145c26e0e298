"""Streaming for any LangChain runnable: timed chunks, three modes, stats, watchdog, TTFT.

Everything here works on the ``.astream()`` / ``.stream()`` of *any* runnable (ChatFastpipe,
ChatOpenAI, an LCEL chain, the answer pipeline) or on any (async) iterable.

Modes (each with a sync twin that uses the runnable's own ``.stream()``, so it also works inside
a running event loop, e.g. Jupyter):

* **direct** -- :func:`astream_chunks` / :func:`stream_chunks` return a generator of
  :class:`StreamingChunk`. Use ``contextlib.aclosing`` (or ``closing``) to release the HTTP stream
  deterministically when you break out early; otherwise it is released when the generator is
  garbage collected.
* **callback** -- :func:`astream_to_callback` / :func:`stream_to_callback` call a function per chunk
  (the async twin awaits it when it returns an awaitable) and return the :class:`StreamStats`.
* **buffer** -- :func:`astream_to_buffer` / :func:`stream_to_buffer` collect the stream into a
  :class:`StreamResult` (full text, chunks, usage, stats).

All modes are pull-based: the source is asked for its next item only when the consumer asks for
the next chunk (or the callback has returned), so a slow consumer never makes the package buffer
an unbounded stream. Only buffer mode keeps the chunks, because that is what it is asked to do.

Marking the last chunk: a chunk is flagged ``is_last`` when the source itself says it is last
(LangChain chat models set ``AIMessageChunk.chunk_position == "last"``); otherwise, when the source
ends, one terminal record is emitted with empty text and ``is_last=True``. No chunk is ever held
back waiting for its successor, so neither the time to the first chunk nor any later chunk pays a
one-chunk latency; the price is that some streams end with an empty terminal record (its
``value`` is None), which text consumers can ignore. The ``is_last`` chunk carries the stream's
:class:`StreamStats`.

Statistics of every stream are aggregated per model into histograms, readable under ``"streams"``
in :func:`langchain_fastpipe.stats.get_stats`. :class:`TimeToFirstTokenHandler` measures time to
first token of every chat model inside any chain (also under ``astream_events``), and
:func:`guard_stream` is the stall watchdog used by the answer pipeline to fall back.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage, BaseMessageChunk
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig

from langchain_fastpipe.errors import (
    ConfigError,
    FirstChunkTimeoutError,
    InterChunkTimeoutError,
    StreamStallError,
)
from langchain_fastpipe.stats import Histogram, quantile, registry

__all__ = [
    "StreamOutcome",
    "StreamResult",
    "StreamStats",
    "StreamStatsCollector",
    "StreamingChunk",
    "TimeToFirstTokenHandler",
    "TokenTiming",
    "aiter_chunks",
    "astream_chunks",
    "astream_to_buffer",
    "astream_to_callback",
    "default_collector",
    "extract_text",
    "guard_stream",
    "iter_chunks",
    "resolve_model_name",
    "stream_chunks",
    "stream_to_buffer",
    "stream_to_callback",
]

T = TypeVar("T")
Clock = Callable[[], float]

#: How a stream ended: read to its end, closed early by the consumer (break, cancel), stalled
#: (watchdog) or failed with another error.
StreamOutcome = Literal["completed", "cancelled", "stalled", "error"]

_UNKNOWN_MODEL = "unknown"
_MAX_MODELS = 256
_OTHER_MODELS = "__other__"
_MAX_GAPS = 1 << 16  # gaps kept per stream for its quantiles (the most recent ones)
_RATE_BUCKETS: tuple[float, ...] = (
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
)  # fmt: skip


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStats:
    """Timing statistics of one stream (seconds, from the injected clock).

    Attributes:
        model: The model name the stream is aggregated under.
        n_chunks: Items the source yielded (the synthetic terminal record is not counted).
        time_to_first_chunk: Start of the stream to its first item, or None if none came.
        time_to_first_text: Start of the stream to its first item with non-empty text (the
            "first words"; a role-only first chunk does not count), or None.
        inter_chunk_p50: Median gap between consecutive items, or None with fewer than 2.
        inter_chunk_p95: 95th percentile of those gaps, or None.
        inter_chunk_max: Largest gap, or None.
        chunks_per_second: ``(n_chunks - 1) / (last item time - first item time)``: the
            generation rate after the first chunk; None with fewer than 2 items or no span.
        total_time: Start of the stream to its end (or to the item flagged last).
        outcome: How the stream ended.
    """

    model: str
    n_chunks: int
    time_to_first_chunk: float | None
    time_to_first_text: float | None
    inter_chunk_p50: float | None
    inter_chunk_p95: float | None
    inter_chunk_max: float | None
    chunks_per_second: float | None
    total_time: float
    outcome: StreamOutcome

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamingChunk:
    """One timed chunk of a stream.

    Attributes:
        index: Position in the stream, from 0.
        text: The chunk's text ("" for tool-call, usage-only, structured or terminal records).
        since_start: Seconds from the start of the stream to this chunk.
        since_previous: Seconds from the previous chunk (from the start for the first one).
        is_first: True for the first chunk of the stream.
        is_last: True for the last chunk (see the module docstring for how it is decided).
        usage: The item's ``usage_metadata`` when it carries one.
        metadata: The item's ``response_metadata`` when non-empty (model name, finish reason):
            the message's own dict, not a copy; copy it before changing it.
        value: The item exactly as the runnable yielded it (None for a terminal record).
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
class _ChunkBuilder:
    """A mutable twin of :class:`StreamingChunk` (same slots, same order), built positionally.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__`` with
    keyword arguments (about 1 us for ten fields); this twin's plain positional ``__init__``
    costs a fifth of that. :func:`_new_chunk` builds one and re-labels it as a
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


assert _ChunkBuilder.__slots__ == StreamingChunk.__slots__  # noqa: S101 - layout contract


def _new_chunk(
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
    chunk: Any = _ChunkBuilder(
        index, text, since_start, since_previous, is_first, is_last, usage, metadata, value, stats
    )
    chunk.__class__ = StreamingChunk
    return chunk  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamResult:
    """What buffer mode returns.

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


# --------------------------------------------------------------------------- pure helpers


def extract_text(item: Any) -> str:
    """The text carried by one streamed item, "" when it carries none.

    Handles message chunks and messages (``content`` as a string or a list of content blocks),
    generation chunks, strings (``StrOutputParser`` chains), bytes, and single-key dicts wrapping
    one of those (``{"answer": chunk}`` from a ``RunnableParallel``). Other structured values
    (multi-key dicts, pydantic models) give "": keep them from ``StreamingChunk.value``.

    Args:
        item: What the runnable yielded.

    Returns:
        The text, possibly empty.
    """
    if isinstance(item, str):
        return item
    if isinstance(item, BaseMessage):
        return _content_text(item.content)
    if isinstance(item, ChatGenerationChunk):
        return _content_text(item.message.content)
    if isinstance(item, GenerationChunk):
        return item.text
    if isinstance(item, (bytes, bytearray)):
        return bytes(item).decode("utf-8", errors="replace")
    if isinstance(item, Mapping) and len(item) == 1:
        (inner,) = item.values()
        if isinstance(inner, (str, BaseMessage, ChatGenerationChunk, GenerationChunk)):
            return extract_text(inner)
    return ""


def _content_text(content: str | list[str | dict[Any, Any]] | list[str | dict[str, Any]]) -> str:
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


def _message_of(item: Any) -> BaseMessage | None:
    """The message inside an item (itself, a generation chunk's, a single-key dict's)."""
    if isinstance(item, BaseMessage):
        return item
    if isinstance(item, ChatGenerationChunk):
        return item.message
    if isinstance(item, Mapping) and len(item) == 1:
        return _message_of(next(iter(item.values())))
    return None


def _message_usage(message: BaseMessage | None) -> UsageMetadata | None:
    """The message's ``usage_metadata`` when it has one."""
    usage = getattr(message, "usage_metadata", None)
    return usage if usage else None


def _message_metadata(message: BaseMessage | None) -> dict[str, Any] | None:
    """The message's own non-empty ``response_metadata`` (not copied: hot path)."""
    metadata = getattr(message, "response_metadata", None)
    return metadata if metadata else None


def _message_is_last(message: BaseMessage | None) -> bool:
    """True when the source marks the message as the last one (``chunk_position == "last"``)."""
    return isinstance(message, BaseMessageChunk) and (
        getattr(message, "chunk_position", None) == "last"
    )


def _model_from_metadata(metadata: Mapping[str, Any] | None) -> str | None:
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
    found = _model_from_metadata(metadata) or _language_model_name(runnable)
    if found:
        return found
    if isinstance(runnable, Runnable):
        return runnable.get_name()
    return _UNKNOWN_MODEL


class _StreamTimer:
    """The pure core shared by every mode: turns (item, now) into StreamingChunk, keeps stats.

    Per item it does the minimum: one message resolution, a few attribute reads, one gap
    appended to a float array and one chunk built. Quantiles are computed once, when the
    stream finishes. State is counters plus the gaps (8 bytes each, the most recent
    ``_MAX_GAPS`` kept), never the chunks.
    """

    __slots__ = (
        "_dropped_max",
        "_first_at",
        "_first_text_at",
        "_gaps",
        "_last_at",
        "_metadata_model",
        "_model",
        "_runnable",
        "_start",
        "final",
        "last_emitted",
        "n_chunks",
        "usage",
    )

    def __init__(self, *, model: str | None = None, runnable: Any = None) -> None:
        self._model = model
        self._runnable = runnable
        self._metadata_model: str | None = None
        self._start: float | None = None
        self._first_at: float | None = None
        self._first_text_at: float | None = None
        self._last_at: float | None = None
        self._gaps = array("d")
        self._dropped_max: float | None = None
        self.n_chunks = 0
        self.usage: UsageMetadata | None = None
        self.last_emitted = False
        self.final: StreamStats | None = None

    def start(self, now: float) -> None:
        """Mark the start of the stream (the first pull of the source)."""
        if self._start is None:
            self._start = now

    @property
    def model(self) -> str:
        """The model name of the stream, resolved lazily (metadata may arrive late)."""
        if self._model:
            return self._model
        meta = {"model_name": self._metadata_model} if self._metadata_model else None
        return resolve_model_name(self._runnable, meta)

    def on_item(self, item: Any, now: float) -> StreamingChunk:
        """Account for one item of the source and build its chunk."""
        previous = self._last_at
        if previous is None:  # first item: once per stream
            if self._start is None:
                self._start = now
            self._first_at = now
            previous = self._start
        else:
            gaps = self._gaps
            gaps.append(now - previous)
            if len(gaps) > _MAX_GAPS:
                self._drop_old_gaps()
        self._last_at = now
        message = _message_of(item)  # resolved once per item
        if message is item:
            content = message.content
            text = content if content.__class__ is str else _content_text(content)
        else:
            text = extract_text(item)
        if text and self._first_text_at is None:
            self._first_text_at = now
        usage = getattr(message, "usage_metadata", None) or None
        if usage is not None:
            self.usage = add_usage(self.usage, usage)
        metadata = getattr(message, "response_metadata", None) or None
        if metadata is not None and self._metadata_model is None:
            self._metadata_model = _model_from_metadata(metadata)
        index = self.n_chunks
        self.n_chunks = index + 1
        stats = None
        is_last = False
        if getattr(message, "chunk_position", None) == "last" and not self.last_emitted:
            is_last = isinstance(message, BaseMessageChunk)
            if is_last:
                self.last_emitted = True
                stats = self.finish(now, "completed")
        chunk: Any = _ChunkBuilder(  # inlined _new_chunk(): this is the per-item path
            index,
            text,
            now - self._start,  # type: ignore[operator]
            now - previous,
            index == 0,
            is_last,
            usage,
            metadata,
            item,
            stats,
        )
        chunk.__class__ = StreamingChunk
        return chunk  # type: ignore[no-any-return]

    def _drop_old_gaps(self) -> None:
        """Forget the oldest half of the gaps (keeping their maximum): bounds a long stream."""
        half = len(self._gaps) // 2
        dropped = max(self._gaps[:half])
        if self._dropped_max is None or dropped > self._dropped_max:
            self._dropped_max = dropped
        del self._gaps[:half]

    def finish(self, now: float, outcome: StreamOutcome) -> StreamStats:
        """Freeze the stream's statistics (idempotent: the first call wins)."""
        if self.final is not None:
            return self.final
        start = self._start if self._start is not None else now
        rate = None
        if self.n_chunks >= 2 and self._first_at is not None and self._last_at is not None:
            span = self._last_at - self._first_at
            rate = (self.n_chunks - 1) / span if span > 0 else None
        gaps = sorted(self._gaps)
        peak = gaps[-1] if gaps else None
        if self._dropped_max is not None and (peak is None or self._dropped_max > peak):
            peak = self._dropped_max
        self.final = StreamStats(
            model=self.model,
            n_chunks=self.n_chunks,
            time_to_first_chunk=None if self._first_at is None else self._first_at - start,
            time_to_first_text=None if self._first_text_at is None else self._first_text_at - start,
            inter_chunk_p50=quantile(gaps, 0.5),  # re-sorting a sorted list is linear
            inter_chunk_p95=quantile(gaps, 0.95),
            inter_chunk_max=peak,
            chunks_per_second=rate,
            total_time=now - start,
            outcome=outcome,
        )
        return self.final

    def terminal(self, now: float) -> StreamingChunk | None:
        """The terminal ``is_last`` record when the source ended without flagging a last item."""
        stats = self.finish(now, "completed")
        if self.last_emitted:
            return None
        self.last_emitted = True
        start = self._start if self._start is not None else now
        previous = self._last_at if self._last_at is not None else start
        return _new_chunk(
            self.n_chunks,
            "",
            now - start,
            now - previous,
            self.n_chunks == 0,
            True,
            None,
            None,
            None,
            stats,
        )


# --------------------------------------------------------------------------- aggregation


class _ModelStreams:
    """Per-model aggregate: counters and histograms over streams."""

    __slots__ = (
        "chunks",
        "chunks_per_second",
        "inter_chunk_max",
        "inter_chunk_p50",
        "inter_chunk_p95",
        "outcomes",
        "streams",
        "time_to_first_chunk",
        "time_to_first_text",
        "time_to_first_token",
        "total_time",
    )

    def __init__(self) -> None:
        self.streams = 0
        self.chunks = 0
        self.outcomes: dict[str, int] = {}
        self.time_to_first_chunk = Histogram()
        self.time_to_first_text = Histogram()
        self.time_to_first_token = Histogram()
        self.inter_chunk_p50 = Histogram()
        self.inter_chunk_p95 = Histogram()
        self.inter_chunk_max = Histogram()
        self.total_time = Histogram()
        self.chunks_per_second = Histogram(_RATE_BUCKETS)

    def snapshot(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "chunks": self.chunks,
            "outcomes": dict(self.outcomes),
            "time_to_first_chunk": self.time_to_first_chunk.snapshot(),
            "time_to_first_text": self.time_to_first_text.snapshot(),
            "time_to_first_token": self.time_to_first_token.snapshot(),
            "inter_chunk_p50": self.inter_chunk_p50.snapshot(),
            "inter_chunk_p95": self.inter_chunk_p95.snapshot(),
            "inter_chunk_max": self.inter_chunk_max.snapshot(),
            "total_time": self.total_time.snapshot(),
            "chunks_per_second": self.chunks_per_second.snapshot(),
        }


class StreamStatsCollector:
    """Aggregates :class:`StreamStats` and time-to-first-token observations per model.

    Each model gets histograms (time to first chunk/text/token, per-stream inter-chunk
    p50/p95/max, total time, chunks per second) plus stream, chunk and outcome counters. At most
    256 model names are tracked; further names are pooled under ``"__other__"``.
    """

    def __init__(self) -> None:
        """Create an empty collector."""
        self._lock = threading.Lock()
        self._models: dict[str, _ModelStreams] = {}

    def _model(self, name: str) -> _ModelStreams:
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                if len(self._models) >= _MAX_MODELS:
                    name = _OTHER_MODELS
                entry = self._models.setdefault(name, _ModelStreams())
            return entry

    def record(self, stats: StreamStats) -> None:
        """Add one finished stream to its model's aggregate."""
        entry = self._model(stats.model)
        with self._lock:
            entry.streams += 1
            entry.chunks += stats.n_chunks
            entry.outcomes[stats.outcome] = entry.outcomes.get(stats.outcome, 0) + 1
        pairs = (
            (entry.time_to_first_chunk, stats.time_to_first_chunk),
            (entry.time_to_first_text, stats.time_to_first_text),
            (entry.inter_chunk_p50, stats.inter_chunk_p50),
            (entry.inter_chunk_p95, stats.inter_chunk_p95),
            (entry.inter_chunk_max, stats.inter_chunk_max),
            (entry.chunks_per_second, stats.chunks_per_second),
        )
        for histogram, value in pairs:
            if value is not None:
                histogram.record(value)
        entry.total_time.record(stats.total_time)

    def record_ttft(self, model: str, seconds: float) -> None:
        """Add one time-to-first-token observation (from :class:`TimeToFirstTokenHandler`)."""
        self._model(model).time_to_first_token.record(seconds)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serializable ``{"streams": total, "models": {model: aggregate}}``."""
        with self._lock:
            models = dict(self._models)
        per_model = {name: models[name].snapshot() for name in sorted(models)}
        return {
            "streams": sum(entry["streams"] for entry in per_model.values()),
            "models": per_model,
        }

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._models.clear()


#: The package-wide collector, registered as ``"streams"`` in the package stats registry.
default_collector = StreamStatsCollector()
registry.register("streams", default_collector.snapshot)


# --------------------------------------------------------------------------- watchdog


def _check_timeout(name: str, value: float | None) -> None:
    """Reject a timeout that is not None or a positive number."""
    if value is not None and not value > 0:
        msg = f"{name} must be a positive number of seconds or None, got {value!r}"
        raise ConfigError(msg)


def _check_timeouts(first_chunk_timeout: float | None, inter_chunk_timeout: float | None) -> None:
    """Reject watchdog limits that are not None or positive (see :func:`_check_timeout`)."""
    _check_timeout("first_chunk_timeout", first_chunk_timeout)
    _check_timeout("inter_chunk_timeout", inter_chunk_timeout)


def _close(iterator: Any) -> None:
    """Close a sync iterator when it can be closed (generators and friends)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


async def _aclose(iterator: Any) -> None:
    """Close an async iterator when it can be closed (async generators and friends)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


if sys.version_info >= (3, 11):

    async def _anext_within(iterator: AsyncIterator[T], limit: float) -> tuple[bool, T | None]:
        """``(True, item)``, or ``(False, None)`` when ``limit`` seconds passed first."""
        try:
            async with asyncio.timeout(limit) as scope:
                return True, await anext(iterator)
        except TimeoutError:
            if scope.expired():
                return False, None
            raise

else:  # pragma: no cover - Python 3.10

    async def _anext_within(iterator: AsyncIterator[T], limit: float) -> tuple[bool, T | None]:
        """``(True, item)``, or ``(False, None)`` when ``limit`` seconds passed first."""
        task = asyncio.ensure_future(anext(iterator))
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False, None
        return True, task.result()


def guard_stream(
    source: AsyncIterable[T],
    *,
    first_chunk_timeout: float | None = None,
    inter_chunk_timeout: float | None = None,
    clock: Clock = time.monotonic,
) -> AsyncGenerator[T, None]:
    """Re-yield ``source``, raising a typed error when it stalls; always closes ``source``.

    The timers measure time spent *waiting on the source*: the inter-chunk timer starts when the
    consumer asks for the next item, so a slow consumer never causes a spurious stall. On a
    stall the pending read is cancelled (inside the source's frame) and ``source.aclose()`` is
    awaited, so the HTTP stream is closed and its connection released. The source is also
    closed when the consumer breaks out, is cancelled, or the source fails.

    Args:
        source: An async iterable, typically a runnable's ``.astream()`` or a transport stream.
        first_chunk_timeout: Seconds allowed before the first item, or None for no limit.
        inter_chunk_timeout: Seconds allowed between items, or None for no limit.
        clock: Monotonic clock, used to report how long was waited.

    Returns:
        An async generator of the items of ``source``, unchanged and one at a time (nothing is
        read ahead). Iterating it raises :class:`FirstChunkTimeoutError` when no first item
        came within ``first_chunk_timeout`` and :class:`InterChunkTimeoutError` on a gap over
        ``inter_chunk_timeout``.

    Raises:
        ConfigError: A timeout that is not positive (raised at once, not when iterated).
    """
    _check_timeouts(first_chunk_timeout, inter_chunk_timeout)
    return _guarded(source, first_chunk_timeout, inter_chunk_timeout, clock)


async def _guarded(
    source: AsyncIterable[T],
    first_chunk_timeout: float | None,
    inter_chunk_timeout: float | None,
    clock: Clock,
) -> AsyncGenerator[T, None]:
    """The generator behind :func:`guard_stream`."""
    iterator = aiter(source)
    received = 0
    try:
        while True:
            limit = first_chunk_timeout if received == 0 else inter_chunk_timeout
            try:
                if limit is None:
                    item = await anext(iterator)
                else:
                    waited_from = clock()
                    ok, got = await _anext_within(iterator, limit)
                    if not ok:
                        raise _stall_error(limit, received, clock() - waited_from)
                    item = got  # type: ignore[assignment]
            except StopAsyncIteration:
                return
            received += 1
            yield item
    finally:
        await _aclose(iterator)


def _stall_error(limit: float, received: int, waited: float) -> StreamStallError:
    """The typed stall error for a limit that expired after ``received`` items."""
    if received == 0:
        return FirstChunkTimeoutError(
            f"no first chunk within the first_chunk_timeout of {limit:g}s "
            f"(waited {waited:.3f}s); the stream was closed",
            timeout=limit,
            chunks_received=0,
        )
    return InterChunkTimeoutError(
        f"no chunk within the inter_chunk_timeout of {limit:g}s after chunk {received} "
        f"(waited {waited:.3f}s); the stream was closed",
        timeout=limit,
        chunks_received=received,
    )


# --------------------------------------------------------------------------- direct mode


def _outcome_of(exc: BaseException, *, watchdog: bool) -> StreamOutcome:
    """How a stream that raised ``exc`` ended (only the async engine has task cancel/stalls)."""
    if isinstance(exc, GeneratorExit):
        return "cancelled"
    if watchdog:
        if isinstance(exc, asyncio.CancelledError):
            return "cancelled"
        if isinstance(exc, StreamStallError):
            return "stalled"
    return "error"


def _record(
    collector: StreamStatsCollector | None, timer: _StreamTimer, now: float, outcome: StreamOutcome
) -> None:
    """Freeze the stream's stats and add them to ``collector`` (when there is one)."""
    if collector is not None:
        collector.record(timer.finish(now, outcome))


async def _achunks(
    source: AsyncIterable[Any],
    timer: _StreamTimer,
    *,
    first_chunk_timeout: float | None,
    inter_chunk_timeout: float | None,
    clock: Clock,
    collector: StreamStatsCollector | None,
) -> AsyncGenerator[StreamingChunk, None]:
    """The async engine of every mode: time each item, close and record on any exit."""
    timer.start(clock())
    stream: AsyncIterable[Any] = source
    if first_chunk_timeout is not None or inter_chunk_timeout is not None:
        stream = guard_stream(
            source,
            first_chunk_timeout=first_chunk_timeout,
            inter_chunk_timeout=inter_chunk_timeout,
            clock=clock,
        )
    iterator = aiter(stream)
    outcome: StreamOutcome = "error"
    on_item = timer.on_item
    try:
        async for item in iterator:
            yield on_item(item, clock())
        outcome = "completed"
        terminal = timer.terminal(clock())
        if terminal is not None:
            yield terminal
    except BaseException as exc:
        outcome = _outcome_of(exc, watchdog=True)
        raise
    finally:
        try:
            await _aclose(iterator)
            if stream is not source:
                await _aclose(source)
        finally:
            _record(collector, timer, clock(), outcome)


def aiter_chunks(
    source: AsyncIterable[Any],
    *,
    model: str | None = None,
    runnable: Any = None,
    first_chunk_timeout: float | None = None,
    inter_chunk_timeout: float | None = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
) -> AsyncGenerator[StreamingChunk, None]:
    """Direct mode over any async iterable: yield a timed :class:`StreamingChunk` per item.

    Args:
        source: The items (e.g. ``runnable.astream(...)``); closed when the generator ends.
        model: Model name for the statistics; resolved from ``runnable`` or metadata if None.
        runnable: The runnable behind ``source``, used only to name the model.
        first_chunk_timeout: Stall watchdog limit for the first item (see :func:`guard_stream`).
        inter_chunk_timeout: Stall watchdog limit between items.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.

    Returns:
        An async generator of chunks; wrap it in ``contextlib.aclosing`` to release the stream
        deterministically when breaking out early.
    """
    _check_timeouts(first_chunk_timeout, inter_chunk_timeout)
    return _achunks(
        source,
        _StreamTimer(model=model, runnable=runnable),
        first_chunk_timeout=first_chunk_timeout,
        inter_chunk_timeout=inter_chunk_timeout,
        clock=clock,
        collector=collector,
    )


def astream_chunks(
    runnable: Runnable[Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    model: str | None = None,
    first_chunk_timeout: float | None = None,
    inter_chunk_timeout: float | None = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
    **kwargs: Any,
) -> AsyncGenerator[StreamingChunk, None]:
    """Direct mode: stream ``runnable.astream(input, config, **kwargs)`` as timed chunks.

    Args:
        runnable: Any runnable (chat model, chain, pipeline).
        input: The runnable's input.
        config: The runnable config (callbacks, tags, ...).
        model: Model name for the statistics; resolved from the runnable if None.
        first_chunk_timeout: Raise :class:`FirstChunkTimeoutError` after this many seconds
            without a first chunk (the stream is closed).
        inter_chunk_timeout: Raise :class:`InterChunkTimeoutError` on a longer gap.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.
        **kwargs: Passed to ``runnable.astream``.

    Returns:
        An async generator of :class:`StreamingChunk`; the ``is_last`` one carries the stats.

    Example:
        .. code-block:: python

            async with contextlib.aclosing(astream_chunks(chain, {"q": "hi"})) as chunks:
                async for chunk in chunks:
                    print(chunk.text, end="", flush=True)
    """
    return aiter_chunks(
        runnable.astream(input, config, **kwargs),
        model=model,
        runnable=runnable,
        first_chunk_timeout=first_chunk_timeout,
        inter_chunk_timeout=inter_chunk_timeout,
        clock=clock,
        collector=collector,
    )


def _chunks(
    source: Iterable[Any],
    timer: _StreamTimer,
    *,
    clock: Clock,
    collector: StreamStatsCollector | None,
) -> Generator[StreamingChunk, None, None]:
    """The sync engine: the twin of :func:`_achunks` without the watchdog."""
    timer.start(clock())
    iterator = iter(source)
    outcome: StreamOutcome = "error"
    on_item = timer.on_item
    try:
        for item in iterator:
            yield on_item(item, clock())
        outcome = "completed"
        terminal = timer.terminal(clock())
        if terminal is not None:
            yield terminal
    except BaseException as exc:
        outcome = _outcome_of(exc, watchdog=False)
        raise
    finally:
        try:
            _close(iterator)
        finally:
            _record(collector, timer, clock(), outcome)


def iter_chunks(
    source: Iterable[Any],
    *,
    model: str | None = None,
    runnable: Any = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
) -> Generator[StreamingChunk, None, None]:
    """Sync direct mode over any iterable: yield a timed :class:`StreamingChunk` per item.

    The sync twins have no stall watchdog (a blocking read cannot be interrupted without a
    thread); they rely on the transport's read timeout instead.

    Args:
        source: The items (e.g. ``runnable.stream(...)``); closed when the generator ends.
        model: Model name for the statistics; resolved from ``runnable`` or metadata if None.
        runnable: The runnable behind ``source``, used only to name the model.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.

    Returns:
        A generator of chunks; wrap it in ``contextlib.closing`` when breaking out early.
    """
    return _chunks(
        source, _StreamTimer(model=model, runnable=runnable), clock=clock, collector=collector
    )


def stream_chunks(
    runnable: Runnable[Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    model: str | None = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
    **kwargs: Any,
) -> Generator[StreamingChunk, None, None]:
    """Sync direct mode: the twin of :func:`astream_chunks` over ``runnable.stream()``.

    Works outside and inside a running event loop (it never starts one). No stall watchdog:
    see :func:`iter_chunks`.

    Args:
        runnable: Any runnable.
        input: The runnable's input.
        config: The runnable config.
        model: Model name for the statistics; resolved from the runnable if None.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.
        **kwargs: Passed to ``runnable.stream``.

    Returns:
        A generator of :class:`StreamingChunk`.
    """
    return iter_chunks(
        runnable.stream(input, config, **kwargs),
        model=model,
        runnable=runnable,
        clock=clock,
        collector=collector,
    )


# --------------------------------------------------------------------------- callback mode


async def astream_to_callback(
    runnable: Runnable[Any, Any],
    input: Any,
    callback: Callable[[StreamingChunk], Awaitable[Any] | Any],
    config: RunnableConfig | None = None,
    *,
    model: str | None = None,
    first_chunk_timeout: float | None = None,
    inter_chunk_timeout: float | None = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
    **kwargs: Any,
) -> StreamStats:
    """Callback mode: call ``callback`` with every chunk, awaiting it when it is async.

    The next chunk is read only after the callback returned, so a slow callback slows the
    stream down instead of filling a buffer. A sync callback runs on the event loop: keep it
    short. If the callback raises, the stream is closed and the error propagates.

    Args:
        runnable: Any runnable.
        input: The runnable's input.
        callback: Called once per chunk; may be ``async def`` (or return an awaitable).
        config: The runnable config.
        model: Model name for the statistics.
        first_chunk_timeout: See :func:`astream_chunks`.
        inter_chunk_timeout: See :func:`astream_chunks`.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.
        **kwargs: Passed to ``runnable.astream``.

    Returns:
        The stream's statistics.
    """
    _check_timeouts(first_chunk_timeout, inter_chunk_timeout)
    timer = _StreamTimer(model=model, runnable=runnable)
    chunks = _achunks(
        runnable.astream(input, config, **kwargs),
        timer,
        first_chunk_timeout=first_chunk_timeout,
        inter_chunk_timeout=inter_chunk_timeout,
        clock=clock,
        collector=collector,
    )
    try:
        async for chunk in chunks:
            result = callback(chunk)
            if inspect.isawaitable(result):
                await result
    finally:
        await chunks.aclose()
    return timer.finish(clock(), "completed")


def stream_to_callback(
    runnable: Runnable[Any, Any],
    input: Any,
    callback: Callable[[StreamingChunk], Any],
    config: RunnableConfig | None = None,
    *,
    model: str | None = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
    **kwargs: Any,
) -> StreamStats:
    """Sync callback mode: the twin of :func:`astream_to_callback` over ``runnable.stream()``.

    Args:
        runnable: Any runnable.
        input: The runnable's input.
        callback: A sync function called once per chunk.
        config: The runnable config.
        model: Model name for the statistics.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.
        **kwargs: Passed to ``runnable.stream``.

    Returns:
        The stream's statistics.

    Raises:
        TypeError: The callback is a coroutine function (use :func:`astream_to_callback`).
    """
    if inspect.iscoroutinefunction(callback):
        msg = "stream_to_callback needs a sync callback; use astream_to_callback for async ones"
        raise TypeError(msg)
    timer = _StreamTimer(model=model, runnable=runnable)
    chunks = _chunks(
        runnable.stream(input, config, **kwargs), timer, clock=clock, collector=collector
    )
    try:
        for chunk in chunks:
            callback(chunk)
    finally:
        chunks.close()
    return timer.finish(clock(), "completed")


# --------------------------------------------------------------------------- buffer mode


def _collect(collected: list[StreamingChunk], timer: _StreamTimer, clock: Clock) -> StreamResult:
    """Build the buffer-mode result from the chunks and the timer."""
    return StreamResult(
        text="".join(chunk.text for chunk in collected),
        chunks=collected,
        stats=timer.finish(clock(), "completed"),
        usage=timer.usage,
    )


async def astream_to_buffer(
    runnable: Runnable[Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    model: str | None = None,
    first_chunk_timeout: float | None = None,
    inter_chunk_timeout: float | None = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
    **kwargs: Any,
) -> StreamResult:
    """Buffer mode: read the whole stream and return its text, chunks, usage and stats.

    Args:
        runnable: Any runnable.
        input: The runnable's input.
        config: The runnable config.
        model: Model name for the statistics.
        first_chunk_timeout: See :func:`astream_chunks`.
        inter_chunk_timeout: See :func:`astream_chunks`.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.
        **kwargs: Passed to ``runnable.astream``.

    Returns:
        The :class:`StreamResult`.
    """
    _check_timeouts(first_chunk_timeout, inter_chunk_timeout)
    timer = _StreamTimer(model=model, runnable=runnable)
    chunks = _achunks(
        runnable.astream(input, config, **kwargs),
        timer,
        first_chunk_timeout=first_chunk_timeout,
        inter_chunk_timeout=inter_chunk_timeout,
        clock=clock,
        collector=collector,
    )
    try:
        collected = [chunk async for chunk in chunks]
    finally:
        await chunks.aclose()
    return _collect(collected, timer, clock)


def stream_to_buffer(
    runnable: Runnable[Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    model: str | None = None,
    clock: Clock = time.monotonic,
    collector: StreamStatsCollector | None = default_collector,
    **kwargs: Any,
) -> StreamResult:
    """Sync buffer mode: the twin of :func:`astream_to_buffer` over ``runnable.stream()``.

    Args:
        runnable: Any runnable.
        input: The runnable's input.
        config: The runnable config.
        model: Model name for the statistics.
        clock: Monotonic clock.
        collector: Where the finished stream's stats go; None to not aggregate.
        **kwargs: Passed to ``runnable.stream``.

    Returns:
        The :class:`StreamResult`.
    """
    timer = _StreamTimer(model=model, runnable=runnable)
    chunks = _chunks(
        runnable.stream(input, config, **kwargs), timer, clock=clock, collector=collector
    )
    try:
        collected = list(chunks)
    finally:
        chunks.close()
    return _collect(collected, timer, clock)


# --------------------------------------------------------------------------- TTFT handler


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenTiming:
    """Time to first token of one chat model (or LLM) run.

    Attributes:
        run_id: The LangChain run id of the model call.
        parent_run_id: The enclosing run (the chain), if any.
        model: The model name (``ls_model_name``, invocation params, or the class name).
        time_to_first_token: Seconds from the model start to its first non-empty token, or
            None when the run did not stream (``invoke`` without streaming).
        total_time: Seconds from the model start to its end (or error).
        tokens: How many ``on_llm_new_token`` calls the run made.
        error: True when the run ended with an error.
    """

    run_id: UUID
    parent_run_id: UUID | None
    model: str
    time_to_first_token: float | None
    total_time: float
    tokens: int
    error: bool = False


@dataclass(slots=True)
class _RunState:
    model: str
    parent_run_id: UUID | None
    started: float
    first_token_at: float | None = None
    tokens: int = 0


def _model_from_run(
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    invocation_params: Mapping[str, Any] | None,
) -> str:
    """The model name of a run from its callback arguments (pure)."""
    if metadata:
        value = metadata.get("ls_model_name")
        if isinstance(value, str) and value:
            return value
    for source in (invocation_params, (serialized or {}).get("kwargs")):
        if isinstance(source, Mapping):
            for key in ("model_name", "model"):
                value = source.get(key)
                if isinstance(value, str) and value:
                    return value
    if serialized:
        name = serialized.get("name")
        if isinstance(name, str) and name:
            return name
        ident = serialized.get("id")
        if isinstance(ident, list) and ident and isinstance(ident[-1], str):
            return ident[-1]
    if invocation_params:
        kind = invocation_params.get("_type")
        if isinstance(kind, str) and kind:
            return kind
    return _UNKNOWN_MODEL


def _is_token(token: str | list[str | dict[str, Any]], chunk: Any) -> bool:
    """True for a token that the user sees: non-empty text or a tool-call fragment."""
    if isinstance(token, str) and token:
        return True
    if isinstance(token, list) and _content_text(token):
        return True
    message = getattr(chunk, "message", None)
    return bool(getattr(message, "tool_call_chunks", None))


class TimeToFirstTokenHandler(BaseCallbackHandler):
    """Records the time to first token of every chat model or LLM run it sees.

    Attach it through ``config={"callbacks": [handler]}`` to any runnable; it follows every
    model inside chains, and works under ``stream``/``astream``/``astream_events`` (token
    callbacks only fire when the model streams). It runs inline on the event loop
    (``run_inline``) so its timestamps are not delayed by a thread pool, and keys runs by
    ``run_id`` so concurrent runs do not mix.

    Attributes:
        timings: The most recent :class:`TokenTiming` records (bounded).
    """

    run_inline = True

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        collector: StreamStatsCollector | None = default_collector,
        max_records: int = 1000,
    ) -> None:
        """Create a handler.

        Args:
            clock: Monotonic clock.
            collector: Where each time to first token is aggregated per model; None for none.
            max_records: How many recent :class:`TokenTiming` records to keep.
        """
        super().__init__()
        self._clock = clock
        self._collector = collector
        self._lock = threading.Lock()
        self._runs: dict[UUID, _RunState] = {}
        self.timings: deque[TokenTiming] = deque(maxlen=max_records)

    def _start(
        self,
        serialized: dict[str, Any] | None,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        model = _model_from_run(serialized, metadata, kwargs.get("invocation_params"))
        state = _RunState(model=model, parent_run_id=parent_run_id, started=self._clock())
        with self._lock:
            self._runs[run_id] = state

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start timing a chat model run."""
        self._start(serialized, run_id, parent_run_id, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Start timing a (completion) LLM run."""
        self._start(serialized, run_id, parent_run_id, metadata, kwargs)

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Note the first visible token of the run."""
        now = self._clock()
        with self._lock:
            state = self._runs.get(run_id)
            if state is None:
                return
            state.tokens += 1
            if state.first_token_at is None and _is_token(token, chunk):
                state.first_token_at = now

    def _end(self, run_id: UUID, *, error: bool) -> None:
        now = self._clock()
        with self._lock:
            state = self._runs.pop(run_id, None)
        if state is None:
            return
        ttft = None if state.first_token_at is None else state.first_token_at - state.started
        self.timings.append(
            TokenTiming(
                run_id=run_id,
                parent_run_id=state.parent_run_id,
                model=state.model,
                time_to_first_token=ttft,
                total_time=now - state.started,
                tokens=state.tokens,
                error=error,
            )
        )
        if ttft is not None and self._collector is not None:
            self._collector.record_ttft(state.model, ttft)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Finish timing the run and record its time to first token."""
        self._end(run_id, error=False)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Finish timing a failed run (its first token, if any, is still recorded)."""
        self._end(run_id, error=True)

    def get(self, run_id: UUID) -> TokenTiming | None:
        """The timing of a finished run, if still among the kept records."""
        for timing in reversed(self.timings):
            if timing.run_id == run_id:
                return timing
        return None

    @property
    def in_progress(self) -> int:
        """How many model runs have started and not ended."""
        with self._lock:
            return len(self._runs)
