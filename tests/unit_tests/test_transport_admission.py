"""The pool's admission gate, the HTTP/2 stream limit, and tenacity as the retry engine."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncGenerator, Iterator
from typing import cast

import httpx
import pytest
import tenacity

from langchain_fastpipe.errors import ConfigError, EndpointTimeoutError, TransportError
from langchain_fastpipe.transport import EndpointConfig, PooledClient, PoolLimits, RetryPolicy
from langchain_fastpipe.transport._attempt import _AttemptError, _should_retry
from langchain_fastpipe.transport._retry import counts_as_breaker_failure
from langchain_fastpipe.transport._retrying import _BackoffWait

BASE = "http://model.test:8080/v1"
PAYLOAD = {"model": "m"}


def make_pool(limit: int) -> tuple[PooledClient, list[httpx.Request]]:
    """A pool admitting ``limit`` requests at once; the handler records what it got."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"data: x\n\n")

    async def asleep(_: float) -> None:
        return None

    cfg = EndpointConfig(base_url=BASE, limits=PoolLimits(max_connections=limit))
    pool = PooledClient(
        cfg, transport=httpx.MockTransport(handler), sleep=asleep, sync_sleep=lambda _: None
    )
    return pool, seen


async def test_async_streams_hold_their_slot_until_closed() -> None:
    pool, seen = make_pool(2)
    first = cast(AsyncGenerator[bytes, None], pool.astream("/chat", PAYLOAD))
    second = cast(AsyncGenerator[bytes, None], pool.astream("/chat", PAYLOAD))
    assert await anext(first) == b"data: x\n\n"
    assert await anext(second) == b"data: x\n\n"
    blocked = pool.astream("/chat", PAYLOAD, timeout=0.05)
    with pytest.raises(EndpointTimeoutError, match=r"pool timeout talking to http://model"):
        await anext(blocked)
    assert len(seen) == 2  # the third never reached httpx, and was not retried
    assert pool.stats()["breaker"]["state"] == "closed"
    assert pool.stats()["pool_wait"]["count"] >= 1  # the gate's wait is counted
    await first.aclose()  # frees a slot
    third = pool.astream("/chat", PAYLOAD, timeout=0.05)
    assert [chunk async for chunk in third] == [b"data: x\n\n"]
    await second.aclose()
    assert pool.stats()["in_flight"] == 0
    # all slots free again: two more at once do not wait
    again = [
        cast(AsyncGenerator[bytes, None], pool.astream("/chat", PAYLOAD, timeout=0.05))
        for _ in range(2)
    ]
    assert [await anext(s) for s in again] == [b"data: x\n\n"] * 2
    for s in again:
        await s.aclose()
    await pool.aclose()


async def test_waiters_are_admitted_in_turn() -> None:
    pool, seen = make_pool(3)

    async def one() -> bytes:
        return b"".join([chunk async for chunk in pool.astream("/chat", PAYLOAD)])

    assert await asyncio.gather(*(one() for _ in range(50))) == [b"data: x\n\n"] * 50
    assert len(seen) == 50
    assert pool.stats()["failures"] == 0
    await pool.aclose()


async def test_failed_attempts_free_their_slot() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"ok": True})

    async def asleep(_: float) -> None:
        return None

    cfg = EndpointConfig(base_url=BASE, limits=PoolLimits(max_connections=1))
    pool = PooledClient(cfg, transport=httpx.MockTransport(handler), sleep=asleep)
    for _ in range(3):  # each call: a failure (its slot freed), then a retry that succeeds
        data, info = await pool.apost_json("/chat", PAYLOAD, timeout=0.05)
        assert data == {"ok": True}
        assert info.attempts == 2
    await pool.aclose()


