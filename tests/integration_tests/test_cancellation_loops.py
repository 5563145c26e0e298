"""Cancellation and event loops: nothing leaks, retries stop, the shared pool works anywhere.

- 1000 streams stopped early (``break`` after the first chunk, and ``task.cancel()``) leave
  no stream in flight and never more connections than the pool's limit; the pool then still
  serves complete answers (no "Max outbound streams" exhaustion over HTTP/2).
- Cancelling a call while it sleeps in a retry back-off stops it: no further request reaches
  the emulator.
- The shared pool (``get_pool``) works across two ``asyncio.run()`` calls, from several
  threads at once (sync and async) and from sync ``invoke`` inside a running loop (Jupyter).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import langchain_fastpipe.chat_models as chat_models_module
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.transport import EndpointConfig, PooledClient, get_pool
from tests.integration_tests._sockets import client_sockets

MakeEmulator = Callable[..., EmulatorServer]

PROMPT = "cancel me softly"
LIMIT = 10
CANCELLED = 1000
BATCH = 50


def model_for(server: EmulatorServer, **kwargs: Any) -> ChatFastpipe:
    kwargs.setdefault("max_connections", LIMIT)
    kwargs.setdefault("max_keepalive_connections", LIMIT)
    return ChatFastpipe(
        provider="openai", model="emu", base_url=server.openai_base_url,
        verify=server.ca_cert_path or True, http2=server.tls, **kwargs,
    )  # fmt: skip


async def settle(condition: Callable[[], bool], attempts: int = 300) -> bool:
    """Poll ``condition``: closing happens on later loop turns and on the server thread.

    A consumer cancelled inside ``async for`` leaves its async generator to the loop's
    finalizer (run when the generator is garbage collected), so collect garbage too.
    """
    for i in range(attempts):
        if condition():
            return True
        if i % 20 == 0:
            gc.collect()
        await asyncio.sleep(0.01)
    return condition()


class PeakConnections:
    """Samples the client's open connections to the emulator in the background.

    The client side is what the pool limit bounds; the server may still hold the far end of
    a connection the client already closed, so its own count can briefly read higher.
    """

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.peak = 0
        self.samples = 0

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, client_sockets(self.server.port))
            self.samples += 1
            await asyncio.sleep(0.005)


async def break_after_first(model: ChatFastpipe) -> str:
    async with contextlib.aclosing(model.astream(PROMPT)) as stream:
        async for chunk in stream:
            return chunk.text
    return ""


async def cancel_after_first(model: ChatFastpipe) -> bool:
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in model.astream(PROMPT):
            got_one.set()
            await asyncio.sleep(3600)  # hold the stream open until cancelled

    task = asyncio.ensure_future(consume())
    await got_one.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return task.cancelled()


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_1000_cancelled_streams_leak_no_connection(
    make_emulator: MakeEmulator, proto: str
) -> None:
    h2 = proto == "h2"
    # slow tokens: every stream is still running when it is stopped
    server = make_emulator(EmulatorConfig(default=ModelProfile(inter_token_seconds=0.01,
                                                               answer_tokens=30)),
                           http2=h2, tls=h2)  # fmt: skip
    model = model_for(server)
    pool = get_pool(model.endpoint_config)
    ref = (await model.ainvoke(PROMPT)).text
    peak = PeakConnections(server)
    watcher = asyncio.ensure_future(peak.run())
    try:
        cancelled = 0
        firsts: list[str] = []
        for start in range(0, CANCELLED, BATCH):
            half = BATCH // 2
            firsts += await asyncio.gather(*(break_after_first(model) for _ in range(half)))
            flags = await asyncio.gather(*(cancel_after_first(model) for _ in range(half)))
            cancelled += sum(flags)
            assert start + BATCH <= CANCELLED
        assert cancelled == CANCELLED // 2
        assert len(firsts) == CANCELLED // 2
        assert await settle(lambda: pool.stats()["in_flight"] == 0), pool.stats()["in_flight"]
        # the server saw every stream end (no request left running on a leaked stream)
        assert await settle(lambda: server.active_requests == 0), server.active_requests
        # the pool still works, and complete answers come back whole
        texts = await asyncio.gather(*(model.ainvoke(PROMPT) for _ in range(3 * LIMIT)))
        assert [t.text for t in texts] == [ref] * (3 * LIMIT)
        streamed = await asyncio.gather(
            *(asyncio.ensure_future(_stream_all(model)) for _ in range(3 * LIMIT))
        )
        assert streamed == [ref] * (3 * LIMIT)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert peak.samples > 0
    assert peak.peak <= LIMIT
    assert client_sockets(server.port) <= LIMIT
    assert await settle(lambda: server.open_connections <= LIMIT)
    stats = pool.stats()
    assert stats["in_flight"] == 0
    assert stats["failures"] == 0
    if h2:  # early closes reset the h2 stream, the connection itself is kept
        assert server.connections_opened <= LIMIT


async def _stream_all(model: ChatFastpipe) -> str:
    return "".join([chunk.text async for chunk in model.astream(PROMPT)])


# --------------------------------------------------------------------------- retry back-off


class BlockingSleep:
    """An injected back-off sleep that never returns (until cancelled); records its calls."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.entered.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize("mode", ["ainvoke", "astream"])
