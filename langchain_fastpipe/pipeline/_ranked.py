"""RankedFallbacks: a drop-in for ``runnable.with_fallbacks(...)`` that learns.

Each request asks the ranking policy for an order (see
:mod:`langchain_fastpipe.pipeline._policy`), tries the strategies in that order and
records every attempt's outcome in a :class:`~langchain_fastpipe.pipeline._store.StatsStore`.
An attempt fails on a handled exception, a rejected output (validator), no first chunk
within ``first_chunk_timeout`` or no end within ``total_timeout``.

Async paths (``ainvoke``/``astream``) run every attempt as a stream on the caller's event
loop (no thread pool): the first chunk is awaited as a task racing a timer made with the
injected ``sleep``, which gives first-chunk timeouts and hedging (start the next strategy
when the leader is slow, keep the first to answer, cancel the other). Sync paths
(``invoke``/``stream``) use each runnable's own sync path, so they work inside a running
event loop (Jupyter); they fall back on exceptions and validation, and enforce
``total_timeout`` between chunks only (a blocking call cannot be pre-empted without a thread).

A fallback happens only before the first chunk reaches the caller of ``astream``/``stream``,
unless ``continuation_key`` is set: then a strategy failing mid-stream hands the partial
answer, under that key of the input dict, to the next strategy, whose chunks continue the
stream.

Like ``with_fallbacks``, a chat model's methods that return a runnable (``bind_tools``,
``with_structured_output``, ...) are applied to every strategy: the result is a new
``RankedFallbacks`` over the same names that shares the store, policy and counters, so it
can be the model of ``langchain.agents.create_agent`` (which calls ``bind_tools`` on every
step) and what one learns, the other knows.

One attempt's machinery (output checks, first-chunk task, deadline) lives in
:mod:`~langchain_fastpipe.pipeline._attempts`, the in-process counters in
:mod:`~langchain_fastpipe.pipeline._counters` and the forwarding of chat-model methods in
:mod:`~langchain_fastpipe.pipeline._forwarding`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, cast

from langchain_core.callbacks.manager import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    patch_config,
)
from langchain_core.runnables.utils import Input, Output
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from typing_extensions import override

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.errors import (
    AllStrategiesFailedError,
    ConfigError,
    FirstChunkTimeoutError,
    StrategyTimeoutError,
    StrategyValidationError,
    StreamStallError,
)
from langchain_fastpipe.pipeline._attempts import (
    _EMPTY,
    Validator,
    _add,
    _as_text,
    _Attempt,
    _Deadline,
    _DeadlinePassedError,
    _finish,
    check_output,
    failure_reason,
)
from langchain_fastpipe.pipeline._counters import _StrategyCounters
from langchain_fastpipe.pipeline._forwarding import apply_to_strategies
from langchain_fastpipe.pipeline._policy import (
    FixedOrderPolicy,
    Ranking,
    RankingPolicy,
    RankingState,
    ThompsonPolicy,
)
from langchain_fastpipe.pipeline._store import MemoryStore, Outcome, StatsStore, StrategyStats

__all__ = [
    "RankedFallbacks",
    "Strategy",
    "Validator",
    "check_output",
    "failure_reason",
]


class Strategy(BaseModel):
    """A named runnable with an optional validator of its output.

    Attributes:
        name: Unique name: the child run's name and the key of its statistics.
        runnable: What to run.
        validator: A pydantic model the output must parse as, or a predicate returning
            True for an acceptable output; None accepts anything.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    runnable: Runnable[Any, Any]
    validator: Any = None


