"""The tenacity side of the retry path, imported when a call first needs it.

tenacity is not imported with the package (it pulls in tornado where that is
installed): :class:`~._pool.PooledClient` imports this module at the first call that
may retry. The strategies are tenacity's own: ``stop_after_attempt``,
``retry_if_exception`` over :func:`~._attempt._should_retry`, and :class:`_BackoffWait`,
the server's Retry-After (capped) when the failed attempt carried one, else
``wait_random_exponential`` (full jitter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity
from tenacity.wait import wait_base

from langchain_fastpipe.transport._attempt import _AttemptError, _should_retry
from langchain_fastpipe.transport._config import RetryPolicy

__all__ = ["RetryStrategy"]

T = TypeVar("T")


class _Jitter(tenacity.wait_random_exponential):
    """``wait_random_exponential`` drawing its jitter from an injected ``rng``."""

    def __init__(self, policy: RetryPolicy, rng: Callable[[], float]) -> None:
        super().__init__(multiplier=policy.initial_backoff, max=policy.max_backoff)
        self._rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """``uniform(0, min(max_backoff, initial_backoff * 2**n))`` before retry ``n + 1``."""
        high = tenacity.wait_exponential.__call__(self, retry_state)
        return float(self.min + (high - self.min) * self._rng())


class _BackoffWait(wait_base):
    """Tenacity wait: the server's Retry-After (capped) if the failed attempt carried one.

    Otherwise full-jitter exponential backoff (tenacity's ``wait_random_exponential``
    with ``multiplier=initial_backoff``, ``max=max_backoff``, jitter drawn with ``rng``).
    The same object serves :class:`tenacity.Retrying` and :class:`tenacity.AsyncRetrying`.
    """

    def __init__(self, policy: RetryPolicy, rng: Callable[[], float]) -> None:
        """Wait according to ``policy``, with jitter from ``rng`` (floats in ``[0, 1)``)."""
        self._cap = policy.retry_after_cap
        self._jitter = _Jitter(policy, rng)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        """Seconds to sleep before the next attempt of ``retry_state``."""
        outcome = retry_state.outcome
        failed = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(failed, _AttemptError) and failed.retry_after is not None:
            return min(failed.retry_after, self._cap)
        return self._jitter(retry_state)


class RetryStrategy:
    """One pool's tenacity strategies; builds a retrying object per call.

    A call is attempted at most ``1 + max_retries`` times; :class:`_BackoffWait` decides
    each wait; ``count`` is called before each sleep (the stats' retry counter).
    """

    __slots__ = ("_asleep", "_kwargs", "_sleep")

    def __init__(
        self,
        policy: RetryPolicy,
        rng: Callable[[], float],
        *,
        sleep: Callable[[float], None],
        asleep: Callable[[float], Awaitable[None]],
        count: Callable[[], None],
    ) -> None:
        """Strategies of ``policy``; ``sleep``/``asleep`` wait between attempts."""
        self._sleep = sleep
        self._asleep = asleep

        def before_sleep(_: tenacity.RetryCallState) -> None:
            count()

        self._kwargs: dict[str, Any] = {
            "stop": tenacity.stop_after_attempt(1 + policy.max_retries),
            "wait": _BackoffWait(policy, rng),
            "retry": tenacity.retry_if_exception(_should_retry),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(self) -> tenacity.Retrying:
        """A new sync retrying object (tenacity keeps per-run state on it)."""
        return tenacity.Retrying(sleep=self._sleep, **self._kwargs)

    def aretrying(self) -> tenacity.AsyncRetrying:
        """A new async retrying object."""
        return tenacity.AsyncRetrying(sleep=self._asleep, **self._kwargs)

    @staticmethod
    def areplay_first(
        first: _AttemptError, attempt: Callable[..., Awaitable[T]]
    ) -> Callable[..., Awaitable[T]]:
        """``attempt``, except that its first call raises ``first`` (already seen) without I/O.

        Lets a tenacity loop start after a first attempt that ran outside it (the pool's
        one shortcut): tenacity sees that failure as its attempt 1, then waits and calls
        ``attempt`` for attempts 2, 3...
        """
        pending: list[_AttemptError] = [first]

        async def run(*args: Any, **kwargs: Any) -> T:
            if pending:
                raise pending.pop()
            return await attempt(*args, **kwargs)

        return run

    @staticmethod
    def replay_first(first: _AttemptError, attempt: Callable[..., T]) -> Callable[..., T]:
        """Sync :meth:`areplay_first`."""
        pending: list[_AttemptError] = [first]

        def run(*args: Any, **kwargs: Any) -> T:
            if pending:
                raise pending.pop()
            return attempt(*args, **kwargs)

        return run
