"""RedisStore against a real redis-server started on a free loopback port."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from langchain_core.runnables import RunnableLambda

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.pipeline import Outcome, RankedFallbacks, RedisStore

pytestmark = pytest.mark.redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH (make redis installs it)")
    port = _free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(  # noqa: S603 - fixed arguments
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.025)
        else:
            pytest.fail("redis-server did not answer PING")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"test:{request.node.name}"


def test_needs_url_or_client() -> None:
    with pytest.raises(ConfigError, match="url"):
        RedisStore()


def test_two_stores_share_what_they_learned(redis_url: str, prefix: str) -> None:
    one, two = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    one.record("a", Outcome(True, 0.1, 0.05))
    two.record("a", Outcome(False, 0.3))
    stats = one.load(["a", "b"])
    assert (stats["a"].successes, stats["a"].failures) == (1, 1)
    assert stats["a"].recent == (True, False)
    assert stats["a"].ttfcs == (0.05,)
    assert stats["b"].attempts == 0
    assert two.load(["a"]) == {"a": stats["a"]}
    assert "redis://" not in repr(one)
    two.record("a", Outcome(False, 0.4, 0.4, "cancelled"))
    after = one.load(["a"])["a"]
    assert after.ttfcs == (0.05, 0.4)
    assert (after.successes, after.failures) == (1, 1)
    one.clear()
    assert two.load(["a"])["a"].attempts == 0
    one.close()
    two.close()


async def test_async_path_and_atomic_counts(redis_url: str, prefix: str) -> None:
    stores = [RedisStore(redis_url, prefix=prefix, window=10) for _ in range(4)]
    await asyncio.gather(
        *(s.arecord("a", Outcome(i % 2 == 0, 0.01)) for s in stores for i in range(25))
    )
    stats = (await stores[0].aload(["a"]))["a"]
    assert (stats.successes, stats.failures) == (52, 48)  # no update lost
    assert len(stats.recent) == 10  # window trimmed
    for s in stores:
        await s.aclose()
        s.clear()


def test_sync_client_injection(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client=client, prefix=prefix)
    store.record("x", Outcome(True, 0.2))
    assert store.load(["x"])["x"].successes == 1
    store.clear()
    client.close()


def test_replicas_share_ranking(redis_url: str, prefix: str) -> None:
    calls = {"A": 0}

    def broken(_: str) -> str:
        calls["A"] += 1
        raise ValueError("A down")

    def make(*, optimized: bool) -> RankedFallbacks:
        return RankedFallbacks(
            runnable=RunnableLambda(broken),
            fallbacks=[RunnableLambda(lambda x: "b")],
            names=["A", "B"],
            store=RedisStore(redis_url, prefix=prefix),
            seed=2,
            optimized=optimized,
        )

    replica1, replica2 = make(optimized=False), make(optimized=True)
    for _ in range(20):
        assert replica1.invoke("q") == "b"
    before = calls["A"]
    assert before == 20
    for _ in range(10):
        assert replica2.invoke("q") == "b"
    assert calls["A"] - before <= 2  # replica 2 learned from replica 1's attempts
    replica1.store.clear()


async def test_cancelled_losers_keep_the_memory_store_window_rule(
    redis_url: str, prefix: str
) -> None:
    from langchain_fastpipe.pipeline import MemoryStore

    store, memory = RedisStore(redis_url, prefix=prefix, window=3), MemoryStore(window=3)
    outcomes = [Outcome(True, 0.1, 0.01), Outcome(False, 0.2), Outcome(True, 0.3, 0.03)]
    outcomes += [Outcome(False, 1.0 + i, 1.0 + i, "cancelled") for i in range(5)]
    for outcome in outcomes:
        await store.arecord("a", outcome)
        memory.record("a", outcome)
    loaded = (await store.aload(["a"]))["a"]
    assert loaded == memory.load(["a"])["a"]
    assert loaded.recent == (True, False, True)  # the hedge losers took no outcome's place
    assert loaded.ttfcs == (3.0, 4.0, 5.0)
    await store.aclose()
    store.clear()
