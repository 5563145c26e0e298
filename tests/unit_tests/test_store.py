"""Unit tests of the strategy statistics stores (memory and SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.runnables import RunnableLambda

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.pipeline import (
    MemoryStore,
    Outcome,
    RankedFallbacks,
    SQLiteStore,
    StatsStore,
    StrategyStats,
    apply_outcome,
)
from langchain_fastpipe.pipeline._store import decode_sample, encode_sample


def test_apply_outcome_keeps_window_and_lifetime_counts() -> None:
    stats = StrategyStats(name="a")
    for i in range(7):
        stats = apply_outcome(stats, Outcome(i % 2 == 0, 0.1 * i, ttfc=0.01 if i else None), 5)
    assert (stats.successes, stats.failures) == (4, 3)
    assert stats.recent == (True, False, True, False, True)
    assert len(stats.latencies) == 5
    assert len(stats.ttfcs) == 5
    assert stats.success_rate == pytest.approx(0.6)
    assert stats.ttfc_quantile(0.95) == pytest.approx(0.01)
    assert stats.snapshot()["window"] == 5


def test_empty_stats() -> None:
    stats = StrategyStats(name="x")
    assert stats.success_rate is None
    assert stats.latency_mean is None
    assert stats.ttfc_quantile(0.5) is None


def test_sample_encoding_round_trip() -> None:
    assert decode_sample(encode_sample(Outcome(True, 0.25, 0.125))) == (1, 0.25, 0.125)
    assert decode_sample(encode_sample(Outcome(False, 1.5)).encode()) == (0, 1.5, None)


def test_window_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="window"):
        MemoryStore(window=0)
    with pytest.raises(ConfigError, match="window"):
        SQLiteStore(str(tmp_path / "s.db"), window=0)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_store_protocol(kind: str, tmp_path: Path) -> None:
    store: StatsStore = MemoryStore(window=3) if kind == "memory" else SQLiteStore(
        str(tmp_path / "s.db"), window=3
    )
    assert isinstance(store, StatsStore)
    store.record("a", Outcome(True, 0.1, 0.05))
    await store.arecord("a", Outcome(False, 0.2))
    for _ in range(3):
        await store.arecord("b", Outcome(True, 0.3, 0.1))
    store.record("b", Outcome(False, 0.4))
    loaded = await store.aload(["a", "b", "c"])
    assert loaded["a"] == StrategyStats(
        name="a", successes=1, failures=1, recent=(True, False), latencies=(0.1, 0.2),
        ttfcs=(0.05,),
    )
    assert loaded["b"].recent == (True, True, False)  # window of 3
    assert (loaded["b"].successes, loaded["b"].failures) == (3, 1)
    assert loaded["c"] == StrategyStats(name="c")
    assert store.load(["a"]) == {"a": loaded["a"]}
    # A hedge's cancelled loser: only its wait joins the ttfc samples.
    await store.arecord("a", Outcome(False, 0.9, 0.9, "cancelled"))
    after = store.load(["a"])["a"]
    assert after.ttfcs == (0.05, 0.9)
    assert (after.successes, after.failures, after.recent) == (1, 1, (True, False))
    store.clear()
    assert store.load(["a"])["a"].attempts == 0


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "strategies.db")
    store = SQLiteStore(path)
    store.record("a", Outcome(True, 0.5, 0.25))
    store.record("a", Outcome(False, 0.7))
    store.close()
    reopened = SQLiteStore(path)
    stats = reopened.load(["a"])["a"]
    assert (stats.successes, stats.failures) == (1, 1)
    assert stats.ttfcs == (0.25,)
    assert "strategies.db" in repr(reopened)
    reopened.close()


def test_ranked_fallbacks_keep_learning_across_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "ranked.db")

    def broken(_: str) -> str:
        raise ValueError("A down")

    calls = {"A": 0}

    def counted_broken(x: str) -> str:
        calls["A"] += 1
        return broken(x)

    ok = RunnableLambda(lambda x: "b")
    first = RankedFallbacks(runnable=RunnableLambda(broken), fallbacks=[ok],
                            names=["A", "B"], store=SQLiteStore(path), optimized=False)
    for _ in range(20):  # fixed order: A is tried (and fails) every time
        assert first.invoke("q") == "b"
    first.store.close()
    # A new process: same file, fresh object. What was learned makes B lead at once.
    second = RankedFallbacks(runnable=RunnableLambda(counted_broken), fallbacks=[ok],
                             names=["A", "B"], store=SQLiteStore(path), seed=1)
    assert second.learned()["A"].failures == 20
    for _ in range(10):
        assert second.invoke("q") == "b"
    assert calls["A"] <= 2  # at most a probe, instead of 10 first tries
    second.store.close()
