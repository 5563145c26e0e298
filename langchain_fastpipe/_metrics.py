"""Every metric of the package, declared once; the JSON snapshot and Prometheus derive from it.

A :class:`Family` names one metric: its type (counter, gauge, histogram or state), help
text, label names and the key its value has in the JSON snapshot. All families are
declared in this module, so it is the one list of what the package measures.

A statistics source returns a :class:`Node`: a ``dict`` (the JSON rendering, exactly what
:func:`langchain_fastpipe.stats.get_stats` returns) that also remembers which family each
value written with :meth:`Node.put` belongs to. The Prometheus rendering
(:mod:`langchain_fastpipe.prometheus`) reads those typed samples back with
:func:`iter_samples`; keys written as plain dict items (an endpoint's URL, a last error
message) are JSON-only. Labels come from the nodes: a node's fixed ``labels``, and its
``key_label``, whose value is the key the node sits under in its parent (an endpoint, a
model, a strategy name).

Nothing here is on a hot path: counters live as plain attributes of their owners
(``self.requests += 1`` under the owner's lock) and are only read into nodes when a
snapshot is taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "FAMILIES",
    "Family",
    "Kind",
    "Node",
    "StatsRegistry",
    "iter_samples",
]

#: The metric types: counter (only grows), gauge (any number), histogram (buckets, sum
#: and count) and state (one of a fixed set of strings).
Kind = Literal["counter", "gauge", "histogram", "state"]


class _Snapshotting(Protocol):
    """What a histogram value is: something with ``snapshot()`` (``stats.Histogram``)."""

    def snapshot(self) -> dict[str, Any]:
        """A dict with ``count``, ``sum`` and cumulative ``buckets``."""
        ...


@dataclass(frozen=True, slots=True)
class Family:
    """One metric, declared once.

    Attributes:
        name: The Prometheus name after the prefix (counters without ``_total``).
        kind: counter, gauge, histogram or state.
        help: One line saying what it measures.
        labels: Its label names, in order.
        key: Its key in the JSON node; None: the value of its last label is the key
            (``{"HTTP/2": 5}`` under ``http_versions``).
        states: The possible values of a state metric.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    key: str | None = None
    states: tuple[str, ...] = ()


def _family(
    kind: Kind,
    name: str,
    help_text: str,
    labels: tuple[str, ...],
    key: str | None = "",
    states: tuple[str, ...] = (),
) -> Family:
    """Declare a family; ``key`` "" means the name after its first ``_`` (``pool_x`` -> x)."""
    if key == "":
        key = name.split("_", 1)[1]
    return Family(name, kind, help_text, labels, key, states)


class Node(dict[str, Any]):
    """A JSON snapshot dict that also records the typed samples written into it.

    Args:
        labels: Fixed labels of every sample at or below this node.
        key_label: The label whose value is this node's key in its parent dict.
    """

    __slots__ = ("key_label", "labels", "samples")

    def __init__(
        self, *, labels: Mapping[str, str] | None = None, key_label: str | None = None
    ) -> None:
        """Create an empty node."""
        super().__init__()
        self.labels: dict[str, str] = dict(labels or {})
        self.key_label = key_label
        self.samples: list[tuple[Family, dict[str, str], Any]] = []

    def put(self, family: Family, value: Any, **labels: str) -> None:
        """Write one value of ``family`` (None: JSON null, no sample).

        Args:
            family: The metric.
            value: A number; a histogram (its ``snapshot()`` is stored); a state string.
            **labels: Labels of this sample beyond the nodes' (e.g. ``http_version``).

        Raises:
            ValueError: A state value that is not one of the family's states.
        """
        key = family.key if family.key is not None else labels[family.labels[-1]]
        if family.kind == "histogram":
            value = value.snapshot()
        elif family.kind == "state" and value not in family.states:
            msg = f"{family.name}: {value!r} is not one of {family.states}"
            raise ValueError(msg)
        self[key] = value
        if value is not None:
            self.samples.append((family, labels, value))

    def child(
        self, key: str, *, labels: Mapping[str, str] | None = None, key_label: str | None = None
    ) -> Node:
        """A new node stored under ``key`` (see the class arguments)."""
        node = Node(labels=labels, key_label=key_label)
        self[key] = node
        return node


