"""Pure retry decisions: which failures are retried, how long to wait, error mapping.

Nothing here does I/O; :mod:`langchain_fastpipe.transport._pool` drives the loop (with
an injectable sleep and RNG) and asks these functions what to do.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Callable, Mapping
from typing import Final

import httpx

from langchain_fastpipe.errors import (
    EndpointConnectError,
    EndpointTimeoutError,
    ProtocolViolationError,
    TransportError,
)
from langchain_fastpipe.transport._config import RetryPolicy

__all__ = [
    "backoff_delay",
    "forget_traceback",
    "is_graceful_goaway",
    "is_retryable_httpx_error",
    "is_stale_connection_error",
    "map_httpx_error",
    "parse_retry_after",
    "redact_secrets",
    "retry_delay",
]

# h2 renders the code as "ErrorCodes.NO_ERROR" or as "0" depending on the version.
_GRACEFUL_GOAWAY: Final = re.compile(
    r"ConnectionTerminated error_code:(?:ErrorCodes\.)?(?:NO_ERROR|0)\b"
)

#: Stale-connection replays allowed per call, over all its attempts (they do not count
#: against max_retries; once spent, a stale failure is an ordinary retryable failure).
GOAWAY_REPLAYS: Final = 5

#: Failures meaning the peer closed or broke the connection.
_PEER_CLOSED: Final = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.CloseError,
)

_REDACTED: Final = "[redacted]"
#: Header values shorter than this are not treated as secrets (``json``, ``1``, ...).
_MIN_SECRET_LEN: Final = 8


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    Args:
        headers: Response headers (case-insensitive mapping such as ``httpx.Headers``,
            or a dict with lower-case keys).
        now: The current wall-clock time (``time.time()``), for HTTP-date values.

    Returns:
        Non-negative seconds, or None when neither header is present and valid.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms):
            return max(0.0, ms / 1000.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # pragma: no cover - older Pythons returned None
            return None
        return max(0.0, when.timestamp() - now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff_delay(policy: RetryPolicy, retry_index: int, rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff before retry ``retry_index`` (0-based).

    Args:
        policy: The retry policy.
        retry_index: 0 before the first retry, 1 before the second, ...
        rng: Returns a float in ``[0, 1)`` (``random.random``).

    Returns:
        ``uniform(0, min(max_backoff, initial_backoff * 2**retry_index))``.
    """
    ceiling = min(policy.max_backoff, policy.initial_backoff * (2.0 ** min(retry_index, 62)))
    return rng() * ceiling


def retry_delay(
    policy: RetryPolicy,
    retry_index: int,
    retry_after: float | None,
    rng: Callable[[], float],
) -> float:
    """The wait before retry ``retry_index``: the server's wish (capped) or backoff.

    Args:
        policy: The retry policy.
        retry_index: 0 before the first retry, 1 before the second, ...
        retry_after: Seconds from ``Retry-After``/``retry-after-ms``, if the server sent one.
        rng: Returns a float in ``[0, 1)``.

    Returns:
        Seconds to sleep.
    """
    if retry_after is not None:
        return min(retry_after, policy.retry_after_cap)
    return backoff_delay(policy, retry_index, rng)


def is_graceful_goaway(exc: BaseException) -> bool:
    """Whether ``exc`` is a stream failed by a graceful HTTP/2 GOAWAY (safe to resend).

    httpcore reports it as ``RemoteProtocolError(<ConnectionTerminated error_code:NO_ERROR
    ...>)``; streams the server never processed are already resent by httpcore itself.
    """
    if not isinstance(exc, httpx.RemoteProtocolError):
        return False
    return _GRACEFUL_GOAWAY.search(str(exc)) is not None


def is_stale_connection_error(
    exc: BaseException, *, reused: bool, headers_received: bool = False, multiplexed: bool = False
) -> bool:
    """Whether ``exc`` means a pooled connection was already gone (safe to resend at once).

    A graceful GOAWAY always is. A read/write error or a disconnect before any response
    header arrived, on a connection other requests used too, is the classic keep-alive
    race: the server closed it (GOAWAY, idle timeout, ``Connection: close``) while this
    request was put on it. "Used too" means *reused* (this request did not open it) or
    *multiplexed* (HTTP/2: concurrent streams share even a brand-new connection, and the
    server counts them all towards its GOAWAY). Once headers arrived the server did take
    the request (a 200 stream cut by RST_STREAM is a real failure), and an HTTP/1.1
    connection this request opened failing the same way is a real failure too.

    Args:
        exc: The failure.
        reused: Whether the request went out on a pooled (not freshly opened) connection.
        headers_received: Whether the response headers had arrived.
        multiplexed: Whether the request went out over HTTP/2.

    An exception whose ``maybe_processed`` attribute is true (the server reset an HTTP/2
    stream before answering, which it may have processed) never is.
    """
    if is_graceful_goaway(exc):
        return True
    if getattr(exc, "maybe_processed", False):  # e.g. an HTTP/2 stream reset before headers
        return False
    return (reused or multiplexed) and not headers_received and isinstance(exc, _PEER_CLOSED)


