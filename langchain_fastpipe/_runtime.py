"""The process's runtime state in one object, created at its first use.

:func:`runtime` returns the one :class:`Runtime`, which owns every piece of process-wide
mutable state of the package:

* the metrics registry behind ``get_stats()`` and Prometheus, with its four sources
  (``"pools"``, ``"streams"``, ``"strategies"``, ``"preload"``) registered when the runtime
  is created;
* the pooled clients (one per endpoint configuration, kept while something holds them);
* the stream statistics (what ``streaming.default_collector`` reads and writes), the
  warm-up statistics and the live ``RankedFallbacks`` instances;
* the default preloader (built when first asked for, with the models named in
  ``FASTPIPE_PRELOAD`` recorded in it).

Importing a module of the package registers nothing and creates none of this; each part
is built at its first use, so a test can swap the whole runtime (``_runtime._RUNTIME``) or
one part (``runtime()._stream_stats``, ``runtime()._preloader`` ...) with ``monkeypatch``.
Creating it starts nothing: no thread, no task, no socket. Warm-ups run where the
application starts (``fastpipe_lifespan``, ``preload()``, ``preload_sync()``), or, for
models built with ``preload=True``, at their first call when nothing started them
(:meth:`Runtime.warm_pending`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from langchain_fastpipe._metrics import StatsRegistry

if TYPE_CHECKING:
    from langchain_fastpipe.preload import ModelPreloader
    from langchain_fastpipe.preload._preloader import PreloadStats
    from langchain_fastpipe.streaming import StreamStatsCollector

__all__ = ["Runtime", "runtime"]

logger = logging.getLogger(__name__)


class _Pool(Protocol):
    """What the runtime needs of a pooled client (``transport.PooledClient``)."""

    endpoint: str

    def stats(self) -> dict[str, Any]:
        """The pool's statistics (JSON-serializable)."""
        ...


class _Ranked(Protocol):
    """What the runtime needs of a ranked fallbacks (``pipeline.RankedFallbacks``)."""

    def get_name(self) -> str:
        """The name it is listed under."""
        ...

    def stats(self) -> dict[str, Any]:
        """Its in-process counters (JSON-serializable)."""
        ...


P = TypeVar("P", bound=_Pool)