async def test_cancel_during_backoff_stops_the_retry(
    make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    server = make_emulator()
    sleep = BlockingSleep()
    pools: dict[EndpointConfig, PooledClient] = {}

    def fake_get_pool(config: EndpointConfig) -> PooledClient:
        return pools.setdefault(config, PooledClient(config, sleep=sleep))

    monkeypatch.setattr(chat_models_module, "get_pool", fake_get_pool)
    model = model_for(server, max_retries=5)
    server.inject(Fault.status(503), times=10)
    before = server.chat_requests

    async def call() -> None:
        if mode == "ainvoke":
            await model.ainvoke(PROMPT)
        else:
            async for _ in model.astream(PROMPT):
                pass

    task = asyncio.ensure_future(call())
    await asyncio.wait_for(sleep.entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sleep.calls
    assert len(sleep.calls) == 1
    assert server.chat_requests - before == 1
    for _ in range(20):  # give a leaked retry every chance to show up
        await asyncio.sleep(0.01)
    assert server.chat_requests - before == 1
    assert fake_get_pool(model.endpoint_config).stats()["in_flight"] == 0


async def test_cancel_during_retry_after_wait_with_real_sleep(make_emulator: MakeEmulator) -> None:
    server = make_emulator()
    model = model_for(server, max_retries=3)
    server.inject(Fault.rate_limit(retry_after="30"), times=5)
    before = server.chat_requests
    task = asyncio.ensure_future(model.ainvoke(PROMPT))
    assert await settle(lambda: server.chat_requests - before == 1)
    await asyncio.sleep(0.05)  # now inside the 30 s Retry-After wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert server.chat_requests - before == 1
    assert get_pool(model.endpoint_config).stats()["in_flight"] == 0


# --------------------------------------------------------------------------- event loops


def test_shared_pool_across_two_asyncio_runs(emulator: EmulatorServer) -> None:
    model = model_for(emulator)
    pool = get_pool(model.endpoint_config)

    async def once() -> tuple[str, str, object]:
        text = (await model.ainvoke(PROMPT)).text
        streamed = "".join([c.text async for c in model.astream(PROMPT)])
        return text, streamed, get_pool(model.endpoint_config)

    first = asyncio.run(once())
    second = asyncio.run(once())  # the first loop is closed now
    assert first[0] == first[1] == second[0] == second[1]
    assert first[2] is pool
    assert second[2] is pool
    assert pool.stats()["in_flight"] == 0


def test_shared_pool_from_many_threads(emulator_h2: EmulatorServer) -> None:
    model = model_for(emulator_h2)
    ref = model.invoke(PROMPT).text
    barrier = threading.Barrier(8)

    def worker(i: int) -> list[str]:
        barrier.wait()
        out: list[str] = []
        for _ in range(5):
            if i % 2:
                out.append(model.invoke(PROMPT).text)
                out.append("".join(c.text for c in model.stream(PROMPT)))
            else:
                out.append(asyncio.run(model.ainvoke(PROMPT)).text)
                out.append(asyncio.run(_stream_all(model)))
        return out

    with ThreadPoolExecutor(8) as executor:
        results = list(executor.map(worker, range(8)))
    assert results == [[ref] * 10] * 8
    assert get_pool(model.endpoint_config).stats()["in_flight"] == 0


async def test_sync_invoke_inside_a_running_loop(emulator: EmulatorServer) -> None:
    # What a Jupyter cell does: sync calls while the kernel's event loop is running.
    model = model_for(emulator)
    ref = (await model.ainvoke(PROMPT)).text
    assert asyncio.get_running_loop().is_running()
    assert model.invoke(PROMPT).text == ref
    assert "".join(c.text for c in model.stream(PROMPT)) == ref
    assert (await model.ainvoke(PROMPT)).text == ref
    assert get_pool(model.endpoint_config).stats()["in_flight"] == 0


async def test_pool_survives_pytest_loops_part_1(emulator: EmulatorServer) -> None:
    model = model_for(emulator, max_connections=3)
    assert (await model.ainvoke(PROMPT)).text


async def test_pool_survives_pytest_loops_part_2(emulator: EmulatorServer) -> None:
    # same config as part 1: same shared pool, a new event loop
    model = model_for(emulator, max_connections=3)
    assert (
        "".join([c.text async for c in model.astream(PROMPT)]) == (await model.ainvoke(PROMPT)).text
    )
