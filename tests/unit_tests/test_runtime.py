"""The runtime owns every piece of process-wide state; importing a module creates none.

Pools, the metrics registry, the stream and warm-up statistics, the live ranked fallbacks
and the default preloader all belong to ``_runtime.runtime()``, built at its first use.
These tests import modules in a fresh interpreter (nothing created, nothing registered)
and swap the runtime for a fresh one (what ``get_stats()`` and the public handles then
report).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.runnables import RunnableLambda

from langchain_fastpipe import _runtime
from langchain_fastpipe._runtime import Runtime, runtime
from langchain_fastpipe.pipeline import RankedFallbacks
from langchain_fastpipe.preload import ModelPreloader
from langchain_fastpipe.stats import get_stats
from langchain_fastpipe.streaming import (
    StreamStatsCollector,
    TimeToFirstTokenHandler,
    collect,
    default_collector,
    stream_chunks,
)

ROOT = Path(__file__).resolve().parents[2]

_IMPORT_PROBE = """
import importlib, json
import langchain_fastpipe
for name in ("streaming", "preload", "pipeline", "stats", "prometheus", "_metrics"):
    importlib.import_module(f"langchain_fastpipe.{name}")
from langchain_fastpipe import _runtime, streaming, stats
after_import = _runtime._RUNTIME is None
streaming.default_collector  # a handle: looking it up builds nothing
stats.registry
handles = _runtime._RUNTIME is None
snapshot = stats.get_stats()  # the first use: the runtime and its four sources
rt = _runtime._RUNTIME
print(json.dumps({
    "after_import": after_import,
    "handles": handles,
    "keys": sorted(snapshot),
    "streams": snapshot["streams"],
    "strategies": snapshot["strategies"],
    "preloader_built": rt._preloader is not None,
}))
"""


def test_importing_streaming_preload_and_pipeline_creates_and_registers_nothing() -> None:
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", _IMPORT_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["after_import"] is True  # no runtime, so no registration, no state
    assert report["handles"] is True
    assert report["keys"] == ["pools", "preload", "strategies", "streams"]
    assert report["streams"] == {"streams": 0, "models": {}}
    assert report["strategies"] == {}
    assert report["preloader_built"] is False  # statistics do not build the preloader


@pytest.fixture
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """A new, empty runtime for one test (the process's comes back after it)."""
    fresh = Runtime()
    monkeypatch.setattr(_runtime, "_RUNTIME", fresh)
    return fresh


def fake_model(text: str = "abc") -> RunnableLambda[object, str]:
    return RunnableLambda(lambda _x: text)


def test_get_stats_reports_the_runtimes_state(fresh_runtime: Runtime) -> None:
    assert runtime() is fresh_runtime
    snapshot = get_stats()
    assert sorted(snapshot) == ["pools", "preload", "strategies", "streams"]
    assert snapshot["streams"] == {"streams": 0, "models": {}}
    assert snapshot["preload"]["warmups"] == {"ok": 0, "failed": 0, "timed_out": 0}
    assert fresh_runtime._preloader is None


def test_default_collector_is_a_handle_on_the_runtimes_collector(
    fresh_runtime: Runtime,
) -> None:
    assert isinstance(default_collector, StreamStatsCollector)
    assert fresh_runtime._stream_stats is None
    collect(stream_chunks(fake_model(), "hi", model="rt-model"))
    collector = fresh_runtime._stream_stats
    assert collector is not None  # built at the first stream
    assert collector.snapshot()["models"]["rt-model"]["streams"] == 1
    assert default_collector.snapshot() == collector.snapshot()
    assert get_stats()["streams"]["models"]["rt-model"]["streams"] == 1
    TimeToFirstTokenHandler()._collector.record_ttft("rt-model", 0.5)  # its default too
    assert collector.snapshot()["models"]["rt-model"]["time_to_first_token"]["count"] == 1
    default_collector.reset()
    assert get_stats()["streams"] == {"streams": 0, "models": {}}


def test_a_fresh_runtime_forgets_what_the_previous_one_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collect(stream_chunks(fake_model(), "hi", model="rt-forgotten"))
    assert "rt-forgotten" in get_stats()["streams"]["models"]
    monkeypatch.setattr(_runtime, "_RUNTIME", Runtime())
    assert "rt-forgotten" not in get_stats()["streams"]["models"]
    assert "rt-forgotten" not in default_collector.snapshot()["models"]


def test_ranked_fallbacks_are_listed_while_they_live(fresh_runtime: Runtime) -> None:
    ranked = RankedFallbacks(runnable=fake_model("a"), fallbacks=[fake_model("b")], name="rt")
    twin = RankedFallbacks(runnable=fake_model("a"), name="rt")
    ranked.invoke("q")
    strategies = get_stats()["strategies"]
    assert sorted(strategies) == ["rt", "rt#2"]
    assert strategies["rt"]["requests"] == 1
    del ranked, twin
    gc.collect()
    assert get_stats()["strategies"] == {}
    assert fresh_runtime._ranked == {}


async def test_every_preloader_records_into_the_runtimes_warmup_stats(
    fresh_runtime: Runtime,
) -> None:
    pre = ModelPreloader()

    async def broken(_done: object) -> None:
        raise RuntimeError("rt-probe")

    pre.register(broken, name="rt-probe-model")
    await pre.preload()
    assert fresh_runtime._preload_stats is not None
    snapshot = get_stats()["preload"]
    assert snapshot["warmups"]["failed"] == 1
    assert snapshot["models"]["rt-probe-model"]["status"] == "failed"
    assert fresh_runtime._preloader is None  # an own preloader, not the default one


def test_default_preloader_is_the_runtimes_built_at_first_use(fresh_runtime: Runtime) -> None:
    import langchain_fastpipe.preload as preload_module

    assert fresh_runtime._preloader is None
    assert preload_module.default_preloader is fresh_runtime.preloader
    with pytest.raises(AttributeError, match="no_such_name"):
        preload_module.no_such_name  # noqa: B018