def is_retryable_httpx_error(exc: httpx.HTTPError) -> bool:
    """Whether a failure before any response byte is worth retrying.

    Connect errors, connect and pool timeouts, resets and protocol errors from the peer
    (dropped connections, stream resets, GOAWAY) are; read/write timeouts (the server may
    be working on it), local protocol errors and decoding errors are not.
    """
    return isinstance(
        exc,
        (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.ReadError,
            httpx.WriteError,
            httpx.RemoteProtocolError,
        ),
    )


def counts_as_breaker_failure(exc: httpx.HTTPError, *, headers_received: bool = False) -> bool:
    """Whether the breaker counts ``exc`` as a failure (connect errors and timeouts).

    A connection the peer closed after the response headers arrived (read/write error,
    disconnect) does not count: the endpoint answered, it only dropped the connection
    (typically a GOAWAY or a connection-recycling proxy). Neither does a pool timeout: it
    says this process is saturated, not that the endpoint is down. Any other timeout
    counts.

    Args:
        exc: The failure.
        headers_received: Whether the response headers had arrived.
    """
    if is_graceful_goaway(exc) or isinstance(exc, httpx.PoolTimeout):
        return False
    if headers_received and isinstance(exc, _PEER_CLOSED):
        return False
    return isinstance(exc, (httpx.TransportError,)) and not isinstance(
        exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.DecodingError)
    )


def map_httpx_error(exc: httpx.HTTPError, endpoint: str) -> TransportError:
    """The typed error for an httpx failure; the caller raises it ``from exc``.

    Args:
        exc: The httpx exception.
        endpoint: The redacted endpoint, named in the message.

    Returns:
        EndpointTimeoutError, EndpointConnectError or ProtocolViolationError.
    """
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        kind = {
            httpx.ConnectTimeout: "connect",
            httpx.ReadTimeout: "read",
            httpx.WriteTimeout: "write",
            httpx.PoolTimeout: "pool",
        }.get(type(exc), "")
        return EndpointTimeoutError(
            f"{kind + ' ' if kind else ''}timeout talking to {endpoint}: {detail}",
            endpoint=endpoint,
        )
    if isinstance(exc, (httpx.ConnectError, httpx.ReadError, httpx.WriteError,
                        httpx.CloseError, httpx.ProxyError)):  # fmt: skip
        return EndpointConnectError(
            f"connection to {endpoint} failed: {type(exc).__name__}: {detail}", endpoint=endpoint
        )
    if isinstance(exc, httpx.RemoteProtocolError):
        return EndpointConnectError(f"{endpoint} broke the connection: {detail}", endpoint=endpoint)
    if quotes_header(exc):
        detail = "a request header was rejected (value withheld: it may be a credential)"
    return ProtocolViolationError(
        f"protocol error talking to {endpoint}: {type(exc).__name__}: {detail}", endpoint=endpoint
    )


def quotes_header(exc: BaseException) -> bool:
    """Whether ``exc``'s text may quote a request header value (h11/h2 validation errors)."""
    return isinstance(exc, httpx.LocalProtocolError) and "header" in str(exc).lower()


def redact_secrets(text: str, headers: Mapping[str, str] | None) -> str:
    """``text`` with every request header value (and its token part) replaced.

    Servers and proxies echo request headers, or say "Incorrect API key: sk-...", in error
    bodies; those bodies end up in exception messages and logs. Each header value of at
    least 8 characters is removed, and so is the token of ``<scheme> <token>`` values
    (``Bearer sk-...``).

    Args:
        text: An error body (or any text from the server).
        headers: The request headers the caller supplied.

    Returns:
        The text with those values replaced by ``[redacted]``.
    """
    if not headers or not text:
        return text
    secrets: set[str] = set()
    for value in headers.values():
        value = value.strip()
        for candidate in (value, value.rpartition(" ")[2]):
            if len(candidate) >= _MIN_SECRET_LEN:
                secrets.add(candidate)
    for secret in sorted(secrets, key=len, reverse=True):  # "Bearer sk-x" before "sk-x"
        text = text.replace(secret, _REDACTED)
    return text


def forget_traceback(exc: BaseException) -> None:
    """Drop the tracebacks along ``exc``'s chain (``__cause__`` and ``__context__``).

    For failures that are caught and moved past (a replayed request, a best-effort
    close). A traceback holds every frame it passed through, and each frame its locals:
    an exception that outlives its handler (httpcore stores a connection's read or write
    error and re-raises it to every later request on that connection, until the
    connection expires) would otherwise keep those frames' responses and buffers alive.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        item.__traceback__ = None
        todo.extend((item.__cause__, item.__context__))
