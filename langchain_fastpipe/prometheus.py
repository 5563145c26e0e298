"""Prometheus text exposition of :func:`langchain_fastpipe.stats.get_stats`.

:func:`render_prometheus` needs no dependency: it turns a stats snapshot into the text
format (version 0.0.4) that Prometheus scrapes. :class:`PrometheusCollector` plugs the same
metrics into ``prometheus_client`` (the optional ``prometheus`` extra, imported lazily).

How a snapshot maps onto metrics (``prefix`` defaults to ``fastpipe``):

* a numeric leaf at ``pools -> requests_total`` becomes ``fastpipe_pools_requests_total``;
  a leaf whose key ends in ``_total`` or is a known event count (``requests``, ``errors``,
  ``retries``, ...) is a counter, every other number (and bool, as 0/1) is a gauge;
* a ``stats.Histogram.snapshot()`` dict (``buckets``, ``sum``, ``count``) becomes a
  histogram, and its ``p50``/``p95``/``p99``/``max`` gauges named ``<name>_p50`` ...;
* the children of the ``pools`` source (endpoints) and ``strategies`` source (pipelines), and
  below the top level of ``endpoints``, ``models``, ``strategies``, ``outcomes``,
  ``http_versions``, ``failures`` ... (:data:`LABEL_CONTAINERS`), become *label values*, as
  does any key that is not a valid metric name (a URL, a model name with ``:``):
  ``pools -> {"http://h:1/v1": {"requests": 3}}`` gives
  ``fastpipe_pools_requests_total{endpoint="http://h:1/v1"} 3``;
* lists of dicts use an identifying field (``endpoint``, ``model``, ``strategy``, ``name``)
  as label, else their index; strings and None are skipped;
* circuit breakers (``pools -> <endpoint> -> breaker``, the endpoint-wide one and each
  model's under ``models``) get their own families, labelled ``endpoint`` and ``model``
  (``model="*"`` is the endpoint-wide breaker, which refuses every model while open):
  ``fastpipe_breaker_state{endpoint=...,model=...,state="open"} 1`` (one sample per state,
  1 for the current one), ``fastpipe_breaker_calls_in_window``,
  ``fastpipe_breaker_failures_in_window``, ``fastpipe_breaker_failure_rate``,
  ``fastpipe_breaker_cooldown_seconds`` (of the current open period),
  ``fastpipe_breaker_retry_in_seconds`` (until the next probe) and the counter
  ``fastpipe_breaker_times_opened_total``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

__all__ = ["PrometheusCollector", "render_prometheus", "stats_app"]

MetricType = Literal["counter", "gauge", "histogram"]

#: Statistics sources (top-level keys) whose children are label values, and the label name.
SOURCE_LABELS: Mapping[str, str] = {
    "pools": "endpoint",  # {endpoint: pool stats}
    "strategies": "pipeline",  # {RankedFallbacks name: {..., "strategies": {...}}}
}

#: Keys (below the top level) whose children are label values, and the label name.
LABEL_CONTAINERS: Mapping[str, str] = {
    "endpoints": "endpoint",
    "pools": "endpoint",
    "by_endpoint": "endpoint",
    "models": "model",
    "by_model": "model",
    "strategies": "strategy",
    "by_strategy": "strategy",
    "outcomes": "outcome",
    "warmups": "status",
    "statuses": "status",
    "http_versions": "http_version",
    "failures": "error",
    "errors": "error",
    "faults": "fault",
}

#: Leaf keys that count events (rendered as counters with a ``_total`` suffix).
COUNTER_KEYS: frozenset[str] = frozenset(
    {
        "requests",
        "errors",
        "failures",
        "successes",
        "attempts",
        "retries",
        "calls",
        "hits",
        "misses",
        "timeouts",
        "fallbacks",
        "probes",
        "streams",
        "chunks",
        "connections_opened",
        "connections_closed",
        "goaway_replays",
        "times_opened",
        "outcomes",
        "http_versions",
        "warmups",
        "refreshes",
        "skipped",
        "cancelled",
        "ranked_first",
        "hedge_starts",
        "hedge_wins",
        "extra_requests",
        "all_failed",
    }
)

#: The states of a circuit breaker: each gets a ``fastpipe_breaker_state`` sample.
BREAKER_STATES: tuple[str, ...] = ("closed", "open", "half_open")

#: The ``model`` label of the endpoint-wide breaker.
ENDPOINT_WIDE = "*"

#: Breaker snapshot keys exported as gauges: metric name (after the prefix) and help.
_BREAKER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("calls_in_window", "breaker_calls_in_window", "calls that ended within the window"),
    ("failures_in_window", "breaker_failures_in_window", "failed calls within the window"),
    ("failure_rate", "breaker_failure_rate", "failed / ended calls within the window"),
    ("cooldown", "breaker_cooldown_seconds", "seconds of the current open period"),
    ("retry_in", "breaker_retry_in_seconds", "seconds until the next probe may go"),
)

_ID_FIELDS = ("endpoint", "model", "strategy", "name", "id")
_HISTOGRAM_GAUGES = ("p50", "p95", "p99", "max")
_NAME_OK = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]+")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One line of the exposition.

    Attributes:
        suffix: Added to the family name (``_bucket``, ``_sum``, ``_count`` or "").
        labels: ``(name, value)`` pairs, in order.
        value: The number.
    """

    suffix: str
    labels: Labels
    value: float


