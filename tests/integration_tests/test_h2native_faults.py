"""The ``"h2"`` engine against a scripted h2c server (:mod:`._h2server`) over real sockets.

Regressions of a review: the connection receive window refilled only per stream every
256 KiB (deadlock with many streams), half-closed streams leaked after an early answer,
an endless reconnect loop on a server that GOAWAYs every connection, connection-specific
request headers (``te``) breaking HPACK, no happy eyeballs, resets before the response
replayed at once, settings sent after the preface, a peer stream limit that never rose
again and a lost wake-up of a cancelled waiter. Plus large bodies either way, gzip, and
no API key in any error. Nothing is timed: deadlines only stop hangs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h2.errors
import h2.settings
import httpx
import pytest

from langchain_fastpipe.errors import EndpointConnectError, ProtocolViolationError
from langchain_fastpipe.transport import EndpointConfig, PooledClient
from langchain_fastpipe.transport._config import PoolLimits, RetryPolicy
from langchain_fastpipe.transport._h2native import StreamResetError
from langchain_fastpipe.transport._h2native_pool import H2Engine
from tests.integration_tests._h2server import H2TestServer

pytestmark = [pytest.mark.timeout(180)]

T = httpx.Timeout(30.0)
HANG: float = 120.0  # deadline against hangs only
SECRET = "sk-test-SECRET-0123456789abcdef"
CODES = h2.errors.ErrorCodes


def engine_for(server: H2TestServer, **kwargs: Any) -> H2Engine:
    config = EndpointConfig(base_url=server.url, http2_prior_knowledge=True, engine="h2", **kwargs)
    return H2Engine(config, None)


def pool_for(server: H2TestServer, retries: int = 1, **kwargs: Any) -> PooledClient:
    config = EndpointConfig(
        base_url=server.url, http2_prior_knowledge=True, engine="h2",
        retry=RetryPolicy(max_retries=retries, initial_backoff=0.01, max_backoff=0.02),
        **kwargs,
    )  # fmt: skip
    return PooledClient(config)


async def fetch(
    engine: H2Engine,
    server: H2TestServer,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    decoded: bool = False,
) -> tuple[int, bytes]:
    method = "GET" if body is None else "POST"
    url = httpx.URL(server.url + path)
    reply = await engine.asend(method, url, body, headers or {}, T, None)
    chunks = reply.aiter_bytes() if decoded else reply.aiter_raw()
    data = b"".join([chunk async for chunk in chunks])
    await reply.aclose()
    return reply.status_code, data


def error_texts(exc: BaseException) -> str:
    """The text of ``exc`` and of every exception chained to it."""
    texts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, current.args)]
        todo += [current.__cause__, current.__context__]
    return "\n".join(texts)


# ------------------------------------------------------------------ flow control


@pytest.mark.parametrize("count", [64, 70])
async def test_many_concurrent_bodies_do_not_starve_the_connection_window(count: int) -> None:
    """64/70 streams x 300 KB, sent round-robin: more than the 16 MiB connection window
    while each stream holds less than a quarter of its own (the old ack threshold)."""
    async with H2TestServer() as server:
        engine = engine_for(server)
        replies = await asyncio.wait_for(
            asyncio.gather(
                *(fetch(engine, server, f"/gather/{count}/300000") for _ in range(count))
            ),
            HANG,
        )
        assert [(status, len(data)) for status, data in replies] == [(200, 300000)] * count
        assert server.connections == 1
        await engine.aclose()


async def test_response_bodies_over_1_mib() -> None:
    async with H2TestServer() as server:
        engine = engine_for(server)
        for size in (1 << 20, 3_000_000):
            status, data = await asyncio.wait_for(fetch(engine, server, f"/big/{size}"), HANG)
            assert (status, len(data)) == (200, size)
        await engine.aclose()


async def test_request_bodies_over_64_kib() -> None:
    settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535}
    async with H2TestServer(settings=settings) as server:
        engine = engine_for(server)
        for size in (70_000, 3_000_000):
            reply = await asyncio.wait_for(fetch(engine, server, "/echo", b"a" * size), HANG)
            assert reply == (200, str(size).encode())
        await engine.aclose()


async def test_gzip_content_encoding_is_decoded() -> None:
    async with H2TestServer() as server:
        engine = engine_for(server)
        status, data = await fetch(engine, server, "/gzip/100000", decoded=True)
        assert (status, data) == (200, b"x" * 100000)
        await engine.aclose()


async def test_settings_go_in_the_preface() -> None:
    """Our SETTINGS are the preface's: a server that never ACKs them may still use them."""
    async with H2TestServer(no_settings_ack=True) as server:
        engine = engine_for(server)
        status, data = await asyncio.wait_for(fetch(engine, server, "/big/300000"), HANG)
        assert (status, len(data)) == (200, 300000)
        first = server.client_settings[0]
        assert first[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 1 << 20
        assert first[h2.settings.SettingCodes.ENABLE_PUSH] == 0
        assert len(server.client_settings) == 1
        await engine.aclose()


# ------------------------------------------------------------------ stream slots


async def test_early_answer_resets_the_half_closed_stream() -> None:
    """413 with END_STREAM before our body was sent: the stream is reset, not leaked."""
    settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 10}
    async with H2TestServer(settings=settings, hold_body=True) as server:
        engine = engine_for(server)
        for _ in range(25):
            reply = await asyncio.wait_for(fetch(engine, server, "/early", b"b" * 100000), HANG)
            assert reply == (413, b"too big")
            (conn,) = engine._conns
            assert conn.h2.open_outbound_streams == 0
            assert conn.takes()
        assert server.connections == 1
        assert len(server.resets) == 25
        assert {code for _, code in server.resets} == {CODES.CANCEL}
        await engine.aclose()


