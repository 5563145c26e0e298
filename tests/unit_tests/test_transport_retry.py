"""Pure retry helpers: Retry-After parsing, backoff, error mapping."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from langchain_fastpipe.errors import (
    EndpointConnectError,
    EndpointTimeoutError,
    ProtocolViolationError,
)
from langchain_fastpipe.transport import RetryPolicy
from langchain_fastpipe.transport._h2native import StreamResetError
from langchain_fastpipe.transport._retry import (
    backoff_delay,
    counts_as_breaker_failure,
    is_graceful_goaway,
    is_retryable_httpx_error,
    is_stale_connection_error,
    map_httpx_error,
    parse_retry_after,
    retry_delay,
)

NOW = 1_700_000_000.0


def test_retry_after_seconds() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "7"}), now=NOW) == 7.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "1.5"}), now=NOW) == 1.5
    assert parse_retry_after(httpx.Headers({"Retry-After": "-3"}), now=NOW) == 0.0


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=NOW) == pytest.approx(12)
    past = email.utils.formatdate(NOW - 100, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now=NOW) == 0.0


def test_retry_after_ms_wins() -> None:
    headers = httpx.Headers({"Retry-After": "9", "retry-after-ms": "250"})
    assert parse_retry_after(headers, now=NOW) == 0.25


def test_retry_after_absent_or_garbage() -> None:
    assert parse_retry_after(httpx.Headers(), now=NOW) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), now=NOW) is None
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "x"}), now=NOW) is None


def test_full_jitter_backoff_bounds() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0)
    assert backoff_delay(policy, 0, lambda: 0.999999) == pytest.approx(0.5, rel=1e-5)
    assert backoff_delay(policy, 2, lambda: 0.5) == pytest.approx(1.0)
    assert backoff_delay(policy, 10, lambda: 0.999999) == pytest.approx(3.0, rel=1e-5)
    assert backoff_delay(policy, 3, lambda: 0.0) == 0.0


def test_retry_delay_caps_retry_after() -> None:
    policy = RetryPolicy(retry_after_cap=5.0)
    assert retry_delay(policy, 0, 100.0, lambda: 0.5) == 5.0
    assert retry_delay(policy, 0, 2.0, lambda: 0.5) == 2.0
    assert retry_delay(policy, 1, None, lambda: 0.5) == pytest.approx(0.25)


def test_error_mapping() -> None:
    ep = "http://h:80"
    cases = [
        (httpx.ConnectError("refused"), EndpointConnectError),
        (httpx.ConnectTimeout("slow"), EndpointTimeoutError),
        (httpx.ReadTimeout("slow"), EndpointTimeoutError),
        (httpx.PoolTimeout("full"), EndpointTimeoutError),
        (httpx.RemoteProtocolError("Server disconnected"), EndpointConnectError),
        (httpx.ReadError("reset"), EndpointConnectError),
        (httpx.DecodingError("bad gzip"), ProtocolViolationError),
    ]
    for exc, cls in cases:
        err = map_httpx_error(exc, ep)
        assert type(err) is cls, exc
        assert ep in str(err)
        assert err.endpoint == ep


def test_retryable_classification() -> None:
    assert is_retryable_httpx_error(httpx.ConnectError("x"))
    assert is_retryable_httpx_error(httpx.ConnectTimeout("x"))
    assert is_retryable_httpx_error(httpx.RemoteProtocolError("x"))
    assert not is_retryable_httpx_error(httpx.ReadTimeout("x"))
    assert not is_retryable_httpx_error(httpx.DecodingError("x"))


def test_graceful_goaway_detection() -> None:
    text = "<ConnectionTerminated error_code:ErrorCodes.NO_ERROR, last_stream_id:1999>"
    assert is_graceful_goaway(httpx.RemoteProtocolError(text))
    numeric = "<ConnectionTerminated error_code:0, last_stream_id:2001, additional_data:None>"
    assert is_graceful_goaway(httpx.RemoteProtocolError(numeric))
    assert not is_graceful_goaway(
        httpx.RemoteProtocolError("<ConnectionTerminated error_code:1, last_stream_id:3>")
    )
    bad = "<ConnectionTerminated error_code:ErrorCodes.PROTOCOL_ERROR, last_stream_id:1>"
    assert not is_graceful_goaway(httpx.RemoteProtocolError(bad))
    assert not is_graceful_goaway(httpx.ConnectError(text))


def test_header_validation_errors_never_quote_the_value() -> None:
    secret = "sk-live-abcdef"
    exc = httpx.LocalProtocolError(f"Illegal header value b'Bearer {secret}\\n'")
    err = map_httpx_error(exc, "http://h:80")
    assert secret not in str(err)
    assert isinstance(err, ProtocolViolationError)


async def test_header_errors_are_not_chained() -> None:
    from langchain_fastpipe.transport import EndpointConfig, PooledClient

    secret = "sk-live-abcdef"

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {secret}\\n'")

    pool = PooledClient(EndpointConfig(base_url="http://h"), transport=httpx.MockTransport(handler))
    with pytest.raises(ProtocolViolationError) as info:
        await pool.apost_json("/x", {}, headers={"Authorization": f"Bearer {secret}\n"})
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    assert secret not in str(info.value)


def test_a_stream_reset_before_headers_is_retried_with_backoff_not_replayed() -> None:
    # A plain peer disconnect before headers on a multiplexed connection is stale: resent
    # at once. A stream the server reset before answering may have been processed: an
    # ordinary retryable failure, held against the breaker, never an instant replay.
    dropped = httpx.RemoteProtocolError("peer closed connection")
    reset = StreamResetError("stream reset before the response: <StreamReset ...>")
    assert is_stale_connection_error(dropped, reused=False, multiplexed=True)
    assert not is_stale_connection_error(reset, reused=True, multiplexed=True)
    assert is_retryable_httpx_error(reset)
    assert counts_as_breaker_failure(reset)