def iter_samples(tree: Any) -> Iterator[tuple[Family, dict[str, str], Any]]:
    """Every typed sample in a snapshot: ``(family, all its labels, value)``.

    Plain dicts are walked through (their own values are JSON-only); each node adds its
    labels, and its ``key_label`` takes the key it sits under.
    """
    yield from _walk(tree, {}, None)


def _walk(
    tree: Any, inherited: dict[str, str], key: str | None
) -> Iterator[tuple[Family, dict[str, str], Any]]:
    if not isinstance(tree, Mapping):
        return
    labels = inherited
    if isinstance(tree, Node):
        labels = {**inherited, **tree.labels}
        if tree.key_label is not None and key is not None:
            labels[tree.key_label] = key
        for family, extra, value in tree.samples:
            yield family, {**labels, **extra}, value
    for child_key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _walk(value, labels, str(child_key))


class StatsRegistry:
    """Named statistics sources, collected into one snapshot (owned by the runtime)."""

    def __init__(self) -> None:
        """Create an empty registry."""
        self._sources: dict[str, Callable[[], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def register(self, name: str, source: Callable[[], dict[str, Any]]) -> None:
        """Register (or replace) the source called ``name``; it returns a :class:`Node`."""
        with self._lock:
            self._sources[name] = source

    def unregister(self, name: str) -> None:
        """Remove the source called ``name`` if present."""
        with self._lock:
            self._sources.pop(name, None)

    def snapshot(self) -> dict[str, Any]:
        """Call every source and return ``{name: its node}``."""
        with self._lock:
            sources = dict(self._sources)
        return {name: source() for name, source in sorted(sources.items())}


# ------------------------------------------------------------------ the families
_EP = ("endpoint",)
_BR = ("endpoint", "model")
_MODEL = ("model",)
_PIPE = ("pipeline",)
_STRAT = ("pipeline", "strategy")

#: Pooled transport, one series per endpoint (``pools`` source).
POOL_REQUESTS = _family("counter", "pool_requests", "Requests sent (attempts, warm-ups)", _EP)
POOL_FAILURES = _family("counter", "pool_failures", "Calls that ended in an error", _EP)
POOL_RETRIES = _family("counter", "pool_retries", "Attempts after the first", _EP)
POOL_REPLAYS = _family("counter", "pool_replays", "Resends on a closed pooled connection", _EP)
POOL_CONNECTIONS = _family("counter", "pool_connections_opened", "TCP connections opened", _EP)
POOL_REUSE = _family("gauge", "pool_reuse_ratio", "1 - connections opened / requests", _EP)
POOL_REPLIES = _family(
    "counter", "pool_replies", "Replies per HTTP version", (*_EP, "http_version"), None
)
POOL_IN_FLIGHT = _family("gauge", "pool_in_flight", "Calls started and not finished", _EP)
POOL_PEAK = _family("gauge", "pool_peak_in_flight", "Highest in_flight seen", _EP)
POOL_LATENCY = _family("histogram", "pool_latency_seconds", "Call to end of reply", _EP, "latency")
POOL_HEADERS = _family(
    "histogram", "pool_time_to_headers_seconds", "Call to headers", _EP, "time_to_headers"
)
POOL_WAIT = _family(
    "histogram", "pool_wait_seconds", "Approximate wait for a connection", _EP, "pool_wait"
)

#: Circuit breakers per endpoint and model (``model="*"``: the endpoint-wide one).
BREAKER_STATE = _family(
    "state", "breaker_state", "Circuit breaker state", _BR, "state",
    ("closed", "open", "half_open"),
)  # fmt: skip
BREAKER_CALLS = _family("gauge", "breaker_calls_in_window", "Calls ended in the window", _BR)
BREAKER_FAILURES = _family("gauge", "breaker_failures_in_window", "Failed calls in the window", _BR)
BREAKER_RATE = _family("gauge", "breaker_failure_rate", "Failed / ended calls in window", _BR)
BREAKER_COOLDOWN = _family(
    "gauge", "breaker_cooldown_seconds", "Seconds of the current open period", _BR, "cooldown"
)
BREAKER_RETRY_IN = _family(
    "gauge", "breaker_retry_in_seconds", "Seconds until the next probe", _BR, "retry_in"
)
BREAKER_OPENED = _family("counter", "breaker_times_opened", "Times it opened", _BR)

#: Streams per model (``streams`` source).
STREAMS = _family("counter", "streams", "Streams finished", _MODEL, "streams")
STREAM_CHUNKS = _family("counter", "stream_chunks", "Chunks streamed", _MODEL)
STREAM_OUTCOMES = _family(
    "counter", "stream_outcomes", "Streams per outcome", (*_MODEL, "outcome"), None
)
STREAM_FIRST_CHUNK = _family(
    "histogram", "stream_time_to_first_chunk_seconds", "Start to first chunk", _MODEL,
    "time_to_first_chunk",
)  # fmt: skip
STREAM_FIRST_TEXT = _family(
    "histogram", "stream_time_to_first_text_seconds", "Start to first text", _MODEL,
    "time_to_first_text",
)  # fmt: skip
STREAM_FIRST_TOKEN = _family(
    "histogram", "stream_time_to_first_token_seconds", "Time to first token (callback)",
    _MODEL, "time_to_first_token",
)  # fmt: skip
STREAM_GAP_P50 = _family(
    "histogram", "stream_inter_chunk_p50_seconds", "Per-stream median chunk gap", _MODEL,
    "inter_chunk_p50",
)  # fmt: skip
STREAM_GAP_P95 = _family(
    "histogram", "stream_inter_chunk_p95_seconds", "Per-stream p95 chunk gap", _MODEL,
    "inter_chunk_p95",
)  # fmt: skip
STREAM_GAP_MAX = _family(
    "histogram", "stream_inter_chunk_max_seconds", "Per-stream largest chunk gap", _MODEL,
    "inter_chunk_max",
)  # fmt: skip
STREAM_TOTAL = _family(
    "histogram", "stream_total_time_seconds", "Start to end of stream", _MODEL, "total_time"
)
STREAM_RATE = _family(
    "histogram", "stream_chunks_per_second", "Chunks per second after the first", _MODEL,
    "chunks_per_second",
)  # fmt: skip

#: Ranked fallbacks per pipeline and strategy (``strategies`` source).
PIPELINE_REQUESTS = _family("counter", "pipeline_requests", "Pipeline calls", _PIPE)
PIPELINE_EXTRA = _family("counter", "pipeline_extra_requests", "Hedged extra requests", _PIPE)
PIPELINE_HEDGE_WINS = _family("counter", "pipeline_hedge_wins", "Hedges that won", _PIPE)
PIPELINE_ALL_FAILED = _family("counter", "pipeline_all_failed", "Calls all failed", _PIPE)
STRATEGY_ATTEMPTS = _family("counter", "strategy_attempts", "Attempts", _STRAT)
STRATEGY_SUCCESSES = _family("counter", "strategy_successes", "Successes", _STRAT)
STRATEGY_FAILURES = _family(
    "counter", "strategy_failures", "Failures per reason", (*_STRAT, "reason"), None
)
STRATEGY_FIRST = _family("counter", "strategy_ranked_first", "Times ranked first", _STRAT)
STRATEGY_SKIPPED = _family("counter", "strategy_skipped", "Times skipped", _STRAT)
STRATEGY_PROBES = _family("counter", "strategy_probes", "Exploration probes", _STRAT)
STRATEGY_HEDGES = _family("counter", "strategy_hedge_starts", "Hedges started", _STRAT)
STRATEGY_CANCELLED = _family("counter", "strategy_cancelled", "Attempts cancelled", _STRAT)
STRATEGY_LATENCY = _family(
    "histogram", "strategy_latency_seconds", "Attempt latency", _STRAT, "latency"
)
STRATEGY_TTFC = _family(
    "histogram", "strategy_time_to_first_chunk_seconds", "Attempt to first chunk", _STRAT,
    "ttfc",
)  # fmt: skip

#: Model warm-ups (``preload`` source).
PRELOAD_WARMUPS = _family("counter", "preload_warmups", "Warm-ups per status", ("status",), None)
PRELOAD_REFRESHES = _family("counter", "preload_refreshes", "Keep-alive re-warms", ())
PRELOAD_SECONDS = _family("histogram", "preload_seconds", "Warm-up duration", ())
PRELOAD_STATUS = _family(
    "state", "preload_model_status", "Last warm-up status", _MODEL, "status",
    ("ok", "failed", "timed_out"),
)  # fmt: skip
PRELOAD_MODEL_SECONDS = _family(
    "gauge", "preload_model_seconds", "Last warm-up duration", _MODEL, "seconds"
)

#: Every family, by name.
FAMILIES: Mapping[str, Family] = {
    f.name: f for f in list(globals().values()) if isinstance(f, Family)
}
