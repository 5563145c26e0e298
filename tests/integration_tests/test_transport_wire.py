"""The pooled transport over real sockets against the emulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import warnings
from collections.abc import AsyncIterator

import pytest

from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.errors import (
    AuthenticationError,
    EndpointConnectError,
    ProtocolViolationError,
    RateLimitError,
    ServerError,
)
from langchain_fastpipe.stats import get_stats
from langchain_fastpipe.transport import (
    EndpointConfig,
    PooledClient,
    ResponseInfo,
    RetryPolicy,
    aclose_pools,
    get_pool,
)

CHAT = "/chat/completions"


def chat(stream: bool = False, model: str = "emu") -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": stream,
    }


class Recorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def collect(gen: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in gen:
        into.append(chunk)


async def settle(pool: PooledClient) -> None:
    """Let the loop run the finalizers of abandoned async generators (``break``)."""
    for _ in range(20):
        if pool.stats()["in_flight"] == 0:
            return
        await asyncio.sleep(0)


def pool_for(server: EmulatorServer, **kwargs: object) -> PooledClient:
    cfg = EndpointConfig(
        base_url=server.openai_base_url,
        verify=server.ca_cert_path or True,
        **kwargs,  # type: ignore[arg-type]
    )
    return PooledClient(cfg, sleep=Recorder())


async def test_1000_sequential_streams_open_one_connection(make_emulator) -> None:
    server = make_emulator()
    pool = pool_for(server)
    try:
        for _ in range(1000):
            body = b"".join([c async for c in pool.astream(CHAT, chat(stream=True))])
            assert body.endswith(b"data: [DONE]\n\n")
        assert server.connections_opened == 1
        stats = pool.stats()
        assert stats["connections_opened"] == 1
        assert stats["requests"] == 1000
        assert stats["reuse_ratio"] == pytest.approx(1 - 1 / 1000)
        assert stats["http_versions"] == {"HTTP/1.1": 1000}
        assert stats["in_flight"] == 0
        assert stats["failures"] == 0
        assert stats["pool_wait"]["count"] == 1000
        assert stats["latency"]["count"] == 1000
    finally:
        await pool.aclose()


async def test_http2_negotiated_over_tls(emulator_h2: EmulatorServer) -> None:
    pool = pool_for(emulator_h2)
    try:
        data, info = await pool.apost_json(CHAT, chat())
        assert info.http_version == "HTTP/2"
        assert info.status_code == 200
        assert data["choices"][0]["message"]["content"]
        stream_info = ResponseInfo()
        chunks = [c async for c in pool.astream(CHAT, chat(stream=True), info=stream_info)]
        assert stream_info.http_version == "HTTP/2"
        assert b"[DONE]" in b"".join(chunks)
    finally:
        await pool.aclose()


async def test_http1_fallback_when_http2_off(emulator_h2: EmulatorServer) -> None:
    pool = pool_for(emulator_h2, http2=False)
    try:
        _, info = await pool.apost_json(CHAT, chat())
        assert info.http_version == "HTTP/1.1"
    finally:
        await pool.aclose()


async def test_h2c_prior_knowledge(make_emulator) -> None:
    server = make_emulator(http2=True)
    pool = pool_for(server, http2_prior_knowledge=True)
    try:
        for _ in range(5):
            _, info = await pool.apost_json(CHAT, chat())
            assert info.http_version == "HTTP/2"
        assert server.connections_opened == 1
    finally:
        await pool.aclose()


def test_sync_calls_over_h2(emulator_h2: EmulatorServer) -> None:
    pool = pool_for(emulator_h2)
    try:
        _data, info = pool.post_json(CHAT, chat())
        assert info.http_version == "HTTP/2"
        chunks = list(pool.stream(CHAT, chat(stream=True)))
        assert b"[DONE]" in b"".join(chunks)
        models, _ = pool.get("/models")
        assert "data" in models
    finally:
        pool.close()


async def test_goaway_every_1000_requests_no_failures(make_emulator) -> None:
    server = make_emulator(EmulatorConfig(goaway_after=1000), http2=True, tls=True)
    pool = pool_for(server)
    sem = asyncio.Semaphore(64)
    failures: list[BaseException] = []

    async def one() -> None:
        async with sem:
            try:
                await pool.apost_json(CHAT, chat())
            except Exception as exc:
                failures.append(exc)

    try:
        await asyncio.gather(*(one() for _ in range(3000)))
        stats = pool.stats()
        assert failures == []
        assert stats["failures"] == 0
        assert server.connections_opened >= 3  # the GOAWAYs did happen
        assert stats["http_versions"].get("HTTP/2", 0) >= 3000
        assert stats["in_flight"] == 0
        assert stats["peak_in_flight"] == 64
    finally:
        await pool.aclose()


async def test_sequential_streams_survive_goaway(make_emulator) -> None:
    server = make_emulator(EmulatorConfig(goaway_after=50), http2=True, tls=True)
    pool = pool_for(server, retry=RetryPolicy(max_retries=0))  # only GOAWAY replays help
    try:
        for _ in range(120):
            body = b"".join([c async for c in pool.astream(CHAT, chat(stream=True))])
            assert body.endswith(b"data: [DONE]\n\n")
        assert server.connections_opened == 3
        assert pool.stats()["failures"] == 0
    finally:
        await pool.aclose()


async def test_1000_early_closed_h2_streams_do_not_exhaust_slots(make_emulator) -> None:
    slow = ModelProfile(inter_token_seconds=0.2, answer_tokens=50)
    server = make_emulator(EmulatorConfig(default=slow, goaway_after=100_000), http2=True, tls=True)
    pool = pool_for(server, retry=RetryPolicy(max_retries=0))
    try:
        for _ in range(1000):
            async for chunk in pool.astream(CHAT, chat(stream=True)):
                assert chunk
                break  # abandon the stream after its first chunk
        await settle(pool)
        stats = pool.stats()
        assert stats["in_flight"] == 0
        assert stats["failures"] == 0
        fast = {**chat(), "max_tokens": 1}
        data, info = await pool.apost_json(CHAT, fast)
        assert info.http_version == "HTTP/2"
        assert data["choices"]
        assert server.connections_opened == 1  # resets kept the one connection healthy
    finally:
        await pool.aclose()


async def test_early_close_http1_releases(emulator: EmulatorServer) -> None:
    pool = pool_for(emulator)
    try:
        for _ in range(3):
            async for _chunk in pool.astream(CHAT, chat(stream=True)):
                break
        await settle(pool)
        assert pool.stats()["in_flight"] == 0
        async with contextlib.aclosing(pool.astream(CHAT, chat(stream=True))) as gen:
            async for _chunk in gen:
                break
        assert pool.stats()["in_flight"] == 0  # aclosing: released before the next line
        data, _ = await pool.apost_json(CHAT, chat())
        assert data["choices"]
    finally:
        await pool.aclose()


def test_asyncio_run_twice_on_the_shared_pool(emulator: EmulatorServer) -> None:
    pool = get_pool(EndpointConfig(base_url=emulator.openai_base_url))
    assert get_pool(EndpointConfig(base_url=emulator.openai_base_url)) is pool

    async def call() -> str:
        _, info = await pool.apost_json(CHAT, chat())
        chunks = [c async for c in pool.astream(CHAT, chat(stream=True))]
        assert chunks
        return info.http_version

    assert asyncio.run(call()) == "HTTP/1.1"
    assert asyncio.run(call()) == "HTTP/1.1"  # a new loop: no "Event loop is closed"

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(call())))
    thread.start()
    thread.join()
    assert results == ["HTTP/1.1"]
    data, _ = pool.post_json(CHAT, chat())  # the sync client alongside
    assert data["choices"]


async def test_awarm_opens_connections_before_requests(make_emulator) -> None:
    server = make_emulator()
    pool = pool_for(server)
    try:
        await pool.awarm(3)
        assert server.connections_opened == 3
        await asyncio.gather(*(pool.apost_json(CHAT, chat()) for _ in range(3)))
        assert server.connections_opened == 3
        assert pool.stats()["connections_opened"] == 3
    finally:
        await pool.aclose()


async def test_awarm_h2_handshake(make_emulator) -> None:
    server = make_emulator(http2=True, tls=True)
    pool = pool_for(server)
    try:
        await pool.awarm(1)
        assert server.connections_opened == 1
        _, info = await pool.apost_json(CHAT, chat())
        assert info.http_version == "HTTP/2"
        assert server.connections_opened == 1
    finally:
        await pool.aclose()


async def test_faults_map_to_typed_errors_and_retry(emulator: EmulatorServer) -> None:
    pool = pool_for(emulator)
    try:
        emulator.inject(Fault.status(503), times=1)
        _data, info = await pool.apost_json(CHAT, chat())
        assert info.attempts == 2
        emulator.inject(Fault.rate_limit(retry_after="2"), times=3)
        with pytest.raises(RateLimitError) as rate:
            await pool.apost_json(CHAT, chat())
        assert rate.value.retry_after == 2.0
        assert pool._sleep.delays[-2:] == [2.0, 2.0]  # type: ignore[attr-defined]
        emulator.inject(Fault.truncated_json(), times=1)
        with pytest.raises(ProtocolViolationError, match=r"127\.0\.0\.1"):
            await pool.apost_json(CHAT, chat())
        emulator.inject(Fault.reset_before_headers(), times=1)
        _data, info = await pool.apost_json(CHAT, chat())
        assert info.attempts == 2
    finally:
        await pool.aclose()


async def test_reset_mid_stream_raises_without_retry(emulator: EmulatorServer) -> None:
    pool = pool_for(emulator, retry=RetryPolicy(max_retries=3))
    emulator.inject(Fault.reset_mid_stream(after_chunks=2), times=1)
    before = emulator.chat_requests
    got: list[bytes] = []
    try:
        with pytest.raises((EndpointConnectError, ServerError)):
            await collect(pool.astream(CHAT, chat(stream=True)), got)
        assert got
        assert emulator.chat_requests - before == 1
        assert pool.stats()["in_flight"] == 0
    finally:
        await pool.aclose()


async def test_connect_refused_is_typed_after_retries() -> None:
    server = EmulatorServer().start()
    url = server.openai_base_url
    server.stop()
    pool = PooledClient(
        EndpointConfig(base_url=url, retry=RetryPolicy(max_retries=2)), sleep=Recorder()
    )
    with pytest.raises(EndpointConnectError, match=r"127\.0\.0\.1"):
        await pool.apost_json(CHAT, chat())
    assert pool.stats()["requests"] == 3
    assert pool.stats()["breaker"]["failures_in_window"] == 1  # one call, three attempts


async def test_stats_registered_under_pools(emulator: EmulatorServer) -> None:
    pool = pool_for(emulator)
    try:
        await pool.apost_json(CHAT, chat())
        pools = get_stats()["pools"]
        entries = [v for v in pools.values() if v["endpoint"] == pool.endpoint]
        assert any(e["requests"] >= 1 for e in entries)
    finally:
        await pool.aclose()


def test_sync_early_closed_h2_streams_do_not_exhaust_slots(make_emulator) -> None:
    slow = ModelProfile(inter_token_seconds=0.2, answer_tokens=50)
    server = make_emulator(EmulatorConfig(default=slow), http2=True, tls=True)
    pool = pool_for(server, retry=RetryPolicy(max_retries=0))
    try:
        for _ in range(250):  # over hypercorn's 100 concurrent streams per connection
            for chunk in pool.stream(CHAT, chat(stream=True)):
                assert chunk
                break
        assert pool.stats()["in_flight"] == 0
        assert pool.stats()["failures"] == 0
        _, info = pool.post_json(CHAT, {**chat(), "max_tokens": 1})
        assert info.http_version == "HTTP/2"
        assert server.connections_opened == 1
    finally:
        pool.close()


async def test_pooling_off_opens_a_connection_per_request(make_emulator) -> None:
    server = make_emulator(http2=True, tls=True)
    pool = pool_for(server, pooling=False)
    for _ in range(5):
        _, info = await pool.apost_json(CHAT, chat())
        assert info.http_version == "HTTP/1.1"
    chunks = [c async for c in pool.astream(CHAT, chat(stream=True))]
    assert b"[DONE]" in b"".join(chunks)
    assert server.connections_opened == 6
    stats = pool.stats()
    assert stats["connections_opened"] == 6
    assert stats["reuse_ratio"] == 0.0


# -- review fixes: replays only before headers, dead loops, error bodies ---------------


@pytest.mark.parametrize("proto", ["h1", "h2"])
@pytest.mark.parametrize("mode", ["json", "stream"])
async def test_failure_after_headers_is_not_replayed(
    emulator: EmulatorServer, emulator_h2: EmulatorServer, proto: str, mode: str
) -> None:
    # The server took the request (headers arrived), then the connection broke. With
    # max_retries=0 that is one request and a typed error, never a "stale" resend: the
    # connection is a reused one, which used to trigger up to 3 immediate replays.
    server = emulator_h2 if proto == "h2" else emulator
    pool = pool_for(server, retry=RetryPolicy(max_retries=0))
    try:
        await pool.apost_json(CHAT, chat())  # leaves a pooled connection to reuse
        # JSON: headers and half the body, then a reset. Stream: headers, then a reset
        # before the first chunk (still inside the retryable phase of a stream).
        server.inject(Fault.reset_mid_stream(after_chunks=0), times=1)
        before = server.chat_requests
        got: list[bytes] = []
        call = (
            pool.apost_json(CHAT, chat())
            if mode == "json"
            else collect(pool.astream(CHAT, chat(stream=True)), got)
        )
        with pytest.raises(EndpointConnectError):
            await call
        assert got == []
        assert server.chat_requests - before == 1
        stats = pool.stats()
        assert stats["replays"] == 0
        assert stats["retries"] == 0
        assert stats["in_flight"] == 0
    finally:
        await pool.aclose()


async def test_failure_after_headers_is_retried_within_max_retries(
    emulator: EmulatorServer,
) -> None:
    pool = pool_for(emulator, retry=RetryPolicy(max_retries=1))
    try:
        await pool.apost_json(CHAT, chat())
        emulator.inject(Fault.reset_mid_stream(after_chunks=1), times=1)
        before = emulator.chat_requests
        data, info = await pool.apost_json(CHAT, chat())
        assert data["choices"]
        assert info.attempts == 2
        assert emulator.chat_requests - before == 2
        assert pool._sleep.delays != []  # type: ignore[attr-defined]  # a backoff, not a replay
        assert pool.stats()["replays"] == 0
    finally:
        await pool.aclose()


def _client_sockets_to(port: int) -> int:
    """Sockets of this process connected to 127.0.0.1:``port`` (the client side only)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                count += 1
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_clients_of_dead_loops_are_dropped_and_their_sockets_closed(
    make_emulator, proto: str
) -> None:
    server = make_emulator(http2=proto == "h2", tls=proto == "h2")
    pool = pool_for(server)

    async def call() -> None:
        await pool.apost_json(CHAT, chat())

    gc.collect()  # earlier tests' garbage warns now, not inside the window below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(call())
        assert _client_sockets_to(server.port) == 1  # left behind by a loop that is gone
        asyncio.run(call())  # the new loop's client drops the dead one and its socket
        assert len(pool._clients._async_clients) == 1
        assert _client_sockets_to(server.port) == 1
        pool.close()  # the second loop is closed too now
        assert pool._clients._async_clients == {}
        assert _client_sockets_to(server.port) == 0
        gc.collect()
    unclosed = [w for w in caught if "unclosed" in str(w.message)]
    assert unclosed == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_aclose_pools_closes_the_loops_connections(make_emulator) -> None:
    server = make_emulator()
    pool = pool_for(server)

    async def call() -> int:
        await pool.apost_json(CHAT, chat())
        opened = _client_sockets_to(server.port)
        await aclose_pools()
        return opened

    assert asyncio.run(call()) == 1
    assert _client_sockets_to(server.port) == 0
    assert pool._clients._async_clients == {}
    data, _ = asyncio.run(pool.apost_json(CHAT, chat()))  # still usable
    assert data["choices"]
    pool.close()


