"""Load: 2000 concurrent ChatFastpipe streams through one pool of 50, over real sockets.

Asserted: every stream completes with the exact deterministic answer (no pool-timeout or
any other error), the pool's in-flight count returns to 0, the server never sees more
connections than the limit (sampled while the load runs, and in total), and no HTTP
response the pool made outlives the load (weak references to this pool's own responses,
not a count of every object in the process).

Nothing is timed: the pool timeout and the one deadline (``LOAD_DEADLINE``) only stop a
stuck run, with room for a slow, busy 2-core machine (a quiet one finishes in seconds);
hitting the deadline fails the test with the counts reached so far.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer
from langchain_fastpipe.transport import get_pool

MakeEmulator = Callable[..., EmulatorServer]

STREAMS = 2000
LIMIT = 50
WARMUP = 100
LOAD_DEADLINE = 240.0  # a hang guard, not a performance assertion
PROMPT = "load test prompt"
#: No GOAWAY during the load. Left unset, hypercorn's keep_alive_max_requests=1000 applies
#: and its HTTP/2 GOAWAY aborts every stream in flight on the connection (h2 forbids
#: sending after GOAWAY); streams already past their first byte must not be retried
#: (a retry would repeat text the caller already has), so they fail. GOAWAY is covered by
#: the fault matrix, not by this test.
NO_GOAWAY = EmulatorConfig(goaway_after=10**9)


class ConnectionSampler:
    """Samples the emulator's open TCP connections while a load runs."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.peak = 0
        self.samples = 0

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.server.open_connections)
            self.samples += 1
            await asyncio.sleep(0.005)


async def stream_text(model: ChatFastpipe) -> str:
    return "".join([chunk.text async for chunk in model.astream(PROMPT)])


async def run_load(model: ChatFastpipe, count: int) -> tuple[list[Any], int]:
    """``count`` concurrent streams; returns results (texts or exceptions) and how many ended."""
    tasks = [asyncio.ensure_future(stream_text(model)) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=LOAD_DEADLINE)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    results: list[Any] = []
    for task in tasks:
        if task in done:
            exc = task.exception()
            results.append(exc if exc is not None else task.result())
    return results, len(done)


@pytest.mark.timeout(LOAD_DEADLINE + 60)
@pytest.mark.parametrize(("proto", "start"), [("h1", "warm"), ("h1", "cold"), ("h2", "warm")])
async def test_2000_concurrent_streams_through_a_pool_of_50(
    make_emulator: MakeEmulator, response_tracker: Any, proto: str, start: str
) -> None:
    """``warm``: the pool's connections exist before the burst; ``cold``: they do not."""
    h2 = proto == "h2"
    server = make_emulator(NO_GOAWAY, http2=h2, tls=h2)
    model = ChatFastpipe(
        provider="openai", model="emu", base_url=server.openai_base_url,
        verify=server.ca_cert_path or True, http2=h2,
        max_connections=LIMIT, max_keepalive_connections=LIMIT, timeout=LOAD_DEADLINE,
    )  # fmt: skip
    pool = get_pool(model.endpoint_config)
    ref = (await model.ainvoke(PROMPT)).text
    sampler = ConnectionSampler(server)
    watcher = asyncio.ensure_future(sampler.run())
    try:
        if start == "warm":
            warm, _ = await run_load(model, WARMUP)
            assert warm == [ref] * WARMUP
        else:
            await pool.aclose()  # drop the reference call's connection: a cold burst
            assert pool.stats()["in_flight"] == 0
        # The reference call's connection (closed again for a cold start) is not the load's.
        # Hypercorn keeps its side of a keep-alive connection the client closed open
        # (CLOSE-WAIT) until its keep-alive timeout: the server still counts it.
        opened_before = pool.stats()["connections_opened"]
        server_opened_before = server.connections_opened
        lingering = server.open_connections if start == "cold" else 0

        response_tracker.track_async(pool)  # this loop's client, as the load will use it
        results, finished = await run_load(model, STREAMS)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    errors = [r for r in results if isinstance(r, BaseException)]
    kinds = sorted({f"{type(e).__name__}: {str(e)[:80]}" for e in errors})
    assert finished == STREAMS, f"only {finished}/{STREAMS} streams ended before the deadline"
    assert errors == [], f"{len(errors)} streams failed: {kinds}"
    assert results == [ref] * STREAMS

    stats = pool.stats()
    assert stats["in_flight"] == 0
    assert stats["failures"] == 0
    assert stats["connections_opened"] - opened_before <= LIMIT
    assert server.connections_opened - server_opened_before <= LIMIT
    assert sampler.samples > 0
    assert sampler.peak <= LIMIT + lingering
    assert server.open_connections <= LIMIT + lingering

    del results
    assert len(response_tracker.refs) >= STREAMS
    assert response_tracker.alive() == 0
