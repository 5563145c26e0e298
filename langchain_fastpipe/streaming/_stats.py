"""Stream statistics: one stream's :class:`StreamStats` and the per-model collector.

The package-wide collector belongs to the runtime (``runtime().stream_stats``, the
``"streams"`` statistics source), built at its first use; :data:`default_collector` is a
stateless handle on it, so importing this module creates and registers nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.stats import Histogram

__all__ = ["Clock", "StreamOutcome", "StreamStats", "StreamStatsCollector", "default_collector"]

#: A monotonic clock in seconds (``time.monotonic``, or a fake one in tests).
Clock = Callable[[], float]

#: How a stream ended: read to its end, closed early by the consumer (break, cancel), stalled
#: (watchdog) or failed with another error.
StreamOutcome = Literal["completed", "cancelled", "stalled", "error"]

_MAX_MODELS = 256
_OTHER_MODELS = "__other__"
_RATE_BUCKETS: tuple[float, ...] = (
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStats:
    """Timing statistics of one stream (seconds, from the injected clock).

    Attributes:
        model: The model name the stream is aggregated under.
        n_chunks: Items the source yielded (the synthetic terminal record is not counted).
        time_to_first_chunk: Start of the stream to its first item, or None if none came.
        time_to_first_text: Start of the stream to its first item with non-empty text (the
            "first words"; a role-only first chunk does not count), or None.
        inter_chunk_p50: Median gap between consecutive items, or None with fewer than 2.
        inter_chunk_p95: 95th percentile of those gaps, or None.
        inter_chunk_max: Largest gap, or None.
        chunks_per_second: ``(n_chunks - 1) / (last item time - first item time)``: the
            generation rate after the first chunk; None with fewer than 2 items or no span.
        total_time: Start of the stream to its end (or to the item flagged last).
        outcome: How the stream ended.
    """

    model: str
    n_chunks: int
    time_to_first_chunk: float | None
    time_to_first_text: float | None
    inter_chunk_p50: float | None
    inter_chunk_p95: float | None
    inter_chunk_max: float | None
    chunks_per_second: float | None
    total_time: float
    outcome: StreamOutcome

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return asdict(self)


class _ModelStreams:
    """Per-model aggregate: counters and histograms over streams."""

    __slots__ = (
        "chunks",
        "chunks_per_second",
        "inter_chunk_max",
        "inter_chunk_p50",
        "inter_chunk_p95",
        "outcomes",
        "streams",
        "time_to_first_chunk",
        "time_to_first_text",
        "time_to_first_token",
        "total_time",
    )

    def __init__(self) -> None:
        self.streams = 0
        self.chunks = 0
        self.outcomes: dict[str, int] = {}
        self.time_to_first_chunk = Histogram()
        self.time_to_first_text = Histogram()
        self.time_to_first_token = Histogram()
        self.inter_chunk_p50 = Histogram()
        self.inter_chunk_p95 = Histogram()
        self.inter_chunk_max = Histogram()
        self.total_time = Histogram()
        self.chunks_per_second = Histogram(_RATE_BUCKETS)

    def snapshot(self, streams: int, chunks: int, outcomes: dict[str, int]) -> Node:
        """The aggregate, with the counters read under the collector's lock.

        The histograms (locked on their own) are read here, outside that lock: sorting their
        reservoirs must not block the streams that end meanwhile.
        """
        node = Node(key_label="model")
        node.put(m.STREAMS, streams)
        node.put(m.STREAM_CHUNKS, chunks)
        by_outcome = node.child("outcomes")
        for outcome, count in outcomes.items():
            by_outcome.put(m.STREAM_OUTCOMES, count, outcome=outcome)
        node.put(m.STREAM_FIRST_CHUNK, self.time_to_first_chunk)
        node.put(m.STREAM_FIRST_TEXT, self.time_to_first_text)
        node.put(m.STREAM_FIRST_TOKEN, self.time_to_first_token)
        node.put(m.STREAM_GAP_P50, self.inter_chunk_p50)
        node.put(m.STREAM_GAP_P95, self.inter_chunk_p95)
        node.put(m.STREAM_GAP_MAX, self.inter_chunk_max)
        node.put(m.STREAM_TOTAL, self.total_time)
        node.put(m.STREAM_RATE, self.chunks_per_second)
        return node


class StreamStatsCollector:
    """Aggregates :class:`StreamStats` and time-to-first-token observations per model.

    Each model gets histograms (time to first chunk/text/token, per-stream inter-chunk
    p50/p95/max, total time, chunks per second) plus stream, chunk and outcome counters. At most
    256 model names are tracked; further names are pooled under ``"__other__"``.
    """

    def __init__(self) -> None:
        """Create an empty collector."""
        self._lock = threading.Lock()
        self._models: dict[str, _ModelStreams] = {}

    def _model(self, name: str) -> _ModelStreams:
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                if len(self._models) >= _MAX_MODELS:
                    name = _OTHER_MODELS
                entry = self._models.setdefault(name, _ModelStreams())
            return entry

    def record(self, stats: StreamStats) -> None:
        """Add one finished stream to its model's aggregate."""
        entry = self._model(stats.model)
        with self._lock:
            entry.streams += 1
            entry.chunks += stats.n_chunks
            entry.outcomes[stats.outcome] = entry.outcomes.get(stats.outcome, 0) + 1
        pairs = (
            (entry.time_to_first_chunk, stats.time_to_first_chunk),
            (entry.time_to_first_text, stats.time_to_first_text),
            (entry.inter_chunk_p50, stats.inter_chunk_p50),
            (entry.inter_chunk_p95, stats.inter_chunk_p95),
            (entry.inter_chunk_max, stats.inter_chunk_max),
            (entry.chunks_per_second, stats.chunks_per_second),
        )
        for histogram, value in pairs:
            if value is not None:
                histogram.record(value)
        entry.total_time.record(stats.total_time)

    def record_ttft(self, model: str, seconds: float) -> None:
        """Add one time-to-first-token observation (from ``TimeToFirstTokenHandler``)."""
        self._model(model).time_to_first_token.record(seconds)

    def snapshot(self) -> Node:
        """JSON-serializable ``{"streams": total, "models": {model: aggregate}}``.

        Each model's aggregate holds the ``stream*`` metric families, labelled ``model``;
        the total is JSON-only (Prometheus sums the per-model counter).
        """
        with self._lock:
            counts = [
                (name, entry, entry.streams, entry.chunks, dict(entry.outcomes))
                for name, entry in sorted(self._models.items())
            ]
        per_model = {
            name: entry.snapshot(streams, chunks, outcomes)
            for name, entry, streams, chunks, outcomes in counts
        }
        node = Node()
        node["streams"] = sum(entry["streams"] for entry in per_model.values())
        node.child("models").update(per_model)
        return node

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._models.clear()


class _RuntimeCollector(StreamStatsCollector):
    """The runtime's collector, looked up at each use (``runtime().stream_stats``).

    Holds no state of its own: every call goes to the collector the runtime owns, which
    is built at the first one.
    """

    def __init__(self) -> None:
        """Nothing of its own to create (no lock, no models)."""

    def record(self, stats: StreamStats) -> None:
        """Add one finished stream to its model's aggregate."""
        runtime().stream_stats.record(stats)

    def record_ttft(self, model: str, seconds: float) -> None:
        """Add one time-to-first-token observation."""
        runtime().stream_stats.record_ttft(model, seconds)

    def snapshot(self) -> Node:
        """The runtime's ``{"streams": total, "models": {model: aggregate}}``."""
        return runtime().stream_stats.snapshot()

    def reset(self) -> None:
        """Forget everything the runtime's collector recorded so far."""
        runtime().stream_stats.reset()

    def __repr__(self) -> str:
        return "default_collector"


#: The package-wide collector, the ``"streams"`` statistics source: a handle on the
#: runtime's collector (``runtime().stream_stats``), which is built at its first use.
default_collector: StreamStatsCollector = _RuntimeCollector()
