"""One attempt of a strategy: output checks, chunk aggregation, first-chunk task, deadline.

The async paths of :class:`~langchain_fastpipe.pipeline.RankedFallbacks` race an
attempt's first-chunk task against timers made with the injected ``sleep`` (first-chunk
timeouts, hedging) and read the rest of its stream under one :class:`_Deadline`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from langchain_core.messages import BaseMessage, BaseMessageChunk
from langchain_core.messages.utils import message_chunk_to_message
from pydantic import BaseModel, ValidationError

from langchain_fastpipe.errors import (
    FirstChunkTimeoutError,
    StrategyTimeoutError,
    StrategyValidationError,
    StreamStallError,
)

if TYPE_CHECKING:
    from langchain_fastpipe.pipeline._ranked import Strategy

#: A validator: a pydantic model the output must parse as, or a predicate on the output.
Validator = type[BaseModel] | Callable[[Any], bool]


def check_output(validator: Validator | None, output: Any) -> str | None:
    """Why ``output`` is not acceptable to ``validator``, or None when it is (pure).

    Args:
        validator: A pydantic model class, a predicate, or None.
        output: The strategy's whole output (messages are checked by their text).

    Returns:
        None when valid, otherwise a short reason.
    """
    if validator is None:
        return None
    if isinstance(validator, type) and issubclass(validator, BaseModel):
        if isinstance(output, validator):
            return None
        try:
            if isinstance(output, BaseMessage):
                validator.model_validate_json(output.text)
            elif isinstance(output, (str, bytes)):
                validator.model_validate_json(output)
            else:
                validator.model_validate(output)
        except ValidationError as exc:
            return f"output does not match {validator.__name__} ({exc.error_count()} errors)"
        return None
    try:
        accepted = cast("Callable[[Any], bool]", validator)(output)
    except Exception as exc:
        return f"validator raised {type(exc).__name__}: {exc}"
    name = getattr(validator, "__name__", type(validator).__name__)
    return None if accepted else f"validator {name} rejected the output"


def failure_reason(exc: BaseException) -> str:
    """The statistics label of a failed attempt's exception (pure)."""
    if isinstance(exc, FirstChunkTimeoutError):
        return "first_chunk_timeout"
    if isinstance(exc, (StrategyTimeoutError, StreamStallError)):
        return "timeout"
    if isinstance(exc, StrategyValidationError):
        return "invalid"
    return "error"


def _add(acc: Any, chunk: Any) -> Any:
    """Aggregate stream chunks: ``acc + chunk`` when they add, else the latest chunk."""
    if acc is None:
        return chunk
    try:
        return acc + chunk
    except TypeError:
        return chunk


def _finish(output: Any) -> Any:
    """Turn an aggregated message chunk into the message ``invoke`` would return."""
    if isinstance(output, BaseMessageChunk):
        return message_chunk_to_message(output)
    return output


def _as_text(output: Any) -> str:
    if output is None:
        return ""
    if isinstance(output, BaseMessage):
        return output.text
    return output if isinstance(output, str) else str(output)


_EMPTY = object()


class _DeadlinePassedError(Exception):
    """Raised by :meth:`_Deadline.run` (never a TimeoutError a stream itself raised)."""


class _Deadline:
    """One timer for the rest of an attempt (asyncio.timeout-like, with the injected sleep).

    Armed once after the first chunk; while the consumer awaits the next chunk it is the
    awaiting task that the timer cancels, so chunks are read in the consumer's own task
    with no task or timer per chunk. A timer firing between chunks only marks the
    deadline as passed; the next read then fails at once.
    """

    def __init__(self, sleep: Callable[[float], Awaitable[Any]], seconds: float) -> None:
        self.expired = False
        self._waiter: asyncio.Task[Any] | None = None
        self._fired = False
        self._timer = asyncio.ensure_future(sleep(max(0.0, seconds)))
        self._timer.add_done_callback(self._expire)

    def _expire(self, timer: asyncio.Future[Any]) -> None:
        if timer.cancelled():
            return
        timer.exception()  # retrieved: a failing sleep still ends the wait
        self.expired = True
        if self._waiter is not None and not self._waiter.done():
            self._fired = True
            self._waiter.cancel()

    def _ours(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether a pending cancellation of ``task`` came from this timer (and undo it)."""
        if not self._fired:
            return False
        self._fired = False
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        return uncancel is None or uncancel() == 0

    async def run(self, read: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``read()``; raise _DeadlinePassedError when the deadline passes first."""
        if self.expired:
            raise _DeadlinePassedError
        task = asyncio.current_task()
        self._waiter = task
        try:
            result = await read()
        except asyncio.CancelledError:
            if self._ours(task):
                raise _DeadlinePassedError from None
            raise
        finally:
            self._waiter = None
        if self._ours(task):  # the read swallowed our cancellation
            raise _DeadlinePassedError
        return result

    def cancel(self) -> None:
        """Stop the timer (the attempt ended)."""
        self._timer.cancel()


class _Attempt:
    """One running async attempt: its stream, timing and first-chunk task."""

    def __init__(
        self, strategy: Strategy, stream: AsyncIterator[Any], started: float, fc_deadline: float
    ) -> None:
        self.strategy = strategy
        self.stream = stream
        self.started = started
        self.first_deadline = fc_deadline
        self.hedge = False
        self.deadline: _Deadline | None = None
        self.first_task: asyncio.Task[Any] = asyncio.ensure_future(self.next_chunk())

    async def next_chunk(self) -> Any:
        """The stream's next chunk, or ``_EMPTY`` at its end."""
        try:
            return await self.stream.__anext__()
        except StopAsyncIteration:
            return _EMPTY

    async def close(self) -> None:
        """Cancel the pending first chunk and close the stream (frees its connection)."""
        if self.deadline is not None:
            self.deadline.cancel()
        if not self.first_task.done():
            self.first_task.cancel()
            await asyncio.wait([self.first_task])
        if not self.first_task.cancelled():
            self.first_task.exception()  # retrieved: no "never retrieved" warning
        aclose = getattr(self.stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