async def test_streams_h2_counts_but_we_do_not_move_requests_to_a_new_connection() -> None:
    """TooManyStreamsError below our own limit: the connection drains, another serves."""
    settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2}
    async with H2TestServer(settings=settings) as server:
        engine = engine_for(server)
        assert await fetch(engine, server, "/empty") == (204, b"")
        (conn,) = engine._conns
        for _ in range(2):  # streams h2 holds open behind the engine's back
            stream_id = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(stream_id, [
                (b":method", b"GET"), (b":path", b"/barrier/99"),
                (b":scheme", b"http"), (b":authority", b"x"),
            ], end_stream=True)  # fmt: skip
        conn.flush()
        reply = await asyncio.wait_for(fetch(engine, server, "/empty"), HANG)
        assert reply == (204, b"")
        assert server.connections == 2
        assert conn.draining
        await engine.aclose()


async def test_a_raised_peer_stream_limit_is_honoured() -> None:
    settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}
    async with H2TestServer(settings=settings) as server:
        engine = engine_for(server, limits=PoolLimits(max_connections=1))
        assert await fetch(engine, server, "/raise-limit/8") == (204, b"")
        (conn,) = engine._conns
        assert conn.limit == 8
        replies = await asyncio.wait_for(
            asyncio.gather(*(fetch(engine, server, "/barrier/8") for _ in range(8))), HANG
        )
        assert replies == [(200, b"ok")] * 8
        assert server.max_open == 8
        assert server.connections == 1
        await engine.aclose()


async def test_a_cancelled_waiter_passes_its_wake_up_on() -> None:
    async with H2TestServer() as server:
        limits = PoolLimits(max_connections=1, max_concurrent_streams=1)
        engine = engine_for(server, limits=limits)
        held = await engine.asend("GET", httpx.URL(server.url + "/big/10"), None, {}, T, None)
        first = asyncio.create_task(fetch(engine, server, "/empty"))
        second = asyncio.create_task(fetch(engine, server, "/empty"))
        for _ in range(1000):
            if len(engine._waiters) == 2:
                break
            await asyncio.sleep(0.001)
        assert len(engine._waiters) == 2
        await held.aclose()  # wakes ``first`` (no loop turn in between)...
        first.cancel()  # ...which is cancelled before it looks
        assert await asyncio.wait_for(second, HANG) == (204, b"")
        with pytest.raises(asyncio.CancelledError):
            await first
        await engine.aclose()


# ------------------------------------------------------------------ connections


async def test_goaway_on_every_new_connection_gives_up() -> None:
    async with H2TestServer(goaway_at_once=True) as server:
        engine = engine_for(server)
        with pytest.raises(httpx.ConnectError, match="GOAWAY"):
            await asyncio.wait_for(fetch(engine, server, "/empty"), HANG)
        assert server.connections == 3
        await engine.aclose()


async def test_goaway_on_every_new_connection_is_retried_after_backoff() -> None:
    async with H2TestServer(goaway_at_once=True) as server:
        pool = pool_for(server, retries=1)
        with pytest.raises(EndpointConnectError):
            await asyncio.wait_for(pool.aget_bytes("/empty"), HANG)
        stats = pool.stats()
        assert (stats["retries"], stats["replays"]) == (1, 0)
        assert server.connections == 6
        await pool.aclose()


