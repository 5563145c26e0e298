"""The preloader: registered models, concurrent warm-ups, results, stats, refresh."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import PreloadError
from langchain_fastpipe.preload._prompt import PromptLike, _model_of_chain, warmup_messages
from langchain_fastpipe.preload._spec import PreloadSpec, _default_name, _describe
from langchain_fastpipe.preload._warm import (
    SyncWarmFn,
    Warmable,
    WarmFn,
    _awarm_warmer,
    _chat_warmer,
    _chat_warmer_sync,
    _LazyChat,
    _spec_chat,
)
from langchain_fastpipe.stats import Histogram
from langchain_fastpipe.transport import aclose_pools

if TYPE_CHECKING:
    from langchain_fastpipe.config import FastpipeConfig

logger = logging.getLogger("langchain_fastpipe.preload")

SleepFn = Callable[[float], Awaitable[None]]


class PreloadStatus(str, enum.Enum):
    """Outcome of one model's warm-up."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class PreloadResult:
    """What one model's warm-up did.

    Attributes:
        name: The registered name of the model.
        status: ok, failed or timed_out.
        seconds: Time the warm-up took (by the preloader's clock).
        steps: The steps completed, in order, e.g. ``("connections", "model_load")``.
        error: ``"ErrorType: message"`` when it failed or timed out, else None.
    """

    name: str
    status: PreloadStatus
    seconds: float
    steps: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the warm-up succeeded."""
        return self.status is PreloadStatus.OK

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serializable form."""
        return {
            "name": self.name,
            "status": self.status.value,
            "seconds": self.seconds,
            "steps": list(self.steps),
            "error": self.error,
        }


def _late(entry: _Entry, limit: float) -> str:
    """The error text of a timed-out warm-up."""
    return f"TimeoutError: warm-up of {entry.name} exceeded {limit:g}s"


def _raise_if_asked(results: Sequence[PreloadResult], raise_on_error: bool) -> None:
    """Raise PreloadError naming every failed warm-up, when asked to."""
    bad = [r for r in results if not r.ok]
    if raise_on_error and bad:
        detail = "; ".join(f"{r.name}: {r.status.value} ({r.error})" for r in bad)
        raise PreloadError(f"{len(bad)} of {len(results)} warm-ups failed: {detail}")


