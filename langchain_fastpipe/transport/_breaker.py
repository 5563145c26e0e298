"""Circuit breakers per (endpoint, model): small state machines over an injected clock.

Each pool owns a :class:`BreakerRegistry`: one endpoint-wide :class:`CircuitBreaker`
(key ``None``) and one per model, created on first use. A call asks
:meth:`BreakerRegistry.admit` once, before its first attempt (retries and replays are not
asked again), and reports one :class:`Verdict` when it ends (:meth:`Admission.report`):
one outcome for the endpoint-wide breaker and one for the model's.

* The endpoint-wide breaker counts *connect* failures (refused, connect timeout: the
  server is down); while it is open it refuses every model of the endpoint. A reply of
  any status proves the server up: a success for it.
* A model's breaker counts calls that failed because the model (or its server) is
  unhealthy: a final 5xx, a read/write timeout, a connection broken before the reply.
* 4xx replies are successes (the model answered); cancellations, pool-admission timeouts
  and local errors are ignored. A call that names no model reports both outcomes to the
  endpoint-wide breaker (a failure if either is one).

Each breaker goes closed -> open -> half-open -> closed:

* **closed**: calls pass; their outcomes are counted in a sliding window of
  ``policy.window`` seconds (ten slices of a tenth each, so memory stays constant). Once at
  least ``min_calls`` calls ended in the window and at least ``failure_rate`` of them
  failed, it opens.
* **open**: calls fail fast with :class:`~langchain_fastpipe.errors.CircuitOpenError` for
  the cooldown: ``policy.cooldown`` the first time, ``cooldown_factor`` times longer each
  time it opens again while the failures go on (its probe failed, or it opens again within
  one window of closing), at most ``max_cooldown``. The error's ``__cause__`` is the last
  real error the breaker saw.
* **half-open**: as soon as the cooldown ends, up to ``half_open_max_calls`` probe calls
  pass; a probe's success closes the breaker (its window starts empty), a probe's failure
  opens it again. Outcomes of calls admitted before it opened change nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe.errors import CircuitOpenError
from langchain_fastpipe.transport._config import BreakerPolicy

__all__ = [
    "IGNORED",
    "SUCCESS",
    "Admission",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "Outcome",
    "Verdict",
]

BreakerState = Literal["closed", "open", "half_open"]
Outcome = Literal["success", "failure", "ignored"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

_SLICES: Final = 10  # the window is counted in this many time slices
_MAX_MODELS: Final = 256  # idle closed model breakers are forgotten beyond this many


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the end of one call tells the breakers.

    Attributes:
        endpoint: The outcome for the endpoint-wide breaker (is the server reachable?).
        model: The outcome for the called model's breaker (is the model healthy?).
    """

    endpoint: Outcome
    model: Outcome


#: The call got its reply (or a 4xx): both breakers count a success.
SUCCESS: Final = Verdict("success", "success")
#: The call proved nothing (cancelled, pool-admission timeout, local error).
IGNORED: Final = Verdict("ignored", "ignored")


def _detached(error: BaseException) -> BaseException:
    """A copy of ``error`` without traceback, cause or context, to keep as "last error".

    The breaker outlives the call: keeping the raised error itself would keep every frame
    of its traceback (and their responses and buffers) alive. The copy has the same type,
    message and attributes (status code, endpoint, body).
    """
    try:
        copy = BaseException.__new__(type(error), *error.args)
        copy.__dict__.update(error.__dict__)
    except Exception:  # an exotic exception type: keep the original, traceback dropped
        copy = error.with_traceback(None)
    return copy


class _Window:
    """Call outcomes of the last ``span`` seconds, counted in ``_SLICES`` time slices.

    The current slice and the nine before it are counted, so an outcome leaves the window
    between 0.9 and 1.0 ``span`` after it was added. Not thread-safe (the breaker locks).
    """

    __slots__ = ("_calls", "_failures", "_index", "_per_second")

    def __init__(self, span: float) -> None:
        self._per_second = _SLICES / span  # slices per second
        self._index = [-1] * _SLICES  # the slice number each ring entry holds
        self._calls = [0] * _SLICES
        self._failures = [0] * _SLICES

    def add(self, now: float, failed: bool) -> None:
        """Count one call that ended at ``now``."""
        number = int(now * self._per_second)
        i = number % _SLICES
        if self._index[i] == number:
            self._calls[i] += 1
        else:
            self._index[i] = number
            self._calls[i] = 1
            self._failures[i] = 0
        if failed:
            self._failures[i] += 1

    def counts(self, now: float) -> tuple[int, int]:
        """``(calls, failures)`` that ended within the window before ``now``."""
        number = int(now * self._per_second)
        calls = failures = 0
        for i in range(_SLICES):
            if number - _SLICES < self._index[i] <= number:
                calls += self._calls[i]
                failures += self._failures[i]
        return calls, failures

    def clear(self) -> None:
        """Forget every outcome."""
        self._index = [-1] * _SLICES


