"""The shared pooled client of one endpoint: :class:`PooledClient` and :func:`get_pool`.

One :class:`PooledClient` per :class:`EndpointConfig` (``get_pool`` caches them by the
frozen config). It owns one ``httpx.Client`` for sync calls and one ``httpx.AsyncClient``
per event loop, so ``asyncio.run()`` twice, pytest's per-test loops, Jupyter and threads
each get a client bound to their own loop (a client is never used on a loop it was not
built on). A client whose loop has closed cannot be closed normally any more: when one is
found (a new loop asks for a client, or :meth:`PooledClient.close`), its entry is dropped
and its sockets are closed directly. :func:`aclose_pools` closes the running loop's
clients of every pool properly; call it before a loop you own ends. The SSL context is
built once per config and shared by every client.

Each call goes: circuit breakers (the endpoint-wide one and the called model's, asked once
per call and told the call's outcome once at its end, never per attempt) -> admission gate
(at most ``config.admission_limit`` requests inside httpx per event loop, the rest wait
FIFO in an ``asyncio.Semaphore``, or a ``threading.BoundedSemaphore`` for sync calls, up
to the pool timeout; a stream holds its slot until it is closed) -> attempt (with
immediate replays of requests whose pooled connection turned out to be gone before any
response header: graceful HTTP/2 GOAWAY or the keep-alive race; at most
``GOAWAY_REPLAYS`` per call) -> on a retryable
failure, up to ``max_retries`` retries after full-jitter backoff or the server's
Retry-After. A stream is retried only until its first body byte is handed to the caller;
after that a failure raises a typed error.

The sync and async paths share everything but their I/O lines: a call is prepared once
(:class:`_Call`), bodies go through :class:`_BodyCap`, failures are classified by
:meth:`PooledClient._classify`, retry delays come from :class:`_BackoffWait` and breaker
verdicts from :func:`_breaker_outcome`. The retry loop is tenacity's (``Retrying`` /
``AsyncRetrying``) over the same strategy objects: ``stop_after_attempt``, the
:class:`_BackoffWait` wait and the :func:`_should_retry` predicate.
"""

from __future__ import annotations

import asyncio
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
import tenacity

from langchain_fastpipe.errors import (
    ConfigError,
    EndpointTimeoutError,
    ProtocolViolationError,
    ResponseTooLargeError,
    TransportError,
    status_error,
)
from langchain_fastpipe.stats import registry
from langchain_fastpipe.transport._aiohttp import aiohttp_transport
from langchain_fastpipe.transport._breaker import (
    IGNORED,
    SUCCESS,
    Admission,
    BreakerRegistry,
    CircuitBreaker,
    Verdict,
)
from langchain_fastpipe.transport._config import EndpointConfig, RetryPolicy
from langchain_fastpipe.transport._h2 import (
    abort_dead_loop_client,
    aclose_response,
    async_transport,
    close_response,
    sync_transport,
    transport_kwargs,
)
from langchain_fastpipe.transport._retry import (
    GOAWAY_REPLAYS,
    counts_as_breaker_failure,
    forget_traceback,
    is_retryable_httpx_error,
    is_stale_connection_error,
    map_httpx_error,
    parse_retry_after,
    quotes_header,
    redact_secrets,
    retry_delay,
)
from langchain_fastpipe.transport._stats import EndpointStats, RequestTrace

__all__ = ["PooledClient", "ResponseInfo", "aclose_pools", "get_pool"]

T = TypeVar("T")