class RankedFallbacks(RunnableSerializable[Input, Output]):
    """Try strategies in the order learned from their success rate and latency.

    A drop-in for ``runnable.with_fallbacks(fallbacks, exceptions_to_handle=...)``::

        ranked = RankedFallbacks(runnable=a, fallbacks=[b, c], seed=0)
        ranked = RankedFallbacks(strategies=[Strategy(name="a", runnable=a, validator=Answer)])
        with_tools = ranked.bind_tools([get_weather])  # on a, b and c; same rankings

    A method the candidates have that returns a runnable (``bind_tools``,
    ``with_structured_output``, ...) is applied to every strategy and gives a new
    ``RankedFallbacks`` sharing this one's store, policy and counters (see
    :meth:`__getattr__`), so it can be the model of ``create_agent``. Other attributes of
    the candidates raise AttributeError: read them from :attr:`runnables`.

    Every attempt is a child run named after its strategy and tagged ``attempt:<name>``.
    Keyword arguments of ``invoke``/``stream``/``ainvoke``/``astream`` go to each
    strategy's runnable, as ``with_fallbacks`` passes them.

    Attributes:
        strategies: The candidates (built from ``runnable`` + ``fallbacks`` when given so).
        exceptions_to_handle: Exceptions that trigger a fallback; others propagate.
            Validation failures and timeouts always trigger one.
        policy: The ranking policy; default ``ThompsonPolicy(seed=seed)``.
        store: Where statistics live; default a fresh ``MemoryStore``.
        optimized: False gives the plain behaviour: configured order, no hedging.
        seed: Seed of the default policy.
        first_chunk_timeout: Seconds to wait for an attempt's first chunk (async paths).
        total_timeout: Seconds an attempt may take in all.
        hedge: Start the next strategy when the leader has no first chunk after
            ``hedge_delay`` (async paths).
        hedge_delay: Fixed hedge delay; None uses the leader's learned p95 time to
            first chunk (no hedge until it has ``hedge_min_samples`` samples).
        hedge_min_samples: Samples needed before the learned delay is trusted.
        hedge_quantile: Which learned time-to-first-chunk quantile is the hedge delay
            (default p95; lower it when the slow tail is more than 5% of requests).
        continuation_key: When set, a strategy failing mid-stream hands the partial answer
            to the next one under this key of the (dict) input.
        clock: Monotonic clock (seconds).
        sleep: Async sleep used for first-chunk timeouts and hedge timers.
    """

    strategies: list[Strategy]
    exceptions_to_handle: tuple[type[BaseException], ...] = (Exception,)
    policy: Any = None
    store: Any = None
    optimized: bool = True
    seed: int | None = None
    first_chunk_timeout: float | None = None
    total_timeout: float | None = None
    hedge: bool = False
    hedge_delay: float | None = None
    hedge_min_samples: int = 10
    hedge_quantile: float = 0.95
    continuation_key: str | None = None
    clock: Callable[[], float] = Field(default=time.monotonic, exclude=True)
    sleep: Callable[[float], Awaitable[Any]] = Field(default=asyncio.sleep, exclude=True)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _counters: dict[str, _StrategyCounters] = PrivateAttr(default_factory=dict)
    _last_tried: dict[str, float] = PrivateAttr(default_factory=dict)
    _totals: dict[str, int] = PrivateAttr(default_factory=dict)
    # Guards the counters above: threads (sync paths) and several loops update them.
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        """Create from ``strategies``, or from ``runnable`` + ``fallbacks`` like with_fallbacks.

        Args:
            **kwargs: The fields above; or ``runnable``, ``fallbacks`` and optional
                ``names`` and ``validators`` (one per runnable) instead of ``strategies``.

        Raises:
            ConfigError: No strategy, repeated names, or a non-positive timeout.
        """
        if "runnable" in kwargs:
            runnables = [kwargs.pop("runnable"), *kwargs.pop("fallbacks", [])]
            names = kwargs.pop("names", None) or _unique_names(runnables)
            validators = kwargs.pop("validators", None) or [None] * len(runnables)
            if len(names) != len(runnables) or len(validators) != len(runnables):
                msg = "names and validators must have one entry per runnable"
                raise ConfigError(msg)
            kwargs["strategies"] = [
                Strategy(name=n, runnable=r, validator=v)
                for n, r, v in zip(names, runnables, validators, strict=True)
            ]
        _check_fields(kwargs)
        super().__init__(**kwargs)

    def model_post_init(self, context: Any, /) -> None:
        """Fill in the default policy and store, register statistics."""
        names = [s.name for s in self.strategies]
        if self.policy is None:
            self.policy = ThompsonPolicy(seed=self.seed)
        if self.store is None:
            self.store = MemoryStore()
        self._counters = {n: _StrategyCounters() for n in names}
        self._register()

    def _register(self) -> None:
        """List this instance in the runtime's ``strategies`` statistics while it lives."""
        runtime().track_ranked(self, self._counters)

    # -- chat-model methods applied to every strategy ----------------------------------

    def __getattr__(self, name: str) -> Any:
        """Apply a method that returns a runnable (``bind_tools`` ...) to every strategy.

        Like ``RunnableWithFallbacks.__getattr__``: when every strategy's runnable has a
        method ``name`` annotated to return a Runnable, the attribute is a function that
        calls it on each of them (same arguments) and returns a new ``RankedFallbacks``
        over the results. The new instance keeps the strategy names, validators and
        settings, and shares the store, policy and in-process counters: the rankings and
        statistics carry over in both directions. Other attributes of the candidates
        (``model_name`` ...) are not forwarded; read them from :attr:`runnables`.

        Args:
            name: The attribute looked up (only called when normal lookup fails).

        Returns:
            The function applying the method to every strategy.

        Raises:
            AttributeError: ``name`` is not such a method of every strategy.
        """
        if name.startswith("_") or hasattr(type(self), name):
            return super().__getattr__(name)  # type: ignore[misc]  # pydantic: private attrs
        return apply_to_strategies(self, name)

    def _derive(self, method: str, runnables: Sequence[Any]) -> RankedFallbacks[Any, Any]:
        """A copy over ``runnables`` (one per strategy) sharing what this one learned."""
        for strategy, runnable in zip(self.strategies, runnables, strict=True):
            if not isinstance(runnable, Runnable):
                msg = (
                    f"{method}() of strategy {strategy.name!r} returned "
                    f"{type(runnable).__name__}, not a Runnable"
                )
                raise TypeError(msg)
        strategies = [
            s.model_copy(update={"runnable": r})
            for s, r in zip(self.strategies, runnables, strict=True)
        ]
        # A shallow copy: store, policy and the private counters, last-tried times and
        # lock are the same objects, so both instances rank from one shared record.
        derived = self.model_copy(update={"strategies": strategies})
        derived._register()
        return derived

    # -- the small pure-ish pieces -------------------------------------------------

    @property
    def runnables(self) -> list[Runnable[Any, Any]]:
        """The candidate runnables in configured order."""
        return [s.runnable for s in self.strategies]

    def _store(self) -> StatsStore:
        return cast("StatsStore", self.store)

    def _policy(self) -> RankingPolicy:
        return FixedOrderPolicy() if not self.optimized else cast("RankingPolicy", self.policy)

    def rank(self, stats: dict[str, StrategyStats]) -> Ranking:
        """The order the policy picks now for these statistics (counts skips and probes)."""
        with self._lock:
            last_tried = dict(self._last_tried)
        state = RankingState(
            names=[s.name for s in self.strategies],
            stats=stats,
            now=self.clock(),
            last_tried=last_tried,
        )
        ranking = self._policy().rank(state)
        with self._lock:
            self._totals["requests"] = self._totals.get("requests", 0) + 1
            if ranking.order:
                self._counters[ranking.order[0]].first += 1
            for name in ranking.skipped:
                if name not in ranking.probes:
                    self._counters[name].skipped += 1
            for name in ranking.probes:
                self._counters[name].probes += 1
        return ranking

    def _ordered(self, ranking: Ranking) -> deque[Strategy]:
        by_name = {s.name: s for s in self.strategies}
        return deque(by_name[n] for n in ranking.order)

    def _handles(self, exc: BaseException) -> bool:
        if isinstance(exc, (StrategyValidationError, StrategyTimeoutError, StreamStallError)):
            return True
        return isinstance(exc, self.exceptions_to_handle)

    def _child_config(
        self,
        config: RunnableConfig,
        run_manager: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun,
        name: str,
    ) -> RunnableConfig:
        return patch_config(
            config, callbacks=run_manager.get_child(tag=f"attempt:{name}"), run_name=name
        )

    def _outcome(self, name: str, outcome: Outcome) -> None:
        counters = self._counters[name]
        counters.latency.record(outcome.latency)
        if outcome.ttfc is not None:
            counters.ttfc.record(outcome.ttfc)
        with self._lock:
            if outcome.success:
                counters.successes += 1
            else:
                counters.failures[outcome.reason] = counters.failures.get(outcome.reason, 0) + 1

    def _begin(self, name: str) -> float:
        now = self.clock()
        with self._lock:
            self._last_tried[name] = now
            self._counters[name].attempts += 1
        return now

    def _with_partial(self, input: Any, partial: Any) -> Any:
        if not isinstance(input, dict):
            msg = "continuation_key needs a dict input"
            raise ConfigError(msg)
        return {**input, self.continuation_key: _as_text(partial)}

    def stats(self) -> dict[str, Any]:
        """In-process counters: requests, hedges, all-failed, and per strategy.

        The ``pipeline_*`` and ``strategy_*`` metric families, labelled ``pipeline`` (this
        runnable's name, or the key it sits under in the ``strategies`` source).
        """
        node = Node(labels={"pipeline": self.get_name()}, key_label="pipeline")
        with self._lock:
            node.put(m.PIPELINE_REQUESTS, self._totals.get("requests", 0))
            node.put(m.PIPELINE_EXTRA, self._totals.get("extra_requests", 0))
            node.put(m.PIPELINE_HEDGE_WINS, self._totals.get("hedge_wins", 0))
            node.put(m.PIPELINE_ALL_FAILED, self._totals.get("all_failed", 0))
            strategies = node.child("strategies")
            for name, counters in self._counters.items():
                strategies[name] = counters.snapshot()
        return node

    def learned(self) -> dict[str, StrategyStats]:
        """What the store knows about each strategy now."""
        return self._store().load([s.name for s in self.strategies])

    def _run_info(self, config: RunnableConfig) -> dict[str, Any]:
        name = config.get("run_name") or self.get_name()
        return {"name": name, "run_id": config.pop("run_id", None)}

    def _bump(self, key: str) -> None:
        """Add one to the total ``key`` (under the lock)."""
        with self._lock:
            self._totals[key] = self._totals.get(key, 0) + 1

    def _count_cancelled(self, strategy: str) -> None:
        """Count one cancelled attempt of ``strategy`` (under the lock)."""
        with self._lock:
            self._counters[strategy].cancelled += 1

    def _count_hedge(self, strategy: str) -> None:
        """Count one hedge started on ``strategy`` (under the lock)."""
        with self._lock:
            self._counters[strategy].hedged += 1

    # -- sync paths ----------------------------------------------------------------

    def _run_sync(
        self,
        input: Any,
        config: RunnableConfig,
        run_manager: CallbackManagerForChainRun,
        *,
        buffered: bool,
        kwargs: Mapping[str, Any],
    ) -> Generator[Any, None, None]:
        store = self._store()
        stats = store.load([s.name for s in self.strategies])
        queue = self._ordered(self.rank(stats))
        errors: list[tuple[str, BaseException]] = []
        emitted: Any = None
        current = input
        while queue:
            strategy = queue.popleft()
            name = strategy.name
            started = self._begin(name)
            deadline = None if self.total_timeout is None else started + self.total_timeout
            ttfc: float | None = None
            acc: Any = None
            child = self._child_config(config, run_manager, name)
            stream = strategy.runnable.stream(current, child, **kwargs)
            try:
                for chunk in stream:
                    if ttfc is None:
                        ttfc = self.clock() - started
                    acc = _add(acc, chunk)
                    if not buffered:
                        emitted = _add(emitted, chunk)
                        yield chunk
                    if deadline is not None and self.clock() > deadline:
                        raise StrategyTimeoutError(name, cast("float", self.total_timeout))
                if ttfc is None:
                    raise StrategyValidationError(name, "produced no output")
                whole = acc if buffered else emitted
                reason = check_output(strategy.validator, whole)
                if reason is not None:
                    raise StrategyValidationError(name, reason)
            except BaseException as exc:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
                if not self._handles(exc):
                    raise
                outcome = Outcome(False, self.clock() - started, ttfc, failure_reason(exc))
                self._outcome(name, outcome)
                store.record(name, outcome)
                errors.append((name, exc))
                if not buffered and emitted is not None:
                    if self.continuation_key is None or isinstance(exc, StrategyValidationError):
                        raise
                    current = self._with_partial(input, emitted)
                continue
            outcome = Outcome(True, self.clock() - started, ttfc)
            self._outcome(name, outcome)
            store.record(name, outcome)
            if buffered:
                yield acc
            return
        self._bump("all_failed")
        raise AllStrategiesFailedError(errors)

    @override
    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        """Return the first valid output, trying strategies in learned order (sync path)."""
        config = ensure_config(config)
        run_manager = get_callback_manager_for_config(config).on_chain_start(
            None, input, **self._run_info(config)
        )
        runner = self._run_sync(input, config, run_manager, buffered=True, kwargs=kwargs)
        try:
            output = _finish(next(runner))
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        finally:
            runner.close()
        run_manager.on_chain_end(output)
        return cast("Output", output)

    @override
    def stream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> Iterator[Output]:
        """Stream the chosen strategy's chunks (sync path)."""
        config = ensure_config(config)
        run_manager = get_callback_manager_for_config(config).on_chain_start(
            None, input, **self._run_info(config)
        )
        output: Any = None
        try:
            for chunk in self._run_sync(input, config, run_manager, buffered=False, kwargs=kwargs):
                output = _add(output, chunk)
                yield chunk
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        run_manager.on_chain_end(output)

    # -- async paths -----------------------------------------------------------------

    def _start(
        self,
        strategy: Strategy,
        input: Any,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForChainRun,
        kwargs: Mapping[str, Any],
    ) -> _Attempt:
        started = self._begin(strategy.name)
        fc = self.first_chunk_timeout
        stream = strategy.runnable.astream(
            input, self._child_config(config, run_manager, strategy.name), **kwargs
        )
        return _Attempt(strategy, stream, started, started + fc if fc is not None else float("inf"))

    def _hedge_at(self, attempt: _Attempt, stats: dict[str, StrategyStats]) -> float | None:
        if not (self.hedge and self.optimized):
            return None
        delay = self.hedge_delay
        if delay is None:
            learned = stats.get(attempt.strategy.name)
            if learned is None or len(learned.ttfcs) < self.hedge_min_samples:
                return None
            delay = learned.ttfc_quantile(self.hedge_quantile)
        return None if delay is None else attempt.started + delay

    async def _afail(
        self,
        attempt: _Attempt,
        exc: BaseException,
        errors: list[tuple[str, BaseException]],
        ttfc: float | None = None,
    ) -> None:
        name = attempt.strategy.name
        outcome = Outcome(False, self.clock() - attempt.started, ttfc, failure_reason(exc))
        self._outcome(name, outcome)
        await self._store().arecord(name, outcome)
        errors.append((name, exc))

    async def _acancelled(self, loser: _Attempt) -> None:
        """Count a hedge's loser and keep its wait as a lower bound of its ttfc."""
        name = loser.strategy.name
        self._count_cancelled(name)
        waited = self.clock() - loser.started
        await self._store().arecord(name, Outcome(False, waited, waited, "cancelled"))

    async def _afirst(
        self,
        queue: deque[Strategy],
        stats: dict[str, StrategyStats],
        input: Any,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForChainRun,
        errors: list[tuple[str, BaseException]],
        kwargs: Mapping[str, Any],
    ) -> tuple[_Attempt, Any] | None:
        """Start attempts until one yields a first chunk; hedge and time out as configured."""
        active: list[_Attempt] = []
        hedge_at: float | None = None
        try:
            while True:
                if not active:
                    if not queue:
                        return None
                    active.append(self._start(queue.popleft(), input, config, run_manager, kwargs))
                    hedge_at = self._hedge_at(active[0], stats)
                wakes = [a.first_deadline for a in active]
                if hedge_at is not None and queue and len(active) == 1:
                    wakes.append(hedge_at)
                wake = min(wakes)
                timer: asyncio.Future[Any] | None = None
                if wake != float("inf"):
                    timer = asyncio.ensure_future(self.sleep(max(0.0, wake - self.clock())))
                waitables: set[asyncio.Future[Any]] = {a.first_task for a in active}
                if timer is not None:
                    waitables.add(timer)
                try:
                    await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if timer is not None and not timer.done():
                        timer.cancel()
                winner: tuple[_Attempt, Any] | None = None
                for attempt in [a for a in active if a.first_task.done()]:
                    active.remove(attempt)
                    exc = attempt.first_task.exception()
                    if exc is None and attempt.first_task.result() is _EMPTY:
                        exc = StrategyValidationError(attempt.strategy.name, "produced no output")
                    if exc is None and winner is None:
                        winner = (attempt, attempt.first_task.result())
                    elif exc is None:
                        active.append(attempt)  # closed below as a loser
                    elif not self._handles(exc):
                        await attempt.close()
                        raise exc
                    else:
                        await attempt.close()
                        await self._afail(attempt, exc, errors)
                if winner is not None:
                    if winner[0].hedge:
                        self._bump("hedge_wins")
                    for loser in active:
                        await self._acancelled(loser)
                    return winner
                now = self.clock()
                for attempt in [a for a in active if now >= a.first_deadline]:
                    active.remove(attempt)
                    await attempt.close()
                    timeout = cast("float", self.first_chunk_timeout)
                    await self._afail(
                        attempt,
                        FirstChunkTimeoutError(
                            f"strategy {attempt.strategy.name!r}: no first chunk within "
                            f"{timeout:g}s",
                            timeout=timeout,
                            chunks_received=0,
                        ),
                        errors,
                    )
                if hedge_at is not None and len(active) == 1 and queue and now >= hedge_at:
                    hedged = self._start(queue.popleft(), input, config, run_manager, kwargs)
                    hedged.hedge = True
                    self._count_hedge(hedged.strategy.name)
                    self._bump("extra_requests")
                    active.append(hedged)
                    hedge_at = None
        finally:
            for attempt in active:
                await attempt.close()

    async def _anext(self, attempt: _Attempt) -> Any:
        """The attempt's next chunk (``_EMPTY`` at the end), within the total timeout."""
        if self.total_timeout is None or attempt.deadline is None:
            return await attempt.next_chunk()
        try:
            return await attempt.deadline.run(attempt.next_chunk)
        except _DeadlinePassedError:
            raise StrategyTimeoutError(attempt.strategy.name, self.total_timeout) from None

    async def _arun(
        self,
        input: Any,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForChainRun,
        *,
        buffered: bool,
        kwargs: Mapping[str, Any],
    ) -> AsyncGenerator[Any, None]:
        store = self._store()
        stats = await store.aload([s.name for s in self.strategies])
        queue = self._ordered(self.rank(stats))
        errors: list[tuple[str, BaseException]] = []
        emitted: Any = None
        current = input
        while queue:
            won = await self._afirst(queue, stats, current, config, run_manager, errors, kwargs)
            if won is None:
                break
            attempt, first = won
            name = attempt.strategy.name
            ttfc = self.clock() - attempt.started
            if self.total_timeout is not None:  # one timer for the rest of the attempt
                remaining = attempt.started + self.total_timeout - self.clock()
                attempt.deadline = _Deadline(self.sleep, remaining)
            acc = first
            try:
                if not buffered:
                    emitted = _add(emitted, first)
                    yield first
                while True:
                    chunk = await self._anext(attempt)
                    if chunk is _EMPTY:
                        break
                    acc = _add(acc, chunk)
                    if not buffered:
                        emitted = _add(emitted, chunk)
                        yield chunk
                if attempt.deadline is not None:
                    attempt.deadline.cancel()
                reason = check_output(attempt.strategy.validator, acc if buffered else emitted)
                if reason is not None:
                    raise StrategyValidationError(name, reason)
            except BaseException as exc:
                await attempt.close()
                if not self._handles(exc):
                    raise
                await self._afail(attempt, exc, errors, ttfc)
                if not buffered and emitted is not None:
                    if self.continuation_key is None or isinstance(exc, StrategyValidationError):
                        raise
                    current = self._with_partial(input, emitted)
                continue
            outcome = Outcome(True, self.clock() - attempt.started, ttfc)
            self._outcome(name, outcome)
            await store.arecord(name, outcome)
            if buffered:
                yield acc
            return
        self._bump("all_failed")
        raise AllStrategiesFailedError(errors)

    @override
    async def ainvoke(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> Output:
        """Return the first valid output, trying strategies in learned order."""
        config = ensure_config(config)
        run_manager = await get_async_callback_manager_for_config(config).on_chain_start(
            None, input, **self._run_info(config)
        )
        runner = self._arun(input, config, run_manager, buffered=True, kwargs=kwargs)
        try:
            output = _finish(await runner.__anext__())
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        finally:
            await runner.aclose()
        await run_manager.on_chain_end(output)
        return cast("Output", output)

    @override
    async def astream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> AsyncIterator[Output]:
        """Stream the chosen strategy's chunks; fall back only before the first one."""
        config = ensure_config(config)
        run_manager = await get_async_callback_manager_for_config(config).on_chain_start(
            None, input, **self._run_info(config)
        )
        output: Any = None
        runner = self._arun(input, config, run_manager, buffered=False, kwargs=kwargs)
        try:
            async for chunk in runner:
                output = _add(output, chunk)
                yield chunk
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        finally:
            await runner.aclose()
        await run_manager.on_chain_end(output)


def _check_fields(kwargs: dict[str, Any]) -> None:
    """Raise ConfigError for an empty or repeated strategy list or a non-positive timeout."""
    strategies = kwargs.get("strategies") or []
    if not strategies:
        msg = "RankedFallbacks needs at least one strategy"
        raise ConfigError(msg)
    names = [getattr(s, "name", None) for s in strategies]
    if len(set(names)) != len(names):
        msg = f"strategy names must be unique, got {names}"
        raise ConfigError(msg)
    quantile = kwargs.get("hedge_quantile", 0.95)
    if not 0.0 < quantile <= 1.0:
        msg = f"hedge_quantile must be within (0, 1], got {quantile}"
        raise ConfigError(msg)
    for label in ("first_chunk_timeout", "total_timeout", "hedge_delay"):
        value = kwargs.get(label)
        if value is not None and value <= 0:
            msg = f"{label} must be > 0 or None, got {value}"
            raise ConfigError(msg)


def _unique_names(runnables: Sequence[Runnable[Any, Any]]) -> list[str]:
    """Each runnable's ``get_name()``, with ``-2``, ``-3`` ... added to repeats (pure)."""
    names: list[str] = []
    for runnable in runnables:
        base = runnable.get_name()
        name, n = base, 2
        while name in names:
            name = f"{base}-{n}"
            n += 1
        names.append(name)
    return names