class CircuitBreaker:
    """A thread-safe circuit breaker for one endpoint (``model=None``) or one model.

    Call :meth:`before_call` once per call (it raises when the breaker refuses, and
    returns whether the call is a half-open probe), then :meth:`record` once with the
    call's outcome and that flag.

    Attributes:
        policy: The thresholds and cooldowns.
        endpoint: The redacted endpoint, named in CircuitOpenError.
        model: The model it guards; None for the endpoint-wide breaker.
        times_opened: How often it opened.
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        endpoint: str,
        model: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a closed breaker.

        Args:
            policy: Window, thresholds and cooldowns.
            endpoint: The redacted endpoint, named in CircuitOpenError.
            model: The model it guards; None for the endpoint-wide breaker.
            clock: Monotonic clock in seconds (inject a fake one in tests).
        """
        self.policy = policy
        self.endpoint = endpoint
        self.model = model
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = CLOSED
        self._window = _Window(policy.window)
        self._opened_at = 0.0
        self._cooldown = 0.0  # of the current (or last) open period
        self._closed_at: float | None = None  # when a probe last closed it
        self._probes = 0
        self._last_error: BaseException | None = None
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown is over reads as half-open."""
        with self._lock:
            return self._advance(self._clock())

    @property
    def last_error(self) -> BaseException | None:
        """A copy (no traceback) of the last failure recorded, or None."""
        return self._last_error

    def _advance(self, now: float) -> BreakerState:
        """Move open -> half-open once the cooldown is over (lock held); the state."""
        if self._state == OPEN and now >= self._opened_at + self._cooldown:
            self._state = HALF_OPEN
            self._probes = 0
        return self._state

    def before_call(self, model: str | None = None) -> bool:
        """Admit a call or fail fast.

        Args:
            model: The model of the call, named in the error (default: :attr:`model`).

        Returns:
            True when the call is a half-open probe (pass it back to :meth:`record`).

        Raises:
            CircuitOpenError: Open, or half-open with every probe slot taken; its
                ``__cause__`` is the last failure recorded.
        """
        if self._state == CLOSED:  # the hot path: one attribute read, no lock
            return False
        with self._lock:
            now = self._clock()
            state = self._advance(now)
            if state == CLOSED:
                return False
            if state == HALF_OPEN and self._probes < self.policy.half_open_max_calls:
                self._probes += 1
                return True
            probing = state == HALF_OPEN
            retry_at = now if probing else self._opened_at + self._cooldown
            error = CircuitOpenError(
                endpoint=self.endpoint,
                model=model if model is not None else self.model,
                scope="model" if self.model is not None else "endpoint",
                retry_at=retry_at,
                retry_in=max(0.0, retry_at - now),
                probing=probing,
            )
            error.__cause__ = self._last_error
            raise error

    def record(
        self, outcome: Outcome, probe: bool = False, error: BaseException | None = None
    ) -> None:
        """Report how a call admitted by :meth:`before_call` ended.

        Args:
            outcome: ``"success"``, ``"failure"`` or ``"ignored"`` (proves nothing).
            probe: The flag :meth:`before_call` returned.
            error: The failure's typed error (kept, without traceback, as the cause of
                later CircuitOpenErrors).
        """
        self._record(outcome, probe, error, self._clock())

    def _record(
        self, outcome: Outcome, probe: bool, error: BaseException | None, now: float
    ) -> None:
        """:meth:`record` at time ``now`` (read once for several breakers)."""
        if outcome == "success" and not probe:  # the hot path
            with self._lock:
                if self._state == CLOSED:
                    self._window.add(now, False)
                # else: admitted before the breaker opened, it proves little
            return
        if outcome == "ignored":
            if probe:
                with self._lock:
                    self._probes = max(0, self._probes - 1)
            return
        failed = outcome == "failure"
        with self._lock:
            if probe:
                self._probes = max(0, self._probes - 1)
            if failed and error is not None:
                self._last_error = _detached(error)
            state = self._advance(now)
            if state == CLOSED:
                self._window.add(now, failed)
                if failed:
                    self._open_if_over_threshold(now)
            elif probe and state == HALF_OPEN:
                if failed:
                    self._open(now, again=True)
                else:
                    self._close(now)
            # Any other call was admitted before the breaker opened: it proves little.

    def on_success(self, probe: bool = False) -> None:
        """Report a call that got its reply (or a 4xx)."""
        self.record("success", probe)

    def on_failure(self, probe: bool = False, error: BaseException | None = None) -> None:
        """Report a call that failed because the endpoint or model is unhealthy."""
        self.record("failure", probe, error)

    def on_ignored(self, probe: bool = False) -> None:
        """Report a call that proved nothing (cancelled, local error): frees its probe slot."""
        self.record("ignored", probe)

    def _open_if_over_threshold(self, now: float) -> None:
        """Open when the window holds enough calls and enough of them failed (lock held)."""
        calls, failures = self._window.counts(now)
        if calls >= self.policy.min_calls and failures >= self.policy.failure_rate * calls:
            recently_closed = self._closed_at is not None and (
                now - self._closed_at < self.policy.window
            )
            self._open(now, again=recently_closed)

    def _open(self, now: float, *, again: bool) -> None:
        """Open now; ``again``: the failures go on, so the cooldown grows (lock held)."""
        policy = self.policy
        if again and self.times_opened:
            self._cooldown = min(policy.max_cooldown, self._cooldown * policy.cooldown_factor)
        else:
            self._cooldown = policy.cooldown
        self._state = OPEN
        self._opened_at = now
        self._probes = 0
        self.times_opened += 1

    def _close(self, now: float) -> None:
        """Close after a successful probe: the window starts empty (lock held)."""
        self._state = CLOSED
        self._window.clear()
        self._closed_at = now
        self._probes = 0

    def snapshot(self, model: str = "*") -> Node:
        """State, window counts, cooldown and last error, JSON-serializable.

        Keys: ``state``; ``calls_in_window``, ``failures_in_window`` and
        ``failure_rate`` (None without calls); ``cooldown`` (seconds of the current open
        period, 0 when closed); ``retry_in`` (seconds until the next probe may go, 0 unless
        open); ``times_opened``; ``last_error`` (``"Type: message"`` or None, JSON only).
        A :class:`~langchain_fastpipe._metrics.Node` of the ``breaker_*`` families,
        labelled ``model`` (``"*"``: the endpoint-wide breaker; a model's breaker takes
        the key it sits under in ``models``).

        Args:
            model: The ``model`` label (the key under ``models`` overrides it).
        """
        node = Node(labels={"model": model}, key_label=None if model == "*" else "model")
        with self._lock:
            now = self._clock()
            state = self._advance(now)
            calls, failures = self._window.counts(now)
            last = self._last_error
            node.put(m.BREAKER_STATE, state)
            node.put(m.BREAKER_CALLS, calls)
            node.put(m.BREAKER_FAILURES, failures)
            node.put(m.BREAKER_RATE, failures / calls if calls else None)
            node.put(m.BREAKER_COOLDOWN, self._cooldown if state != CLOSED else 0.0)
            retry_in = max(0.0, self._opened_at + self._cooldown - now) if state == OPEN else 0.0
            node.put(m.BREAKER_RETRY_IN, retry_in)
            node.put(m.BREAKER_OPENED, self.times_opened)
            node["last_error"] = f"{type(last).__name__}: {last}" if last is not None else None
        return node

    def idle(self) -> bool:
        """Whether it is closed with an empty window (nothing is lost by forgetting it)."""
        with self._lock:
            return self._state == CLOSED and self._window.counts(self._clock())[0] == 0


class Admission:
    """One call admitted by a :class:`BreakerRegistry`: report how it ended, once.

    Attributes:
        model: The model of the call (None: the endpoint-wide breaker only).
    """

    __slots__ = ("_endpoint", "_endpoint_probe", "_model", "_model_probe", "model")

    def __init__(
        self,
        endpoint: CircuitBreaker,
        endpoint_probe: bool,
        model: CircuitBreaker | None,
        model_probe: bool,
    ) -> None:
        """Hold the breakers that admitted the call and their probe flags."""
        self._endpoint: CircuitBreaker | None = endpoint
        self._endpoint_probe = endpoint_probe
        self._model = model
        self._model_probe = model_probe
        self.model = model.model if model is not None else None

    def report(self, verdict: Verdict, error: BaseException | None = None) -> None:
        """Tell the breakers how the call ended (only the first report counts).

        Args:
            verdict: The outcome for the endpoint-wide breaker and for the model's.
            error: The call's typed error, when it failed.
        """
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is None:
            return
        now = endpoint._clock()
        model = self._model
        if model is None:
            failed = "failure" in (verdict.endpoint, verdict.model)
            outcome: Outcome = "failure" if failed else verdict.endpoint
            endpoint._record(outcome, self._endpoint_probe, error, now)
            return
        endpoint._record(verdict.endpoint, self._endpoint_probe, error, now)
        model._record(verdict.model, self._model_probe, error, now)


class BreakerRegistry:
    """The breakers of one endpoint: the endpoint-wide one and one per model.

    Attributes:
        policy: The policy of every breaker.
        endpoint: The redacted endpoint.
        endpoint_breaker: The endpoint-wide breaker (connect failures; refuses every model).
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        endpoint: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the registry with a closed endpoint-wide breaker.

        Args:
            policy: The policy of every breaker.
            endpoint: The redacted endpoint, named in CircuitOpenError.
            clock: Monotonic clock in seconds shared by every breaker (fake in tests).
        """
        self.policy = policy
        self.endpoint = endpoint
        self._clock = clock
        self._lock = threading.Lock()
        self.endpoint_breaker = CircuitBreaker(policy, endpoint=endpoint, clock=clock)
        self._models: dict[str, CircuitBreaker] = {}

    def get(self, model: str | None) -> CircuitBreaker:
        """The breaker of ``model`` (created on first use); None: the endpoint-wide one."""
        if model is None:
            return self.endpoint_breaker
        breaker = self._models.get(model)
        if breaker is None:
            with self._lock:
                breaker = self._models.get(model)
                if breaker is None:
                    if len(self._models) >= _MAX_MODELS:
                        self._forget_idle()
                    breaker = CircuitBreaker(
                        self.policy, endpoint=self.endpoint, model=model, clock=self._clock
                    )
                    self._models[model] = breaker
        return breaker

    def _forget_idle(self) -> None:
        """Drop model breakers that are closed with an empty window (lock held)."""
        for name in [name for name, b in self._models.items() if b.idle()]:
            del self._models[name]

    def reset(self) -> None:
        """Forget every outcome: all breakers closed with empty windows (after a fix)."""
        with self._lock:
            self._models.clear()
            self.endpoint_breaker = CircuitBreaker(
                self.policy, endpoint=self.endpoint, clock=self._clock
            )

    def models(self) -> dict[str, CircuitBreaker]:
        """The model breakers created so far, by model name."""
        with self._lock:
            return dict(self._models)

    def admit(self, model: str | None) -> Admission:
        """Ask "may I call?" once for a call of ``model``.

        The endpoint-wide breaker is asked first, then the model's.

        Args:
            model: The model of the call; None for a call about the endpoint itself.

        Returns:
            The admission; report the call's :class:`Verdict` to it when the call ends.

        Raises:
            CircuitOpenError: The endpoint-wide breaker or the model's is open.
        """
        wide = self.endpoint_breaker
        wide_probe = wide.before_call(model)
        if model is None:
            return Admission(wide, wide_probe, None, False)
        breaker = self.get(model)
        try:
            probe = breaker.before_call(model)
        except CircuitOpenError:
            wide.record("ignored", wide_probe)
            raise
        return Admission(wide, wide_probe, breaker, probe)

    def snapshot(self) -> Node:
        """The endpoint-wide breaker's :meth:`CircuitBreaker.snapshot`, plus ``models``.

        ``models`` maps each model name to its breaker's snapshot.
        """
        node = self.endpoint_breaker.snapshot()
        models = node.child("models")
        for name, breaker in sorted(self.models().items()):
            models[name] = breaker.snapshot(name)
        return node