async def test_happy_eyeballs_on_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    calls: list[dict[str, Any]] = []
    original = loop.create_connection

    async def create_connection(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await original(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", create_connection)
    async with H2TestServer() as server:
        engine = engine_for(server)
        assert await fetch(engine, server, "/empty") == (204, b"")
        await engine.aclose()
    assert calls
    assert calls[0]["happy_eyeballs_delay"] == pytest.approx(0.25)
    assert calls[0]["interleave"] == 1


# ------------------------------------------------------------------ request headers


async def test_connection_specific_headers_are_not_sent() -> None:
    async with H2TestServer() as server:
        engine = engine_for(server)
        forbidden = {
            "te": "gzip", "connection": "keep-alive", "keep-alive": "timeout=5",
            "proxy-connection": "keep-alive", "transfer-encoding": "chunked",
            "upgrade": "websocket", "authorization": f"Bearer {SECRET}",
        }  # fmt: skip
        for _ in range(3):  # HPACK stays in step: later requests decode fine
            status, data = await asyncio.wait_for(
                fetch(engine, server, "/headers", headers=forbidden), HANG
            )
            assert status == 200
            sent = json.loads(data)
            assert not set(forbidden) - {"authorization"} & set(sent)
            assert sent["authorization"] == f"Bearer {SECRET}"
        status, data = await fetch(engine, server, "/headers", headers={"TE": "Trailers"})
        assert json.loads(data)["te"] == "Trailers"
        assert server.errors == []
        assert server.connections == 1
        (conn,) = engine._conns
        assert conn.h2.open_outbound_streams == 0
        await engine.aclose()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("authorization", f"Bearer {SECRET}\r\nx: y"),
        ("authorization", f"Bearer {SECRET}\x00"),
        (":x-api-key", SECRET),  # h2 rejects it while HPACK-encoding the block
    ],
)
async def test_a_header_h2_rejects_is_a_local_error_without_its_value(
    name: str, value: str
) -> None:
    async with H2TestServer() as server:
        engine = engine_for(server)
        assert await fetch(engine, server, "/empty") == (204, b"")
        with pytest.raises(httpx.LocalProtocolError) as info:
            await fetch(engine, server, "/empty", headers={name: value})
        assert SECRET not in error_texts(info.value)
        for _ in range(2):  # no HPACK desync, nothing left open
            assert await asyncio.wait_for(fetch(engine, server, "/empty"), HANG) == (204, b"")
        assert server.errors == []
        assert all(conn.h2.open_outbound_streams == 0 for conn in engine._conns)
        await engine.aclose()


# ------------------------------------------------------------------ stream resets


@pytest.mark.parametrize("code", [CODES.INTERNAL_ERROR, CODES.CANCEL, CODES.ENHANCE_YOUR_CALM])
async def test_reset_before_headers_is_retried_after_backoff_not_replayed(code: int) -> None:
    async with H2TestServer() as server:
        engine = engine_for(server)
        with pytest.raises(StreamResetError):
            await fetch(engine, server, f"/reset/{int(code)}")
        assert len(server.requests) == 1  # the engine resent nothing
        await engine.aclose()

        pool = pool_for(server, retries=1)
        with pytest.raises(EndpointConnectError):
            await asyncio.wait_for(pool.aget_bytes(f"/reset/{int(code)}"), HANG)
        stats = pool.stats()
        assert (stats["retries"], stats["replays"]) == (1, 0)
        assert len(server.requests) == 3
        await pool.aclose()


async def test_refused_stream_is_resent_by_the_engine() -> None:
    async with H2TestServer() as server:
        engine = engine_for(server)
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(engine, server, f"/reset/{int(CODES.REFUSED_STREAM)}")
        assert len(server.requests) > 1  # REFUSED_STREAM: unprocessed, sent again
        await engine.aclose()


async def test_reset_after_headers_is_a_typed_error_without_retry() -> None:
    path = f"/reset-after/{int(CODES.INTERNAL_ERROR)}"
    async with H2TestServer() as server:
        engine = engine_for(server)
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await fetch(engine, server, path)
        assert not isinstance(info.value, StreamResetError)
        assert len(server.requests) == 1  # the engine resent nothing
        await engine.aclose()

        pool = pool_for(server, retries=3)
        received: list[bytes] = []

        async def consume() -> None:
            async for chunk in pool.astream(path, {"q": 1}):
                received.append(chunk)

        with pytest.raises(EndpointConnectError):
            await asyncio.wait_for(consume(), HANG)
        assert b"".join(received) == b"0123456789"
        assert len(server.requests) == 2  # the pool did not retry the stream either
        assert pool.stats()["retries"] == 0
        await pool.aclose()


# ------------------------------------------------------------------ secrets


@pytest.mark.parametrize(
    ("path", "opts", "extra"),
    [
        (f"/reset/{int(CODES.INTERNAL_ERROR)}", {}, {}),
        (f"/reset-after/{int(CODES.INTERNAL_ERROR)}", {}, {}),
        ("/empty", {"goaway_at_once": True}, {}),
        ("/empty", {}, {"x-extra": f"a\r\nb {SECRET}"}),
        ("/empty", {}, {":x-extra": SECRET}),
    ],
)
async def test_no_api_key_in_any_error(
    path: str, opts: dict[str, Any], extra: dict[str, str]
) -> None:
    async with H2TestServer(**opts) as server:
        pool = pool_for(server, retries=1)
        headers = {"authorization": f"Bearer {SECRET}", **extra}
        with pytest.raises((EndpointConnectError, ProtocolViolationError)) as info:
            await asyncio.wait_for(pool.aget_bytes(path, headers=headers), HANG)
        assert SECRET not in error_texts(info.value)
        await pool.aclose()
