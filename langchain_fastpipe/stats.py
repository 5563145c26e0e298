"""Counters and histograms that every layer reports into, and :func:`get_stats`.

The snapshot is made of *sources* in the runtime's
:class:`~langchain_fastpipe._metrics.StatsRegistry`: a name and a zero-argument callable
returning a :class:`~langchain_fastpipe._metrics.Node`, a JSON dict whose numbers belong to
metric families declared once in ``_metrics``. The runtime registers the package's four
sources (``"pools"``, ``"streams"``, ``"strategies"``, ``"preload"``) when it is created,
and owns the state behind them; importing a module registers nothing. ``registry`` adds
other sources. :func:`get_stats` calls every source and returns one snapshot. Sources hold
their own numbers; nothing here is on a hot path except :meth:`Histogram.record`, which is
a bisect and two additions.

The public name is :func:`get_stats`; the registry, :class:`Histogram` and
:func:`quantile` are what the package's layers report with.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_fastpipe._metrics import StatsRegistry
from langchain_fastpipe.errors import ConfigError

__all__ = ["get_stats"]

#: Upper bounds (seconds) of the default latency buckets: 1 ms to 120 s, roughly x2 apart.
DEFAULT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

_RESERVOIR = 2048


class Histogram:
    """A latency histogram: fixed buckets plus a bounded reservoir for exact quantiles.

    The buckets give the Prometheus-style distribution; the reservoir (the last 2048
    values) gives p50/p95/p99 without assuming a shape.
    """

    __slots__ = ("_bounds", "_counts", "_lock", "_pos", "_reservoir", "count", "max", "sum")

    def __init__(self, bounds: Iterable[float] = DEFAULT_SECONDS_BUCKETS) -> None:
        """Create an empty histogram with the given bucket upper bounds (sorted)."""
        self._bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self._bounds) + 1)
        self._reservoir: list[float] = []
        self._pos = 0
        self._lock = threading.Lock()
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def record(self, value: float) -> None:
        """Add one observation."""
        with self._lock:
            self._counts[bisect.bisect_left(self._bounds, value)] += 1
            self.count += 1
            self.sum += value
            self.max = max(self.max, value)
            if len(self._reservoir) < _RESERVOIR:
                self._reservoir.append(value)
            else:
                self._reservoir[self._pos] = value
                self._pos = (self._pos + 1) % _RESERVOIR

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the recent observations, or None when empty."""
        with self._lock:
            values = list(self._reservoir)
        return quantile(values, q)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serializable summary: count, sum, mean, p50, p95, p99, max and buckets."""
        with self._lock:
            values = sorted(self._reservoir)
            counts = list(self._counts)
            count, total, peak = self.count, self.sum, self.max
        buckets: dict[str, int] = {}
        running = 0
        for bound, n in zip((*self._bounds, math.inf), counts, strict=True):
            running += n
            buckets["+Inf" if bound == math.inf else f"{bound:g}"] = running
        return {
            "count": count,
            "sum": total,
            "mean": total / count if count else None,
            "p50": _quantile_sorted(values, 0.5) if values else None,
            "p95": _quantile_sorted(values, 0.95) if values else None,
            "p99": _quantile_sorted(values, 0.99) if values else None,
            "max": peak if count else None,
            "buckets": buckets,
        }


def quantile(values: Iterable[float], q: float) -> float | None:
    """The linear-interpolated ``q`` quantile of ``values`` (any order); None when empty.

    The one quantile of the package: histograms, strategy stores and benchmarks use it.

    Args:
        values: Samples, in any order.
        q: The quantile, 0..1 (0.5 is the median).

    Returns:
        The quantile, or None when there are no samples.

    Raises:
        ConfigError: ``q`` is outside 0..1.
    """
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"quantile: q must be between 0 and 1, got {q}")
    ordered = sorted(values)
    return _quantile_sorted(ordered, q) if ordered else None


def _quantile_sorted(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence."""
    if len(values) == 1:
        return values[0]
    pos = q * (len(values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


class _RuntimeRegistry:
    """The runtime's :class:`StatsRegistry`, looked up at each use (see ``_runtime``)."""

    def register(self, name: str, source: Callable[[], dict[str, Any]]) -> None:
        """Register (or replace) the source called ``name``."""
        _registry().register(name, source)

    def unregister(self, name: str) -> None:
        """Remove the source called ``name`` if present."""
        _registry().unregister(name)

    def snapshot(self) -> dict[str, Any]:
        """Call every source and return ``{name: its node}``."""
        return _registry().snapshot()


def _registry() -> StatsRegistry:
    """The runtime's metrics registry (creating the runtime at first use)."""
    from langchain_fastpipe._runtime import runtime

    return runtime().metrics


#: A handle on the runtime's registry of statistics sources (it holds no state itself).
registry = _RuntimeRegistry()


def get_stats() -> dict[str, Any]:
    """One JSON-serializable snapshot of every statistic the package keeps.

    Keys are the runtime's sources, always present: ``"pools"``, ``"streams"``,
    ``"strategies"`` and ``"preload"`` (plus any added on ``registry``). Every number in it
    is declared once, with its type, help and labels, in ``langchain_fastpipe._metrics``;
    ``langchain_fastpipe.prometheus`` renders the same snapshot in the Prometheus text
    format.
    """
    return _registry().snapshot()
