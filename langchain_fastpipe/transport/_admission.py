"""The admission gate: at most ``admission_limit`` requests of a pool inside the client.

Requests beyond the limit wait here, FIFO, never in httpcore's (or aiohttp's) queue: an
``asyncio.Semaphore`` per event loop for async calls, one ``threading.BoundedSemaphore``
shared by every thread for sync calls, each up to the pool timeout. A call that gets a
slot holds it in :attr:`~._attempt._Call.release` (a stream until it is closed).
"""

from __future__ import annotations

import asyncio
import threading
import time

from langchain_fastpipe.errors import EndpointTimeoutError
from langchain_fastpipe.transport._attempt import AttemptSteps, _AttemptError, _Call

__all__ = ["AdmissionGates"]


class AdmissionGates:
    """The admission gates of one pool: one per event loop, one for sync calls."""

    __slots__ = ("_async_size", "_gates", "_lock", "_steps", "_sync_gate", "_sync_size")

    def __init__(self, steps: AttemptSteps) -> None:
        """Gates sized from ``steps.config`` (see ``EndpointConfig.admission_limit``).

        Async calls on the aiohttp engine (HTTP/1.1 only) are admitted up to
        ``limits.max_connections``.
        """
        config = steps.config
        self._steps = steps
        self._sync_size = config.admission_limit
        self._async_size = (
            config.limits.max_connections
            if config.async_engine == "aiohttp"
            else config.admission_limit
        )
        self._sync_gate = threading.BoundedSemaphore(self._sync_size)
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._lock = threading.Lock()

    def _agate(self) -> asyncio.Semaphore:
        """The gate of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(loop, asyncio.Semaphore(self._async_size))
        return gate

    def drop_dead_loops(self) -> None:
        """Forget the gates of closed event loops."""
        with self._lock:
            for loop in [loop for loop in self._gates if loop.is_closed()]:
                del self._gates[loop]

    def _timed_out(
        self, call: _Call, limit: float | None, size: int, waited: float
    ) -> _AttemptError:
        """The failure of a call that found no free slot within the pool timeout.

        Not retried (it already waited the whole pool timeout) and not a breaker failure
        (the endpoint is fine; this process is saturated).
        """
        steps = self._steps
        steps.stats.pool_wait.record(waited)
        error = EndpointTimeoutError(
            f"pool timeout talking to {steps.endpoint}: no free slot within {limit} s "
            f"({size} requests in flight, the pool's admission limit)",
            endpoint=steps.endpoint,
        )
        return _AttemptError(error, retryable=False, breaker_failure=False)

    async def aadmit(self, call: _Call) -> None:
        """Wait for a free slot in the running loop's gate; ``call`` then holds it.

        Raises:
            _AttemptError: No slot within the pool timeout (EndpointTimeoutError).
        """
        gate = self._agate()
        if gate.locked():
            limit = self._steps.pool_timeout(call)
            started = time.perf_counter()
            try:
                await asyncio.wait_for(gate.acquire(), limit)
            except asyncio.TimeoutError:
                waited = time.perf_counter() - started
                raise self._timed_out(call, limit, self._async_size, waited) from None
        else:
            await gate.acquire()
        call.release = gate.release

    def admit(self, call: _Call) -> None:
        """Sync :meth:`aadmit` (one gate shared by every thread)."""
        gate = self._sync_gate
        if not gate.acquire(blocking=False):
            limit = self._steps.pool_timeout(call)
            started = time.perf_counter()
            if not gate.acquire(timeout=limit):
                waited = time.perf_counter() - started
                raise self._timed_out(call, limit, self._sync_size, waited) from None
        call.release = gate.release