_JSON_HEADERS: Final[Mapping[str, str]] = {"content-type": "application/json"}
_ERROR_BODY_LIMIT: Final = 64 * 1024
_MAX_CACHED_URLS: Final = 64  # parsed request URLs kept per pool (one per API path)


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
    """One attempt failed: the typed error, what it means for retries and the breaker.

    ``alive`` says the endpoint did answer (a status or an oversized body): unless the
    failure also counts against the breaker, the breakers record a success. ``connect``
    says no connection could be opened (the server is down): a failure of the
    endpoint-wide breaker rather than of the model's (see :func:`_breaker_outcome`).
    """

    def __init__(
        self,
        error: TransportError,
        *,
        retryable: bool,
        breaker_failure: bool,
        alive: bool = False,
        retry_after: float | None = None,
        connect: bool = False,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable
        self.breaker_failure = breaker_failure
        self.alive = alive
        self.retry_after = retry_after
        self.connect = connect


@dataclass(slots=True)
class _Call:
    """One prepared call: what every attempt of it sends, and its running state."""

    method: str
    url: httpx.URL
    content: bytes | None
    headers: Mapping[str, str]  # as sent
    secrets: Mapping[str, str] | None  # the caller's headers: kept out of error bodies
    timeout: httpx.Timeout | None
    info: ResponseInfo
    start: float
    replays: int = 0
    finished: bool = False  # the reply was read to its end
    release: Callable[[], None] | None = None  # frees the admission slot held, if any
    model: str | None = None  # picks the model's circuit breaker
    guard: _CallGuard | None = None  # the breakers' view of this call, once admitted

    def release_admission(self) -> None:
        """Free the pool admission slot this call holds (idempotent)."""
        release, self.release = self.release, None
        if release is not None:
            release()


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
    return _AttemptError(error, retryable=False, breaker_failure=False, alive=True)


def _declared_too_large(response: httpx.Response, limit: int) -> bool:
    """Whether the Content-Length header already exceeds ``limit``."""
    declared = response.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


def _status_failure(
    response: httpx.Response,
    body: bytes,
    endpoint: str,
    retry_statuses: frozenset[int],
    secrets: Mapping[str, str] | None,
) -> _AttemptError:
    """The failure for a non-2xx reply, with its Retry-After.

    The request's header values (the API key) are removed from the body first: servers
    and proxies echo them ("Incorrect API key: sk-..."), and the body goes into the
    error's message and ``body``.
    """
    retry_after = parse_retry_after(response.headers, now=time.time())
    code = response.status_code
    text = redact_secrets(body.decode("utf-8", "replace"), secrets)
    error = status_error(code, endpoint=endpoint, body=text, retry_after=retry_after)
    return _AttemptError(
        error,
        retryable=code in retry_statuses,
        breaker_failure=code >= 500,
        alive=True,
        retry_after=retry_after,
    )


class _BodyCap:
    """Collects a reply body up to its cap: ``limit`` for 2xx, 64 KiB for error bodies.

    A 2xx body over the cap fails the attempt (ResponseTooLargeError); an error body is
    simply cut there (``complete`` turns False).
    """

    __slots__ = ("_cap", "_chunks", "_endpoint", "_size", "complete", "ok")

    def __init__(self, response: httpx.Response, limit: int, endpoint: str) -> None:
        self.ok = response.status_code < 400
        self._cap = limit if self.ok else _ERROR_BODY_LIMIT
        self._endpoint = endpoint
        self._chunks: list[bytes] = []
        self._size = 0
        self.complete = True
        if self.ok and _declared_too_large(response, self._cap):
            raise _too_large(endpoint, self._cap)

    def feed(self, chunk: bytes) -> bool:
        """Add ``chunk``; False once an error body reached the cap (stop reading)."""
        room = self._cap - self._size
        self._size += len(chunk)
        if len(chunk) > room:
            if self.ok:
                raise _too_large(self._endpoint, self._cap)
            self._chunks.append(chunk[:room])
            self.complete = False
            return False
        self._chunks.append(chunk)
        return True

    def body(self) -> bytes:
        """The bytes collected."""
        return b"".join(self._chunks)


def _should_retry(exc: BaseException) -> bool:
    """The tenacity ``retry`` predicate: a retryable failure of a whole attempt.

    Only :class:`_AttemptError` is ever retried, and it is raised only before any body
    byte reached the caller (a failure after that leaves the retry loop as a typed error
    of the stream itself); cancellations, breaker refusals and bugs are never retried.
    """
    return isinstance(exc, _AttemptError) and exc.retryable


class _BackoffWait:
    """Tenacity wait strategy: full-jitter exponential backoff, or the server's Retry-After.

    Before retry ``n`` (0-based, ``attempt_number - 1``) it waits
    :func:`~langchain_fastpipe.transport._retry.retry_delay`: the failed attempt's
    ``retry_after`` capped at ``retry_after_cap`` when the server sent one, else
    ``uniform(0, min(max_backoff, initial_backoff * 2**n))`` drawn with ``rng``.
    The same object serves :class:`tenacity.Retrying` and :class:`tenacity.AsyncRetrying`.
    """

    __slots__ = ("_policy", "_rng")

    def __init__(self, policy: RetryPolicy, rng: Callable[[], float]) -> None:
        """Wait according to ``policy``, with jitter from ``rng`` (floats in ``[0, 1)``)."""
        self._policy = policy
        self._rng = rng

    def __call__(self, state: tenacity.RetryCallState) -> float:
        """Seconds to sleep before the next attempt of ``state``."""
        outcome = state.outcome
        failed = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = failed.retry_after if isinstance(failed, _AttemptError) else None
        return retry_delay(self._policy, state.attempt_number - 1, retry_after, self._rng)


#: A connection could not be opened: the server is down (the endpoint-wide breaker).
_SERVER_DOWN: Final = Verdict("failure", "ignored")
#: A 5xx reply: the server is up, the model is failing.
_MODEL_ERROR: Final = Verdict("success", "failure")
#: A timeout or broken connection after connecting: the model (or server) is unhealthy.
_MODEL_STALLED: Final = Verdict("ignored", "failure")
#: A stream the peer cut after its headers (a GOAWAY, a recycling proxy): server was up.
_STREAM_CUT: Final = Verdict("success", "ignored")


def _breaker_outcome(failed: _AttemptError) -> Verdict:
    """What a call that failed with ``failed`` tells the breakers.

    Connect failures count against the endpoint-wide breaker only; 5xx replies, timeouts
    and connections broken before the reply against the model's; other replies (4xx, an
    oversized body) are successes; the rest (pool-admission timeouts, stale pooled
    connections, local errors) prove nothing.
    """
    if failed.breaker_failure:
        if failed.connect:
            return _SERVER_DOWN
        return _MODEL_ERROR if failed.alive else _MODEL_STALLED
    return SUCCESS if failed.alive else IGNORED


class _CallGuard:
    """The breakers' view of one call, all its attempts together: admitted once, told once.

    The verdict is that of the call's last attempt (a success, or its classified failure);
    a call that ends in a cancellation or a local error tells the breakers nothing.
    """

    __slots__ = ("_admission", "_error", "_verdict")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._verdict: Verdict = IGNORED
        self._error: TransportError | None = None

    def succeeded(self) -> None:
        """The last attempt got its reply."""
        self._verdict, self._error = SUCCESS, None

    def failed(self, failed: _AttemptError) -> None:
        """The last attempt failed with ``failed``."""
        self._verdict, self._error = _breaker_outcome(failed), failed.error

    def ended(self, verdict: Verdict, error: TransportError | None = None) -> None:
        """The call ended with ``verdict`` after its attempts (a stream cut mid-body)."""
        self._verdict, self._error = verdict, error

    def report(self, exc: BaseException | None = None) -> None:
        """Tell the breakers (only the first report counts); ``exc``: the call's end.

        A call ending in a cancellation (not an :class:`Exception`) tells them nothing.
        """
        cancelled = exc is not None and not isinstance(exc, Exception)
        self._admission.report(IGNORED if cancelled else self._verdict, self._error)


class _Accounting:
    """Context manager counting one call in flight, then its failure or latency."""

    __slots__ = ("_call", "_stats")

    def __init__(self, stats: EndpointStats, call: _Call) -> None:
        self._stats = stats
        self._call = call

    def __enter__(self) -> None:
        self._stats.enter()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        stats = self._stats
        stats.leave()
        if kind is not None and issubclass(kind, Exception):
            stats.count_failure()
        elif kind is None and self._call.finished:
            stats.latency.record(time.perf_counter() - self._call.start)


def _identity(response: httpx.Response) -> bool:
    """Whether the body can be read raw: not content-encoded and not already read."""
    if response.is_stream_consumed:
        return False  # e.g. a MockTransport reply built from ``content=``
    encoding = response.headers.get("content-encoding")
    return encoding is None or encoding.strip().lower() in ("", "identity")


def _build_ssl_context(config: EndpointConfig) -> ssl.SSLContext | None:
    """The SSL context of an https endpoint, built once per config (ogx-ai/ogx#4221: ~11 ms)."""
    if not config.base_url.lower().startswith("https:"):
        return None
    if isinstance(config.verify, str):
        try:
            return ssl.create_default_context(cafile=config.verify)
        except (OSError, ssl.SSLError) as exc:
            msg = f"EndpointConfig.verify: cannot load CA bundle {config.verify!r}: {exc}"
            raise ConfigError(msg) from exc
    return httpx.create_ssl_context(verify=config.verify)


def _replay_first(
    first: _AttemptError, attempt: Callable[..., Awaitable[T]]
) -> Callable[..., Awaitable[T]]:
    """``attempt``, except that its first call raises ``first`` (already seen) without I/O.

    Lets a tenacity loop start after a first attempt that ran outside it: tenacity sees
    that failure as its attempt 1, then waits and calls ``attempt`` for attempts 2, 3...
    """
    pending: list[_AttemptError] = [first]

    async def run(*args: Any, **kwargs: Any) -> T:
        if pending:
            raise pending.pop()
        return await attempt(*args, **kwargs)

    return run


def _replay_first_sync(first: _AttemptError, attempt: Callable[..., T]) -> Callable[..., T]:
    """Sync :func:`_replay_first`."""
    pending: list[_AttemptError] = [first]

    def run(*args: Any, **kwargs: Any) -> T:
        if pending:
            raise pending.pop()
        return attempt(*args, **kwargs)

    return run


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
        self._stop = tenacity.stop_after_attempt(1 + config.retry.max_retries)
        self._wait = _BackoffWait(config.retry, rng)
        self._retry_if = tenacity.retry_if_exception(_should_retry)
        self._transport = transport
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport
        self._async_transport = async_transport
        self._base = config.base_url.rstrip("/")
        self._urls: dict[str, httpx.URL] = {}
        self._ssl_context = _build_ssl_context(config)
        self._timeout = httpx.Timeout(config.timeout, connect=config.connect_timeout)
        limits = config.limits
        self._limits = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._lock = threading.Lock()
        # Admission gates (see EndpointConfig.admission_limit): requests beyond the limit
        # wait here, FIFO, never in httpcore's queue. One per event loop, one for sync.
        self._sync_gate = threading.BoundedSemaphore(config.admission_limit)
        self._async_gate_size = (
            limits.max_connections if config.async_engine == "aiohttp" else config.admission_limit
        )
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        # A plain dict: a client refers to its loop (through its connections), so a
        # WeakKeyDictionary entry would never go away by itself anyway.
        self._async_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._sync_client: httpx.Client | None = None
        _LIVE.add(self)

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

    # -- clients ------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every httpx client of this endpoint."""
        return {"timeout": self._timeout, **transport_kwargs(self.config, self._ssl_context)}

    def _new_async_client(self) -> httpx.AsyncClient:
        """A new async client (MockTransport when injected; aiohttp when configured).

        The httpx engine's transport is :func:`~._h2.async_transport`'s (graceful GOAWAY).
        """
        kwargs = self._client_kwargs()
        if self._async_transport is not None:
            kwargs["transport"] = self._async_transport
        elif self.config.async_engine == "aiohttp" and self.config.pooling:
            kwargs["transport"] = aiohttp_transport(self.config, self._ssl_context)
        else:
            kwargs["transport"] = async_transport(self.config, self._ssl_context)
        return httpx.AsyncClient(**kwargs)

    def _new_sync_client(self) -> httpx.Client:
        """A new sync client (MockTransport when injected; else :func:`~._h2.sync_transport`)."""
        kwargs = self._client_kwargs()
        transport = self._transport
        if transport is None:
            transport = sync_transport(self.config, self._ssl_context)
        kwargs["transport"] = transport
        return httpx.Client(**kwargs)

    def _aclient(self) -> httpx.AsyncClient:
        """The shared async client of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            self._drop_dead_loops()
            with self._lock:
                client = self._async_clients.get(loop)
                if client is None:
                    client = self._async_clients[loop] = self._new_async_client()
        return client

    def _drop_dead_loops(self) -> int:
        """Forget the async clients of closed loops and close their sockets; how many."""
        with self._lock:
            dead = [loop for loop in self._async_clients if loop.is_closed()]
            clients = [self._async_clients.pop(loop) for loop in dead]
            for loop in [loop for loop in self._gates if loop.is_closed()]:
                del self._gates[loop]
        for client in clients:
            abort_dead_loop_client(client)
        return len(clients)

    def _agate(self) -> asyncio.Semaphore:
        """The admission gate of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            with self._lock:
                gate = self._gates.setdefault(loop, asyncio.Semaphore(self._async_gate_size))
        return gate

    def _pool_timeout(self, call: _Call) -> float | None:
        """The longest wait for admission: the call's (or the config's) pool timeout."""
        return (call.timeout or self._timeout).pool

    def _admission_timeout(self, limit: float | None, size: int, waited: float) -> _AttemptError:
        """The failure of a call that found no free slot within the pool timeout.

        Not retried (it already waited the whole pool timeout) and not a breaker failure
        (the endpoint is fine; this process is saturated).
        """
        self._stats.pool_wait.record(waited)
        error = EndpointTimeoutError(
            f"pool timeout talking to {self.endpoint}: no free slot within {limit} s "
            f"({size} requests in flight, the pool's admission limit)",
            endpoint=self.endpoint,
        )
        return _AttemptError(error, retryable=False, breaker_failure=False)

    async def _aadmit(self, call: _Call) -> None:
        """Wait for a free slot in the loop's admission gate; ``call`` then holds it.

        Raises:
            _AttemptError: No slot within the pool timeout (EndpointTimeoutError).
        """
        gate = self._agate()
        if gate.locked():
            limit = self._pool_timeout(call)
            started = time.perf_counter()
            try:
                await asyncio.wait_for(gate.acquire(), limit)
            except asyncio.TimeoutError:
                waited = time.perf_counter() - started
                raise self._admission_timeout(limit, self._async_gate_size, waited) from None
        else:
            await gate.acquire()
        call.release = gate.release

    def _admit(self, call: _Call) -> None:
        """Sync :meth:`_aadmit` (one gate shared by every thread)."""
        gate = self._sync_gate
        if not gate.acquire(blocking=False):
            limit = self._pool_timeout(call)
            started = time.perf_counter()
            if not gate.acquire(timeout=limit):
                waited = time.perf_counter() - started
                size = self.config.admission_limit
                raise self._admission_timeout(limit, size, waited) from None
        call.release = gate.release

    def _client(self) -> httpx.Client:
        """The shared sync client (created on first use)."""
        client = self._sync_client
        if client is None:
            with self._lock:
                client = self._sync_client
                if client is None:
                    client = self._sync_client = self._new_sync_client()
        return client

    def _url(self, path: str) -> httpx.URL:
        """``base_url`` joined with ``path``, parsed once per path (httpx reuses a URL as is)."""
        url = self._urls.get(path)
        if url is None:
            joined = f"{self._base}/{path.lstrip('/')}" if path else self._base
            url = httpx.URL(joined)
            if len(self._urls) < _MAX_CACHED_URLS:
                self._urls[path] = url
        return url

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

    # -- shared steps of the sync and async paths (no I/O) ------------------------------

    def _prepare(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        info: ResponseInfo | None = None,
        *,
        model: str | None = None,
    ) -> _Call:
        """Everything the attempts of one call send, computed once."""
        return _Call(
            method=method,
            url=self._url(path),
            content=content,
            headers=self._headers(headers, json_body=content is not None),
            secrets=headers,
            timeout=self._timeout_for(timeout),
            info=info if info is not None else ResponseInfo(),
            start=time.perf_counter(),
            model=model,
        )

    @staticmethod
    def _build(
        client: httpx.Client | httpx.AsyncClient, call: _Call, hook: Callable[..., Any]
    ) -> httpx.Request:
        """The request of one attempt of ``call``, traced by ``hook``."""
        return client.build_request(
            call.method, call.url, content=call.content, headers=call.headers,
            timeout=call.timeout or httpx.USE_CLIENT_DEFAULT, extensions={"trace": hook},
        )  # fmt: skip

    def _begin(self, call: _Call) -> RequestTrace:
        """Count one attempt of ``call``; its trace hook."""
        call.info.attempts += 1
        self._stats.count_request()
        return RequestTrace(self._stats)

    def _on_headers(self, response: httpx.Response, call: _Call, trace: RequestTrace) -> _BodyCap:
        """Record what the response headers tell (info, stats); the body's collector."""
        trace.finish()
        elapsed = time.perf_counter() - call.start
        info = call.info
        info.status_code = response.status_code
        info.http_version = response.http_version
        info.time_to_headers = elapsed
        self._stats.time_to_headers.record(elapsed)
        self._stats.count_version(response.http_version)
        return _BodyCap(response, self.config.max_response_bytes, self.endpoint)

    def _status(self, response: httpx.Response, call: _Call, cap: _BodyCap) -> _AttemptError:
        """The failure of a non-2xx reply whose (capped) body was collected in ``cap``."""
        return _status_failure(
            response, cap.body(), self.endpoint, self.config.retry.retry_statuses, call.secrets
        )

    def _body(self, response: httpx.Response, call: _Call, cap: _BodyCap) -> bytes:
        """The whole body of a 2xx reply; raises the failure of any other."""
        if call.info.time_to_first_byte is None:
            call.info.time_to_first_byte = time.perf_counter() - call.start
        if not cap.ok:
            raise self._status(response, call, cap)
        return cap.body()

    def _typed(self, exc: httpx.HTTPError) -> TransportError:
        """The typed error of an httpx failure, to raise outside any ``except`` block.

        Its cause is ``exc``, except when ``exc``'s text may quote a request header (an
        API key): then it has no cause and no context at all.
        """
        error = map_httpx_error(exc, self.endpoint)
        error.__cause__ = None if quotes_header(exc) else exc
        error.__suppress_context__ = True
        return error

    def _stream_failure(self, exc: httpx.HTTPError, call: _Call) -> TransportError:
        """The typed error of a failure after body bytes reached the caller (no retry).

        The call's breakers are told at the stream's end: the headers had arrived, so a
        connection the peer dropped (a GOAWAY, a recycling proxy) is not held against the
        model; a timeout is.
        """
        error = self._typed(exc)
        if call.guard is not None:
            if counts_as_breaker_failure(exc, headers_received=True):
                call.guard.ended(_MODEL_STALLED, error)
            else:
                call.guard.ended(_STREAM_CUT)
        return error

    def _classify(
        self, exc: httpx.HTTPError | _AttemptError, trace: RequestTrace, call: _Call
    ) -> _AttemptError | None:
        """None: resend at once (stale pooled connection, replays left); else the failure.

        A stale-connection failure left over once the call's replays are spent is an
        ordinary retryable failure, but never a breaker failure: the endpoint is alive,
        it is recycling connections.
        """
        if isinstance(exc, _AttemptError):
            return exc
        stale = is_stale_connection_error(
            exc,
            reused=not trace.opened_connection,
            headers_received=trace.headers_received,
            multiplexed=trace.multiplexed,
        )
        if stale and call.replays < GOAWAY_REPLAYS:
            call.replays += 1
            self._stats.count_retry(replay=True)
            return None
        breaker_failure = not stale and counts_as_breaker_failure(
            exc, headers_received=trace.headers_received
        )
        return _AttemptError(
            self._typed(exc),
            retryable=stale or is_retryable_httpx_error(exc),
            breaker_failure=breaker_failure,
            connect=isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)),
        )

    def _after_failure(self, exc: BaseException, trace: RequestTrace, call: _Call) -> None:
        """Return to resend at once (stale connection); else raise the attempt's failure.

        Anything but an httpx error or an attempt failure (cancellation, a bug) is
        re-raised as it is, and tells the call's breakers nothing.
        """
        guard = call.guard
        if not isinstance(exc, (httpx.HTTPError, _AttemptError)):
            if guard is not None:
                guard.ended(IGNORED)
            raise exc
        failed = self._classify(exc, trace, call)
        if failed is None:
            # Resent at once: nothing may keep this failure's frames (and through them
            # the next attempt's response) alive. httpcore stores the exception on the
            # errored connection and re-raises it to later requests.
            forget_traceback(exc)
            return
        if guard is not None:
            guard.failed(failed)
        raise failed from None

    def _accounted(self, call: _Call) -> _Accounting:
        """Count ``call`` in flight; at its end count a failure, or its latency if finished.

        An early close (break, cancellation) is neither.
        """
        return _Accounting(self._stats, call)

    # -- attempts and retries: only the I/O lines differ --------------------------------

    def _retry_strategy(self) -> dict[str, Any]:
        """The tenacity strategies of one call (shared by the sync and async loops).

        A call is attempted at most ``1 + max_retries`` times; between attempts
        :class:`_BackoffWait` decides the wait; each retry is counted in the stats.
        """
        return {
            "stop": self._stop,
            "wait": self._wait,
            "retry": self._retry_if,
            "before_sleep": self._count_retry,
            "reraise": True,
        }

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        """Tenacity ``before_sleep`` hook: count one retry."""
        self._stats.count_retry()

    def _guard(self, call: _Call) -> _CallGuard:
        """Ask the breakers of ``call`` (endpoint-wide, then its model's) once: its guard.

        Raises:
            CircuitOpenError: A breaker refuses the call; nothing is sent.
        """
        guard = call.guard = _CallGuard(self.breakers.admit(call.model))
        return guard

    async def _arun(
        self,
        call: _Call,
        op: Callable[[httpx.AsyncClient, RequestTrace], Awaitable[T]],
        *,
        keep_client: bool = False,
    ) -> tuple[T, httpx.AsyncClient | None]:
        """Run ``op`` until it succeeds or fails for good (tenacity retries after backoff).

        The first attempt runs directly: a tenacity retrying object (about 15 us of CPU) is
        built only after a retryable first failure, and that failure is handed to it as
        its first attempt (:func:`_replay_first`), so waits, stops and retry counts are
        exactly those of a tenacity loop over every attempt.

        The circuit breakers are asked once, before the first attempt, and told the
        call's outcome once: here, unless ``keep_client`` (a stream) succeeded, whose
        outcome the stream reports when it ends.

        Returns:
            The op's result and, when ``keep_client`` and pooling is off, the fresh client
            the caller must close.

        Raises:
            TransportError: The typed error of the last failure (or CircuitOpenError).
        """
        guard = self._guard(call)
        try:
            try:
                result: tuple[T, httpx.AsyncClient | None] = await self._aattempt(
                    call, op, keep_client=keep_client
                )
            except _AttemptError as exc:
                first = exc
            else:
                if not keep_client:
                    guard.report()
                return result
            if not self._may_retry(first):
                raise first.error
            # One AsyncRetrying per retried call: tenacity keeps per-run state on the object.
            retrying = tenacity.AsyncRetrying(sleep=self._sleep, **self._retry_strategy())
            attempt = _replay_first(first, self._aattempt)
            try:
                result = await retrying(attempt, call, op, keep_client=keep_client)
            except _AttemptError as exc:
                failed = exc
            else:
                if not keep_client:
                    guard.report()
                return result
            raise failed.error
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
        """Sync :meth:`_arun` (a :class:`tenacity.Retrying` with the same strategies)."""
        guard = self._guard(call)
        try:
            try:
                result: tuple[T, httpx.Client | None] = self._attempt(
                    call, op, keep_client=keep_client
                )
            except _AttemptError as exc:
                first = exc
            else:
                if not keep_client:
                    guard.report()
                return result
            if not self._may_retry(first):
                raise first.error
            retrying = tenacity.Retrying(sleep=self._sync_sleep, **self._retry_strategy())
            attempt = _replay_first_sync(first, self._attempt)
            try:
                result = retrying(attempt, call, op, keep_client=keep_client)
            except _AttemptError as exc:
                failed = exc
            else:
                if not keep_client:
                    guard.report()
                return result
            raise failed.error
        except BaseException as exc:
            guard.report(exc)
            raise

    def _may_retry(self, failed: _AttemptError) -> bool:
        """Whether a failed first attempt leads to a retry (the retry loop is needed)."""
        return self.config.retry.max_retries > 0 and _should_retry(failed)

    async def _aattempt(
        self,
        call: _Call,
        op: Callable[[httpx.AsyncClient, RequestTrace], Awaitable[T]],
        *,
        keep_client: bool,
    ) -> tuple[T, httpx.AsyncClient | None]:
        """One attempt, with immediate stale-connection replays.

        Each try first waits for an admission slot (:meth:`_aadmit`); a failed try frees
        it. ``keep_client`` (a stream): the caller keeps the slot, and the fresh client
        when pooling is off, until the stream is closed; otherwise both go at once. The
        attempt's outcome is noted on the call's guard (the breakers hear it once, from
        :meth:`_arun`).
        """
        while True:
            trace = self._begin(call)
            owned = None if self.config.pooling else self._new_async_client()
            try:
                await self._aadmit(call)
                result = await op(owned or self._aclient(), trace)
            except BaseException as exc:
                call.release_admission()
                if owned is not None:
                    await owned.aclose()
                self._after_failure(exc, trace, call)
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
        while True:
            trace = self._begin(call)
            owned = None if self.config.pooling else self._new_sync_client()
            try:
                self._admit(call)
                result = op(owned or self._client(), trace)
            except BaseException as exc:
                call.release_admission()
                if owned is not None:
                    owned.close()
                self._after_failure(exc, trace, call)
                continue
            if call.guard is not None:
                call.guard.succeeded()
            if not keep_client:
                call.release_admission()
            if owned is not None and not keep_client:
                owned.close()
                owned = None
            return result, owned

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
        call = self._prepare(method, path, content, headers, timeout, model=model)

        async def op(client: httpx.AsyncClient, trace: RequestTrace) -> bytes:
            response = await client.send(self._build(client, call, trace.atrace), stream=True)
            try:
                cap = self._on_headers(response, call, trace)
                async for chunk in response.aiter_bytes():
                    if not cap.feed(chunk):
                        break
                return self._body(response, call, cap)
            finally:
                await response.aclose()

        with self._accounted(call):
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
        call = self._prepare(method, path, content, headers, timeout, model=model)

        def op(client: httpx.Client, trace: RequestTrace) -> bytes:
            response = client.send(self._build(client, call, trace.trace), stream=True)
            try:
                cap = self._on_headers(response, call, trace)
                for chunk in response.iter_bytes():
                    if not cap.feed(chunk):
                        break
                return self._body(response, call, cap)
            finally:
                response.close()

        with self._accounted(call):
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
        call = self._prepare(
            "POST", path, encode_payload(payload), headers, timeout, info, model=model
        )

        async def op(client: httpx.AsyncClient, trace: RequestTrace) -> _OpenStream:
            response = await client.send(self._build(client, call, trace.atrace), stream=True)
            try:
                cap = self._on_headers(response, call, trace)
                if not cap.ok:
                    async for chunk in response.aiter_bytes():
                        if not cap.feed(chunk):
                            break
                    raise self._status(response, call, cap)
                chunks = response.aiter_raw() if _identity(response) else response.aiter_bytes()
                first = await anext(chunks, None)
                call.info.time_to_first_byte = time.perf_counter() - call.start
                return _OpenStream(response, chunks, first)
            except BaseException:
                await aclose_response(response)
                raise

        with self._accounted(call):
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
                        cut = self._stream_failure(exc, call)
                    if cut is not None:
                        raise cut
                    call.finished = True
            finally:
                if opened is not None:
                    await aclose_response(opened.response, opened.chunks)
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
        call = self._prepare(
            "POST", path, encode_payload(payload), headers, timeout, info, model=model
        )

        def op(client: httpx.Client, trace: RequestTrace) -> _OpenStream:
            response = client.send(self._build(client, call, trace.trace), stream=True)
            try:
                cap = self._on_headers(response, call, trace)
                if not cap.ok:
                    for chunk in response.iter_bytes():
                        if not cap.feed(chunk):
                            break
                    raise self._status(response, call, cap)
                chunks = response.iter_raw() if _identity(response) else response.iter_bytes()
                first = next(chunks, None)
                call.info.time_to_first_byte = time.perf_counter() - call.start
                return _OpenStream(response, chunks, first)
            except BaseException:
                close_response(response)
                raise

        return self._stream_body(call, op)

    def _stream_body(
        self, call: _Call, op: Callable[[httpx.Client, RequestTrace], _OpenStream]
    ) -> Iterator[bytes]:
        """The generator behind :meth:`stream` (validation above runs eagerly)."""
        with self._accounted(call):
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
                        cut = self._stream_failure(exc, call)
                    if cut is not None:
                        raise cut
                    call.finished = True
            finally:
                if opened is not None:
                    close_response(opened.response, opened.chunks)
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
        client = self._aclient()

        async def one() -> None:
            trace = RequestTrace(self._stats)
            self._stats.count_request()
            try:
                response = await client.get(self._base, extensions={"trace": trace.atrace})
            except httpx.HTTPError as exc:
                error = self._typed(exc)
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
        client = self._client()
        for _ in range(n):
            trace = RequestTrace(self._stats)
            self._stats.count_request()
            try:
                response = client.get(self._base, extensions={"trace": trace.trace})
            except httpx.HTTPError as exc:
                error = self._typed(exc)
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
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.pop(loop, None)
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
        with self._lock:
            client, self._sync_client = self._sync_client, None
        self._drop_dead_loops()
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


async def aclose_pools() -> None:
    """Close every pool's async client of the running event loop.

    Await it before a loop you own ends (after ``asyncio.run(...)``'s work, a worker
    thread's loop, a warm-up loop): the connections are then closed cleanly instead of
    being left to a loop that no longer runs. Pools stay usable.
    """
    for pool in list(_LIVE):
        await pool.aclose_loop()


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
