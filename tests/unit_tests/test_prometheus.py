"""Tests of the typed metrics: one declaration, rendered as the JSON snapshot and Prometheus."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import FAMILIES, Node, iter_samples
from langchain_fastpipe.pipeline import RankedFallbacks
from langchain_fastpipe.preload import ModelPreloader
from langchain_fastpipe.prometheus import PrometheusCollector, render_prometheus
from langchain_fastpipe.stats import get_stats, registry
from langchain_fastpipe.streaming import StreamStats, StreamStatsCollector
from langchain_fastpipe.transport import BreakerPolicy
from langchain_fastpipe.transport._breaker import BreakerRegistry, Verdict
from langchain_fastpipe.transport._stats import EndpointStats

ENDPOINT = "https://127.0.0.1:8443/v1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_node(endpoint: str = ENDPOINT) -> Node:
    """What a pool's ``stats()`` returns: its counters plus an open model breaker."""
    stats = EndpointStats(endpoint)
    for _ in range(3):
        stats.count_request()
    stats.count_connection()
    stats.count_version("HTTP/2")
    stats.count_version("HTTP/2")
    stats.count_version("HTTP/1.1")
    stats.enter()
    for value in (0.002, 0.3, 4.0):
        stats.latency.record(value)
    breakers = BreakerRegistry(
        BreakerPolicy(min_calls=1, failure_rate=0.5), endpoint=endpoint, clock=Clock()
    )
    breakers.admit("gemma").report(Verdict("success", "failure"), RuntimeError("boom"))
    return stats.snapshot(breakers.snapshot())


def parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and s.labels == labels:
            return float(s.value)
    raise AssertionError(f"no sample {sample}{labels} in {families[family].samples}")


def test_pool_counters_gauges_and_histograms_are_typed() -> None:
    families = parse(render_prometheus({"pools": {ENDPOINT: pool_node()}}))
    assert families["fastpipe_pool_requests"].type == "counter"
    ep = {"endpoint": ENDPOINT}
    assert value(families, "fastpipe_pool_requests", "fastpipe_pool_requests_total", **ep) == 3
    assert families["fastpipe_pool_in_flight"].type == "gauge"
    assert value(families, "fastpipe_pool_in_flight", "fastpipe_pool_in_flight", **ep) == 1
    replies = families["fastpipe_pool_replies"]
    assert {s.labels["http_version"]: s.value for s in replies.samples} == {
        "HTTP/2": 2,
        "HTTP/1.1": 1,
    }
    latency = families["fastpipe_pool_latency_seconds"]
    assert latency.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket")}
    assert (buckets["0.001"], buckets["0.0025"], buckets["0.5"], buckets["+Inf"]) == (0, 1, 2, 3)
    assert value(
        families, "fastpipe_pool_latency_seconds", "fastpipe_pool_latency_seconds_sum", **ep
    ) == pytest.approx(4.302)


def test_breaker_state_reaches_prometheus_as_a_state_set() -> None:
    families = parse(render_prometheus({"pools": {ENDPOINT: pool_node()}}))
    state = families["fastpipe_breaker_state"]
    current = {
        (s.labels["model"], s.labels["fastpipe_breaker_state"]): s.value for s in state.samples
    }
    assert current[("gemma", "open")] == 1
    assert current[("gemma", "closed")] == 0
    assert current[("*", "closed")] == 1  # the endpoint-wide breaker saw a reply: closed
    assert {s.labels["endpoint"] for s in state.samples} == {ENDPOINT}
    opened = families["fastpipe_breaker_times_opened"]
    assert opened.type == "counter"
    assert {s.labels["model"]: s.value for s in opened.samples} == {"*": 0, "gemma": 1}
    assert not any("last_error" in name for name in families)  # a string: JSON only


def test_json_and_prometheus_carry_the_same_numbers() -> None:
    node = pool_node()
    snapshot = {"pools": {ENDPOINT: node}}
    assert node["requests"] == 3
    assert node["http_versions"] == {"HTTP/2": 2, "HTTP/1.1": 1}
    assert node["breaker"]["models"]["gemma"]["state"] == "open"
    assert node["breaker"]["models"]["gemma"]["last_error"] == "RuntimeError: boom"
    json.dumps(snapshot)  # plain JSON
    reg = CollectorRegistry()
    PrometheusCollector(lambda: snapshot).register(reg)
    for family, labels, sample in iter_samples(snapshot):
        if family.kind in ("counter", "gauge"):
            suffix = "_total" if family.kind == "counter" else ""
            got = reg.get_sample_value(f"fastpipe_{family.name}{suffix}", labels)
            assert got == sample, family.name


def test_every_sample_belongs_to_a_declared_family_with_its_labels() -> None:
    snapshot = {"pools": {ENDPOINT: pool_node()}}
    for family, labels, _ in iter_samples(snapshot):
        assert FAMILIES[family.name] is family
        assert set(labels) >= set(family.labels), family.name
    for family in FAMILIES.values():
        assert family.help
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name)
        assert not family.name.endswith("_total")
        assert (family.kind == "state") == bool(family.states)


