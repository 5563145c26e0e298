"""The streaming API: two producers of timed chunks and two consumers on top of them.

Producers (:func:`astream_chunks`, :func:`stream_chunks`) take a runnable and its input, or any
(async) iterable, and yield :class:`StreamingChunk` records. Consumers take what a producer
returns: :func:`acollect` / :func:`collect` keep the whole stream (buffer mode),
:func:`aconsume` / :func:`consume` hand each chunk to a function (callback mode). The sync and
async engines below differ only in their I/O lines; timing, chunk building and statistics are
the shared :class:`~langchain_fastpipe.streaming._timer.StreamTimer`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypedDict

from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.runnables import Runnable, RunnableConfig

from langchain_fastpipe.streaming._chunk import StreamingChunk, StreamResult
from langchain_fastpipe.streaming._stats import (
    Clock,
    StreamOutcome,
    StreamStats,
    StreamStatsCollector,
    default_collector,
)
from langchain_fastpipe.streaming._timer import StreamTimer, outcome_of
from langchain_fastpipe.streaming._watchdog import aclose, check_timeouts, guard_stream

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "AsyncStreamOptions",
    "StreamOptions",
    "acollect",
    "aconsume",
    "astream_chunks",
    "collect",
    "consume",
    "stream_chunks",
]


class StreamOptions(TypedDict, total=False):
    """The keyword options of :func:`stream_chunks` and :func:`astream_chunks`, all optional.

    Attributes:
        model: The model name the stream's statistics are aggregated under. Default: resolved
            from the runnable, else from the stream's ``response_metadata``
            (see :func:`~langchain_fastpipe.streaming.resolve_model_name`).
        clock: Monotonic clock for every timing. Default: ``time.monotonic``.
        collector: Where the finished stream's statistics go; None to not aggregate.
            Default: ``default_collector`` (``get_stats()["streams"]``).
    """

    model: str | None
    clock: Clock
    collector: StreamStatsCollector | None


class AsyncStreamOptions(StreamOptions, total=False):
    """The keyword options of :func:`astream_chunks`: :class:`StreamOptions` plus the watchdog.

    The sync :func:`stream_chunks` has no watchdog (a blocking read cannot be interrupted
    without a thread): it relies on the transport's read timeout.

    Attributes:
        first_chunk_timeout: Raise ``FirstChunkTimeoutError`` (and close the source) when no
            first item came within this many seconds. Default: None, no limit.
        inter_chunk_timeout: Raise ``InterChunkTimeoutError`` on a longer wait between items.
            Default: None, no limit.
    """

    first_chunk_timeout: float | None
    inter_chunk_timeout: float | None


class _NoInput:
    """The type of :data:`_NO_INPUT`: tells "no input given" from an input of None."""

    def __repr__(self) -> str:
        return "<no input>"


_NO_INPUT: Any = _NoInput()
_ASYNC_ONLY = frozenset(AsyncStreamOptions.__optional_keys__ - StreamOptions.__optional_keys__)


def _checked_timer(
    caller: str,
    source: object,
    input: Any,
    config: RunnableConfig | None,
    options: StreamOptions,
    allowed: frozenset[str],
) -> StreamTimer:
    """Check a producer's arguments and start the stream's timer (the options' one reader)."""
    unknown = options.keys() - allowed
    if unknown:
        name = min(unknown)
        hint = (
            " (the sync twin has no stall watchdog; use astream_chunks)"
            if name in _ASYNC_ONLY
            else ""
        )
        msg = f"{caller}() got an unexpected keyword argument {name!r}{hint}"
        raise TypeError(msg)
    runnable = isinstance(source, Runnable)
    if runnable and input is _NO_INPUT:
        msg = f"{caller}(runnable, input): the runnable's input is missing"
        raise TypeError(msg)
    if not runnable and (input is not _NO_INPUT or config is not None):
        msg = f"{caller}(): input and config apply to a Runnable source, not to an iterable"
        raise TypeError(msg)
    return StreamTimer(
        model=options.get("model"),
        runnable=source if runnable else None,
        clock=options.get("clock", time.monotonic),
        collector=options.get("collector", default_collector),
    )


# --------------------------------------------------------------------------- producers


def astream_chunks(
    source: Runnable[Any, Any] | AsyncIterable[Any],
    input: Any = _NO_INPUT,
    config: RunnableConfig | None = None,
    **options: Unpack[AsyncStreamOptions],
) -> AsyncGenerator[StreamingChunk, None]:
    """Stream a runnable (or any async iterable) as timed :class:`StreamingChunk` records.

    The source is read only when the consumer asks for the next chunk (nothing is read ahead),
    and it is closed whenever the generator ends: exhausted, failed, stalled, or closed early.

    Args:
        source: A runnable, streamed with ``source.astream(input, config)``; or any async
            iterable (e.g. ``model.astream(input, stop=["."])`` or a transport stream).
        input: The runnable's input (only with a runnable).
        config: The runnable config: callbacks, tags, ... (only with a runnable).
        **options: ``model``, ``clock``, ``collector``, ``first_chunk_timeout`` and
            ``inter_chunk_timeout``: see :class:`AsyncStreamOptions`.

    Returns:
        An async generator of chunks; the ``is_last`` one carries the stream's statistics.
        Wrap it in ``contextlib.aclosing`` to release the stream at once when breaking out.

    Raises:
        ConfigError: A watchdog timeout that is not positive.
        TypeError: A runnable without input, an iterable with one, or an unknown option.

    Example:
        .. code-block:: python

            async with contextlib.aclosing(astream_chunks(chain, {"q": "hi"})) as chunks:
                async for chunk in chunks:
                    print(chunk.text, end="", flush=True)
    """
    timer = _checked_timer(
        "astream_chunks", source, input, config, options, AsyncStreamOptions.__optional_keys__
    )
    first = options.get("first_chunk_timeout")
    inter = options.get("inter_chunk_timeout")
    check_timeouts(first, inter)
    if isinstance(source, Runnable):
        source = source.astream(input, config)
    elif not isinstance(source, AsyncIterable):
        msg = f"astream_chunks() needs a Runnable or an async iterable, got {type(source)!r}"
        raise TypeError(msg)
    return _achunks(source, timer, first, inter)


def stream_chunks(
    source: Runnable[Any, Any] | Iterable[Any],
    input: Any = _NO_INPUT,
    config: RunnableConfig | None = None,
    **options: Unpack[StreamOptions],
) -> Generator[StreamingChunk, None, None]:
    """The sync twin of :func:`astream_chunks`, over ``source.stream(input, config)``.

    Works outside and inside a running event loop (it never starts one), e.g. in Jupyter. It
    has no stall watchdog: see :class:`AsyncStreamOptions`.

    Args:
        source: A runnable, or any iterable (e.g. ``model.stream(input, stop=["."])``).
        input: The runnable's input (only with a runnable).
        config: The runnable config (only with a runnable).
        **options: ``model``, ``clock`` and ``collector``: see :class:`StreamOptions`.

    Returns:
        A generator of chunks; wrap it in ``contextlib.closing`` when breaking out early.

    Raises:
        TypeError: A runnable without input, an iterable with one, an async iterable, or an
            unknown option.
    """
    timer = _checked_timer(
        "stream_chunks", source, input, config, options, StreamOptions.__optional_keys__
    )
    if isinstance(source, Runnable):
        source = source.stream(input, config)
    elif not isinstance(source, Iterable):
        msg = f"stream_chunks() needs a Runnable or an iterable, got {type(source)!r}"
        if isinstance(source, AsyncIterable):
            msg += "; use astream_chunks for an async iterable"
        raise TypeError(msg)
    return _chunks(source, timer)


async def _achunks(
    source: AsyncIterable[Any],
    timer: StreamTimer,
    first_chunk_timeout: float | None,
    inter_chunk_timeout: float | None,
) -> AsyncGenerator[StreamingChunk, None]:
    """The async engine: the I/O lines around the shared timer."""
    clock = timer.clock
    timer.start(clock())
    stream = source
    if first_chunk_timeout is not None or inter_chunk_timeout is not None:
        stream = guard_stream(
            source,
            first_chunk_timeout=first_chunk_timeout,
            inter_chunk_timeout=inter_chunk_timeout,
            clock=clock,
        )
    iterator = aiter(stream)
    on_item = timer.on_item
    outcome: StreamOutcome = "completed"
    try:
        async for item in iterator:
            yield on_item(item, clock())
        terminal = timer.terminal(clock())
        if terminal is not None:
            yield terminal
    except BaseException as exc:
        outcome = outcome_of(exc)
        raise
    finally:
        try:
            await aclose(iterator)
            if stream is not source:
                await aclose(source)
        finally:
            timer.end(clock(), outcome)


def _chunks(source: Iterable[Any], timer: StreamTimer) -> Generator[StreamingChunk, None, None]:
    """The sync engine: :func:`_achunks` with ``for`` and ``close()``, without the watchdog."""
    clock = timer.clock
    timer.start(clock())
    iterator = iter(source)
    on_item = timer.on_item
    outcome: StreamOutcome = "completed"
    try:
        for item in iterator:
            yield on_item(item, clock())
        terminal = timer.terminal(clock())
        if terminal is not None:
            yield terminal
    except BaseException as exc:
        outcome = outcome_of(exc)
        raise
    finally:
        try:
            _close(iterator)
        finally:
            timer.end(clock(), outcome)


# --------------------------------------------------------------------------- consumers


async def acollect(chunks: AsyncIterable[StreamingChunk]) -> StreamResult:
    """Buffer mode: read a whole stream of chunks into a :class:`StreamResult`.

    Args:
        chunks: What :func:`astream_chunks` returned; closed when done or on an error.

    Returns:
        The text, the chunks, the summed usage and the statistics of the stream.

    Raises:
        ValueError: ``chunks`` ended without its ``is_last`` chunk (not a producer's stream).

    Example:
        .. code-block:: python

            result = await acollect(astream_chunks(chain, {"q": "hi"}))
    """
    iterator = aiter(chunks)
    try:
        collected = [chunk async for chunk in iterator]
    finally:
        await aclose(iterator)
    return _result(collected)


def collect(chunks: Iterable[StreamingChunk]) -> StreamResult:
    """Sync buffer mode: the twin of :func:`acollect`, over :func:`stream_chunks`.

    Args:
        chunks: What :func:`stream_chunks` returned; closed when done or on an error.

    Returns:
        The text, the chunks, the summed usage and the statistics of the stream.

    Raises:
        ValueError: ``chunks`` ended without its ``is_last`` chunk (not a producer's stream).
    """
    iterator = iter(chunks)
    try:
        collected = list(iterator)
    finally:
        _close(iterator)
    return _result(collected)


async def aconsume(
    chunks: AsyncIterable[StreamingChunk],
    on_chunk: Callable[[StreamingChunk], Any],
) -> StreamStats:
    """Callback mode: call ``on_chunk`` with every chunk, awaiting it when it is async.

    The next chunk is read only after ``on_chunk`` returned, so a slow callback slows the
    stream down instead of filling a buffer; no chunk is kept. A sync callback runs on the
    event loop: keep it short. If it raises, the stream is closed and the error propagates.

    Args:
        chunks: What :func:`astream_chunks` returned.
        on_chunk: Called once per chunk; may be ``async def`` (or return an awaitable).

    Returns:
        The stream's statistics.

    Raises:
        ValueError: ``chunks`` ended without its ``is_last`` chunk (not a producer's stream).
    """
    stats: StreamStats | None = None
    iterator = aiter(chunks)
    try:
        async for chunk in iterator:
            result = on_chunk(chunk)
            if inspect.isawaitable(result):
                await result
            if chunk.stats is not None:
                stats = chunk.stats
    finally:
        await aclose(iterator)
    return _stats(stats)


def consume(
    chunks: Iterable[StreamingChunk], on_chunk: Callable[[StreamingChunk], Any]
) -> StreamStats:
    """Sync callback mode: the twin of :func:`aconsume`, over :func:`stream_chunks`.

    Args:
        chunks: What :func:`stream_chunks` returned.
        on_chunk: A sync function called once per chunk.

    Returns:
        The stream's statistics.

    Raises:
        TypeError: ``on_chunk`` is a coroutine function (use :func:`aconsume`).
        ValueError: ``chunks`` ended without its ``is_last`` chunk (not a producer's stream).
    """
    if inspect.iscoroutinefunction(on_chunk):
        msg = "consume() needs a sync on_chunk; use aconsume for an async one"
        raise TypeError(msg)
    stats: StreamStats | None = None
    iterator = iter(chunks)
    try:
        for chunk in iterator:
            on_chunk(chunk)
            if chunk.stats is not None:
                stats = chunk.stats
    finally:
        _close(iterator)
    return _stats(stats)


def _close(iterator: Any) -> None:
    """Close a sync iterator when it can be closed (generators and friends)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _stats(stats: StreamStats | None) -> StreamStats:
    """The statistics a stream's ``is_last`` chunk carried; ValueError when none did."""
    if stats is None:
        msg = (
            "the chunks ended without their is_last chunk: pass what astream_chunks or "
            "stream_chunks returned, unfiltered"
        )
        raise ValueError(msg)
    return stats


def _result(chunks: list[StreamingChunk]) -> StreamResult:
    """The buffer-mode result of a whole stream (pure: shared by both twins)."""
    stats = None
    usage: UsageMetadata | None = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = add_usage(usage, chunk.usage)
        if chunk.stats is not None:
            stats = chunk.stats
    return StreamResult(
        text="".join(chunk.text for chunk in chunks),
        chunks=chunks,
        stats=_stats(stats),
        usage=usage,
    )
