"""Tests of langchain_fastpipe.prometheus: the text exposition parses and carries the stats."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from langchain_fastpipe.prometheus import (
    PrometheusCollector,
    collect_families,
    render_prometheus,
)
from langchain_fastpipe.stats import Histogram, registry

ENDPOINT = "https://127.0.0.1:8443/v1"


def histogram(*values: float) -> dict[str, Any]:
    h = Histogram()
    for v in values:
        h.record(v)
    return h.snapshot()


def snapshot() -> dict[str, Any]:
    return {
        "pools": {
            ENDPOINT: {
                "requests": 3,
                "connections_opened": 1,
                "active_requests": 2,
                "http_version": "HTTP/2",
                "breaker_open": False,
                "latency_seconds": histogram(0.002, 0.3, 4.0),
            },
        },
        "streams": {"started_total": 4, "ttft_seconds": histogram(0.05, 0.07), "last_error": None},
        "strategies": {
            "answer": {
                "requests": 3,
                "strategies": {
                    "direct": {
                        "successes": 2,
                        "failures": {"ValueError": 1},
                        "success_rate": 0.6667,
                    },
                    "json-mode": {"successes": 1, "failures": {}, "success_rate": 1.0},
                },
            }
        },
        "preload": {
            "models": [
                {"model": "gemma3:270m", "load_seconds": 1.5, "ok": True},
                {"model": "qwen3:0.6b", "load_seconds": 0.5, "ok": False},
            ],
            "warm": ["gemma3:270m"],
        },
    }


def parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and s.labels == labels:
            return float(s.value)
    raise AssertionError(f"no sample {sample}{labels} in {families[family].samples}")


def test_render_parses_with_prometheus_client() -> None:
    families = parse(render_prometheus(snapshot()))
    assert families["fastpipe_pools_requests"].type == "counter"
    assert (
        value(
            families, "fastpipe_pools_requests", "fastpipe_pools_requests_total", endpoint=ENDPOINT
        )
        == 3
    )
    assert (
        value(
            families,
            "fastpipe_pools_connections_opened",
            "fastpipe_pools_connections_opened_total",
            endpoint=ENDPOINT,
        )
        == 1
    )
    assert families["fastpipe_pools_active_requests"].type == "gauge"
    assert (
        value(
            families,
            "fastpipe_pools_active_requests",
            "fastpipe_pools_active_requests",
            endpoint=ENDPOINT,
        )
        == 2
    )
    assert (
        value(
            families,
            "fastpipe_pools_breaker_open",
            "fastpipe_pools_breaker_open",
            endpoint=ENDPOINT,
        )
        == 0
    )
    assert value(families, "fastpipe_streams_started", "fastpipe_streams_started_total") == 4
    # Strings and None are not metrics.
    assert not any(
        "http_version" in name or "last_error" in name or "warm" in name for name in families
    )


def test_strategies_and_models_become_labels() -> None:
    families = parse(render_prometheus(snapshot()))
    assert (
        value(
            families,
            "fastpipe_strategies_requests",
            "fastpipe_strategies_requests_total",
            pipeline="answer",
        )
        == 3
    )
    successes = families["fastpipe_strategies_strategies_successes"]
    assert {s.labels["strategy"]: s.value for s in successes.samples} == {
        "direct": 2,
        "json-mode": 1,
    }
    assert {s.labels["pipeline"] for s in successes.samples} == {"answer"}
    assert (
        value(
            families,
            "fastpipe_strategies_strategies_failures",
            "fastpipe_strategies_strategies_failures_total",
            pipeline="answer",
            strategy="direct",
            error="ValueError",
        )
        == 1
    )
    assert value(
        families,
        "fastpipe_strategies_strategies_success_rate",
        "fastpipe_strategies_strategies_success_rate",
        pipeline="answer",
        strategy="direct",
    ) == pytest.approx(0.6667)
    load = families["fastpipe_preload_models_load_seconds"]
    assert {s.labels["model"]: s.value for s in load.samples} == {
        "gemma3:270m": 1.5,
        "qwen3:0.6b": 0.5,
    }
    ok = families["fastpipe_preload_models_ok"]
    assert {s.labels["model"]: s.value for s in ok.samples} == {"gemma3:270m": 1, "qwen3:0.6b": 0}


def test_scalar_children_of_label_containers_become_labels() -> None:
    snap = {
        "pools": {ENDPOINT: {"http_versions": {"HTTP/1.1": 2, "HTTP/2": 5}}},
        "streams": {"models": {"m": {"outcomes": {"ok": 4, "stalled": 1}}}},
    }
    families = parse(render_prometheus(snap))
    versions = families["fastpipe_pools_http_versions"]
    assert versions.type == "counter"
    assert {s.labels["http_version"]: s.value for s in versions.samples} == {
        "HTTP/1.1": 2,
        "HTTP/2": 5,
    }
    outcomes = families["fastpipe_streams_models_outcomes"]
    assert {(s.labels["model"], s.labels["outcome"]): s.value for s in outcomes.samples} == {
        ("m", "ok"): 4,
        ("m", "stalled"): 1,
    }


def test_live_package_statistics_render_and_parse() -> None:
    for module in (
        "langchain_fastpipe.transport",
        "langchain_fastpipe.streaming",
        "langchain_fastpipe.preload",
        "langchain_fastpipe.pipeline",
    ):
        importlib.import_module(module)
    from langchain_fastpipe.stats import get_stats

    text = render_prometheus()
    families = parse(text)  # must not raise, whatever the sources hold right now
    assert set(get_stats()) >= {"pools", "streams", "preload"}
    for name in families:
        assert name.startswith("fastpipe_")


def test_histograms_keep_cumulative_buckets_sum_and_count() -> None:
    snap = snapshot()
    families = parse(render_prometheus(snap))
    fam = families["fastpipe_pools_latency_seconds"]
    assert fam.type == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in fam.samples
        if s.name.endswith("_bucket") and s.labels["endpoint"] == ENDPOINT
    }
    source = snap["pools"][ENDPOINT]["latency_seconds"]["buckets"]
    assert len(buckets) == len(source)
    assert buckets["0.001"] == 0
    assert buckets["0.0025"] == 1
    assert buckets["0.5"] == 2
    assert buckets["+Inf"] == 3
    counts = list(buckets.values())
    assert counts == sorted(counts)  # cumulative
    assert (
        value(
            families,
            "fastpipe_pools_latency_seconds",
            "fastpipe_pools_latency_seconds_count",
            endpoint=ENDPOINT,
        )
        == 3
    )
    assert value(
        families,
        "fastpipe_pools_latency_seconds",
        "fastpipe_pools_latency_seconds_sum",
        endpoint=ENDPOINT,
    ) == pytest.approx(4.302)
    assert (
        value(
            families,
            "fastpipe_pools_latency_seconds_max",
            "fastpipe_pools_latency_seconds_max",
            endpoint=ENDPOINT,
        )
        == 4
    )
    assert value(
        families, "fastpipe_streams_ttft_seconds_p50", "fastpipe_streams_ttft_seconds_p50"
    ) == pytest.approx(0.06)


def test_empty_histogram_has_no_quantile_gauges_and_still_parses() -> None:
    families = parse(render_prometheus({"streams": {"ttft_seconds": histogram()}}))
    assert set(families) == {"fastpipe_streams_ttft_seconds"}
    assert (
        value(families, "fastpipe_streams_ttft_seconds", "fastpipe_streams_ttft_seconds_count") == 0
    )


def test_histogram_without_inf_bucket_gets_one() -> None:
    hist = {"count": 2, "sum": 0.3, "buckets": {"0.1": 1, "1": 2}}
    families = parse(render_prometheus({"x": {"lat": hist}}))
    buckets = {
        s.labels["le"]: s.value
        for s in families["fastpipe_x_lat"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets == {"0.1": 1, "1": 2, "+Inf": 2}


def test_label_values_are_escaped() -> None:
    nasty = 'model "q"\\with\nnewline'
    text = render_prometheus({"preload": {"models": {nasty: {"load_seconds": 1}}}})
    families = parse(text)
    (sample,) = families["fastpipe_preload_models_load_seconds"].samples
    assert sample.labels == {"model": nasty}


def test_names_are_sanitized_and_valid() -> None:
    snap = {"my-source": {"weird key!": 1, "9lives": 2, "nested": {"a.b": {"c": 3}}}}
    text = render_prometheus(snap)
    families = parse(text)
    for name in families:
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), name
    # Keys that are not metric names are label values of their parent.
    assert value(families, "fastpipe_my_source", "fastpipe_my_source", my_source="weird key!") == 1
    assert (
        value(families, "fastpipe_my_source_nested_c", "fastpipe_my_source_nested_c", nested="a.b")
        == 3
    )


def test_each_family_has_exactly_one_type_line() -> None:
    text = render_prometheus(snapshot())
    types = re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
    assert len(types) == len(set(types))
    # Samples of a family are contiguous: the family name only changes at TYPE lines.
    current = None
    seen: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            current = line.split()[2]
            assert current not in seen
            seen.add(current)
        elif not line.startswith("#"):
            assert current is not None
            assert line.startswith(current)


def test_nested_label_containers_stack_labels() -> None:
    snap = {"pools": {ENDPOINT: {"models": {"m1": {"requests": 5}, "m2": {"requests": 6}}}}}
    families = parse(render_prometheus(snap))
    samples = families["fastpipe_pools_models_requests"].samples
    assert {(s.labels["endpoint"], s.labels["model"]): s.value for s in samples} == {
        (ENDPOINT, "m1"): 5,
        (ENDPOINT, "m2"): 6,
    }


def test_list_without_identifier_uses_index() -> None:
    families = parse(render_prometheus({"runs": {"items": [{"ms": 1}, {"ms": 2}, "skip"]}}))
    samples = families["fastpipe_runs_items_ms"].samples
    assert {s.labels["index"]: s.value for s in samples} == {"0": 1, "1": 2}


def test_conflicting_shapes_do_not_break_the_output() -> None:
    snap = {"runs": {"models": {"a": {"lat": histogram(0.1)}, "b": {"lat": 0.5}}}}
    families = parse(render_prometheus(snap))
    assert families["fastpipe_runs_models_lat"].type == "histogram"
    assert families["fastpipe_runs_models_lat_gauge"].type == "gauge"


def test_empty_snapshot_renders_nothing() -> None:
    assert render_prometheus({}) == ""
    assert collect_families({"a": {"b": "text", "c": None}}) == []


def test_prefix_is_configurable() -> None:
    families = parse(render_prometheus({"streams": {"count": 1}}, prefix="app"))
    assert set(families) == {"app_streams_count"}


def test_render_without_argument_reads_the_registry() -> None:
    registry.register("zz_test_prometheus", lambda: {"requests": 7, "lat": histogram(0.2)})
    try:
        families = parse(render_prometheus())
    finally:
        registry.unregister("zz_test_prometheus")
    assert (
        value(
            families,
            "fastpipe_zz_test_prometheus_requests",
            "fastpipe_zz_test_prometheus_requests_total",
        )
        == 7
    )
    assert families["fastpipe_zz_test_prometheus_lat"].type == "histogram"


def test_collector_exposes_the_same_metrics_via_prometheus_client() -> None:
    reg = CollectorRegistry()
    PrometheusCollector(snapshot).register(reg)
    assert reg.get_sample_value("fastpipe_pools_requests_total", {"endpoint": ENDPOINT}) == 3
    labels = {"pipeline": "answer", "strategy": "json-mode"}
    assert reg.get_sample_value("fastpipe_strategies_strategies_successes_total", labels) == 1
    assert (
        reg.get_sample_value(
            "fastpipe_pools_latency_seconds_bucket", {"endpoint": ENDPOINT, "le": "0.5"}
        )
        == 2
    )
    assert reg.get_sample_value("fastpipe_pools_latency_seconds_count", {"endpoint": ENDPOINT}) == 3
    assert reg.get_sample_value("fastpipe_pools_active_requests", {"endpoint": ENDPOINT}) == 2
    # The client's own exposition of our collector parses back too.
    families = parse(generate_latest(reg).decode())
    assert families["fastpipe_streams_ttft_seconds"].type == "histogram"


def test_collector_takes_a_fresh_snapshot_per_scrape() -> None:
    calls = {"n": 0}

    def source() -> dict[str, Any]:
        calls["n"] += 1
        return {"streams": {"started_total": calls["n"]}}

    reg = CollectorRegistry()
    PrometheusCollector(source).register(reg)
    first = reg.get_sample_value("fastpipe_streams_started_total")
    second = reg.get_sample_value("fastpipe_streams_started_total")
    assert first is not None
    assert second is not None
    assert second == first + 1


def test_keys_inside_a_labelled_item_stay_metric_names() -> None:
    snap = {
        "pools": {ENDPOINT: {"timings": {"connect": 0.25}}},
        "preload": {"models": [{"model": "m", "timings": {"load": 1.5}}]},
    }
    families = parse(render_prometheus(snap))
    assert (
        value(
            families,
            "fastpipe_pools_timings_connect",
            "fastpipe_pools_timings_connect",
            endpoint=ENDPOINT,
        )
        == 0.25
    )
    assert (
        value(
            families,
            "fastpipe_preload_models_timings_load",
            "fastpipe_preload_models_timings_load",
            model="m",
        )
        == 1.5
    )
