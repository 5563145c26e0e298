"""Streaming over the wire: ChatFastpipe and the pooled transport against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorServer, Fault
from langchain_fastpipe.errors import FirstChunkTimeoutError
from langchain_fastpipe.stats import get_stats
from langchain_fastpipe.streaming import (
    StreamStatsCollector,
    TimeToFirstTokenHandler,
    acollect,
    astream_chunks,
    collect,
    guard_stream,
    stream_chunks,
)
from langchain_fastpipe.transport import EndpointConfig, PoolLimits, get_pool

POOL_LIMIT = 8
HANG_SECONDS = 3.0
FIRST_CHUNK_TIMEOUT = 0.3


async def settle(condition: Callable[[], bool], attempts: int = 300) -> bool:
    """Poll ``condition`` (closing happens on other threads and later loop iterations)."""
    for _ in range(attempts):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def chat_model(server: EmulatorServer, **kwargs: Any) -> ChatFastpipe:
    from langchain_fastpipe.chat_models import (
        ChatFastpipe,
    )  # imported late: built by another engineer

    return ChatFastpipe(
        provider="openai",
        model="emu-model",
        base_url=server.openai_base_url,
        verify=server.ca_cert_path or True,
        http2=server.tls,
        max_connections=POOL_LIMIT,
        max_keepalive_connections=POOL_LIMIT,
        **kwargs,
    )


def pool_of(server: EmulatorServer) -> Any:
    return get_pool(
        EndpointConfig(
            base_url=server.openai_base_url,
            http2=server.tls,
            verify=server.ca_cert_path or True,
            limits=PoolLimits(max_connections=POOL_LIMIT, max_keepalive_connections=POOL_LIMIT),
        )
    )


def pools_stats(server: EmulatorServer) -> list[dict[str, Any]]:
    """The ``"pools"`` statistics entries that talk to ``server``."""
    port = f"127.0.0.1:{server.port}"
    return [entry for entry in get_stats().get("pools", {}).values() if port in entry["endpoint"]]


def client_sockets_to(port: int) -> int | None:
    """Open (not yet closed) TCP sockets whose peer is ``port`` on 127.0.0.1, from /proc.

    The emulator's own ``open_connections`` lags behind clients that reset mid-stream, so the
    kernel's table is the ground truth. None where /proc/net/tcp does not exist.
    """
    path = Path("/proc/net/tcp")
    if not path.exists():
        return None
    count = 0
    for line in path.read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        # 01 ESTABLISHED, 08 CLOSE_WAIT: the socket is still held open by its owner.
        if int(remote.split(":")[1], 16) == port and state in {"01", "08"}:
            count += 1
    return count


def in_flight(server: EmulatorServer) -> int:
    return sum(entry["in_flight"] for entry in pools_stats(server))


PAYLOAD = {"model": "emu-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


# --------------------------------------------------------------------------- raw transport


async def test_guard_stream_over_transport_releases_hung_stream(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    server = make_emulator()
    pool = pool_of(server)
    server.inject(Fault.hang_before_first_byte(HANG_SECONDS))
    with pytest.raises(FirstChunkTimeoutError):
        async for _ in guard_stream(
            pool.astream("/chat/completions", PAYLOAD), first_chunk_timeout=FIRST_CHUNK_TIMEOUT
        ):
            pass
    assert pool.stats()["in_flight"] == 0
    body = b"".join([chunk async for chunk in pool.astream("/chat/completions", PAYLOAD)])
    assert b"[DONE]" in body
    assert pool.stats()["in_flight"] == 0
    await pool.aclose()


async def test_transport_chunks_have_stats(make_emulator: Callable[..., EmulatorServer]) -> None:
    server = make_emulator()
    pool = pool_of(server)
    collector = StreamStatsCollector()
    chunks = [
        c
        async for c in astream_chunks(
            pool.astream("/chat/completions", PAYLOAD), model="raw", collector=collector
        )
    ]
    assert chunks[-1].is_last
    assert b"[DONE]" in b"".join(c.value for c in chunks[:-1])
    assert collector.snapshot()["models"]["raw"]["outcomes"] == {"completed": 1}
    await pool.aclose()


# --------------------------------------------------------------------------- ChatFastpipe


async def test_chunk_texts_concatenate_to_server_text(emulator: EmulatorServer) -> None:
    model = chat_model(emulator)
    reply = await model.ainvoke("tell me something")
    result = await acollect(astream_chunks(model, "tell me something"))
    assert result.text
    assert result.text == reply.content
    assert result.chunks[-1].is_last
    assert sum(c.is_last for c in result.chunks) == 1
    assert result.stats.model == "emu-model"
    assert result.stats.n_chunks >= 2
    assert result.stats.time_to_first_text is not None
    sync = collect(stream_chunks(model, "tell me something"))
    assert sync.text == reply.content


async def test_ttft_handler_over_the_wire(emulator: EmulatorServer) -> None:
    handler = TimeToFirstTokenHandler(collector=None)
    model = chat_model(emulator)
    text = "".join([c.text async for c in astream_chunks(model, "hi", {"callbacks": [handler]})])
    assert text
    assert len(handler.timings) == 1
    assert handler.timings[0].model == "emu-model"
    assert handler.timings[0].time_to_first_token is not None


async def test_watchdog_closes_hung_chat_stream_and_releases_connection(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    server = make_emulator()
    model = chat_model(server)
    collector = StreamStatsCollector()
    server.inject(Fault.hang_before_first_byte(HANG_SECONDS))
    with pytest.raises(FirstChunkTimeoutError):
        await acollect(
            astream_chunks(
                model, "hi", first_chunk_timeout=FIRST_CHUNK_TIMEOUT, collector=collector
            )
        )
    assert await settle(lambda: in_flight(server) == 0)
    assert collector.snapshot()["models"]["emu-model"]["outcomes"] == {"stalled": 1}
    result = await acollect(
        astream_chunks(model, "hi", first_chunk_timeout=30, collector=collector)
    )
    assert result.text
    assert await settle(lambda: in_flight(server) == 0)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_1000_cancelled_streams_leak_nothing(
    make_emulator: Callable[..., EmulatorServer], http2: bool
) -> None:
    server = make_emulator(http2=http2, tls=http2)
    model = chat_model(server)
    collector = StreamStatsCollector()
    first_texts: list[str] = []

    async def one() -> None:
        async with contextlib.aclosing(astream_chunks(model, "hi", collector=collector)) as chunks:
            async for chunk in chunks:
                first_texts.append(chunk.text)
                break

    for _ in range(50):
        await asyncio.gather(*(one() for _ in range(20)))
        # LangChain's nested generators finish closing on later loop turns: let a batch's
        # streams leave before the next batch starts, so the peak counts one batch only.
        assert await settle(lambda: in_flight(server) == 0)
    assert len(first_texts) == 1000
    assert await settle(lambda: in_flight(server) == 0)
    stats = pools_stats(server)
    assert stats
    assert sum(entry["peak_in_flight"] for entry in stats) <= 20 * len(stats)
    assert collector.snapshot()["models"]["emu-model"]["outcomes"] == {"cancelled": 1000}
    if http2:
        assert set().union(*(entry["http_versions"] for entry in stats)) == {"HTTP/2"}
        # Early-closed HTTP/2 streams are reset; their connection stays in the pool.
        assert server.connections_opened <= POOL_LIMIT
        assert sum(entry["connections_opened"] for entry in stats) <= POOL_LIMIT
    # HTTP/1.1 cannot reuse a connection whose body was not read: each is closed instead, so
    # no more than the pool limit stay open on the client side.
    if client_sockets_to(server.port) is not None:
        assert await settle(lambda: (client_sockets_to(server.port) or 0) <= POOL_LIMIT)
