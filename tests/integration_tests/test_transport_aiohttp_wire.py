"""The opt-in aiohttp engine (``EndpointConfig(engine="aiohttp")``) over real sockets."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from langchain_core.messages import HumanMessage

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorServer, Fault
from langchain_fastpipe.errors import (
    ConfigError,
    EndpointConnectError,
    ProtocolViolationError,
    RateLimitError,
    ServerError,
)
from langchain_fastpipe.transport import EndpointConfig, PooledClient, PoolLimits, RetryPolicy

CHAT = "/chat/completions"


def chat(stream: bool = False) -> dict[str, object]:
    return {"model": "emu", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def no_sleep(seconds: float) -> None:
    return None


def aio_pool(server: EmulatorServer, **kwargs: object) -> PooledClient:
    cfg = EndpointConfig(base_url=server.openai_base_url, engine="aiohttp", **kwargs)  # type: ignore[arg-type]
    return PooledClient(cfg, sleep=no_sleep)


def _engine(pool: PooledClient) -> bool:
    from httpx_aiohttp import AiohttpTransport

    return isinstance(pool._clients.aclient()._transport, AiohttpTransport)


async def test_streams_read_to_the_end_reuse_one_connection(make_emulator) -> None:
    server = make_emulator()
    pool = aio_pool(server)
    try:
        for _ in range(50):
            body = b"".join([c async for c in pool.astream(CHAT, chat(stream=True))])
            assert body.endswith(b"data: [DONE]\n\n")
        assert _engine(pool)
        assert server.connections_opened == 1
        stats = pool.stats()
        assert stats["connections_opened"] == 1  # counted by aiohttp's TraceConfig
        assert stats["requests"] == 50
        assert stats["http_versions"] == {"HTTP/1.1": 50}
        assert stats["in_flight"] == 0
        assert stats["pool_wait"]["count"] == 50  # headers-sent events reached RequestTrace
        assert stats["reuse_ratio"] == pytest.approx(1 - 1 / 50)
        data, info = await pool.apost_json(CHAT, chat())
        assert data["choices"]
        assert info.http_version == "HTTP/1.1"
    finally:
        await pool.aclose()


async def test_early_close_releases_the_connection(make_emulator) -> None:
    server = make_emulator()
    pool = aio_pool(server, limits=PoolLimits(max_connections=2, max_keepalive_connections=2))
    try:
        for _ in range(10):  # more early closes than connections: a leak would block
            async with contextlib.aclosing(pool.astream(CHAT, chat(stream=True))) as gen:
                async for _chunk in gen:
                    break
            assert pool.stats()["in_flight"] == 0
        data, _ = await asyncio.wait_for(pool.apost_json(CHAT, chat()), timeout=20)
        assert data["choices"]
        connector = pool._clients.aclient()._transport.client.connector  # type: ignore[attr-defined]
        assert len(connector._acquired) == 0  # nothing still checked out
    finally:
        await pool.aclose()


async def test_errors_are_typed_and_retried(emulator: EmulatorServer) -> None:
    pool = aio_pool(emulator, retry=RetryPolicy(max_retries=2))
    try:
        emulator.inject(Fault.status(503), times=1)
        _data, info = await pool.apost_json(CHAT, chat())
        assert info.attempts == 2
        emulator.inject(Fault.rate_limit(retry_after="1"), times=3)
        with pytest.raises(RateLimitError):
            await pool.apost_json(CHAT, chat())
        emulator.inject(Fault.truncated_json(), times=1)
        with pytest.raises(ProtocolViolationError):
            await pool.apost_json(CHAT, chat())
        emulator.inject(Fault.reset_mid_stream(after_chunks=2), times=1)
        with pytest.raises((EndpointConnectError, ServerError, ProtocolViolationError)):
            async for _chunk in pool.astream(CHAT, chat(stream=True)):
                pass
        assert pool.stats()["in_flight"] == 0
    finally:
        await pool.aclose()


async def test_connect_refused_is_typed() -> None:
    server = EmulatorServer().start()
    url = server.openai_base_url
    server.stop()
    pool = PooledClient(
        EndpointConfig(base_url=url, engine="aiohttp", retry=RetryPolicy(max_retries=1)),
        sleep=no_sleep,
    )
    try:
        with pytest.raises(EndpointConnectError, match=r"127\.0\.0\.1"):
            await pool.apost_json(CHAT, chat())
        assert pool.stats()["requests"] == 2
    finally:
        await pool.aclose()


async def test_chat_model_on_aiohttp_engine(emulator: EmulatorServer) -> None:
    llm = ChatFastpipe(
        model="emu", base_url=emulator.openai_base_url, api_key="sk-test", engine="aiohttp"
    )
    assert llm.endpoint_config.engine == "aiohttp"
    text = "".join([c.text async for c in llm.astream([HumanMessage("hi")])])
    reply = await llm.ainvoke([HumanMessage("hi")])
    assert text
    assert reply.text == text
    assert reply.response_metadata["http_version"] == "HTTP/1.1"
    assert llm.invoke([HumanMessage("hi")]).text == text  # sync calls stay on httpx


def test_engine_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"ChatFastpipe\.engine"):
        ChatFastpipe(model="m", base_url="http://127.0.0.1:1/v1", engine="curl")
    with pytest.raises(ConfigError, match=r"EndpointConfig\.engine"):
        EndpointConfig(base_url="http://127.0.0.1:1", engine="curl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"HTTP/1\.1 only"):
        EndpointConfig(base_url="http://127.0.0.1:1", engine="aiohttp", http2_prior_knowledge=True)


async def test_pool_calls_skip_the_httpx_layer(emulator: EmulatorServer) -> None:
    """Streams and JSON calls go straight to aiohttp: httpx's transport never sees them."""
    pool = aio_pool(emulator)
    try:
        transport = pool._clients.aclient()._transport
        seen: list[str] = []
        original = transport.handle_async_request

        async def spy(request):  # type: ignore[no-untyped-def]
            seen.append(str(request.url))
            return await original(request)

        transport.handle_async_request = spy  # type: ignore[method-assign]
        body = b"".join([c async for c in pool.astream(CHAT, chat(stream=True))])
        assert body.endswith(b"data: [DONE]\n\n")
        data, info = await pool.apost_json(CHAT, chat())
        assert data["choices"]
        assert info.http_version == "HTTP/1.1"
        assert seen == []
        await pool.awarm(1)  # warm-ups still use the httpx client
        assert len(seen) == 1
    finally:
        await pool.aclose()