class Runtime:
    """The pools, metrics, statistics and the default preloader of this process.

    Pools are kept weakly: one per configuration while something (a ``ChatFastpipe``, a
    caller of ``get_pool``) holds it; a pool nothing holds is dropped and closes its
    connections (its own finalizer). Ranked fallbacks are kept weakly too. The stream and
    warm-up statistics and the default preloader are built at their first use.

    Attributes:
        metrics: The registry of statistics sources behind ``get_stats()`` and Prometheus.
    """

    def __init__(self) -> None:
        """Create an empty runtime with its four statistics sources (nothing built yet)."""
        self.metrics = StatsRegistry()
        self._preloader: ModelPreloader | None = None
        self._stream_stats: StreamStatsCollector | None = None
        self._preload_stats: PreloadStats | None = None
        self._lock = threading.Lock()
        self._pools_lock = threading.Lock()
        self._pools: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()
        # RankedFallbacks are pydantic models, not hashable: kept by id, dropped by their
        # weak reference's callback; the value's int is the id of the counters it shares.
        self._ranked: dict[int, tuple[weakref.ref[Any], int]] = {}
        self.metrics.register("pools", self.pools)
        self.metrics.register("streams", lambda: self.stream_stats.snapshot())
        self.metrics.register("strategies", self.strategies)
        self.metrics.register("preload", lambda: self.preload_stats.snapshot())

    def pool(self, config: Hashable, create: Callable[[Any], P]) -> P:
        """The live pool of ``config``, or a new one from ``create(config)``.

        Args:
            config: The endpoint configuration (hashable).
            create: Builds the pool of ``config`` (``PooledClient``).

        Returns:
            The same object for equal configs while it is held.
        """
        pool: P | None = self._pools.get(config)
        if pool is None:
            with self._pools_lock:
                pool = self._pools.get(config)
                if pool is None:
                    pool = create(config)
                    self._pools[config] = pool
        return pool

    def track_pool(self, pool: _Pool) -> None:
        """Count ``pool`` among the live pools (its statistics; ``aclose_pools``), weakly."""
        self._live.add(pool)

    def live_pools(self) -> list[Any]:
        """Every pool not yet dropped, those built directly included."""
        return list(self._live)

    @property
    def preloader(self) -> ModelPreloader:
        """The default preloader, built at first use with ``FASTPIPE_PRELOAD`` recorded."""
        preloader = self._preloader
        if preloader is None:
            from langchain_fastpipe.preload import ModelPreloader, register_from_env

            with self._lock:
                if self._preloader is None:
                    self._preloader = ModelPreloader()
                    register_from_env(self._preloader)
                preloader = self._preloader
        return preloader

    @property
    def stream_stats(self) -> StreamStatsCollector:
        """The per-model stream statistics (``"streams"``; ``streaming.default_collector``)."""
        collector = self._stream_stats
        if collector is None:
            from langchain_fastpipe.streaming import StreamStatsCollector

            with self._lock:
                if self._stream_stats is None:
                    self._stream_stats = StreamStatsCollector()
                collector = self._stream_stats
        return collector

    @property
    def preload_stats(self) -> PreloadStats:
        """The counters of every warm-up of every preloader (``"preload"``)."""
        stats = self._preload_stats
        if stats is None:
            from langchain_fastpipe.preload._preloader import PreloadStats

            with self._lock:
                if self._preload_stats is None:
                    self._preload_stats = PreloadStats()
                stats = self._preload_stats
        return stats

    def track_ranked(self, instance: _Ranked, shared: object) -> None:
        """List ``instance`` in the ``"strategies"`` statistics while it lives (weakly).

        Args:
            instance: A ``RankedFallbacks``.
            shared: The counters it shares with the instances derived from it
                (``bind_tools`` ...): instances sharing them are listed once.
        """
        key = id(instance)
        ranked = self._ranked

        def forget(ref: weakref.ref[Any]) -> None:
            if ranked.get(key, (None, 0))[0] is ref:
                ranked.pop(key, None)

        ranked[key] = (weakref.ref(instance, forget), id(shared))

    def strategies(self) -> dict[str, Any]:
        """``{name: stats}`` of every live ranked fallbacks (the ``"strategies"`` source).

        Repeated names get ``"<name>#2"``, ...; instances derived by a forwarded method
        (``bind_tools`` ...) share their origin's counters and are listed once.
        """
        out: dict[str, Any] = {}
        seen: set[int] = set()
        for ref, shared in list(self._ranked.values()):
            instance = ref()
            if instance is None or shared in seen:
                continue
            seen.add(shared)
            out[_unique_key(out, instance.get_name(), "#")] = instance.stats()
        return out

    def pools(self) -> dict[str, Any]:
        """``{endpoint: stats}`` of every live pool (the ``"pools"`` statistics source).

        Pools of the same endpoint with other settings get ``"<endpoint> #2"``, ...
        """
        out: dict[str, Any] = {}
        for pool in list(self._live):
            # A space before the number: "#2" right after a URL would read as its fragment.
            out[_unique_key(out, pool.endpoint, " #")] = pool.stats()
        return out

    def register_model(self, model: object) -> str:
        """Record ``model`` in the default preloader (``ChatFastpipe(preload=True)``).

        Nothing is contacted; see :meth:`warm_pending`.
        """
        return self.preloader.register(model)

    def warm_pending(self) -> None:
        """Start the warm-ups of registered models that nothing has started (never raises).

        Called at the first call of a ``preload=True`` model: with a running event loop
        the warm-ups are a task of that loop, otherwise a short-lived thread runs them.
        """
        preloader = self._preloader
        if preloader is None:
            return
        try:
            preloader.warm_pending()
        except Exception:  # pragma: no cover - a warm-up is never worth a failed call
            logger.exception("could not start the pending warm-ups")


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def runtime() -> Runtime:
    """The process's :class:`Runtime`, created at the first call."""
    current = _RUNTIME
    if current is None:
        with _RUNTIME_LOCK:
            current = _runtime_create()
    return current


def _runtime_create() -> Runtime:
    """Create the runtime unless another thread did (lock held)."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime()
    return _RUNTIME


def _unique_key(taken: Mapping[str, Any], base: str, sep: str) -> str:
    """``base``, or ``f"{base}{sep}2"``, ``...{sep}3`` ...: the first not in ``taken``."""
    key, n = base, 2
    while key in taken:
        key = f"{base}{sep}{n}"
        n += 1
    return key
