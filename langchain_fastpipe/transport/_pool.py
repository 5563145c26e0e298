"""The shared pooled client of one endpoint: :class:`PooledClient` and :func:`get_pool`.

One :class:`PooledClient` per :class:`EndpointConfig`: :func:`get_pool` hands out the
same object for equal configs while something (a ``ChatFastpipe``) holds it; a pool
nothing uses any more is dropped, and its connections closed (:class:`~._loops.LoopClients`
``abandon``). :func:`aclose_pools` closes the running loop's clients of every pool
properly; call it before a loop you own ends.

Each call goes: circuit breakers (the endpoint-wide one and the called model's, asked once
per call and told the call's outcome once at its end, never per attempt:
:class:`~._attempt._CallGuard`) -> admission gate (:mod:`._admission`) -> attempt (with
immediate replays of requests whose pooled connection turned out to be gone before any
response header: graceful HTTP/2 GOAWAY or the keep-alive race; at most
``GOAWAY_REPLAYS`` per call) -> on a retryable failure, up to ``max_retries`` retries
after full-jitter backoff or the server's Retry-After (tenacity, :mod:`._retrying`). A
stream is retried only until its first body byte is handed to the caller; after that a
failure raises a typed error.

The modules around this one: :mod:`._loops` (the clients per event loop, the SSL context),
:mod:`._admission` (the FIFO gate), :mod:`._attempt` (one attempt without I/O: the
prepared call, body cap, failure classification, breaker guard, accounting),
:mod:`._retrying` (tenacity's strategies), :mod:`._h2` (HTTP/2 on httpx),
:mod:`._h2native_pool` (the h2 engine) and :mod:`._aiohttp`.
The sync and async paths here share everything but their I/O lines.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.errors import ConfigError, TransportError
from langchain_fastpipe.transport._admission import AdmissionGates
from langchain_fastpipe.transport._attempt import (
    AttemptSteps,
    Reply,
    ResponseInfo,
    _AttemptError,
    _Call,
    _identity,
    _OpenStream,
    _should_retry,
    decode_json_object,
    encode_payload,
)
from langchain_fastpipe.transport._breaker import BreakerRegistry, CircuitBreaker
from langchain_fastpipe.transport._config import EndpointConfig
from langchain_fastpipe.transport._loops import LoopClients
from langchain_fastpipe.transport._stats import EndpointStats, RequestTrace

if TYPE_CHECKING:
    from langchain_fastpipe.transport._retrying import RetryStrategy

__all__ = ["PooledClient", "ResponseInfo", "aclose_pools", "get_pool"]

T = TypeVar("T")


async def _aclose_response(response: Reply, chunks: Any = None) -> None:
    """Close a streamed reply and its started byte iterator ``chunks``, if any.

    httpx's through :func:`~._h2.aclose_response` (an HTTP/2 stream closed early is
    reset there).
    """
    if isinstance(response, httpx.Response):
        from langchain_fastpipe.transport._h2 import aclose_response

        await aclose_response(response, chunks)
        return
    if chunks is not None:
        await chunks.aclose()
    await response.aclose()


def _close_response(response: Reply, chunks: Any = None) -> None:
    """:func:`~._h2.close_response` (sync calls are always httpx's)."""
    from langchain_fastpipe.transport._h2 import close_response

    close_response(cast(httpx.Response, response), chunks)


class PooledClient:
    """The pooled HTTP client of one endpoint, shared by every model that uses it.

    Get one with :func:`get_pool`; build one directly only to inject test doubles.

    Attributes:
        config: The endpoint configuration.
        endpoint: The redacted ``scheme://host:port/path``.
        breakers: The circuit breakers of the endpoint: one per model named by calls,
            plus the endpoint-wide one (:attr:`breaker`).
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
            clock: Monotonic clock of the circuit breakers.
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
        self.breakers = BreakerRegistry(config.breaker, endpoint=self.endpoint, clock=clock)
        self._stats = EndpointStats(self.endpoint)
        self._sleep = sleep
        self._sync_sleep = sync_sleep
        self._rng = rng
        self._strategy: RetryStrategy | None = None
        self._base = config.base_url.rstrip("/")
        timeout = httpx.Timeout(config.timeout, connect=config.connect_timeout)
        self._steps = AttemptSteps(config, self._stats, self.breakers, timeout)
        self._gates = AdmissionGates(self._steps)
        self._clients = LoopClients(
            config, timeout, transport=transport, async_transport=async_transport
        )
        # Async calls on the aiohttp engine skip httpx's request/response layer.
        self._direct = async_transport is None and (
            config.pooling and config.async_engine == "aiohttp"
        )
        # ... and on the h2 engine, httpx's request/response layer and httpcore.
        self._native = async_transport is None and config.async_engine == "h2"
        # Dropped (nothing holds the pool): its connections are closed, without awaiting.
        weakref.finalize(self, self._clients.abandon)
        runtime().track_pool(self)

    def __repr__(self) -> str:
        """Name the redacted endpoint only."""
        return f"PooledClient(endpoint={self.endpoint!r}, pooling={self.config.pooling})"

    @property
    def breaker(self) -> CircuitBreaker:
        """The endpoint-wide circuit breaker (while open it refuses every model).

        Connect failures open it, and so do the failures of calls that name no model. A
        model's own breaker is ``breakers.get(model)``.
        """
        return self.breakers.endpoint_breaker

    def _drop_dead_loops(self) -> int:
        """Forget clients and gates of closed loops, closing their sockets; how many clients."""
        self._gates.drop_dead_loops()
        return self._clients.drop_dead_loops()

    # -- the retry path: only the I/O lines differ between sync and async ---------------

    def _retry_loop(self, first: _AttemptError) -> RetryStrategy:
        """The tenacity strategy that takes over after ``first``; raises its error if none does.

        The one shortcut of the retry path: the first attempt of a call runs outside
        tenacity (:meth:`_arun`), because a tenacity ``AsyncRetrying`` per call costs
        about 44 us of CPU (``Retrying``: 29 us), measured against 106 us for a whole
        ``apost_json`` on ``httpx.MockTransport`` on the same machine, and nearly every
        call succeeds at once. After a retryable first failure, tenacity runs the call
        with ``first`` replayed as its attempt 1 (``RetryStrategy.areplay_first``), so
        waits, stops and retry counts are exactly those of tenacity running every attempt.
        tenacity is imported here, at the first call that needs it.
        """
        if self.config.retry.max_retries == 0 or not _should_retry(first):
            raise first.error
        strategy = self._strategy
        if strategy is None:
            from langchain_fastpipe.transport._retrying import RetryStrategy

            strategy = self._strategy = RetryStrategy(
                self.config.retry, self._rng, sleep=self._sync_sleep, asleep=self._sleep,
                count=self._stats.count_retry,
            )  # fmt: skip
        return strategy

    async def _arun(
        self,
        call: _Call,
        op: Callable[[httpx.AsyncClient, RequestTrace], Awaitable[T]],
        *,
        keep_client: bool = False,
    ) -> tuple[T, httpx.AsyncClient | None]:
        """Run ``op`` until it succeeds or fails for good (retries after backoff).

        The circuit breakers are asked once, before the first attempt, and told the
        call's outcome once: here, unless ``keep_client`` (a stream) succeeded, whose
        outcome the stream reports when it ends.

        Returns:
            The op's result and, when ``keep_client`` and pooling is off, the fresh client
            the caller must close.

        Raises:
            TransportError: The typed error of the last failure (or CircuitOpenError).
        """
        guard = self._steps.guard(call)
        try:
            failed: _AttemptError | None = None
            try:
                result = await self._aattempt(call, op, keep_client=keep_client)
            except _AttemptError as exc:
                failed = exc
            if failed is not None:
                strategy = self._retry_loop(failed)
                attempt = strategy.areplay_first(failed, self._aattempt)
                failed = None
                try:
                    result = await strategy.aretrying()(attempt, call, op, keep_client=keep_client)
                except _AttemptError as exc:
                    failed = exc
                if failed is not None:
                    raise failed.error
            if not keep_client:
                guard.report()
            return result
        except BaseException as exc:
            guard.report(exc)
            raise

    def _run(
        self,
        call: _Call,
        op: Callable[[httpx.Client, RequestTrace], T],
        *,
        keep_client: bool = False,
    ) -> tuple[T, httpx.Client | None]:
        """Sync :meth:`_arun`."""
        guard = self._steps.guard(call)
        try:
            failed: _AttemptError | None = None
            try:
                result = self._attempt(call, op, keep_client=keep_client)
            except _AttemptError as exc:
                failed = exc
            if failed is not None:
                strategy = self._retry_loop(failed)
                attempt = strategy.replay_first(failed, self._attempt)
                failed = None
                try:
                    result = strategy.retrying()(attempt, call, op, keep_client=keep_client)
                except _AttemptError as exc:
                    failed = exc
                if failed is not None:
                    raise failed.error
            if not keep_client:
                guard.report()
            return result
        except BaseException as exc:
            guard.report(exc)
            raise

    async def _aattempt(
        self,
        call: _Call,
        op: Callable[[httpx.AsyncClient, RequestTrace], Awaitable[T]],
        *,
        keep_client: bool,
    ) -> tuple[T, httpx.AsyncClient | None]:
        """One attempt, with immediate stale-connection replays.

        Each try first waits for an admission slot; a failed try frees it.
        ``keep_client`` (a stream): the caller keeps the slot, and the fresh client when
        pooling is off, until the stream is closed; otherwise both go at once. The
        attempt's outcome is noted on the call's guard (the breakers hear it once, from
        :meth:`_arun`).
        """
        steps = self._steps
        while True:
            trace = steps.begin(call)
            owned = None if self.config.pooling else self._clients.new_async_client()
            try:
                await self._gates.aadmit(call)
                result = await op(owned or self._clients.aclient(), trace)
            except BaseException as exc:
                call.release_admission()
                if owned is not None:
                    await owned.aclose()
                steps.after_failure(exc, trace, call)
                continue
            if call.guard is not None:
                call.guard.succeeded()
            if not keep_client:
                call.release_admission()
            if owned is not None and not keep_client:
                await owned.aclose()
                owned = None
            return result, owned

    def _attempt(
        self,
        call: _Call,
        op: Callable[[httpx.Client, RequestTrace], T],
        *,
        keep_client: bool,
    ) -> tuple[T, httpx.Client | None]:
        """Sync :meth:`_aattempt`."""
        steps = self._steps
        while True:
            trace = steps.begin(call)
            owned = None if self.config.pooling else self._clients.new_sync_client()
            try:
                self._gates.admit(call)
                result = op(owned or self._clients.client(), trace)
            except BaseException as exc:
                call.release_admission()
                if owned is not None:
                    owned.close()
                steps.after_failure(exc, trace, call)
                continue
            if call.guard is not None:
                call.guard.succeeded()
            if not keep_client:
                call.release_admission()
            if owned is not None and not keep_client:
                owned.close()
                owned = None
            return result, owned

    async def _asend(self, client: httpx.AsyncClient, call: _Call, trace: RequestTrace) -> Reply:
        """Send one attempt of ``call`` and return its reply once the headers arrived.

        On the aiohttp engine straight on the loop's aiohttp session
        (:func:`~._aiohttp.asend`); on the h2 engine on its connections
        (:meth:`~._h2native_pool.H2Engine.asend`), unless the server declined HTTP/2;
        otherwise through ``client`` (httpx).
        """
        if self._native:
            from langchain_fastpipe.transport import _h2native_pool as native

            engine = native.engine_of(client)
            if engine is not None and engine.serves(call.url):
                try:
                    return await engine.asend(
                        call.method, call.url, call.content, call.headers,
                        call.timeout or client.timeout, trace,
                    )  # fmt: skip
                except native.NotH2:
                    pass  # TLS ALPN chose HTTP/1.1: httpx's from now on
        if self._direct:
            from langchain_fastpipe.transport import _aiohttp

            session = _aiohttp.direct_session(client)
            if session is not None:
                return await _aiohttp.asend(
                    session, call.method, str(call.url), call.content, call.headers,
                    call.timeout or client.timeout, trace,
                )  # fmt: skip
        return await client.send(self._steps.build(client, call, trace.atrace), stream=True)

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
        model: str | None = None,
    ) -> tuple[Any, ResponseInfo]:
        """Send a request, read its whole (bounded) body, retry when allowed."""
        call = self._steps.prepare(method, path, content, headers, timeout, model=model)

        async def op(client: httpx.AsyncClient, trace: RequestTrace) -> bytes:
            response = await self._asend(client, call, trace)
            try:
                cap = self._steps.on_headers(response, call, trace)
                async for chunk in response.aiter_bytes():
                    if not cap.feed(chunk):
                        break
                return self._steps.body(response, call, cap)
            finally:
                await response.aclose()

        with self._steps.accounted(call):
            body, _ = await self._arun(call, op)
            data: Any = decode_json_object(body, self.endpoint) if parse else body
            call.finished = True
        return data, call.info

    def _request_json(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        *,
        parse: bool = True,
        model: str | None = None,
    ) -> tuple[Any, ResponseInfo]:
        """Sync :meth:`_arequest_json`."""
        call = self._steps.prepare(method, path, content, headers, timeout, model=model)

        def op(client: httpx.Client, trace: RequestTrace) -> bytes:
            response = client.send(self._steps.build(client, call, trace.trace), stream=True)
            try:
                cap = self._steps.on_headers(response, call, trace)
                for chunk in response.iter_bytes():
                    if not cap.feed(chunk):
                        break
                return self._steps.body(response, call, cap)
            finally:
                response.close()

        with self._steps.accounted(call):
            body, _ = self._run(call, op)
            data: Any = decode_json_object(body, self.endpoint) if parse else body
            call.finished = True
        return data, call.info

    async def apost_json(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        model: str | None = None,
    ) -> tuple[dict[str, Any], ResponseInfo]:
        """POST ``payload`` as JSON and return the JSON object of the reply.

        Args:
            path: Appended to ``base_url`` (e.g. ``"/chat/completions"``).
            payload: The JSON body.
            headers: Extra headers (e.g. ``Authorization``); never logged or put in errors.
            timeout: Per-call read/write/pool timeout in seconds (default: the config's).
            model: The model called: picks its circuit breaker, so a failing model does
                not block the others. None: the endpoint-wide breaker only.

        Returns:
            The reply object and its :class:`ResponseInfo`.

        Raises:
            CircuitOpenError: The model's breaker, or the endpoint-wide one, is open.
            HTTPStatusError: A non-2xx reply (the subclass matching the status).
            EndpointConnectError: The connection failed (after retries).
            EndpointTimeoutError: A timeout expired (after retries).
            ProtocolViolationError: The reply was not a JSON object.
            ResponseTooLargeError: The reply exceeded ``max_response_bytes``.
        """
        content = encode_payload(payload)
        data, info = await self._arequest_json("POST", path, content, headers, timeout, model=model)
        return data, info

    def post_json(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        model: str | None = None,
    ) -> tuple[dict[str, Any], ResponseInfo]:
        """Sync :meth:`apost_json`: POST JSON, return the reply object and its info."""
        content = encode_payload(payload)
        data, info = self._request_json("POST", path, content, headers, timeout, model=model)
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
        model: str | None = None,
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
            model: The model called (its circuit breaker, as in :meth:`apost_json`); the
                breakers hear the stream's outcome when it ends.

        Yields:
            Decoded (not decompressed-twice) body bytes, in the server's chunking.
        """
        call = self._steps.prepare(
            "POST", path, encode_payload(payload), headers, timeout, info, model=model
        )

        async def op(client: httpx.AsyncClient, trace: RequestTrace) -> _OpenStream:
            response = await self._asend(client, call, trace)
            try:
                cap = self._steps.on_headers(response, call, trace)
                if not cap.ok:
                    async for chunk in response.aiter_bytes():
                        if not cap.feed(chunk):
                            break
                    raise self._steps.status(response, call, cap)
                chunks = response.aiter_raw() if _identity(response) else response.aiter_bytes()
                first = await anext(chunks, None)
                call.info.time_to_first_byte = time.perf_counter() - call.start
                return _OpenStream(response, chunks, first)
            except BaseException:
                await _aclose_response(response)
                raise

        with self._steps.accounted(call):
            opened: _OpenStream | None = None
            owned: httpx.AsyncClient | None = None
            try:
                started, owned = await self._arun(call, op, keep_client=True)
                opened = started
                call.finished = started.first is None
                if not call.finished:
                    if started.first:
                        yield started.first
                    cut: TransportError | None = None
                    try:
                        async for chunk in started.chunks:
                            yield chunk
                    except httpx.HTTPError as exc:
                        cut = self._steps.stream_failure(exc, call)
                    if cut is not None:
                        raise cut
                    call.finished = True
            finally:
                if opened is not None:
                    await _aclose_response(opened.response, opened.chunks)
                if owned is not None:
                    await owned.aclose()
                call.release_admission()
                if call.guard is not None:
                    call.guard.report()  # a stream that was opened: its end, once

    def stream(
        self,
        path: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        info: ResponseInfo | None = None,
        model: str | None = None,
    ) -> Iterator[bytes]:
        """Sync :meth:`astream`: a generator of body byte chunks, same guarantees."""
        call = self._steps.prepare(
            "POST", path, encode_payload(payload), headers, timeout, info, model=model
        )

        def op(client: httpx.Client, trace: RequestTrace) -> _OpenStream:
            response = client.send(self._steps.build(client, call, trace.trace), stream=True)
            try:
                cap = self._steps.on_headers(response, call, trace)
                if not cap.ok:
                    for chunk in response.iter_bytes():
                        if not cap.feed(chunk):
                            break
                    raise self._steps.status(response, call, cap)
                chunks = response.iter_raw() if _identity(response) else response.iter_bytes()
                first = next(chunks, None)
                call.info.time_to_first_byte = time.perf_counter() - call.start
                return _OpenStream(response, chunks, first)
            except BaseException:
                _close_response(response)
                raise

        return self._stream_body(call, op)

    def _stream_body(
        self, call: _Call, op: Callable[[httpx.Client, RequestTrace], _OpenStream]
    ) -> Iterator[bytes]:
        """The generator behind :meth:`stream` (validation above runs eagerly)."""
        with self._steps.accounted(call):
            opened: _OpenStream | None = None
            owned: httpx.Client | None = None
            try:
                started, owned = self._run(call, op, keep_client=True)
                opened = started
                call.finished = started.first is None
                if not call.finished:
                    if started.first:
                        yield started.first
                    cut: TransportError | None = None
                    try:
                        yield from started.chunks
                    except httpx.HTTPError as exc:
                        cut = self._steps.stream_failure(exc, call)
                    if cut is not None:
                        raise cut
                    call.finished = True
            finally:
                if opened is not None:
                    _close_response(opened.response, opened.chunks)
                if owned is not None:
                    owned.close()
                call.release_admission()
                if call.guard is not None:
                    call.guard.report()  # a stream that was opened: its end, once

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
        client = self._clients.aclient()

        async def one() -> None:
            trace = RequestTrace(self._stats)
            self._stats.count_request()
            try:
                response = await client.get(self._base, extensions={"trace": trace.atrace})
            except httpx.HTTPError as exc:
                error = self._steps.typed(exc)
            else:
                trace.finish()
                self._stats.count_version(response.http_version)
                return
            raise error

        await asyncio.gather(*(one() for _ in range(n)))

    def warm(self, n: int = 1) -> None:
        """Sync :meth:`awarm` (requests run one after another, so usually one connection)."""
        if n < 1 or not self.config.pooling:
            return
        client = self._clients.client()
        for _ in range(n):
            trace = RequestTrace(self._stats)
            self._stats.count_request()
            try:
                response = client.get(self._base, extensions={"trace": trace.trace})
            except httpx.HTTPError as exc:
                error = self._steps.typed(exc)
            else:
                trace.finish()
                self._stats.count_version(response.http_version)
                continue
            raise error

    def stats(self) -> dict[str, Any]:
        """This endpoint's statistics (JSON-serializable), breaker states included.

        ``stats()["breaker"]`` is the endpoint-wide breaker's state, window counts and
        cooldown, with every model's under ``"models"`` (see
        :meth:`~._breaker.BreakerRegistry.snapshot`).
        """
        return self._stats.snapshot(self.breakers.snapshot())

    async def aclose_loop(self) -> None:
        """Close the async client of the running loop (and forget those of closed loops).

        The pool stays usable: the next call on this loop opens new connections.
        """
        client = self._clients.pop_loop(asyncio.get_running_loop())
        self._drop_dead_loops()
        if client is not None:
            await client.aclose()

    async def aclose(self) -> None:
        """Close the async client of the running loop, and the sync client.

        The pool stays usable: the next call opens new connections.
        """
        await self.aclose_loop()
        self.close()

    def close(self) -> None:
        """Close the sync client; drop async clients of closed loops, closing their sockets.

        The pool stays usable: the next call opens new connections.
        """
        self._gates.drop_dead_loops()
        self._clients.close()


def get_pool(config: EndpointConfig) -> PooledClient:
    """The shared :class:`PooledClient` of ``config``: the same object for equal configs.

    The runtime keeps pools weakly: hold the returned pool (a ``ChatFastpipe`` holds its
    own) for as long as you use it. A pool nothing holds is dropped and its connections
    are closed; the next ``get_pool`` of that config builds a new one.

    Args:
        config: The endpoint configuration (a frozen, hashable dataclass).

    Returns:
        The process-wide client of that configuration.

    Raises:
        ConfigError: ``config`` is not an EndpointConfig.
    """
    if not isinstance(config, EndpointConfig):
        msg = f"get_pool needs an EndpointConfig, got {type(config).__name__}"
        raise ConfigError(msg)
    return runtime().pool(config, PooledClient)


async def aclose_pools() -> None:
    """Close every pool's async client of the running event loop.

    Await it before a loop you own ends (after ``asyncio.run(...)``'s work, a worker
    thread's loop, a warm-up loop): the connections are then closed cleanly instead of
    being left to a loop that no longer runs. Pools stay usable.
    """
    for pool in runtime().live_pools():
        if isinstance(pool, PooledClient):
            await pool.aclose_loop()
