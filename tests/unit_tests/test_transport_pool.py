"""PooledClient over httpx.MockTransport: retries, Retry-After, breaker, errors, streams."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from langchain_fastpipe.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    EndpointConnectError,
    EndpointTimeoutError,
    ProtocolViolationError,
    RateLimitError,
    ResponseTooLargeError,
    ServerError,
)
from langchain_fastpipe.transport import (
    BreakerPolicy,
    EndpointConfig,
    PooledClient,
    ResponseInfo,
    RetryPolicy,
)

SECRET = "sk-test-SECRET-value-42"
BASE = "http://model.test:8080/v1"
ENDPOINT = "http://model.test:8080/v1"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Injected sleep (async and sync) that records delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def asleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_pool(
    handler: Handler,
    *,
    retry: RetryPolicy | None = None,
    breaker: BreakerPolicy | None = None,
    clock: Callable[[], float] | None = None,
    **config: object,
) -> tuple[PooledClient, Recorder]:
    rec = Recorder()
    cfg = EndpointConfig(
        base_url=BASE,
        retry=retry or RetryPolicy(),
        breaker=breaker or BreakerPolicy(min_calls=1000),
        **config,  # type: ignore[arg-type]
    )
    kwargs: dict[str, object] = {}
    if clock is not None:
        kwargs["clock"] = clock
    pool = PooledClient(
        cfg,
        transport=httpx.MockTransport(handler),
        sleep=rec.asleep,
        sync_sleep=rec.sleep,
        rng=lambda: 0.5,
        **kwargs,  # type: ignore[arg-type]
    )
    return pool, rec


def sequence(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with ``responses`` in order (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses[min(len(seen), len(responses)) - 1]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


async def collect(gen: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in gen:
        into.append(chunk)


def ok(data: object | None = None) -> httpx.Response:
    return httpx.Response(200, json=data if data is not None else {"ok": True})


async def test_post_json_sends_payload_and_fills_info() -> None:
    handler, seen = sequence(ok({"answer": 42}))
    pool, rec = make_pool(handler)
    data, info = await pool.apost_json(
        "/chat/completions", {"q": "é"}, headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert data == {"answer": 42}
    assert info.status_code == 200
    assert info.http_version == "HTTP/1.1"
    assert info.attempts == 1
    assert info.time_to_headers is not None
    assert info.time_to_first_byte is not None
    assert str(seen[0].url) == "http://model.test:8080/v1/chat/completions"
    assert json.loads(seen[0].content) == {"q": "é"}
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert rec.delays == []
    stats = pool.stats()
    assert stats["requests"] == 1
    assert stats["failures"] == 0
    assert stats["in_flight"] == 0
    assert stats["http_versions"] == {"HTTP/1.1": 1}
    assert stats["latency"]["count"] == 1


async def test_retry_sequence_uses_full_jitter_backoff() -> None:
    handler, seen = sequence(httpx.Response(503), httpx.Response(502), ok())
    pool, rec = make_pool(handler, retry=RetryPolicy(max_retries=3, initial_backoff=1.0))
    data, info = await pool.apost_json("/x", {})
    assert data == {"ok": True}
    assert len(seen) == 3
    assert info.attempts == 3
    # rng() == 0.5: uniform(0, 1.0 * 2**n) -> 0.5, 1.0
    assert rec.delays == [0.5, 1.0]
    assert pool.stats()["retries"] == 2


def test_sync_retry_sequence() -> None:
    handler, _seen = sequence(httpx.ConnectError("refused"), httpx.Response(500), ok())
    pool, rec = make_pool(
        handler, retry=RetryPolicy(max_retries=2, initial_backoff=0.2, max_backoff=0.3)
    )
    data, info = pool.post_json("/x", {})
    assert data == {"ok": True}
    assert info.attempts == 3
    assert rec.delays == pytest.approx([0.1, 0.15])  # second capped at max_backoff 0.3


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"Retry-After": "600"}, 60.0),  # capped at retry_after_cap
    ],
)
async def test_retry_after_is_honoured(headers: dict[str, str], expected: float) -> None:
    handler, seen = sequence(httpx.Response(429, headers=headers), ok())
    pool, rec = make_pool(handler)
    await pool.apost_json("/x", {})
    assert rec.delays == [expected]
    assert len(seen) == 2


async def test_retries_exhausted_raise_typed_status_error() -> None:
    handler, seen = sequence(httpx.Response(503, text="overloaded"))
    pool, rec = make_pool(handler, retry=RetryPolicy(max_retries=2))
    with pytest.raises(ServerError) as info:
        await pool.apost_json("/x", {})
    assert info.value.status_code == 503
    assert ENDPOINT in str(info.value)
    assert "overloaded" in info.value.body
    assert len(seen) == 3
    assert len(rec.delays) == 2
    assert pool.stats()["failures"] == 1


async def test_rate_limit_error_carries_retry_after() -> None:
    handler, _ = sequence(httpx.Response(429, headers={"Retry-After": "2"}))
    pool, _ = make_pool(handler, retry=RetryPolicy(max_retries=0))
    with pytest.raises(RateLimitError) as info:
        await pool.apost_json("/x", {})
    assert info.value.retry_after == 2.0


async def test_max_retries_zero_disables_retrying() -> None:
    handler, seen = sequence(httpx.ConnectError("refused"), ok())
    pool, rec = make_pool(handler, retry=RetryPolicy(max_retries=0))
    with pytest.raises(EndpointConnectError) as info:
        await pool.apost_json("/x", {})
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(seen) == 1
    assert rec.delays == []


@pytest.mark.parametrize(("status", "cls"), [(400, BadRequestError), (401, AuthenticationError)])
async def test_client_errors_are_not_retried(status: int, cls: type[Exception]) -> None:
    handler, seen = sequence(httpx.Response(status, text="nope"))
    pool, rec = make_pool(handler)
    with pytest.raises(cls) as info:
        await pool.apost_json("/x", {}, headers={"Authorization": f"Bearer {SECRET}"})
    assert len(seen) == 1
    assert rec.delays == []
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


async def test_read_timeout_not_retried_and_mapped() -> None:
    handler, seen = sequence(httpx.ReadTimeout("slow"))
    pool, _ = make_pool(handler)
    with pytest.raises(EndpointTimeoutError, match="read timeout"):
        await pool.apost_json("/x", {})
    assert len(seen) == 1


async def test_connect_timeout_retried() -> None:
    handler, _seen = sequence(httpx.ConnectTimeout("slow"), ok())
    pool, rec = make_pool(handler)
    data, info = await pool.apost_json("/x", {})
    assert data == {"ok": True}
    assert info.attempts == 2
    assert len(rec.delays) == 1


async def test_graceful_goaway_is_replayed_without_using_retries() -> None:
    goaway = httpx.RemoteProtocolError(
        "<ConnectionTerminated error_code:ErrorCodes.NO_ERROR, last_stream_id:1999>"
    )
    handler, seen = sequence(goaway, ok())
    pool, rec = make_pool(handler, retry=RetryPolicy(max_retries=0))
    data, _info = await pool.apost_json("/x", {})
    assert data == {"ok": True}
    assert len(seen) == 2
    assert rec.delays == []
    assert pool.stats()["replays"] == 1


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"choices": [', b"[1, 2]", b""])
async def test_bad_json_is_protocol_violation(body: bytes) -> None:
    handler, seen = sequence(httpx.Response(200, content=body))
    pool, _ = make_pool(handler)
    with pytest.raises(ProtocolViolationError) as info:
        await pool.apost_json("/x", {})
    assert ENDPOINT in str(info.value)
    assert len(seen) == 1


async def test_response_too_large() -> None:
    handler, _ = sequence(httpx.Response(200, content=b'{"a": "' + b"x" * 200 + b'"}'))
    pool, _ = make_pool(handler, max_response_bytes=100)
    with pytest.raises(ResponseTooLargeError, match="max_response_bytes=100"):
        await pool.apost_json("/x", {})


async def test_unserializable_payload_is_config_error() -> None:
    handler, seen = sequence(ok())
    pool, _ = make_pool(handler)
    with pytest.raises(ConfigError, match="JSON-serializable"):
        await pool.apost_json("/x", {"x": object()})
    assert seen == []


async def test_breaker_opens_fails_fast_and_recovers() -> None:
    clock = Clock()
    handler, seen = sequence(httpx.Response(500), httpx.Response(500), ok())
    pool, _ = make_pool(
        handler,
        retry=RetryPolicy(max_retries=0),
        clock=clock,
        breaker=BreakerPolicy(min_calls=2, cooldown=10.0),
    )
    for _ in range(2):
        with pytest.raises(ServerError):
            await pool.apost_json("/x", {})
    with pytest.raises(CircuitOpenError) as info:
        await pool.apost_json("/x", {})
    assert info.value.retry_in == 10.0
    assert info.value.endpoint == ENDPOINT
    assert isinstance(info.value.__cause__, ServerError)
    assert len(seen) == 2  # failed fast: nothing sent
    assert pool.stats()["breaker"]["state"] == "open"
    clock.now = 10.0
    data, _ = await pool.apost_json("/x", {})  # the half-open probe succeeds
    assert data == {"ok": True}
    assert pool.stats()["breaker"]["state"] == "closed"


async def test_client_errors_do_not_open_breaker() -> None:
    handler, seen = sequence(httpx.Response(404))
    pool, _ = make_pool(handler, breaker=BreakerPolicy(min_calls=1))
    for _ in range(3):
        with pytest.raises(Exception, match="404"):
            await pool.apost_json("/x", {})
    assert len(seen) == 3
    assert pool.breaker.state == "closed"


async def test_breaker_is_asked_once_per_call_not_per_retry() -> None:
    handler, seen = sequence(httpx.ConnectError("refused"))
    pool, rec = make_pool(
        handler, retry=RetryPolicy(max_retries=5), breaker=BreakerPolicy(min_calls=1)
    )
    with pytest.raises(EndpointConnectError):  # every retry is made: the real error
        await pool.apost_json("/x", {})
    assert (len(seen), len(rec.delays)) == (6, 5)
    with pytest.raises(CircuitOpenError) as info:  # the next call fails fast
        await pool.apost_json("/x", {})
    assert len(seen) == 6
    assert isinstance(info.value.__cause__, EndpointConnectError)


# -- streams ----------------------------------------------------------------------------


class AsyncChunks(httpx.AsyncByteStream):
    """Yields chunks, then optionally raises; records whether it was closed."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