@dataclass
class MetricFamily:
    """All samples of one metric name.

    Attributes:
        name: The metric name (counters end in ``_total``, as text format 0.0.4 writes them).
        type: ``counter``, ``gauge`` or ``histogram``.
        help: Where in the stats snapshot the values come from.
        samples: The samples, in the order found.
    """

    name: str
    type: MetricType
    help: str
    samples: list[Sample] = field(default_factory=list)


def _sanitize(part: str) -> str:
    """A metric-name fragment from any key: invalid characters become ``_``."""
    cleaned = _NAME_BAD_CHARS.sub("_", part).strip("_").lower()
    return cleaned or "value"


def _singular(key: str) -> str:
    """A label name for the children of ``key`` (``models`` -> ``model``)."""
    name = _sanitize(key)
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name or "key"


def _container_label(parts: list[str]) -> str | None:
    """The label name the children of ``parts`` get, or None when they are metric names."""
    if not parts:
        return None
    if len(parts) == 1:
        return SOURCE_LABELS.get(parts[0])
    return LABEL_CONTAINERS.get(parts[-1])


def _is_histogram(value: Any) -> bool:
    """Whether ``value`` is a ``Histogram.snapshot()`` dict."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("buckets"), Mapping)
        and "count" in value
        and "sum" in value
    )


def _is_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` renders as a sample (int, float or bool)."""
    return isinstance(value, (int, float))


def _add_label(labels: Labels, name: str, value: str) -> Labels:
    """``labels`` plus one more; a repeated name gets a numeric suffix."""
    taken = {n for n, _ in labels}
    final, i = name, 2
    while final in taken:
        final, i = f"{name}_{i}", i + 1
    return (*labels, (final, value))