SECRET = "sk-live-0123456789abcdefSECRET"


async def call_in_mode(pool: PooledClient, mode: str, headers: dict[str, str]) -> None:
    """One chat call as JSON, as a stream, or through the sync API."""
    if mode == "json":
        await pool.apost_json(CHAT, chat(), headers=headers)
    elif mode == "stream":
        await collect(pool.astream(CHAT, chat(stream=True), headers=headers), [])
    else:
        pool.post_json(CHAT, chat(), headers=headers)


@pytest.mark.parametrize("mode", ["json", "stream", "sync"])
@pytest.mark.parametrize(
    "message",
    [f"Incorrect API key provided: {SECRET}", f"echo: authorization=Bearer {SECRET}"],
)
async def test_error_body_never_carries_the_key(
    emulator: EmulatorServer, mode: str, message: str
) -> None:
    pool = pool_for(emulator)
    emulator.inject(Fault.status(401, message=message), times=1)
    headers = {"Authorization": f"Bearer {SECRET}"}
    try:
        with pytest.raises(AuthenticationError) as info:
            await call_in_mode(pool, mode, headers)
        error = info.value
        assert "[redacted]" in error.body
        seen = [str(error), repr(error), error.body, *(str(a) for a in error.args)]
        assert all(SECRET not in text for text in seen)
    finally:
        await pool.aclose()
