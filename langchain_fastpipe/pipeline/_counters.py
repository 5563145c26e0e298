"""In-process counters of one strategy.

The ``"strategies"`` statistics source, which lists every live ``RankedFallbacks``, is the
runtime's (``Runtime.strategies``; instances are listed by ``Runtime.track_ranked``).
"""

from __future__ import annotations

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe.stats import Histogram


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
