"""In-process counters of every strategy, and the ``strategies`` stats source."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe.stats import Histogram

if TYPE_CHECKING:
    from langchain_fastpipe.pipeline._ranked import RankedFallbacks


class _StrategyCounters:
    """In-process counters of one strategy (exposed via the stats registry)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.successes = 0
        self.failures: dict[str, int] = {}
        self.first = 0
        self.skipped = 0
        self.probes = 0
        self.hedged = 0
        self.cancelled = 0
        self.latency = Histogram()
        self.ttfc = Histogram()

    def snapshot(self) -> Node:
        """The ``strategy_*`` metric families of this strategy (labelled ``strategy``)."""
        node = Node(key_label="strategy")
        node.put(m.STRATEGY_ATTEMPTS, self.attempts)
        node.put(m.STRATEGY_SUCCESSES, self.successes)
        failures = node.child("failures")
        for reason, count in self.failures.items():
            failures.put(m.STRATEGY_FAILURES, count, reason=reason)
        node.put(m.STRATEGY_FIRST, self.first)
        node.put(m.STRATEGY_SKIPPED, self.skipped)
        node.put(m.STRATEGY_PROBES, self.probes)
        node.put(m.STRATEGY_HEDGES, self.hedged)
        node.put(m.STRATEGY_CANCELLED, self.cancelled)
        node.put(m.STRATEGY_LATENCY, self.latency)
        node.put(m.STRATEGY_TTFC, self.ttfc)
        return node


_INSTANCES: dict[int, weakref.ref[RankedFallbacks[Any, Any]]] = {}


def _registry_source() -> dict[str, Any]:
    """Statistics of every live RankedFallbacks, by name (``#n`` added to repeats).

    Instances derived by a forwarded method (``bind_tools`` ...) share their origin's
    counters and are listed once.
    """
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for ref in list(_INSTANCES.values()):
        instance = ref()
        if instance is None or id(instance._counters) in seen:
            continue
        seen.add(id(instance._counters))
        key = instance.get_name()
        n = 2
        while key in out:
            key = f"{instance.get_name()}#{n}"
            n += 1
        out[key] = instance.stats()
    return out
