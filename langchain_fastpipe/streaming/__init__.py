"""Streaming for any LangChain runnable: timed chunks, three modes, stats, watchdog, TTFT.

One producer per world, taking a runnable and its input or any (async) iterable:
:func:`astream_chunks` (with an optional stall watchdog) and its sync twin
:func:`stream_chunks` (works inside a running event loop, e.g. Jupyter). The three modes:

* **direct**: iterate the producer: ``async for chunk in astream_chunks(chain, inputs)``.
* **buffer**: ``await acollect(astream_chunks(...))`` / ``collect(stream_chunks(...))`` return
  a :class:`StreamResult` (text, chunks, summed usage, stats).
* **callback**: ``await aconsume(astream_chunks(...), on_chunk)`` /
  ``consume(stream_chunks(...), on_chunk)`` call a function per chunk and return the
  :class:`StreamStats`.

Every mode is pull-based: the source is asked for its next item only when the consumer asks for
the next chunk, so a slow consumer never makes the package buffer a stream; only buffer mode
keeps the chunks. A chunk is flagged ``is_last`` when the source says it is last
(``AIMessageChunk.chunk_position == "last"``); otherwise one empty terminal record (``value``
None) ends the stream. No chunk waits for its successor. The ``is_last`` chunk carries the
stream's :class:`StreamStats`, which are also aggregated per model into
``get_stats()["streams"]``. :class:`TimeToFirstTokenHandler` times the first token of every chat
model inside any chain; :func:`guard_stream` is the stall watchdog on its own.
"""

from __future__ import annotations

from langchain_fastpipe.streaming._api import (
    AsyncStreamOptions,
    StreamOptions,
    acollect,
    aconsume,
    astream_chunks,
    collect,
    consume,
    stream_chunks,
)
from langchain_fastpipe.streaming._callbacks import TimeToFirstTokenHandler, TokenTiming
from langchain_fastpipe.streaming._chunk import (
    StreamingChunk,
    StreamResult,
    extract_text,
    resolve_model_name,
)
from langchain_fastpipe.streaming._stats import (
    StreamOutcome,
    StreamStats,
    StreamStatsCollector,
    default_collector,
)
from langchain_fastpipe.streaming._watchdog import guard_stream

__all__ = [
    "AsyncStreamOptions",
    "StreamOptions",
    "StreamOutcome",
    "StreamResult",
    "StreamStats",
    "StreamStatsCollector",
    "StreamingChunk",
    "TimeToFirstTokenHandler",
    "TokenTiming",
    "acollect",
    "aconsume",
    "astream_chunks",
    "collect",
    "consume",
    "default_collector",
    "extract_text",
    "guard_stream",
    "resolve_model_name",
    "stream_chunks",
]
