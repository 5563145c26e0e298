"""The stall watchdog: :func:`guard_stream` bounds the waits on an async source."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any, TypeVar

from langchain_fastpipe.errors import (
    ConfigError,
    FirstChunkTimeoutError,
    InterChunkTimeoutError,
    StreamStallError,
)
from langchain_fastpipe.streaming._stats import Clock

__all__ = ["aclose", "check_timeouts", "guard_stream"]

T = TypeVar("T")


def check_timeouts(first_chunk_timeout: float | None, inter_chunk_timeout: float | None) -> None:
    """Reject watchdog limits that are not None or a positive number of seconds.

    Raises:
        ConfigError: A limit is zero, negative or NaN.
    """
    for name, value in (
        ("first_chunk_timeout", first_chunk_timeout),
        ("inter_chunk_timeout", inter_chunk_timeout),
    ):
        if value is not None and not value > 0:
            msg = f"{name} must be a positive number of seconds or None, got {value!r}"
            raise ConfigError(msg)


async def aclose(iterator: Any) -> None:
    """Close an async iterator when it can be closed (async generators and friends)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


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
        read ahead). Iterating it raises :class:`~langchain_fastpipe.errors.FirstChunkTimeoutError`
        when no first item came within ``first_chunk_timeout`` and
        :class:`~langchain_fastpipe.errors.InterChunkTimeoutError` on a gap over
        ``inter_chunk_timeout``.

    Raises:
        ConfigError: A timeout that is not positive (raised at once, not when iterated).
    """
    check_timeouts(first_chunk_timeout, inter_chunk_timeout)
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
        await aclose(iterator)


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