class _Builder:
    """Accumulates families while walking a snapshot."""

    def __init__(self, prefix: str) -> None:
        self.prefix = _sanitize(prefix) if prefix else ""
        self.families: dict[str, MetricFamily] = {}

    def family(self, parts: list[str], kind: MetricType, help_text: str) -> MetricFamily:
        name = "_".join(_sanitize(p) for p in ([self.prefix] if self.prefix else []) + parts)
        if kind == "counter" and not name.endswith("_total"):
            name = f"{name}_total"  # text format 0.0.4: the family is named like its sample
        if not _NAME_OK.match(name):
            name = f"_{name}"
        existing = self.families.get(name)
        if existing is not None and existing.type != kind:
            name = f"{name}_{kind}"  # same path, different shape elsewhere: keep both
            existing = self.families.get(name)
        if existing is None:
            existing = self.families[name] = MetricFamily(name, kind, help_text)
        return existing

    def walk(
        self, node: Any, parts: list[str], labels: Labels, path: str, *, entity: bool = False
    ) -> None:
        """Add the metrics under ``node``.

        ``entity`` means ``node`` is one labelled item (its label already in ``labels``), so
        its keys are metric names even when ``parts`` ends in a label container.
        """
        if _is_histogram(node):
            self.histogram(node, parts, labels, path)
        elif isinstance(node, Mapping):
            self.mapping(node, parts, labels, path, entity=entity)
        elif isinstance(node, (list, tuple)):
            self.sequence(node, parts, labels, path)
        elif _is_number(node):
            self.number(node, parts, labels, path)

    def mapping(
        self, node: Mapping[str, Any], parts: list[str], labels: Labels, path: str, *, entity: bool
    ) -> None:
        container = None if entity else _container_label(parts)
        label_name = container or (_singular(parts[-1]) if parts and not entity else "key")
        for raw_key, value in node.items():
            key = str(raw_key)
            child_path = f"{path}.{key}" if path else key
            is_entity = isinstance(value, Mapping) and not _is_histogram(value)
            as_label = container is not None and not _is_histogram(value)
            if parts and (as_label or not _NAME_OK.match(key)):
                # An identifier (endpoint, model, strategy...): a label, not part of the name.
                child_labels = _add_label(labels, label_name, key)
                self.walk(value, parts, child_labels, child_path, entity=is_entity)
            else:
                self.walk(value, [*parts, key], labels, child_path)

    def sequence(self, node: Any, parts: list[str], labels: Labels, path: str) -> None:
        label_name = _singular(parts[-1]) if parts else "index"
        for index, item in enumerate(node):
            if not isinstance(item, Mapping):
                continue
            ident = next((f for f in _ID_FIELDS if isinstance(item.get(f), str)), None)
            if ident is not None:
                name = label_name if ident in ("name", "id") else ident
                child = {k: v for k, v in item.items() if k != ident}
                value = str(item[ident])
            else:
                name, child, value = "index", dict(item), str(index)
            child_labels = _add_label(labels, name, value)
            self.walk(child, parts, child_labels, f"{path}[{index}]", entity=True)

    def number(self, value: float, parts: list[str], labels: Labels, path: str) -> None:
        if not parts:
            return
        leaf = parts[-1]
        is_counter = leaf.endswith("_total") or leaf in COUNTER_KEYS
        family = self.family(parts, "counter" if is_counter else "gauge", f"fastpipe stats {path}")
        family.samples.append(Sample("", labels, float(value)))

    def histogram(
        self, node: Mapping[str, Any], parts: list[str], labels: Labels, path: str
    ) -> None:
        if not parts:
            return
        family = self.family(parts, "histogram", f"fastpipe stats {path}")
        buckets = node["buckets"]
        running = 0.0
        saw_inf = False
        for bound, count in buckets.items():
            le = _format_le(str(bound))
            saw_inf = saw_inf or le == "+Inf"
            running = float(count)
            family.samples.append(Sample("_bucket", (*labels, ("le", le)), running))
        if not saw_inf:
            count = node.get("count")
            total = float(count) if _is_number(count) else running
            family.samples.append(Sample("_bucket", (*labels, ("le", "+Inf")), total))
        total_sum, count = node.get("sum"), node.get("count")
        family.samples.append(
            Sample("_sum", labels, float(total_sum) if _is_number(total_sum) else 0)
        )
        family.samples.append(Sample("_count", labels, float(count) if _is_number(count) else 0))
        for stat in _HISTOGRAM_GAUGES:
            value = node.get(stat)
            if _is_number(value):
                gauge = self.family([*parts, stat], "gauge", f"fastpipe stats {path}.{stat}")
                gauge.samples.append(Sample("", labels, float(value)))


def _format_le(bound: str) -> str:
    """A bucket bound as Prometheus writes it (``+Inf`` or a float)."""
    if bound.lower() in ("+inf", "inf"):
        return "+Inf"
    try:
        return _format_value(float(bound))
    except ValueError:
        return bound


def collect_families(
    snapshot: Mapping[str, Any], *, prefix: str = "fastpipe"
) -> list[MetricFamily]:
    """Turn a stats snapshot into metric families (pure).

    Args:
        snapshot: A ``get_stats()`` result: ``{source name: nested dict}``.
        prefix: Prepended to every metric name.

    Returns:
        The families, sorted by name, each with at least one sample.
    """
    builder = _Builder(prefix)
    breakers = list(_breaker_rows(snapshot))
    builder.walk(_without_breakers(snapshot) if breakers else snapshot, [], (), "")
    _add_breakers(builder, breakers)
    return [f for _, f in sorted(builder.families.items()) if f.samples]


def _pool_breaker(stats: Any) -> Mapping[str, Any] | None:
    """The ``breaker`` snapshot of one pool's stats, when it is one."""
    breaker = stats.get("breaker") if isinstance(stats, Mapping) else None
    if isinstance(breaker, Mapping) and isinstance(breaker.get("state"), str):
        return breaker
    return None


