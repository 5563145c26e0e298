"""Prometheus exposition of the package statistics, through ``prometheus_client``.

The statistics are declared once, as metric families with their type, help and labels
(``langchain_fastpipe._metrics``); :func:`langchain_fastpipe.stats.get_stats` is their JSON
rendering and this module their Prometheus rendering. :class:`PrometheusCollector` yields
``prometheus_client`` families (counter, gauge, histogram and state set) from one fresh
snapshot per scrape; :func:`render_prometheus` and :func:`stats_app` write them with
``prometheus_client.generate_latest``. Needs the optional ``prometheus`` extra, imported
only here, when rendering.

Metric names are ``<prefix>_<family>`` (``fastpipe_pool_requests_total``,
``fastpipe_breaker_state``, ``fastpipe_stream_time_to_first_chunk_seconds``...). Labels
come from where a value sits in the snapshot: ``endpoint`` (pools and breakers),
``model`` (breakers, with ``model="*"`` for the endpoint-wide breaker; streams; warm-ups),
``pipeline`` and ``strategy`` (ranked fallbacks), and the family's own (``http_version``,
``outcome``, ``reason``, ``status``). A state family (the breaker's state, a warm-up's
status) has one sample per possible state, 1 for the current one. Strings other than
states (URLs, last errors) stay in the JSON only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from langchain_fastpipe._metrics import Family, iter_samples

__all__ = ["PrometheusCollector", "render_prometheus", "stats_app"]

#: The content type of :func:`render_prometheus`'s text.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _default_source() -> Mapping[str, Any]:
    from langchain_fastpipe.stats import get_stats

    return get_stats()


class PrometheusCollector:
    """A ``prometheus_client`` collector exposing the package statistics.

    Register it once: ``prometheus_client.REGISTRY.register(PrometheusCollector())``, or
    call :meth:`register`. Needs the optional ``prometheus`` extra.
    """

    def __init__(
        self,
        source: Callable[[], Mapping[str, Any]] | None = None,
        *,
        prefix: str = "fastpipe",
    ) -> None:
        """Create a collector.

        Args:
            source: Returns a stats snapshot; None: ``langchain_fastpipe.stats.get_stats``.
            prefix: Prepended to every metric name.
        """
        self._source = source if source is not None else _default_source
        self._prefix = f"{prefix}_" if prefix else ""

    def collect(self) -> Iterator[Any]:
        """Yield ``prometheus_client`` metric families for one fresh snapshot."""
        rows: dict[Family, dict[tuple[str, ...], Any]] = {}
        for family, labels, value in iter_samples(self._source()):
            key = tuple(labels.get(name, "") for name in family.labels)
            rows.setdefault(family, {}).setdefault(key, value)  # first one wins
        for family in sorted(rows, key=lambda f: f.name):
            yield self._family(family, rows[family])

    def _family(self, family: Family, rows: dict[tuple[str, ...], Any]) -> Any:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            StateSetMetricFamily,
        )

        name, labels = self._prefix + family.name, list(family.labels)
        metric: Any
        if family.kind == "histogram":
            metric = HistogramMetricFamily(name, family.help, labels=labels)
            for values, snap in rows.items():
                buckets = [(le, float(n)) for le, n in snap["buckets"].items()]
                metric.add_metric(list(values), buckets, sum_value=float(snap["sum"]))
        elif family.kind == "state":
            metric = StateSetMetricFamily(name, family.help, labels=labels)
            for values, state in rows.items():
                metric.add_metric(list(values), {s: s == state for s in family.states})
        else:
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(name, family.help, labels=labels)
            for values, number in rows.items():
                metric.add_metric(list(values), float(number))
        return metric

    def describe(self) -> list[Any]:
        """No fixed description: the label values depend on the live statistics."""
        return []

    def register(self, registry: Any = None) -> PrometheusCollector:
        """Register on ``registry`` (default: ``prometheus_client.REGISTRY``); returns self."""
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        registry.register(self)
        return self


def render_prometheus(
    snapshot: Mapping[str, Any] | None = None, *, prefix: str = "fastpipe"
) -> str:
    """The package statistics in the Prometheus text format (``generate_latest``).

    Args:
        snapshot: A ``get_stats()`` result; None: take one now.
        prefix: Prepended to every metric name.

    Returns:
        The exposition text (:data:`CONTENT_TYPE`), empty when there are no metrics.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    fixed = snapshot
    PrometheusCollector((lambda: fixed) if fixed is not None else None, prefix=prefix).register(
        registry
    )
    return generate_latest(registry).decode()


async def stats_app(
    scope: dict[str, Any],
    receive: Callable[[], Any],
    send: Callable[[dict[str, Any]], Any],
) -> None:
    """A tiny ASGI app exposing this process's statistics.

    Mount it in a FastAPI/Starlette app (``app.mount("/fastpipe", stats_app)``):
    ``GET .../metrics`` answers the Prometheus text format, any other path the JSON
    snapshot of :func:`langchain_fastpipe.stats.get_stats` (what ``fastpipe stats --url``
    reads). Other scope types (lifespan, websocket) are ignored.
    """
    import json

    from langchain_fastpipe.stats import get_stats

    if scope.get("type") != "http":
        return
    snapshot = get_stats()
    if str(scope.get("path", "")).rstrip("/").endswith("/metrics"):
        body = render_prometheus(snapshot).encode()
        content_type = CONTENT_TYPE.encode()
    else:
        body = json.dumps(snapshot, default=str).encode()
        content_type = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