def test_sync_streams_hold_their_slot_until_closed() -> None:
    pool, seen = make_pool(1)
    first: Iterator[bytes] = pool.stream("/chat", PAYLOAD)
    assert next(first) == b"data: x\n\n"
    with pytest.raises(EndpointTimeoutError, match="pool timeout"):
        pool.post_json("/chat", PAYLOAD, timeout=0.05)
    assert len(seen) == 1
    first.close()  # type: ignore[attr-defined]
    assert list(pool.stream("/chat", PAYLOAD, timeout=0.05)) == [b"data: x\n\n"]
    pool.close()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"base_url": "http://h:1"}, 7),  # plain http: HTTP/1.1 only
        ({"base_url": "https://h:1"}, 30),  # ALPN may pick h2: one connection, 30 streams
        ({"base_url": "http://h:1", "http2_prior_knowledge": True}, 30),
        ({"base_url": "https://h:1", "http2": False}, 7),
        ({"base_url": "https://h:1", "pooling": False}, 7),
    ],
)
def test_admission_limit_follows_the_protocol(kwargs: dict[str, object], expected: int) -> None:
    limits = PoolLimits(max_connections=7, max_concurrent_streams=30)
    cfg = EndpointConfig(limits=limits, **kwargs)  # type: ignore[arg-type]
    assert cfg.admission_limit == expected


def test_aiohttp_engine_gates_async_calls_by_connections() -> None:
    cfg = EndpointConfig(
        base_url="https://h:1", engine="aiohttp",
        limits=PoolLimits(max_connections=7, max_concurrent_streams=30),
    )  # fmt: skip
    pool = PooledClient(cfg)
    assert pool._gates._async_size == 7
    assert cfg.admission_limit == 30  # sync calls still go through httpx (maybe h2)


def test_default_stream_limit_and_validation() -> None:
    assert PoolLimits().max_concurrent_streams == 100
    with pytest.raises(ConfigError, match=r"PoolLimits\.max_concurrent_streams"):
        PoolLimits(max_concurrent_streams=0)


def test_pool_timeouts_are_not_breaker_failures() -> None:
    assert not counts_as_breaker_failure(httpx.PoolTimeout("saturated"))
    assert counts_as_breaker_failure(httpx.ConnectTimeout("down"))


def _state_after(exc: BaseException, attempt: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    try:
        raise exc
    except BaseException:
        state.set_exception(sys.exc_info())  # type: ignore[arg-type]
    return state


def test_backoff_wait_is_a_tenacity_wait_honouring_retry_after() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=3.0, retry_after_cap=10.0)
    wait = _BackoffWait(policy, lambda: 0.5)
    plain = _AttemptError(TransportError("x"), retryable=True, breaker_failure=False)
    asked = _AttemptError(
        TransportError("x"), retryable=True, breaker_failure=False, retry_after=42.0
    )
    assert [wait(_state_after(plain, n)) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
    assert wait(_state_after(asked, 1)) == 10.0  # the server's wish, capped
    assert wait(_state_after(ValueError("bug"), 1)) == 0.5


def test_only_retryable_attempt_failures_are_retried() -> None:
    error = TransportError("x")
    assert _should_retry(_AttemptError(error, retryable=True, breaker_failure=False))
    assert not _should_retry(_AttemptError(error, retryable=False, breaker_failure=False))
    assert not _should_retry(httpx.ConnectError("raw"))
    assert not _should_retry(asyncio.CancelledError())


async def test_tenacity_drives_retries_with_injected_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tenacity.AsyncRetrying] = []
    real = tenacity.AsyncRetrying

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tenacity, "AsyncRetrying", Spy)
    delays: list[float] = []

    async def asleep(seconds: float) -> None:
        delays.append(seconds)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"retry-after": "2"})

    cfg = EndpointConfig(base_url=BASE, retry=RetryPolicy(max_retries=3))
    pool = PooledClient(cfg, transport=httpx.MockTransport(handler), sleep=asleep)
    with pytest.raises(TransportError) as caught:
        await pool.apost_json("/chat", PAYLOAD)
    assert getattr(caught.value, "status_code", None) == 503
    assert len(made) == 1
    assert made[0].sleep is asleep  # type: ignore[comparison-overlap]
    assert delays == [2.0, 2.0, 2.0]
    assert pool.stats()["retries"] == 3  # counted by before_sleep
    await pool.aclose()