def test_streams_and_strategies_are_labelled_by_model_pipeline_and_strategy() -> None:
    streams = StreamStatsCollector()
    streams.record(
        StreamStats(
            model='q"m',
            n_chunks=4,
            time_to_first_chunk=0.1,
            time_to_first_text=0.2,
            inter_chunk_p50=0.01,
            inter_chunk_p95=0.02,
            inter_chunk_max=0.03,
            chunks_per_second=30.0,
            total_time=0.4,
            outcome="stalled",
        )
    )

    def fail(_: Any) -> str:
        raise ValueError("no")

    ranked: RankedFallbacks[Any, Any] = RankedFallbacks(
        runnable=RunnableLambda(fail),
        fallbacks=[RunnableLambda(lambda _: "ok")],
        exceptions_to_handle=(ValueError,),
        name="answer",
        seed=0,
    )
    assert ranked.invoke("x") == "ok"
    families = parse(render_prometheus({"streams": streams.snapshot(), "strategies": {}}))
    assert value(families, "fastpipe_streams", "fastpipe_streams_total", model='q"m') == 1
    outcome = families["fastpipe_stream_outcomes"].samples[0]
    assert outcome.labels == {"model": 'q"m', "outcome": "stalled"}
    families = parse(render_prometheus({"strategies": {"answer": ranked.stats()}}))
    assert (
        value(
            families,
            "fastpipe_pipeline_requests",
            "fastpipe_pipeline_requests_total",
            pipeline="answer",
        )
        == 1
    )
    attempts = families["fastpipe_strategy_attempts"]
    assert {s.labels["strategy"]: s.value for s in attempts.samples} == {
        s.name: 1 for s in ranked.strategies
    }
    failures = families["fastpipe_strategy_failures"].samples
    assert [(s.labels["pipeline"], s.labels["reason"], s.value) for s in failures] == [
        ("answer", "error", 1)
    ]


async def test_preload_results_render_as_counters_and_a_state() -> None:
    pre = ModelPreloader()

    async def broken(done: Any) -> None:
        raise RuntimeError("prom-probe")

    pre.register(broken, name="prom-probe-model")
    await pre.preload()
    families = parse(render_prometheus({"preload": get_stats()["preload"]}))
    status = {
        s.labels["fastpipe_preload_model_status"]: s.value
        for s in families["fastpipe_preload_model_status"].samples
        if s.labels["model"] == "prom-probe-model"
    }
    assert status == {"ok": 0, "failed": 1, "timed_out": 0}
    assert (
        value(
            families, "fastpipe_preload_warmups", "fastpipe_preload_warmups_total", status="failed"
        )
        >= 1
    )


def test_same_endpoint_twice_keeps_two_series() -> None:
    snapshot = {"pools": {ENDPOINT: pool_node(), f"{ENDPOINT} #2": pool_node()}}
    families = parse(render_prometheus(snapshot))
    samples = families["fastpipe_pool_requests"].samples
    assert sorted(s.labels["endpoint"] for s in samples) == [ENDPOINT, f"{ENDPOINT} #2"]


def test_live_registry_renders_and_parses() -> None:
    registry.register("zz_test_prometheus", lambda: {ENDPOINT: pool_node()})
    try:
        text = render_prometheus()
        snapshot = get_stats()
    finally:
        registry.unregister("zz_test_prometheus")
    families = parse(text)
    assert set(snapshot) >= {"zz_test_prometheus", "preload"}
    assert "fastpipe_pool_requests" in families
    for name in families:
        assert name.startswith("fastpipe_")


def test_each_family_has_exactly_one_type_line_and_a_prefix() -> None:
    text = render_prometheus({"pools": {ENDPOINT: pool_node()}}, prefix="app")
    types = re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
    assert len(types) == len(set(types))
    assert all(name.startswith("app_") for name in types)


def test_plain_values_and_empty_snapshots_render_nothing() -> None:
    assert render_prometheus({}) == ""
    assert render_prometheus({"a": {"requests": 3, "b": {"c": 1.5}}}) == ""  # untyped: JSON only


def test_a_state_outside_its_declared_states_is_refused() -> None:
    with pytest.raises(ValueError, match="breaker_state"):
        Node().put(m.BREAKER_STATE, "ajar")


def test_collector_takes_a_fresh_snapshot_per_scrape() -> None:
    stats = EndpointStats(ENDPOINT)
    reg = CollectorRegistry()
    PrometheusCollector(lambda: {"pools": {ENDPOINT: stats.snapshot()}}).register(reg)
    labels = {"endpoint": ENDPOINT}
    assert reg.get_sample_value("fastpipe_pool_requests_total", labels) == 0
    stats.count_request()
    assert reg.get_sample_value("fastpipe_pool_requests_total", labels) == 1
    assert parse(generate_latest(reg).decode())["fastpipe_pool_wait_seconds"].type == "histogram"
