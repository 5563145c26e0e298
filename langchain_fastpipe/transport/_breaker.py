"""The per-endpoint circuit breaker: closed -> open -> half-open -> closed.

* **closed**: calls pass; ``failure_threshold`` consecutive failures open it.
* **open**: calls fail fast with :class:`~langchain_fastpipe.errors.CircuitOpenError` until
  ``recovery_time`` has passed, then it is half-open.
* **half-open**: up to ``half_open_max_calls`` probes pass at once; a probe's success closes
  it, a probe's failure opens it again (for another ``recovery_time``).

Failures are what the caller reports (connect errors, timeouts, 5xx); 4xx replies are
successes for the breaker: the endpoint is alive. Time comes from an injectable clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal

from langchain_fastpipe.errors import CircuitOpenError
from langchain_fastpipe.transport._config import BreakerPolicy

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


class CircuitBreaker:
    """A thread-safe circuit breaker for one endpoint.

    Use :meth:`before_call` before each attempt (it raises when the circuit is open and
    returns whether the call is a half-open probe), then exactly one of :meth:`on_success`,
    :meth:`on_failure` or :meth:`on_ignored` with that flag.
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a closed breaker.

        Args:
            policy: Thresholds and recovery time.
            endpoint: The redacted endpoint, named in CircuitOpenError.
            clock: Monotonic clock in seconds (inject a fake one in tests).
        """
        self.policy = policy
        self.endpoint = endpoint
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker past its recovery time reads as half-open."""
        with self._lock:
            self._advance()
            return self._state

    def _is_closed(self) -> bool:
        """Whether the breaker is closed (a plain read, no lock)."""
        return self._state == CLOSED

    def _advance(self) -> None:
        """Move open -> half-open once the recovery time has passed (lock held)."""
        if self._state == OPEN and self._clock() >= self._opened_at + self.policy.recovery_time:
            self._state = HALF_OPEN
            self._probes = 0

    def before_call(self) -> bool:
        """Admit a call or fail fast.

        Returns:
            True when the call is a half-open probe (pass it back to the ``on_*`` method).

        Raises:
            CircuitOpenError: The breaker is open, or half-open with every probe slot taken.
        """
        if self._is_closed():  # the hot path: one attribute read, no lock
            return False
        with self._lock:
            if self._state == CLOSED:
                return False
            self._advance()
            now = self._clock()
            if self._state == OPEN:
                retry_at = self._opened_at + self.policy.recovery_time
                raise CircuitOpenError(
                    endpoint=self.endpoint, retry_at=retry_at, retry_in=max(0.0, retry_at - now)
                )
            if self._probes >= self.policy.half_open_max_calls:
                raise CircuitOpenError(endpoint=self.endpoint, retry_at=now, retry_in=0.0)
            self._probes += 1
            return True

    def on_success(self, probe: bool = False) -> None:
        """Report a call that reached a live endpoint (2xx-4xx): closes a half-open breaker."""
        with self._lock:
            if probe:
                self._probes = max(0, self._probes - 1)
            if self._state != CLOSED and not probe:
                return  # a call admitted before the breaker opened proves little
            self._failures = 0
            self._state = CLOSED

    def on_failure(self, probe: bool = False) -> None:
        """Report a connect error, timeout or 5xx: may open the breaker."""
        with self._lock:
            if probe:
                self._probes = max(0, self._probes - 1)
            if self._state == HALF_OPEN:
                if probe:
                    self._open()
                return
            if self._state == OPEN:
                return
            self._failures += 1
            if self._failures >= self.policy.failure_threshold:
                self._open()

    def on_ignored(self, probe: bool = False) -> None:
        """Report a call that proved nothing (cancelled, local error): frees its probe slot."""
        if probe:
            with self._lock:
                self._probes = max(0, self._probes - 1)

    def _open(self) -> None:
        """Open the breaker now (lock held)."""
        self._state = OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self._probes = 0
        self.times_opened += 1

    def snapshot(self) -> dict[str, Any]:
        """State, consecutive failures and how often it opened, JSON-serializable."""
        with self._lock:
            self._advance()
            return {
                "state": self._state,
                "consecutive_failures": self._failures,
                "times_opened": self.times_opened,
            }
