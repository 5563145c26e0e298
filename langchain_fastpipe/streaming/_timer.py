"""The pure core of every stream, sync or async: (item, now) in, :class:`StreamingChunk` out.

:class:`StreamTimer` times each item, builds its chunk, keeps the stream's running statistics
and, when the stream ends, freezes them into a :class:`StreamStats` and hands them to the
collector. The sync and async engines in ``_api`` only move items and close sources around it.
"""

from __future__ import annotations

import asyncio
from array import array
from typing import Any

from langchain_core.messages import BaseMessageChunk

from langchain_fastpipe.errors import StreamStallError
from langchain_fastpipe.stats import quantile
from langchain_fastpipe.streaming._chunk import (
    ChunkBuilder,
    StreamingChunk,
    content_text,
    extract_text,
    message_of,
    model_from_metadata,
    new_chunk,
    resolve_model_name,
)
from langchain_fastpipe.streaming._stats import (
    Clock,
    StreamOutcome,
    StreamStats,
    StreamStatsCollector,
)

__all__ = ["StreamTimer", "outcome_of"]

_MAX_GAPS = 1 << 16  # gaps kept per stream for its quantiles (the most recent ones)


def outcome_of(exc: BaseException) -> StreamOutcome:
    """How a stream that raised ``exc`` ended."""
    if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
        return "cancelled"
    if isinstance(exc, StreamStallError):
        return "stalled"
    return "error"


class StreamTimer:
    """One stream's state: turns (item, now) into a chunk, keeps the statistics, records them.

    Per item it does the minimum: one message resolution, a few attribute reads, one gap
    appended to a float array and one chunk built. Quantiles are computed once, when the
    stream finishes. State is counters plus the gaps (8 bytes each, the most recent
    ``_MAX_GAPS`` kept), never the chunks.

    Attributes:
        clock: The stream's clock; the engines read it once per item.
        collector: Where :meth:`end` records the frozen statistics; None for nowhere.
    """

    __slots__ = (
        "_dropped_max",
        "_first_at",
        "_first_text_at",
        "_gaps",
        "_last_at",
        "_last_emitted",
        "_metadata_model",
        "_model",
        "_n_chunks",
        "_runnable",
        "_start",
        "clock",
        "collector",
        "final",
    )

    def __init__(
        self,
        *,
        model: str | None,
        runnable: Any,
        clock: Clock,
        collector: StreamStatsCollector | None,
    ) -> None:
        """Start the state of one stream.

        Args:
            model: The model name, or None to resolve it from ``runnable`` or metadata.
            runnable: The runnable behind the stream (None for a bare iterable): names the model.
            clock: Monotonic clock.
            collector: Where the finished stream's statistics go; None to not aggregate.
        """
        self._model = model
        self._runnable = runnable
        self.clock = clock
        self.collector = collector
        self._metadata_model: str | None = None
        self._start: float | None = None
        self._first_at: float | None = None
        self._first_text_at: float | None = None
        self._last_at: float | None = None
        self._gaps = array("d")
        self._dropped_max: float | None = None
        self._n_chunks = 0
        self._last_emitted = False
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
        message = message_of(item)  # resolved once per item
        if message is item:
            content = message.content
            text = content if content.__class__ is str else content_text(content)
        else:
            text = extract_text(item)
        if text and self._first_text_at is None:
            self._first_text_at = now
        usage = getattr(message, "usage_metadata", None) or None
        metadata = getattr(message, "response_metadata", None) or None
        if metadata is not None and self._metadata_model is None:
            self._metadata_model = model_from_metadata(metadata)
        index = self._n_chunks
        self._n_chunks = index + 1
        stats = None
        is_last = False
        if getattr(message, "chunk_position", None) == "last" and not self._last_emitted:
            is_last = isinstance(message, BaseMessageChunk)
            if is_last:
                self._last_emitted = True
                stats = self.finish(now, "completed")
        chunk: Any = ChunkBuilder(  # inlined new_chunk(): this is the per-item path
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
        if self._n_chunks >= 2 and self._first_at is not None and self._last_at is not None:
            span = self._last_at - self._first_at
            rate = (self._n_chunks - 1) / span if span > 0 else None
        gaps = sorted(self._gaps)
        peak = gaps[-1] if gaps else None
        if self._dropped_max is not None and (peak is None or self._dropped_max > peak):
            peak = self._dropped_max
        self.final = StreamStats(
            model=self.model,
            n_chunks=self._n_chunks,
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
        if self._last_emitted:
            return None
        self._last_emitted = True
        start = self._start if self._start is not None else now
        previous = self._last_at if self._last_at is not None else start
        return new_chunk(
            self._n_chunks,
            "",
            now - start,
            now - previous,
            self._n_chunks == 0,
            True,
            None,
            None,
            None,
            stats,
        )

    def end(self, now: float, outcome: StreamOutcome) -> None:
        """Freeze the statistics with ``outcome`` (unless already frozen) and record them."""
        if self.collector is not None:
            self.collector.record(self.finish(now, outcome))
