"""The shared pooled client of one endpoint: :class:`PooledClient` and :func:`get_pool`.

One :class:`PooledClient` per :class:`EndpointConfig` (``get_pool`` caches them by the
frozen config). It owns one ``httpx.Client`` for sync calls and one ``httpx.AsyncClient``
per running event loop, held in a ``WeakKeyDictionary`` keyed by the loop, so
``asyncio.run()`` twice, pytest's per-test loops, Jupyter and threads each get a client
bound to their own loop (a client is never used on a loop it was not built on). The SSL
context is built once per config and shared by every client.

Each call goes: circuit breaker -> attempt (with transparent replays of streams refused
by a graceful HTTP/2 GOAWAY) -> on a retryable failure, tenacity retries with full-jitter
backoff or the server's Retry-After. The first attempt does not touch tenacity, so the
common path costs one breaker check and one trace object. A stream is retried only until
its first body byte is handed to the caller; after that a failure raises a typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from langchain_fastpipe.errors import (
    ConfigError,
    ProtocolViolationError,
    ResponseTooLargeError,
    TransportError,
    status_error,
)
from langchain_fastpipe.stats import registry
from langchain_fastpipe.transport._aiohttp import aiohttp_transport
from langchain_fastpipe.transport._breaker import CircuitBreaker
from langchain_fastpipe.transport._config import EndpointConfig
from langchain_fastpipe.transport._retry import (
    GOAWAY_REPLAYS,
    counts_as_breaker_failure,
    is_retryable_httpx_error,
    is_stale_connection_error,
    map_httpx_error,
    parse_retry_after,
    quotes_header,
    retry_delay,
)
from langchain_fastpipe.transport._stats import EndpointStats, RequestTrace

__all__ = ["PooledClient", "ResponseInfo", "get_pool"]

T = TypeVar("T")

_JSON_HEADERS: Final[Mapping[str, str]] = {"content-type": "application/json"}
_ERROR_BODY_LIMIT: Final = 64 * 1024
_H2_CANCEL: Final = 0x8  # RST_STREAM error code CANCEL (RFC 9113, section 7)


@dataclass
class ResponseInfo:
    """Facts about one call, filled in as the response arrives (streams: after headers).

    Attributes:
        status_code: HTTP status of the final attempt.
        http_version: ``"HTTP/1.1"`` or ``"HTTP/2"``.
        attempts: Attempts made (retries and GOAWAY replays included).
        time_to_headers: Seconds from the call to the response headers.
        time_to_first_byte: Seconds from the call to the first body byte.
    """

    status_code: int = 0
    http_version: str = ""
    attempts: int = 0
    time_to_headers: float | None = None
    time_to_first_byte: float | None = None


class _AttemptError(Exception):
    """One attempt failed: the typed error, whether to retry, and the server's wish."""

    def __init__(
        self,
        error: TransportError,
        *,
        retryable: bool,
        breaker_failure: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable
        self.breaker_failure = breaker_failure
        self.retry_after = retry_after


@dataclass
class _OpenStream:
    """A streamed response whose headers (and first chunk, if any) have arrived."""

    response: httpx.Response
    chunks: Any  # the response's (async) byte iterator, already started
    first: bytes | None


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of ``payload``; ConfigError when it is not serializable."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        msg = f"request payload is not JSON-serializable: {exc}"
        raise ConfigError(msg) from exc


def decode_json_object(body: bytes, endpoint: str) -> dict[str, Any]:
    """Parse a reply body that must be a JSON object.

    Raises:
        ProtocolViolationError: Non-JSON, truncated JSON, or not an object; names ``endpoint``.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        excerpt = body[:80].decode("utf-8", "replace")
        msg = f"{endpoint} sent a reply that is not valid JSON ({exc}): {excerpt!r}"
        raise ProtocolViolationError(msg, endpoint=endpoint) from exc
    if not isinstance(data, dict):
        msg = f"{endpoint} sent JSON {type(data).__name__}, expected an object"
        raise ProtocolViolationError(msg, endpoint=endpoint)
    return data


def _too_large(endpoint: str, limit: int) -> _AttemptError:
    """The failure for a body over ``limit`` bytes (not retried; the endpoint is alive)."""
    error = ResponseTooLargeError(
        f"{endpoint} sent a reply over max_response_bytes={limit}", endpoint=endpoint
    )
    return _AttemptError(error, retryable=False, breaker_failure=False)


def _declared_too_large(response: httpx.Response, limit: int) -> bool:
    """Whether the Content-Length header already exceeds ``limit``."""
    declared = response.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


def _status_failure(
    response: httpx.Response, body: bytes, endpoint: str, retry_statuses: frozenset[int]
) -> _AttemptError:
    """The failure for a non-2xx reply, with its Retry-After."""
    retry_after = parse_retry_after(response.headers, now=time.time())
    code = response.status_code
    error = status_error(
        code, endpoint=endpoint, body=body.decode("utf-8", "replace"), retry_after=retry_after
    )
    return _AttemptError(
        error,
        retryable=code in retry_statuses,
        breaker_failure=code >= 500,
        retry_after=retry_after,
    )


def _identity(response: httpx.Response) -> bool:
    """Whether the body can be read raw: not content-encoded and not already read."""
    if response.is_stream_consumed:
        return False  # e.g. a MockTransport reply built from ``content=``
    encoding = response.headers.get("content-encoding")
    return encoding is None or encoding.strip().lower() in ("", "identity")


def _h2_stream_target(response: httpx.Response) -> tuple[Any, int] | None:
    """Httpcore's HTTP/2 connection and stream id behind ``response``, if it has one.

    This walks private attributes of httpx/httpcore (``BoundStream -> ResponseStream ->
    PoolByteStream -> HTTP2ConnectionByteStream``); when their layout changes it returns
    None and early closes simply fall back to httpx's own behaviour.
    """
    stream_id = response.extensions.get("stream_id")
    if not isinstance(stream_id, int):
        return None
    obj: Any = response.stream
    for _ in range(6):
        connection = getattr(obj, "_connection", None)
        if connection is not None and hasattr(connection, "_h2_state"):
            return connection, stream_id
        obj = getattr(obj, "_stream", None) or getattr(obj, "_httpcore_stream", None)
        if obj is None:
            return None
    return None


def _h2_reset_if_open(connection: Any, stream_id: int) -> bool:
    """Queue RST_STREAM(CANCEL) for a still-open HTTP/2 stream; True when one was queued."""
    try:
        state = connection._h2_state
        stream = state.streams.get(stream_id)
        if stream is None or stream.closed:
            return False
        state.reset_stream(stream_id, error_code=_H2_CANCEL)
    except Exception:
        return False
    return True


async def _aclose_response(response: httpx.Response, *, finished: bool, chunks: Any = None) -> None:
    """Close a streamed response; an unfinished HTTP/2 stream is reset first.

    Without the reset the server keeps the stream open (and sending), so early-closed
    streams pile up until the connection runs out of stream slots (TRAPS 4). The reset
    must precede closing ``chunks`` (the started byte iterator), which releases the stream.
    """
    if not finished and response.http_version == "HTTP/2":
        target = _h2_stream_target(response)
        if target is not None and _h2_reset_if_open(*target):
            connection, _ = target
            with contextlib.suppress(Exception):
                # httpcore reads only ``request.extensions["timeout"]`` here.
                await connection._write_outgoing_data(response.request)
    if chunks is not None:
        await chunks.aclose()
    await response.aclose()


def _close_response(response: httpx.Response, *, finished: bool, chunks: Any = None) -> None:
    """Sync twin of :func:`_aclose_response`."""
    if not finished and response.http_version == "HTTP/2":
        target = _h2_stream_target(response)
        if target is not None and _h2_reset_if_open(*target):
            connection, _ = target
            with contextlib.suppress(Exception):
                connection._write_outgoing_data(response.request)
    if chunks is not None:
        chunks.close()
    response.close()


def _build_ssl_context(config: EndpointConfig) -> ssl.SSLContext | None:
    """The SSL context of an https endpoint, built once per config (TRAPS 7)."""
    if not config.base_url.lower().startswith("https:"):
        return None
    if isinstance(config.verify, str):
        try:
            return ssl.create_default_context(cafile=config.verify)
        except (OSError, ssl.SSLError) as exc:
            msg = f"EndpointConfig.verify: cannot load CA bundle {config.verify!r}: {exc}"
            raise ConfigError(msg) from exc
    return httpx.create_ssl_context(verify=config.verify)


class PooledClient:
    """The pooled HTTP client of one endpoint, shared by every model that uses it.

    Get one with :func:`get_pool`; build one directly only to inject test doubles.

    Attributes:
        config: The endpoint configuration.
        endpoint: The redacted ``scheme://host:port/path``.
        breaker: The endpoint's circuit breaker.
    """

    def __init__(
        self,
        config: EndpointConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        sync_sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Create the client; connections open lazily (or with :meth:`awarm`).

        Args:
            config: The endpoint configuration.
            clock: Monotonic clock of the circuit breaker.
            sleep: Async sleep used between retries.
            sync_sleep: Sync sleep used between retries.
            rng: Returns floats in ``[0, 1)`` for backoff jitter.
            transport: Sync httpx transport to use instead of the network (tests).
            async_transport: Async httpx transport; defaults to ``transport`` when that
                is also async (``httpx.MockTransport`` is both).
        """
        if not isinstance(config, EndpointConfig):
            msg = f"PooledClient needs an EndpointConfig, got {type(config).__name__}"
            raise ConfigError(msg)
        self.config = config
        self.endpoint = config.endpoint
        self.breaker = CircuitBreaker(config.breaker, endpoint=self.endpoint, clock=clock)
        self._stats = EndpointStats(self.endpoint)
        self._sleep = sleep
        self._sync_sleep = sync_sleep
        self._rng = rng
        self._transport = transport
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport
        self._async_transport = async_transport
        self._base = config.base_url.rstrip("/")
        self._ssl_context = _build_ssl_context(config)
        self._timeout = httpx.Timeout(config.timeout, connect=config.connect_timeout)
        limits = config.limits
        self._limits = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._lock = threading.Lock()
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, httpx.AsyncClient
        ] = weakref.WeakKeyDictionary()
        self._sync_client: httpx.Client | None = None
        _LIVE.add(self)

    def __repr__(self) -> str:
        """Name the redacted endpoint only."""
        return f"PooledClient(endpoint={self.endpoint!r}, pooling={self.config.pooling})"

    # -- clients ------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every httpx client of this endpoint."""
        cfg = self.config
        kwargs: dict[str, Any] = {"timeout": self._timeout}
        if self._ssl_context is not None:
            kwargs["verify"] = self._ssl_context
        if cfg.pooling:
            kwargs["limits"] = self._limits
            kwargs["http2"] = cfg.http2 or cfg.http2_prior_knowledge
            kwargs["http1"] = not cfg.http2_prior_knowledge
        else:
            kwargs["limits"] = httpx.Limits(max_connections=1, max_keepalive_connections=0)
        return kwargs

    def _new_async_client(self) -> httpx.AsyncClient:
        """A new async client (MockTransport when injected; aiohttp when configured)."""
        kwargs = self._client_kwargs()
        if self._async_transport is not None:
            kwargs["transport"] = self._async_transport
        elif self.config.engine == "aiohttp" and self.config.pooling:
            kwargs["transport"] = aiohttp_transport(self.config, self._ssl_context)
        return httpx.AsyncClient(**kwargs)

    def _new_sync_client(self) -> httpx.Client:
        """A new sync client (MockTransport when injected)."""
        kwargs = self._client_kwargs()
        if self._transport is not None:
            kwargs["transport"] = self._transport
        return httpx.Client(**kwargs)

    def _aclient(self) -> httpx.AsyncClient:
        """The shared async client of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            with self._lock:
                client = self._async_clients.get(loop)
                if client is None:
                    for old in [lp for lp in self._async_clients if lp.is_closed()]:
                        # Its loop is gone: the client can no longer be closed cleanly.
                        self._async_clients.pop(old, None)
                    client = self._new_async_client()
                    self._async_clients[loop] = client
        return client

    def _client(self) -> httpx.Client:
        """The shared sync client (created on first use)."""
        client = self._sync_client
        if client is None:
            with self._lock:
                client = self._sync_client
                if client is None:
                    client = self._sync_client = self._new_sync_client()
        return client

    def _url(self, path: str) -> str:
        """``base_url`` joined with ``path``."""
        if not path:
            return self._base
        return f"{self._base}/{path.lstrip('/')}"

    def _timeout_for(self, timeout: float | None) -> httpx.Timeout | None:
        """A per-call timeout override, or None for the config's."""
        if timeout is None:
            return None
        if timeout <= 0:
            msg = f"timeout must be > 0 seconds, got {timeout!r}"
            raise ConfigError(msg)
        return httpx.Timeout(timeout, connect=self.config.connect_timeout)

    @staticmethod
    def _headers(headers: Mapping[str, str] | None, *, json_body: bool) -> Mapping[str, str]:
        """Request headers: JSON content type plus the caller's (keys stay in headers)."""
        if not json_body:
            return headers or {}
        if not headers:
            return _JSON_HEADERS
        return {**_JSON_HEADERS, **headers}

    # -- attempts and retries -----------------------------------------------------------

    def _fail(self, exc: httpx.HTTPError) -> _AttemptError:
        """The attempt failure of an httpx exception."""
        error = map_httpx_error(exc, self.endpoint)
        # Never chain an exception whose text may quote a header (an API key).
        error.__cause__ = None if quotes_header(exc) else exc
        error.__suppress_context__ = True
        return _AttemptError(
            error,
            retryable=is_retryable_httpx_error(exc),
            breaker_failure=counts_as_breaker_failure(exc),
        )

    def _wait(self, state: RetryCallState) -> float:
        """Tenacity ``wait``: Retry-After of the last failure, else full-jitter backoff."""
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, _AttemptError) else None
        return retry_delay(self.config.retry, state.attempt_number, retry_after, self._rng)

    def _tenacity_kwargs(self) -> dict[str, Any]:
        """Stop/retry/wait settings shared by the sync and async retry loops."""
        return {
            "stop": stop_after_attempt(self.config.retry.max_retries),
            "retry": retry_if_exception(lambda e: isinstance(e, _AttemptError) and e.retryable),
            "wait": self._wait,
            "reraise": True,
        }

    async def _aattempt(
        self,
        info: ResponseInfo,
        op: Callable[[httpx.AsyncClient, RequestTrace], Awaitable[T]],
        *,
        keep_client: bool = False,
    ) -> tuple[T, httpx.AsyncClient | None]:
        """One attempt through the breaker, replaying graceful-GOAWAY failures.

        Returns:
            The op's result and, when ``keep_client`` and pooling is off, the fresh client
            the caller must close.
        """
        probe = self.breaker.before_call()
        outcome = self.breaker.on_ignored
        stats = self._stats
        replays = 0
        try:
            while True:
                info.attempts += 1
                stats.requests += 1
                trace = RequestTrace(stats)
                owned = None if self.config.pooling else self._new_async_client()
                client = owned or self._aclient()
                try:
                    result = await op(client, trace)
                except httpx.HTTPError as exc:
                    if owned is not None:
                        await owned.aclose()
                    if replays < GOAWAY_REPLAYS and is_stale_connection_error(
                        exc, reused=not trace.opened_connection
                    ):
                        replays += 1
                        stats.replays += 1
                        stats.retries += 1
                        continue
                    failed = self._fail(exc)
                    outcome = self.breaker.on_failure if failed.breaker_failure else outcome
                    raise failed from None
                except _AttemptError as failed:
                    if owned is not None:
                        await owned.aclose()
                    outcome = (
                        self.breaker.on_failure if failed.breaker_failure
                        else self.breaker.on_success
                    )  # fmt: skip
                    raise
                except BaseException:
                    if owned is not None:
                        await owned.aclose()
                    raise
                outcome = self.breaker.on_success
                if owned is not None and not keep_client:
                    await owned.aclose()
                    owned = None
                return result, owned
        finally:
            outcome(probe)

    def _attempt(
        self,
        info: ResponseInfo,
        op: Callable[[httpx.Client, RequestTrace], T],
        *,
        keep_client: bool = False,
    ) -> tuple[T, httpx.Client | None]:
        """Sync twin of :meth:`_aattempt`."""
        probe = self.breaker.before_call()
        outcome = self.breaker.on_ignored
        stats = self._stats
        replays = 0
        try:
            while True:
                info.attempts += 1
                stats.requests += 1
                trace = RequestTrace(stats)
                owned = None if self.config.pooling else self._new_sync_client()
                client = owned or self._client()
                try:
                    result = op(client, trace)
                except httpx.HTTPError as exc:
                    if owned is not None:
                        owned.close()
                    if replays < GOAWAY_REPLAYS and is_stale_connection_error(
                        exc, reused=not trace.opened_connection
                    ):
                        replays += 1
                        stats.replays += 1
                        stats.retries += 1
                        continue
                    failed = self._fail(exc)
                    outcome = self.breaker.on_failure if failed.breaker_failure else outcome
                    raise failed from None
                except _AttemptError as failed:
                    if owned is not None:
                        owned.close()
                    outcome = (
                        self.breaker.on_failure if failed.breaker_failure
                        else self.breaker.on_success
                    )  # fmt: skip
                    raise
                except BaseException:
                    if owned is not None:
                        owned.close()
                    raise
                outcome = self.breaker.on_success
                if owned is not None and not keep_client:
                    owned.close()
                    owned = None
                return result, owned
        finally:
            outcome(probe)

    async def _arun(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt``; on a retryable failure retry it with tenacity."""
        try:
            return await attempt()
        except _AttemptError as failed:
            if not failed.retryable or self.config.retry.max_retries == 0:
                raise failed.error from failed.error.__cause__
            first = failed
        await self._sleep(retry_delay(self.config.retry, 0, first.retry_after, self._rng))
        try:
            async for attempt_state in AsyncRetrying(sleep=self._sleep, **self._tenacity_kwargs()):
                with attempt_state:
                    self._stats.retries += 1
                    return await attempt()
        except _AttemptError as failed:
            raise failed.error from failed.error.__cause__
        raise AssertionError("unreachable: tenacity neither returned nor raised")

    def _run(self, attempt: Callable[[], T]) -> T:
        """Sync twin of :meth:`_arun`."""
        try:
            return attempt()
        except _AttemptError as failed:
            if not failed.retryable or self.config.retry.max_retries == 0:
                raise failed.error from failed.error.__cause__
            first = failed
        self._sync_sleep(retry_delay(self.config.retry, 0, first.retry_after, self._rng))
        try:
            for attempt_state in Retrying(sleep=self._sync_sleep, **self._tenacity_kwargs()):
                with attempt_state:
                    self._stats.retries += 1
                    return attempt()
        except _AttemptError as failed:
            raise failed.error from failed.error.__cause__
        raise AssertionError("unreachable: tenacity neither returned nor raised")

    def _on_headers(
        self, response: httpx.Response, info: ResponseInfo, trace: RequestTrace, start: float
    ) -> None:
        """Record what the response headers tell (info and stats)."""
        trace.finish()
        elapsed = time.perf_counter() - start
        info.status_code = response.status_code
        info.http_version = response.http_version
        info.time_to_headers = elapsed
        self._stats.time_to_headers.record(elapsed)
        self._stats.count_version(response.http_version)

    # -- JSON requests ------------------------------------------------------------------

    async def _arequest_json(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        *,
        parse: bool = True,
    ) -> tuple[Any, ResponseInfo]:
        """Send a request, read its whole (bounded) body, retry when allowed."""
        info = ResponseInfo()
        url = self._url(path)
        hdrs = self._headers(headers, json_body=content is not None)
        call_timeout = self._timeout_for(timeout)
        limit = self.config.max_response_bytes
        retry_statuses = self.config.retry.retry_statuses
        endpoint = self.endpoint
        start = time.perf_counter()

        async def op(client: httpx.AsyncClient, trace: RequestTrace) -> bytes:
            request = client.build_request(
                method, url, content=content, headers=hdrs,
                timeout=call_timeout or httpx.USE_CLIENT_DEFAULT,
                extensions={"trace": trace.atrace},
            )  # fmt: skip
            response = await client.send(request, stream=True)
            try:
                self._on_headers(response, info, trace, start)
                ok = response.status_code < 400
                cap = limit if ok else _ERROR_BODY_LIMIT
                if ok and _declared_too_large(response, cap):
                    raise _too_large(endpoint, cap)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        if ok:
                            raise _too_large(endpoint, cap)
                        break
                    chunks.append(chunk)
                body = b"".join(chunks)
                if info.time_to_first_byte is None:
                    info.time_to_first_byte = time.perf_counter() - start
                if not ok:
                    raise _status_failure(response, body, endpoint, retry_statuses)
                return body
            finally:
                await response.aclose()

        self._stats.enter()
        try:
            body, _ = await self._arun(lambda: self._aattempt(info, op))
            data: Any = decode_json_object(body, endpoint) if parse else body
        except Exception:
            self._stats.failures += 1
            raise
        finally:
            self._stats.leave()
        self._stats.latency.record(time.perf_counter() - start)
        return data, info

    def _request_json(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        *,
        parse: bool = True,
    ) -> tuple[Any, ResponseInfo]:
        """Sync twin of :meth:`_arequest_json`."""
        info = ResponseInfo()
        url = self._url(path)
        hdrs = self._headers(headers, json_body=content is not None)
        call_timeout = self._timeout_for(timeout)
        limit = self.config.max_response_bytes
        retry_statuses = self.config.retry.retry_statuses
        endpoint = self.endpoint
        start = time.perf_counter()

        def op(client: httpx.Client, trace: RequestTrace) -> bytes:
            request = client.build_request(
                method, url, content=content, headers=hdrs,
                timeout=call_timeout or httpx.USE_CLIENT_DEFAULT,
                extensions={"trace": trace.trace},
            )  # fmt: skip
            response = client.send(request, stream=True)
            try:
                self._on_headers(response, info, trace, start)
                ok = response.status_code < 400
                cap = limit if ok else _ERROR_BODY_LIMIT
                if ok and _declared_too_large(response, cap):
                    raise _too_large(endpoint, cap)
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > cap:
                        if ok:
                            raise _too_large(endpoint, cap)
                        break
                    chunks.append(chunk)
                body = b"".join(chunks)
                if info.time_to_first_byte is None:
                    info.time_to_first_byte = time.perf_counter() - start
                if not ok:
                    raise _status_failure(response, body, endpoint, retry_statuses)
                return body
            finally:
                response.close()

        self._stats.enter()
        try:
            body, _ = self._run(lambda: self._attempt(info, op))
            data: Any = decode_json_object(body, endpoint) if parse else body
        except Exception:
            self._stats.failures += 1
            raise
        finally:
            self._stats.leave()
        self._stats.latency.record(time.perf_counter() - start)
        return data, info

    async def apost_json(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], ResponseInfo]:
        """POST ``payload`` as JSON and return the JSON object of the reply.

        Args:
            path: Appended to ``base_url`` (e.g. ``"/chat/completions"``).
            payload: The JSON body.
            headers: Extra headers (e.g. ``Authorization``); never logged or put in errors.
            timeout: Per-call read/write/pool timeout in seconds (default: the config's).

        Returns:
            The reply object and its :class:`ResponseInfo`.

        Raises:
            CircuitOpenError: The endpoint's breaker is open.
            HTTPStatusError: A non-2xx reply (the subclass matching the status).
            EndpointConnectError: The connection failed (after retries).
            EndpointTimeoutError: A timeout expired (after retries).
            ProtocolViolationError: The reply was not a JSON object.
            ResponseTooLargeError: The reply exceeded ``max_response_bytes``.
        """
        content = encode_payload(payload)
        data, info = await self._arequest_json("POST", path, content, headers, timeout)
        return data, info

    def post_json(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], ResponseInfo]:
        """Sync :meth:`apost_json`: POST JSON, return the reply object and its info."""
        content = encode_payload(payload)
        data, info = self._request_json("POST", path, content, headers, timeout)
        return data, info

    async def aget(
        self,
        path: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], ResponseInfo]:
        """GET ``path`` and return its JSON object (health checks, model lists).

        Raises the same typed errors as :meth:`apost_json`.
        """
        data, info = await self._arequest_json("GET", path, None, headers, timeout)
        return data, info

    def get(
        self,
        path: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], ResponseInfo]:
        """Sync :meth:`aget`."""
        data, info = self._request_json("GET", path, None, headers, timeout)
        return data, info

    async def aget_bytes(
        self,
        path: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[bytes, ResponseInfo]:
        """GET ``path`` and return the raw body (for non-JSON health endpoints)."""
        data, info = await self._arequest_json("GET", path, None, headers, timeout, parse=False)
        return data, info

    def get_bytes(
        self,
        path: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[bytes, ResponseInfo]:
        """Sync :meth:`aget_bytes`."""
        data, info = self._request_json("GET", path, None, headers, timeout, parse=False)
        return data, info

    # -- streams ------------------------------------------------------------------------

    async def astream(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        info: ResponseInfo | None = None,
    ) -> AsyncIterator[bytes]:
        """POST ``payload`` as JSON and yield the reply body's byte chunks as they arrive.

        The status/headers phase (up to the first body chunk) is retried like
        :meth:`apost_json`; once a byte has been yielded nothing is retried and a failure
        raises the typed error. Reading to the end returns the connection to the pool;
        stopping early (break, ``aclose()``, cancellation) closes the response (and resets
        the HTTP/2 stream), so nothing leaks.

        Args:
            path: Appended to ``base_url``.
            payload: The JSON body.
            headers: Extra headers (e.g. ``Authorization``).
            timeout: Per-call read/write/pool timeout in seconds.
            info: Filled in as the reply arrives (status and version after headers).

        Yields:
            Decoded (not decompressed-twice) body bytes, in the server's chunking.
        """
        info = info if info is not None else ResponseInfo()
        content = encode_payload(payload)
        url = self._url(path)
        hdrs = self._headers(headers, json_body=True)
        call_timeout = self._timeout_for(timeout)
        retry_statuses = self.config.retry.retry_statuses
        endpoint = self.endpoint
        start = time.perf_counter()

        async def op(client: httpx.AsyncClient, trace: RequestTrace) -> _OpenStream:
            request = client.build_request(
                "POST", url, content=content, headers=hdrs,
                timeout=call_timeout or httpx.USE_CLIENT_DEFAULT,
                extensions={"trace": trace.atrace},
            )  # fmt: skip
            response = await client.send(request, stream=True)
            finished = False
            try:
                self._on_headers(response, info, trace, start)
                if response.status_code >= 400:
                    body = await response.aread()
                    finished = True
                    raise _status_failure(response, body[:_ERROR_BODY_LIMIT], endpoint,
                                          retry_statuses)  # fmt: skip
                chunks = response.aiter_raw() if _identity(response) else response.aiter_bytes()
                try:
                    first: bytes | None = await chunks.__anext__()
                except StopAsyncIteration:
                    first, finished = None, True
                info.time_to_first_byte = time.perf_counter() - start
                return _OpenStream(response, chunks, first)
            except BaseException:
                await _aclose_response(response, finished=finished)
                raise

        self._stats.enter()
        opened: _OpenStream | None = None
        owned: httpx.AsyncClient | None = None
        finished = False
        failed = False
        try:
            started, owned = await self._arun(lambda: self._aattempt(info, op, keep_client=True))
            opened = started
            if started.first is None:
                finished = True
            else:
                if started.first:
                    yield started.first
                try:
                    async for chunk in started.chunks:
                        yield chunk
                except httpx.HTTPError as exc:
                    if counts_as_breaker_failure(exc):
                        self.breaker.on_failure()
                    raise map_httpx_error(exc, endpoint) from exc
                finished = True
        except Exception:
            failed = True
            raise
        finally:
            try:
                if opened is not None:
                    await _aclose_response(opened.response, finished=finished, chunks=opened.chunks)
                if owned is not None:
                    await owned.aclose()
            finally:
                self._finish_stream(start, finished=finished, failed=failed)

    def stream(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        info: ResponseInfo | None = None,
    ) -> Iterator[bytes]:
        """Sync :meth:`astream`: a generator of body byte chunks, same guarantees."""
        info = info if info is not None else ResponseInfo()
        content = encode_payload(payload)
        url = self._url(path)
        hdrs = self._headers(headers, json_body=True)
        call_timeout = self._timeout_for(timeout)
        retry_statuses = self.config.retry.retry_statuses
        endpoint = self.endpoint
        start = time.perf_counter()

        def op(client: httpx.Client, trace: RequestTrace) -> _OpenStream:
            request = client.build_request(
                "POST", url, content=content, headers=hdrs,
                timeout=call_timeout or httpx.USE_CLIENT_DEFAULT,
                extensions={"trace": trace.trace},
            )  # fmt: skip
            response = client.send(request, stream=True)
            finished = False
            try:
                self._on_headers(response, info, trace, start)
                if response.status_code >= 400:
                    body = response.read()
                    finished = True
                    raise _status_failure(response, body[:_ERROR_BODY_LIMIT], endpoint,
                                          retry_statuses)  # fmt: skip
                chunks = response.iter_raw() if _identity(response) else response.iter_bytes()
                try:
                    first: bytes | None = next(chunks)
                except StopIteration:
                    first, finished = None, True
                info.time_to_first_byte = time.perf_counter() - start
                return _OpenStream(response, chunks, first)
            except BaseException:
                _close_response(response, finished=finished)
                raise

        return self._stream_body(op, info, start)

    def _stream_body(
        self,
        op: Callable[[httpx.Client, RequestTrace], _OpenStream],
        info: ResponseInfo,
        start: float,
    ) -> Iterator[bytes]:
        """The generator behind :meth:`stream` (validation above runs eagerly)."""
        self._stats.enter()
        opened: _OpenStream | None = None
        owned: httpx.Client | None = None
        finished = False
        failed = False
        try:
            started, owned = self._run(lambda: self._attempt(info, op, keep_client=True))
            opened = started
            if started.first is None:
                finished = True
            else:
                if started.first:
                    yield started.first
                try:
                    yield from started.chunks
                except httpx.HTTPError as exc:
                    if counts_as_breaker_failure(exc):
                        self.breaker.on_failure()
                    raise map_httpx_error(exc, self.endpoint) from exc
                finished = True
        except Exception:
            failed = True
            raise
        finally:
            try:
                if opened is not None:
                    _close_response(opened.response, finished=finished, chunks=opened.chunks)
                if owned is not None:
                    owned.close()
            finally:
                self._finish_stream(start, finished=finished, failed=failed)

    def _finish_stream(self, start: float, *, finished: bool, failed: bool) -> None:
        """Account for a stream's end: failure, completion, or an early close (neither)."""
        self._stats.leave()
        if failed:
            self._stats.failures += 1
        elif finished:
            self._stats.latency.record(time.perf_counter() - start)

    # -- warm-up, stats, closing --------------------------------------------------------

    async def awarm(self, n: int = 1) -> None:
        """Open ``n`` connections concurrently (TCP, TLS and HTTP/2 handshakes done).

        Sends ``n`` concurrent GETs to ``base_url``; any HTTP reply counts. Over HTTP/2
        the requests may share one connection, which is what later requests use anyway.
        No retries, no breaker. Does nothing when pooling is off.

        Raises:
            EndpointConnectError: The endpoint could not be reached.
            EndpointTimeoutError: A warm-up request timed out.
        """
        if n < 1 or not self.config.pooling:
            return
        client = self._aclient()

        async def one() -> None:
            trace = RequestTrace(self._stats)
            self._stats.requests += 1
            try:
                response = await client.get(self._base, extensions={"trace": trace.atrace})
            except httpx.HTTPError as exc:
                raise map_httpx_error(exc, self.endpoint) from exc
            trace.finish()
            self._stats.count_version(response.http_version)

        await asyncio.gather(*(one() for _ in range(n)))

    def warm(self, n: int = 1) -> None:
        """Sync :meth:`awarm` (requests run one after another, so usually one connection)."""
        if n < 1 or not self.config.pooling:
            return
        client = self._client()
        for _ in range(n):
            trace = RequestTrace(self._stats)
            self._stats.requests += 1
            try:
                response = client.get(self._base, extensions={"trace": trace.trace})
            except httpx.HTTPError as exc:
                raise map_httpx_error(exc, self.endpoint) from exc
            trace.finish()
            self._stats.count_version(response.http_version)

    def stats(self) -> dict[str, Any]:
        """This endpoint's statistics (JSON-serializable), breaker state included."""
        return self._stats.snapshot(self.breaker.snapshot())

    async def aclose(self) -> None:
        """Close the async client of the running loop (and the sync client).

        The pool stays usable: the next call opens new connections.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.pop(loop, None)
        if client is not None:
            await client.aclose()
        self.close()

    def close(self) -> None:
        """Close the sync client and forget async clients of closed loops.

        The pool stays usable: the next call opens new connections.
        """
        with self._lock:
            client, self._sync_client = self._sync_client, None
            for old in [lp for lp in self._async_clients if lp.is_closed()]:
                self._async_clients.pop(old, None)
        if client is not None:
            client.close()


_LIVE: weakref.WeakSet[PooledClient] = weakref.WeakSet()
_POOLS: dict[EndpointConfig, PooledClient] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(config: EndpointConfig) -> PooledClient:
    """The shared :class:`PooledClient` of ``config``: the same object for equal configs.

    Args:
        config: The endpoint configuration (a frozen, hashable dataclass).

    Returns:
        The process-wide client of that configuration.

    Raises:
        ConfigError: ``config`` is not an EndpointConfig.
    """
    pool = _POOLS.get(config) if isinstance(config, EndpointConfig) else None
    if pool is None:
        if not isinstance(config, EndpointConfig):
            msg = f"get_pool needs an EndpointConfig, got {type(config).__name__}"
            raise ConfigError(msg)
        with _POOLS_LOCK:
            pool = _POOLS.get(config)
            if pool is None:
                pool = _POOLS[config] = PooledClient(config)
    return pool


def pools_snapshot() -> dict[str, Any]:
    """``{endpoint: stats}`` of every live pool (the ``"pools"`` statistics source)."""
    out: dict[str, Any] = {}
    for pool in list(_LIVE):
        key = pool.endpoint
        n = 2
        while key in out:
            key = f"{pool.endpoint} #{n}"
            n += 1
        out[key] = pool.stats()
    return out


registry.register("pools", pools_snapshot)