class SyncChunks(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


async def test_astream_yields_chunks_and_fills_info() -> None:
    body = AsyncChunks([b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"])
    handler, _seen = sequence(httpx.Response(200, stream=body))
    pool, _ = make_pool(handler)
    info = ResponseInfo()
    chunks = [c async for c in pool.astream("/chat", {"stream": True}, info=info)]
    assert b"".join(chunks) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert info.status_code == 200
    assert info.attempts == 1
    assert info.time_to_first_byte is not None
    assert body.closed
    assert pool.stats()["in_flight"] == 0
    assert pool.stats()["latency"]["count"] == 1


async def test_astream_retries_the_header_phase() -> None:
    body = AsyncChunks([b"hello"])
    handler, _seen = sequence(
        httpx.Response(503), httpx.ConnectError("x"), httpx.Response(200, stream=body)
    )
    pool, rec = make_pool(handler)
    info = ResponseInfo()
    chunks = [c async for c in pool.astream("/chat", {}, info=info)]
    assert chunks == [b"hello"]
    assert info.attempts == 3
    assert len(rec.delays) == 2


async def test_astream_never_retries_after_first_byte() -> None:
    body = AsyncChunks([b"first"], error=httpx.RemoteProtocolError("reset mid-body"))
    handler, seen = sequence(httpx.Response(200, stream=body), ok())
    pool, rec = make_pool(handler, retry=RetryPolicy(max_retries=5))
    got: list[bytes] = []
    with pytest.raises(EndpointConnectError) as info:
        await collect(pool.astream("/chat", {}), got)
    assert got == [b"first"]
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert len(seen) == 1
    assert rec.delays == []
    stats = pool.stats()
    assert stats["failures"] == 1
    assert stats["in_flight"] == 0


async def test_astream_failure_before_first_byte_is_retried() -> None:
    bad = AsyncChunks([], error=httpx.RemoteProtocolError("reset before body"))
    handler, seen = sequence(
        httpx.Response(200, stream=bad), httpx.Response(200, stream=AsyncChunks([b"ok"]))
    )
    pool, _rec = make_pool(handler)
    chunks = [c async for c in pool.astream("/chat", {})]
    assert chunks == [b"ok"]
    assert len(seen) == 2


async def test_astream_status_error_is_typed() -> None:
    handler, _ = sequence(httpx.Response(401, text="bad key"))
    pool, _ = make_pool(handler)
    with pytest.raises(AuthenticationError):
        async for _ in pool.astream("/chat", {}, headers={"Authorization": SECRET}):
            pass
    assert pool.stats()["in_flight"] == 0


async def test_astream_early_close_closes_response() -> None:
    body = AsyncChunks([b"a", b"b", b"c"])
    handler, _ = sequence(httpx.Response(200, stream=body))
    pool, _ = make_pool(handler)
    gen = pool.astream("/chat", {})
    assert await gen.__anext__() == b"a"
    assert pool.stats()["in_flight"] == 1
    await gen.aclose()
    assert body.closed
    stats = pool.stats()
    assert stats["in_flight"] == 0
    assert stats["failures"] == 0


async def test_astream_cancelled_consumer_releases() -> None:
    gate = asyncio.Event()

    class Slow(httpx.AsyncByteStream):
        closed = False

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"first"
            await gate.wait()
            yield b"never"

        async def aclose(self) -> None:
            Slow.closed = True

    handler, _ = sequence(httpx.Response(200, stream=Slow()))
    pool, _ = make_pool(handler)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in pool.astream("/chat", {}):
            first.set()

    task = asyncio.ensure_future(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert Slow.closed
    assert pool.stats()["in_flight"] == 0


def test_sync_stream_and_early_close() -> None:
    full = SyncChunks([b"x", b"y"])
    partial = SyncChunks([b"1", b"2", b"3"])
    handler, _ = sequence(httpx.Response(200, stream=full), httpx.Response(200, stream=partial))
    pool, _ = make_pool(handler)
    assert list(pool.stream("/chat", {})) == [b"x", b"y"]
    for chunk in pool.stream("/chat", {}):
        assert chunk == b"1"
        break
    assert partial.closed
    assert pool.stats()["in_flight"] == 0


def test_sync_stream_no_retry_after_first_byte() -> None:
    body = SyncChunks([b"first"], error=httpx.ReadTimeout("stall"))
    handler, seen = sequence(httpx.Response(200, stream=body))
    pool, _ = make_pool(handler)
    got = []
    with pytest.raises(EndpointTimeoutError):
        got.extend(pool.stream("/chat", {}))
    assert got == [b"first"]
    assert len(seen) == 1


async def test_pooling_off_uses_same_interface() -> None:
    pool, _ = make_pool(lambda request: ok({"n": 1}), pooling=False)
    data, _ = await pool.apost_json("/x", {})
    assert data == {"n": 1}
    chunks = [c async for c in pool.astream("/x", {})]
    assert b"".join(chunks) == b'{"n":1}'
    assert pool.get_bytes("/health")[0] == b'{"n":1}'


async def test_get_and_timeout_override() -> None:
    handler, seen = sequence(ok({"models": []}))
    pool, _ = make_pool(handler)
    data, _info = await pool.aget("/models", timeout=2.0)
    assert data == {"models": []}
    assert seen[0].method == "GET"
    assert seen[0].extensions["timeout"]["read"] == 2.0
    with pytest.raises(ConfigError, match="timeout"):
        await pool.aget("/models", timeout=0)


# -- review fixes ------------------------------------------------------------------------


async def test_stream_cut_after_headers_is_not_replayed() -> None:
    # Headers arrived, then the first body read failed: with max_retries=0 that is one
    # request (it used to be resent 3 times as a "stale connection").
    body = AsyncChunks([], error=httpx.ReadError("connection reset"))
    handler, seen = sequence(httpx.Response(200, stream=body))
    pool, _rec = make_pool(handler, retry=RetryPolicy(max_retries=0))
    with pytest.raises(EndpointConnectError):
        await collect(pool.astream("/chat", {}), [])
    assert len(seen) == 1
    assert pool.stats()["replays"] == 0


def test_json_body_cut_after_headers_is_not_replayed() -> None:
    body = SyncChunks([b'{"a": '], error=httpx.RemoteProtocolError("peer closed"))
    handler, seen = sequence(httpx.Response(200, stream=body))
    pool, _ = make_pool(handler, retry=RetryPolicy(max_retries=0))
    with pytest.raises(EndpointConnectError):
        pool.post_json("/x", {})
    assert len(seen) == 1


async def test_replays_have_one_cap_per_call_then_count_as_retries() -> None:
    from langchain_fastpipe.transport._retry import GOAWAY_REPLAYS

    goaway = httpx.RemoteProtocolError("<ConnectionTerminated error_code:0, last_stream_id:1>")
    handler, seen = sequence(goaway)
    pool, rec = make_pool(
        handler, retry=RetryPolicy(max_retries=2), breaker=BreakerPolicy(min_calls=1)
    )
    with pytest.raises(EndpointConnectError):
        await pool.apost_json("/x", {})
    # The replays are shared by all attempts (not 3 per attempt), then max_retries.
    assert len(seen) == 1 + GOAWAY_REPLAYS + 2
    assert len(rec.delays) == 2
    assert pool.stats()["replays"] == GOAWAY_REPLAYS
    assert pool.breaker.state == "closed"  # a server recycling connections is alive


def header_leak() -> httpx.LocalProtocolError:
    """A fresh error quoting the key (a module-level one would keep its last traceback,
    and with it a stream's response, alive for the rest of the session)."""
    return httpx.LocalProtocolError(f"Illegal header value b'Bearer {SECRET}\\n'")


def chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def assert_no_secret(error: BaseException) -> None:
    for link in chain(error):
        assert SECRET not in str(link)
        assert SECRET not in repr(link)


async def test_mid_stream_header_error_is_typed_without_the_header() -> None:
    body = AsyncChunks([b"first"], error=header_leak())
    handler, _ = sequence(httpx.Response(200, stream=body))
    pool, _ = make_pool(handler)
    with pytest.raises(ProtocolViolationError) as info:
        await collect(pool.astream("/chat", {}), [])
    assert "value withheld" in str(info.value)
    assert_no_secret(info.value)


def test_sync_mid_stream_header_error_is_typed_without_the_header() -> None:
    body = SyncChunks([b"first"], error=header_leak())
    handler, _ = sequence(httpx.Response(200, stream=body))
    pool, _ = make_pool(handler)
    with pytest.raises(ProtocolViolationError) as info:
        list(pool.stream("/chat", {}))
    assert_no_secret(info.value)


async def test_warm_header_error_is_typed_without_the_header() -> None:
    handler, _ = sequence(header_leak())
    pool, _ = make_pool(handler)
    with pytest.raises(ProtocolViolationError) as info:
        await pool.awarm(2)
    assert_no_secret(info.value)
    with pytest.raises(ProtocolViolationError) as sync_info:
        pool.warm(1)
    assert_no_secret(sync_info.value)


async def test_request_header_error_is_typed_without_the_header() -> None:
    handler, _ = sequence(header_leak())
    pool, _ = make_pool(handler)
    with pytest.raises(ProtocolViolationError) as info:
        await pool.apost_json("/x", {})
    assert_no_secret(info.value)


async def test_mid_stream_timeout_counts_for_the_breaker() -> None:
    body = AsyncChunks([b"first"], error=httpx.ReadTimeout("stall"))
    handler, _ = sequence(httpx.Response(200, stream=body))
    pool, _ = make_pool(handler, breaker=BreakerPolicy(min_calls=1))
    with pytest.raises(EndpointTimeoutError):
        await collect(pool.astream("/chat", {}), [])
    assert pool.breaker.state == "open"


async def test_other_4xx_is_a_langchain_model_api_error() -> None:
    from langchain_core.exceptions import ModelAPIError

    from langchain_fastpipe.errors import HTTPStatusError

    handler, seen = sequence(httpx.Response(402, text="payment required"))
    pool, _ = make_pool(handler)
    with pytest.raises(ModelAPIError) as info:
        await pool.apost_json("/x", {})
    assert type(info.value) is HTTPStatusError
    assert info.value.is_retryable is False
    assert len(seen) == 1


async def test_error_body_is_read_up_to_a_cap_on_streams() -> None:
    handler, _ = sequence(httpx.Response(500, content=b"x" * (200 * 1024)))
    pool, _ = make_pool(handler, retry=RetryPolicy(max_retries=0))
    with pytest.raises(ServerError) as info:
        await collect(pool.astream("/chat", {}), [])
    assert info.value.body == "x" * 500


class SlowInt(int):
    """An int whose ``+`` lets other threads run between the read and the write of ``+=``."""

    def __add__(self, other: object) -> SlowInt:
        time.sleep(0)
        return SlowInt(int(self) + int(other))  # type: ignore[call-overload]


def test_counters_do_not_lose_updates_across_threads() -> None:
    from langchain_fastpipe.transport._stats import EndpointStats

    stats = EndpointStats("http://x:1")
    stats.requests = SlowInt(0)
    stats.in_flight = SlowInt(0)
    per_thread = 300

    def work() -> None:
        for _ in range(per_thread):
            stats.count_request()
            stats.enter()
            stats.leave()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    snap = stats.snapshot()
    assert snap["requests"] == 4 * per_thread
    assert snap["in_flight"] == 0


# --------------------------------------------------------------------------- hot path


class _CountingRetrying:
    """Counts the tenacity retrying objects built (wraps the real classes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import tenacity

        self.built = 0
        for name in ("AsyncRetrying", "Retrying"):
            real = getattr(tenacity, name)

            def build(*args: object, _real: type = real, **kwargs: object) -> object:
                self.built += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(tenacity, name, build)


async def test_first_attempt_builds_no_retry_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingRetrying(monkeypatch)
    pool, _ = make_pool(lambda _request: ok(), retry=RetryPolicy(max_retries=2))
    await pool.apost_json("/x", {})
    pool.post_json("/x", {})
    chunks: list[bytes] = []
    await collect(pool.astream("/x", {}), chunks)
    assert counter.built == 0
    failing, _ = make_pool(sequence(httpx.Response(400))[0], retry=RetryPolicy(max_retries=2))
    with pytest.raises(BadRequestError):
        await failing.apost_json("/x", {})
    no_retries, _ = make_pool(sequence(httpx.Response(503))[0], retry=RetryPolicy(max_retries=0))
    with pytest.raises(ServerError):
        await no_retries.apost_json("/x", {})
    assert counter.built == 0  # failures that are not retried need no loop either


async def test_retry_loop_starts_after_a_retryable_first_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = _CountingRetrying(monkeypatch)
    handler, seen = sequence(httpx.Response(503), httpx.Response(503), httpx.Response(503))
    pool, rec = make_pool(handler, retry=RetryPolicy(max_retries=2, initial_backoff=1.0))
    with pytest.raises(ServerError):
        await pool.apost_json("/x", {})
    assert counter.built == 1
    assert len(seen) == 3  # 1 + max_retries attempts, the first one outside tenacity
    assert rec.delays == [0.5, 1.0]  # backoff exponents count the first attempt
    assert pool.stats()["retries"] == 2
    sync_handler, sync_seen = sequence(httpx.Response(429, headers={"Retry-After": "2"}), ok())
    sync_pool, sync_rec = make_pool(sync_handler, retry=RetryPolicy(max_retries=2))
    data, info = sync_pool.post_json("/x", {})
    assert data == {"ok": True}
    assert (len(sync_seen), info.attempts, sync_rec.delays) == (2, 2, [2.0])
    assert counter.built == 2


def test_request_url_is_parsed_once_per_path() -> None:
    pool, _ = make_pool(sequence(ok())[0])
    first = pool._steps.url("/chat/completions")
    assert first is pool._steps.url("/chat/completions")
    assert pool._steps.url("chat/completions") == first
    assert str(first) == "http://model.test:8080/v1/chat/completions"
    assert str(pool._steps.url("")) == "http://model.test:8080/v1"
