"""Unit tests of the strategy statistics stores (memory and SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableLambda

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.pipeline import (
    MemoryStore,
    Outcome,
    RankedFallbacks,
    RedisStore,
    SQLiteStore,
    StatsStore,
    StrategyStats,
)
from langchain_fastpipe.pipeline._store import apply_outcome, decode_sample, encode_sample


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
    store: StatsStore = (
        MemoryStore(window=3) if kind == "memory" else SQLiteStore(str(tmp_path / "s.db"), window=3)
    )
    assert isinstance(store, StatsStore)
    store.record("a", Outcome(True, 0.1, 0.05))
    await store.arecord("a", Outcome(False, 0.2))
    for _ in range(3):
        await store.arecord("b", Outcome(True, 0.3, 0.1))
    store.record("b", Outcome(False, 0.4))
    loaded = await store.aload(["a", "b", "c"])
    assert loaded["a"] == StrategyStats(
        name="a",
        successes=1,
        failures=1,
        recent=(True, False),
        latencies=(0.1, 0.2),
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
    first = RankedFallbacks(
        runnable=RunnableLambda(broken),
        fallbacks=[ok],
        names=["A", "B"],
        store=SQLiteStore(path),
        optimized=False,
    )
    for _ in range(20):  # fixed order: A is tried (and fails) every time
        assert first.invoke("q") == "b"
    first.store.close()
    # A new process: same file, fresh object. What was learned makes B lead at once.
    second = RankedFallbacks(
        runnable=RunnableLambda(counted_broken),
        fallbacks=[ok],
        names=["A", "B"],
        store=SQLiteStore(path),
        seed=1,
    )
    assert second.learned()["A"].failures == 20
    for _ in range(10):
        assert second.invoke("q") == "b"
    assert calls["A"] <= 2  # at most a probe, instead of 10 first tries
    second.store.close()


def _window_scenario() -> list[Outcome]:
    """Three real outcomes, then five hedge losers (cancelled) with their waits."""
    real = [Outcome(True, 0.1, 0.01), Outcome(False, 0.2), Outcome(True, 0.3, 0.03)]
    losers = [Outcome(False, 1.0 + i, 1.0 + i, "cancelled") for i in range(5)]
    losers.append(Outcome(False, 9.0, None, "cancelled"))  # no ttfc: nothing kept
    return real + losers


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_cancelled_losers_never_push_outcomes_out_of_the_window(
    kind: str, tmp_path: Path
) -> None:
    store: StatsStore = (
        MemoryStore(window=3) if kind == "memory" else SQLiteStore(str(tmp_path / "w.db"), window=3)
    )
    expected = StrategyStats(name="a")
    for outcome in _window_scenario():
        await store.arecord("a", outcome)
        expected = apply_outcome(expected, outcome, 3)
    loaded = store.load(["a"])["a"]
    assert loaded == expected  # every store follows apply_outcome's rule
    assert loaded.recent == (True, False, True)  # the losers took no outcome's place
    assert loaded.latencies == (0.1, 0.2, 0.3)
    assert loaded.ttfcs == (3.0, 4.0, 5.0)  # the last three waits
    # Later real outcomes still roll the window as usual.
    await store.arecord("a", Outcome(False, 0.4))
    assert store.load(["a"])["a"].recent == (False, True, False)


def test_sqlite_keeps_at_most_two_windows_of_rows(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "rows.db"), window=3)
    for i in range(20):
        store.record("a", Outcome(i % 3 != 0, 0.1, 0.1 if i % 2 else None))
        store.record("a", Outcome(False, 0.5, 0.5, "cancelled"))
    rows = store._conn.execute("SELECT COUNT(*) FROM strategy_samples").fetchone()[0]
    assert rows <= 6
    store.close()


async def test_sqlite_async_methods_run_off_the_event_loop(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "t.db"))
    seen: list[int] = []
    record, load = store.record, store.load

    def spy_record(name: str, outcome: Outcome) -> None:
        seen.append(threading.get_ident())
        record(name, outcome)

    def spy_load(names: Sequence[str]) -> dict[str, StrategyStats]:
        seen.append(threading.get_ident())
        return load(names)

    store.record = spy_record  # type: ignore[method-assign]
    store.load = spy_load  # type: ignore[method-assign]
    await store.arecord("a", Outcome(True, 0.1))
    assert (await store.aload(["a"]))["a"].successes == 1
    assert len(seen) == 2
    assert threading.get_ident() not in seen  # the blocking calls ran in worker threads
    store.close()


class _FakeSyncRedis:
    """Just enough of ``redis.Redis`` to see in which thread its pipelines execute."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def pipeline(self, transaction: bool = True) -> _FakeSyncRedis._Pipe:
        return _FakeSyncRedis._Pipe(self)

    class _Pipe:
        def __init__(self, owner: _FakeSyncRedis) -> None:
            self.owner = owner
            self.replies: list[Any] = []

        def __getattr__(self, command: str) -> Any:
            def queue(*args: Any) -> None:
                self.replies.append({} if command == "hgetall" else [])

            return queue

        def execute(self) -> list[Any]:
            self.owner.threads.append(threading.get_ident())
            return self.replies


async def test_redis_with_only_a_sync_client_never_blocks_the_loop() -> None:
    client = _FakeSyncRedis()
    store = RedisStore(client=client, prefix="t")
    await store.arecord("a", Outcome(True, 0.1))
    assert (await store.aload(["a"]))["a"].attempts == 0  # the fake stores nothing
    assert len(client.threads) == 2
    assert threading.get_ident() not in client.threads


def test_one_quantile_for_the_package() -> None:
    from langchain_fastpipe import stats
    from langchain_fastpipe._bench import results
    from langchain_fastpipe.pipeline import _store

    assert _store.quantile is stats.quantile
    assert results.quantile is stats.quantile
    assert StrategyStats(name="a", ttfcs=(0.3, 0.1, 0.2)).ttfc_quantile(0.5) == 0.2
    with pytest.raises(ConfigError, match="between 0 and 1"):
        stats.quantile([1.0], 1.5)