# --------------------------------------------------------------------------- stats
class PreloadStats:
    """Counters of every warm-up, reported as the ``"preload"`` stats source.

    The runtime owns the one instance (``runtime().preload_stats``), built at its first use;
    every preloader records into it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = Histogram()
        self.counts = dict.fromkeys((s.value for s in PreloadStatus), 0)
        self.last: dict[str, dict[str, Any]] = {}
        self.refreshes = 0

    def record(self, result: PreloadResult) -> None:
        with self._lock:
            self.counts[result.status.value] += 1
            self.last[result.name] = result.as_dict()
        self.seconds.record(result.seconds)

    def count_refresh(self) -> None:
        with self._lock:
            self.refreshes += 1

    def snapshot(self) -> Node:
        """The ``preload_*`` metric families (``models``: the last result per name)."""
        node = Node()
        with self._lock:
            warmups = node.child("warmups")
            for status, count in self.counts.items():
                warmups.put(m.PRELOAD_WARMUPS, count, status=status)
            node.put(m.PRELOAD_REFRESHES, self.refreshes)
            node.put(m.PRELOAD_SECONDS, self.seconds)
            models = node.child("models")
            for name, last in sorted(self.last.items()):
                entry = models.child(name, key_label="model")
                entry.update(last)
                entry.put(m.PRELOAD_STATUS, last["status"])
                entry.put(m.PRELOAD_MODEL_SECONDS, last["seconds"])
        return node


# --------------------------------------------------------------------------- the preloader
@dataclass
class _Entry:
    name: str
    target: object
    warm: WarmFn
    timeout: float
    refresh_every: float | None
    warm_sync: SyncWarmFn | None = None
    started_server: bool = field(default=False)


class ModelPreloader:
    """A set of models to warm, warmed concurrently by :meth:`preload`.

    Use the default one (``default_preloader``, :func:`register`, :func:`preload`) or your
    own instances.

    Args:
        clock: Monotonic clock for the seconds in results (injectable for tests).
        sleep: Sleep used by the keep-alive refresh loop (injectable for tests).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        """Create an empty preloader."""
        self._clock = clock
        self._sleep = sleep
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._refresh_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._pending: dict[str, None] = {}  # registered, no warm-up started (ordered set)
        self.results: dict[str, PreloadResult] = {}

    def __repr__(self) -> str:
        """List the registered names."""
        return f"ModelPreloader(models={self.names()!r})"

    @classmethod
    def from_config(
        cls,
        config: FastpipeConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
    ) -> ModelPreloader:
        """A preloader holding the models a configuration asks to warm.

        Registers one chat model per name of ``config.preload_models()`` (``preload.models``,
        else ``backend.model``), built with the backend settings (provider, base URL, key,
        pool and timeouts); each may take ``preload_timeout_seconds`` and is re-warmed every
        ``preload.keep_alive_refresh_seconds`` while :meth:`start_refresh` runs. With
        ``enable_model_preloading`` off nothing is registered. Nothing is contacted here.

        Args:
            config: The configuration.
            clock: Monotonic clock for the seconds in results.
            sleep: Sleep of the keep-alive refresh loop.

        Returns:
            The new preloader; call :meth:`preload` (or use :func:`fastpipe_lifespan`).

        Raises:
            ConfigError: A chat model cannot be built from the configuration.
        """
        preloader = cls(clock=clock, sleep=sleep)
        timeout = config.performance_optimizations.preload_timeout_seconds
        refresh = config.preload.keep_alive_refresh_seconds
        for model in config.preload_models():
            # preload=False: registered here instead, with this preloader's settings.
            chat = ChatFastpipe.from_config(config, model=model, preload=False)
            preloader.register(chat, timeout=timeout, refresh_every=refresh)
        return preloader

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        with self._lock:
            return list(self._entries)

    def register(
        self,
        model: object,
        *,
        warmup: bool = True,
        timeout: float = 60.0,
        name: str | None = None,
        refresh_every: float | None = None,
        prompt: PromptLike | None = None,
        prompt_inputs: Mapping[str, Any] | None = None,
    ) -> str:
        """Register a model to warm (replacing any entry of the same name).

        Args:
            model: A ``ChatFastpipe``, a ``LocalModelServer``, a :class:`PreloadSpec`,
                an object with ``async awarm()``, an async callable taking a
                ``done(step)`` callback, or a chain with exactly one ChatFastpipe fed by a
                prompt template (``prompt | llm``: that model, warmed with that prompt).
            warmup: For chat models: also load the model (Ollama ``/api/generate``,
                1-token request); False only opens the pooled connections.
            timeout: Seconds the warm-up may take before it is reported ``timed_out``.
            name: Registration name; defaults to ``provider:model@base_url`` (or
                ``local:<alias>`` for a local server).
            refresh_every: Re-warm every this many seconds while :meth:`start_refresh`
                runs (see :func:`refresh_interval_for`); None: never.
            prompt: For chat models: the application's prompt, which the warm-up sends
                (rendered with empty inputs, 1 token) instead of the generic load
                request, so the server's prompt cache holds its prefix before the first
                query. A ``ChatPromptTemplate``, a list of messages, a chain
                (``prompt | llm``, an ``AnswerPipeline``: the templates feeding this
                model), or a list of templates and chains; see :func:`warmup_messages`.
            prompt_inputs: Values for some of the prompt's variables (default: empty).

        Returns:
            The name it was registered under.

        Raises:
            PreloadError: The model is of no kind the preloader can warm, the timeout
                or refresh interval is not positive, a prompt is given for something
                other than a chat model (or with ``warmup=False``), or the prompt cannot
                be rendered.
        """
        if timeout <= 0:
            raise PreloadError(f"register: timeout must be > 0 seconds, got {timeout}")
        if refresh_every is not None and refresh_every <= 0:
            raise PreloadError(f"register: refresh_every must be > 0 seconds, got {refresh_every}")
        chain_prompts: list[list[BaseMessage]] = []
        if isinstance(model, Runnable) and not isinstance(model, ChatFastpipe):
            model, chain_prompts = _model_of_chain(model, prompt_inputs)
        prompts = chain_prompts
        if prompt is not None:
            if not isinstance(model, (ChatFastpipe, PreloadSpec)):
                raise PreloadError(
                    f"register: a prompt can only be carried by a chat model's warm-up, "
                    f"not a {type(model).__name__}'s"
                )
            chat = model if isinstance(model, ChatFastpipe) else None
            prompts = chain_prompts + warmup_messages(prompt, model=chat, inputs=prompt_inputs)
        if prompts and not warmup:
            raise PreloadError("register: a prompt needs warmup=True (it is sent to the model)")
        warm: WarmFn
        warm_sync: SyncWarmFn | None = None
        if isinstance(model, PreloadSpec):
            lazy = _LazyChat(functools.partial(_spec_chat, model))
            warm = _chat_warmer(lazy, load_model=warmup, prompts=prompts)
            warm_sync = _chat_warmer_sync(lazy, load_model=warmup, prompts=prompts)
            default = model.name
        elif isinstance(model, ChatFastpipe):
            warm = _chat_warmer(model, load_model=warmup, prompts=prompts)
            warm_sync = _chat_warmer_sync(model, load_model=warmup, prompts=prompts)
            default = _default_name(model)
        elif isinstance(model, Warmable):
            warm = _awarm_warmer(model)
            default = _default_name(model)
        elif callable(model):
            warm = model
            default = getattr(model, "__name__", None) or _default_name(model)
        else:
            raise PreloadError(
                f"register: cannot warm a {type(model).__name__}: expected ChatFastpipe, "
                "LocalModelServer, PreloadSpec, a prompt | ChatFastpipe chain, an object "
                "with async awarm() or an async callable"
            )
        key = name or default
        with self._lock:
            self._entries[key] = _Entry(
                name=key,
                target=model,
                warm=warm,
                timeout=timeout,
                refresh_every=refresh_every,
                warm_sync=warm_sync,
            )
            self._pending[key] = None
        return key

    def unregister(self, name: str) -> None:
        """Forget a model (and stop its refresh task, if any)."""
        with self._lock:
            self._entries.pop(name, None)
            self._pending.pop(name, None)
            task = self._refresh_tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _warm_one(self, entry: _Entry, timeout: float | None) -> PreloadResult:
        """Warm one entry on the running loop, never raising: the outcome is the result."""
        steps: list[str] = []
        start = self._clock()
        limit = entry.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(entry.warm(steps.append), timeout=limit)
        except asyncio.TimeoutError:
            return self._finish(entry, start, steps, PreloadStatus.TIMED_OUT, _late(entry, limit))
        except Exception as exc:
            return self._finish(entry, start, steps, PreloadStatus.FAILED, _describe(exc))
        return self._finish(entry, start, steps, PreloadStatus.OK, None)

    def _warm_one_blocking(self, entry: _Entry, timeout: float | None) -> PreloadResult:
        """Warm one entry from this thread (its sync form when it has one), never raising.

        An entry without a sync form runs its async warm-up on a short-lived event loop of
        this thread (cancelled at its timeout), which closes the async clients it opened
        before it ends. A blocking warm-up cannot be interrupted: past its timeout it is
        reported ``timed_out`` and left to finish (bounded by its own HTTP timeout) in its
        daemon thread.
        """
        if entry.warm_sync is None:
            return asyncio.run(self._warm_on_own_loop(entry, timeout))
        steps: list[str] = []
        start = self._clock()
        limit = entry.timeout if timeout is None else timeout
        box: dict[str, BaseException] = {}
        warm_sync = entry.warm_sync

        def run() -> None:
            try:
                warm_sync(steps.append)
            except BaseException as exc:  # reported in the result
                box["error"] = exc

        worker = threading.Thread(target=run, name=f"fastpipe-warm-{entry.name}", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            return self._finish(
                entry, start, list(steps), PreloadStatus.TIMED_OUT, _late(entry, limit)
            )
        if "error" in box:
            return self._finish(entry, start, steps, PreloadStatus.FAILED, _describe(box["error"]))
        return self._finish(entry, start, steps, PreloadStatus.OK, None)

    async def _warm_on_own_loop(self, entry: _Entry, timeout: float | None) -> PreloadResult:
        """:meth:`_warm_one`, then close the pools' clients of this (short-lived) loop."""
        try:
            return await self._warm_one(entry, timeout)
        finally:
            await aclose_pools()

    def _finish(
        self,
        entry: _Entry,
        start: float,
        steps: list[str],
        status: PreloadStatus,
        error: str | None,
    ) -> PreloadResult:
        """Build, log, keep and record the result of one warm-up."""
        result = PreloadResult(
            name=entry.name,
            status=status,
            seconds=self._clock() - start,
            steps=tuple(steps),
            error=error,
        )
        if result.ok and "server_start" in steps:
            entry.started_server = True
        if not result.ok:
            logger.warning("preload of %s %s: %s", entry.name, status.value, error)
        self.results[entry.name] = result
        runtime().preload_stats.record(result)
        return result

    async def preload(
        self,
        names: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
        raise_on_error: bool = False,
    ) -> list[PreloadResult]:
        """Warm the registered models concurrently (the total is about the slowest one).

        Args:
            names: Only these registered names (default: all).
            timeout: Overrides each model's own timeout.
            raise_on_error: Raise :class:`PreloadError` if any warm-up did not succeed
                (after all of them finished).

        Returns:
            One result per model, in registration order.

        Raises:
            PreloadError: Only with ``raise_on_error``, or for an unknown name.
        """
        entries = self._select(names)
        results = list(await asyncio.gather(*(self._warm_one(e, timeout) for e in entries)))
        _raise_if_asked(results, raise_on_error)
        return results

    def preload_sync(
        self,
        names: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
        raise_on_error: bool = False,
    ) -> list[PreloadResult]:
        """Blocking :meth:`preload`, for scripts and sync apps (safe inside a running loop).

        Each model warms in its own thread, concurrently. Chat models warm their *sync*
        client (the one ``invoke``/``stream`` use) and load the model on the server;
        other models run their async warm-up on a short-lived event loop of that thread.
        The server-side model load and a started local server serve every later caller.

        Args:
            names: Only these registered names (default: all).
            timeout: Overrides each model's own timeout.
            raise_on_error: Raise :class:`PreloadError` if any warm-up failed.

        Returns:
            One result per model, in registration order.

        Raises:
            PreloadError: Only with ``raise_on_error``, or for an unknown name.
        """
        entries = self._select(names)
        results: list[PreloadResult | None] = [None] * len(entries)

        def run(index: int, entry: _Entry) -> None:
            results[index] = self._warm_one_blocking(entry, timeout)

        threads = [
            threading.Thread(target=run, args=(i, e), name="fastpipe-preload", daemon=True)
            for i, e in enumerate(entries)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done = [r for r in results if r is not None]
        _raise_if_asked(done, raise_on_error)
        return done

    def _select(self, names: Iterable[str] | None) -> list[_Entry]:
        """The entries to warm now (no longer pending)."""
        with self._lock:
            wanted = list(self._entries) if names is None else list(names)
            unknown = [n for n in wanted if n not in self._entries]
            if unknown:
                raise PreloadError(
                    f"preload: unknown model name(s) {unknown}; registered: {list(self._entries)}"
                )
            for name in wanted:
                self._pending.pop(name, None)
            return [self._entries[n] for n in wanted]

    def pending(self) -> list[str]:
        """Registered names whose warm-up nothing has started yet."""
        with self._lock:
            return list(self._pending)

    def warm_pending(self) -> list[str]:
        """Start warming the :meth:`pending` models in the background; never raises.

        What the first call of a ``preload=True`` model does when nothing warmed the
        registered models yet. With a running event loop the warm-up is a task of that
        loop (:meth:`schedule`); otherwise a short-lived thread runs :meth:`preload_sync`
        and ends with it. Failures are logged and recorded in the stats.

        Returns:
            The names whose warm-up started (empty when none was pending).
        """
        with self._lock:
            names = list(self._pending)
            self._pending.clear()
        if not names:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            threading.Thread(
                target=self._warm_quietly, args=(names,), name="fastpipe-preload"
            ).start()
        else:
            self.schedule(names)
        return names

    def _warm_quietly(self, names: list[str]) -> None:
        """Thread body of :meth:`warm_pending`: warm, log, never raise."""
        try:
            self.preload_sync(names)
        except Exception:  # pragma: no cover - preload_sync reports rather than raises
            logger.exception("background preload of %s failed", names)

    # ------------------------------------------------------------ keep-alive refresh
    def start_refresh(self) -> list[str]:
        """Start a refresh task for each model registered with ``refresh_every``.

        Each task sleeps ``refresh_every`` seconds (with the injected sleep), then
        re-warms its model, until :meth:`stop_refresh`. Must be called from a running
        event loop.

        Returns:
            The names now being refreshed.
        """
        with self._lock:
            entries = [
                e
                for e in self._entries.values()
                if e.refresh_every is not None and e.name not in self._refresh_tasks
            ]
            for entry in entries:
                self._refresh_tasks[entry.name] = asyncio.get_running_loop().create_task(
                    self._refresh_loop(entry), name=f"fastpipe-refresh-{entry.name}"
                )
            return list(self._refresh_tasks)

    async def _refresh_loop(self, entry: _Entry) -> None:
        interval = entry.refresh_every
        assert interval is not None  # noqa: S101 - guaranteed by start_refresh
        while True:
            await self._sleep(interval)
            runtime().preload_stats.count_refresh()
            await self._warm_one(entry, None)

    async def stop_refresh(self) -> None:
        """Cancel the refresh tasks and wait for them to end."""
        with self._lock:
            tasks = list(self._refresh_tasks.values())
            self._refresh_tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def schedule(self, names: Iterable[str] | None = None) -> asyncio.Task[list[PreloadResult]]:
        """Start :meth:`preload` as a background task of the running loop.

        The task is kept referenced until it ends; its failures are only reported.
        """
        chosen = [entry.name for entry in self._select(names)]  # no longer pending
        task = asyncio.get_running_loop().create_task(self.preload(chosen))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def aclose(self, *, stop_servers: bool = True) -> None:
        """Stop refreshing and stop any local server that a warm-up started.

        Args:
            stop_servers: Also stop ``LocalModelServer`` instances this preloader started.
        """
        await self.stop_refresh()
        loop = asyncio.get_running_loop()
        background = [t for t in self._background if t.get_loop() is loop]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if not stop_servers:
            return
        with self._lock:
            started = [e for e in self._entries.values() if e.started_server]
        for entry in started:
            stop = getattr(entry.target, "astop", None)
            if stop is not None:
                with contextlib.suppress(Exception):
                    await stop()
            entry.started_server = False