def _breaker_rows(snapshot: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """``(endpoint, model, breaker snapshot)`` of every breaker under ``pools``."""
    pools = snapshot.get("pools")
    if not isinstance(pools, Mapping):
        return
    for endpoint, stats in pools.items():
        breaker = _pool_breaker(stats)
        if breaker is None:
            continue
        yield str(endpoint), ENDPOINT_WIDE, breaker
        models = breaker.get("models")
        if isinstance(models, Mapping):
            for model, state in models.items():
                if isinstance(state, Mapping) and isinstance(state.get("state"), str):
                    yield str(endpoint), str(model), state


def _without_breakers(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """``snapshot`` with the pools' ``breaker`` entries left out (they get own families)."""
    pools = snapshot["pools"]
    return {
        **snapshot,
        "pools": {
            endpoint: (
                {k: v for k, v in stats.items() if k != "breaker"}
                if _pool_breaker(stats) is not None
                else stats
            )
            for endpoint, stats in pools.items()
        },
    }


def _add_breakers(builder: _Builder, rows: list[tuple[str, str, Mapping[str, Any]]]) -> None:
    """Add the ``breaker_*`` families (see the module docstring) for ``rows``."""
    help_prefix = "fastpipe circuit breaker per endpoint and model (model=* endpoint-wide):"
    for endpoint, model, breaker in rows:
        labels: Labels = (("endpoint", endpoint), ("model", model))
        state = builder.family(["breaker", "state"], "gauge", f"{help_prefix} 1 = its state")
        for name in BREAKER_STATES:
            current = 1.0 if breaker.get("state") == name else 0.0
            state.samples.append(Sample("", (*labels, ("state", name)), current))
        for key, metric, text in _BREAKER_GAUGES:
            value = breaker.get(key)
            if _is_number(value):
                family = builder.family([metric], "gauge", f"{help_prefix} {text}")
                family.samples.append(Sample("", labels, float(value)))
        opened = breaker.get("times_opened")
        if _is_number(opened):
            family = builder.family(
                ["breaker", "times_opened"], "counter", f"{help_prefix} times it opened"
            )
            family.samples.append(Sample("", labels, float(opened)))


def _format_value(value: float) -> str:
    """A sample value in exposition syntax."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    """Escape a label value: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    """Escape HELP text: backslash and newline."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_families(families: list[MetricFamily]) -> str:
    """Render families in the Prometheus text format (pure; ends with a newline)."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            label_text = ",".join(f'{n}="{_escape_label(v)}"' for n, v in sample.labels)
            labels = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{family.name}{sample.suffix}{labels} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""


def render_prometheus(
    snapshot: Mapping[str, Any] | None = None, *, prefix: str = "fastpipe"
) -> str:
    """The package statistics in Prometheus text exposition format.

    Args:
        snapshot: A ``get_stats()`` result; None: take one now.
        prefix: Prepended to every metric name.

    Returns:
        The exposition text (``text/plain; version=0.0.4``), empty when there are no stats.
    """
    if snapshot is None:
        from langchain_fastpipe.stats import get_stats

        snapshot = get_stats()
    return format_families(collect_families(snapshot, prefix=prefix))


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
        if source is None:
            from langchain_fastpipe.stats import get_stats

            source = get_stats
        self._source = source
        self._prefix = prefix

    def collect(self) -> Iterator[Any]:
        """Yield ``prometheus_client`` metric families for one fresh snapshot."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for family in collect_families(self._source(), prefix=self._prefix):
            label_names = _label_names(family)
            metric: Any
            if family.type == "counter":
                metric = CounterMetricFamily(family.name, family.help, labels=label_names)
                for s in family.samples:
                    metric.add_metric(_values(s.labels, label_names), s.value)
            elif family.type == "gauge":
                metric = GaugeMetricFamily(family.name, family.help, labels=label_names)
                for s in family.samples:
                    metric.add_metric(_values(s.labels, label_names), s.value)
            else:
                metric = HistogramMetricFamily(family.name, family.help, labels=label_names)
                for labels, buckets, total in _histograms(family):
                    metric.add_metric(_values(labels, label_names), buckets, sum_value=total)
            yield metric

    def describe(self) -> list[Any]:
        """No fixed description: metric names depend on the live statistics."""
        return []

    def register(self, registry: Any = None) -> PrometheusCollector:
        """Register on ``registry`` (default: ``prometheus_client.REGISTRY``); returns self."""
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        registry.register(self)
        return self


def _label_names(family: MetricFamily) -> list[str]:
    """Every label name used by the family's samples, except ``le``, in first-seen order."""
    names: list[str] = []
    for sample in family.samples:
        for name, _ in sample.labels:
            if name != "le" and name not in names:
                names.append(name)
    return names


def _values(labels: Labels, names: list[str]) -> list[str]:
    """Label values in the order of ``names`` ("" for a label a sample lacks)."""
    given = dict(labels)
    return [given.get(name, "") for name in names]


def _histograms(family: MetricFamily) -> list[tuple[Labels, list[tuple[str, float]], float]]:
    """Group a histogram family's samples per label set: (labels, buckets, sum)."""
    groups: dict[Labels, tuple[list[tuple[str, float]], list[float]]] = {}
    for sample in family.samples:
        base = tuple((n, v) for n, v in sample.labels if n != "le")
        buckets, total = groups.setdefault(base, ([], [0.0]))
        if sample.suffix == "_bucket":
            buckets.append((dict(sample.labels)["le"], sample.value))
        elif sample.suffix == "_sum":
            total[0] = sample.value
    return [(labels, buckets, total[0]) for labels, (buckets, total) in groups.items()]


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
        content_type = b"text/plain; version=0.0.4; charset=utf-8"
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
