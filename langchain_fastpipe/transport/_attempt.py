"""One attempt of a call, without I/O: what it sends, how it fails, what it tells.

The sync and async paths of :class:`~._pool.PooledClient` share everything here and
differ only in their I/O lines:

* :class:`_Call`: one prepared call (URL, body, headers, timeout), computed once and sent
  by each of its attempts; :class:`ResponseInfo`, what the caller learns about it.
* :class:`_BodyCap`: collects a reply body up to its cap.
* :class:`_AttemptError`: one failed attempt, classified (retryable? a breaker failure?)
  by :meth:`AttemptSteps.classify`, or built from a non-2xx status (:func:`_status_failure`).
* :class:`_CallGuard`: the circuit breakers' view of a call, asked once and told once
  (:func:`_breaker_outcome` turns a failure into their verdict).
* :class:`_Accounting`: the call's in-flight count, failure or latency in the stats.
* :func:`_should_retry`: the retry predicate of the call's retry loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx

from langchain_fastpipe.errors import (
    ConfigError,
    ProtocolViolationError,
    ResponseTooLargeError,
    TransportError,
    status_error,
)
from langchain_fastpipe.transport._breaker import (
    IGNORED,
    SUCCESS,
    Admission,
    BreakerRegistry,
    Verdict,
)
from langchain_fastpipe.transport._config import EndpointConfig
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
)
from langchain_fastpipe.transport._stats import EndpointStats, RequestTrace

__all__ = ["AttemptSteps", "Reply", "ResponseInfo", "decode_json_object", "encode_payload"]

_JSON_HEADERS: Final[Mapping[str, str]] = {"content-type": "application/json"}
_ERROR_BODY_LIMIT: Final = 64 * 1024
_MAX_CACHED_URLS: Final = 64  # parsed request URLs kept per pool (one per API path)


class Reply(Protocol):
    """What the pool reads of a reply: an ``httpx.Response``, or the aiohttp engine's own.

    (:class:`~._aiohttp.AiohttpReply`, which skips httpx's response layer.)
    """

    @property
    def status_code(self) -> int:
        """The HTTP status."""

    @property
    def http_version(self) -> str:
        """``"HTTP/1.1"`` or ``"HTTP/2"``."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive)."""

    @property
    def is_stream_consumed(self) -> bool:
        """Whether the body was already read (then only ``aiter_bytes`` replays it)."""

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as sent (content encoding kept)."""

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, decoded."""

    async def aclose(self) -> None:
        """Release the connection (closed when the body was not read to its end)."""


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


def _declared_too_large(response: Reply, limit: int) -> bool:
    """Whether the Content-Length header already exceeds ``limit``."""
    declared = response.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


def _status_failure(
    response: Reply,
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

    def __init__(self, response: Reply, limit: int, endpoint: str) -> None:
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

    response: Reply
    chunks: Any  # the response's (async) byte iterator, already started
    first: bytes | None


def _should_retry(exc: BaseException) -> bool:
    """The tenacity ``retry`` predicate: a retryable failure of a whole attempt.

    Only :class:`_AttemptError` is ever retried, and it is raised only before any body
    byte reached the caller (a failure after that leaves the retry loop as a typed error
    of the stream itself); cancellations, breaker refusals and bugs are never retried.
    """
    return isinstance(exc, _AttemptError) and exc.retryable


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


def _identity(response: Reply) -> bool:
    """Whether the body can be read raw: not content-encoded and not already read."""
    if response.is_stream_consumed:
        return False  # e.g. a MockTransport reply built from ``content=``
    encoding = response.headers.get("content-encoding")
    return encoding is None or encoding.strip().lower() in ("", "identity")


class AttemptSteps:
    """The no-I/O steps of one endpoint's calls: prepare, count, collect, classify.

    One per :class:`~._pool.PooledClient`; its sync and async loops call these around
    their I/O lines.

    Attributes:
        config: The endpoint configuration.
        endpoint: The redacted endpoint named in errors.
        stats: The endpoint's counters.
        breakers: The endpoint's circuit breakers.
    """

    __slots__ = ("_base", "_timeout", "_urls", "breakers", "config", "endpoint", "stats")

    def __init__(
        self,
        config: EndpointConfig,
        stats: EndpointStats,
        breakers: BreakerRegistry,
        timeout: httpx.Timeout,
    ) -> None:
        """Steps for ``config``, counted in ``stats``, guarded by ``breakers``."""
        self.config = config
        self.endpoint = config.endpoint
        self.stats = stats
        self.breakers = breakers
        self._timeout = timeout
        self._base = config.base_url.rstrip("/")
        self._urls: dict[str, httpx.URL] = {}

    # -- preparing a call ---------------------------------------------------------------

    def url(self, path: str) -> httpx.URL:
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

    def prepare(
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
            url=self.url(path),
            content=content,
            headers=self._headers(headers, json_body=content is not None),
            secrets=headers,
            timeout=self._timeout_for(timeout),
            info=info if info is not None else ResponseInfo(),
            start=time.perf_counter(),
            model=model,
        )

    def pool_timeout(self, call: _Call) -> float | None:
        """The longest wait for admission: the call's (or the config's) pool timeout."""
        return (call.timeout or self._timeout).pool

    def guard(self, call: _Call) -> _CallGuard:
        """Ask the breakers of ``call`` (endpoint-wide, then its model's) once: its guard.

        Raises:
            CircuitOpenError: A breaker refuses the call; nothing is sent.
        """
        guard = call.guard = _CallGuard(self.breakers.admit(call.model))
        return guard

    def accounted(self, call: _Call) -> _Accounting:
        """Count ``call`` in flight; at its end count a failure, or its latency if finished.

        An early close (break, cancellation) is neither.
        """
        return _Accounting(self.stats, call)

    # -- one attempt --------------------------------------------------------------------

    @staticmethod
    def build(
        client: httpx.Client | httpx.AsyncClient, call: _Call, hook: Callable[..., Any]
    ) -> httpx.Request:
        """The request of one attempt of ``call``, traced by ``hook``."""
        return client.build_request(
            call.method, call.url, content=call.content, headers=call.headers,
            timeout=call.timeout or httpx.USE_CLIENT_DEFAULT, extensions={"trace": hook},
        )  # fmt: skip

    def begin(self, call: _Call) -> RequestTrace:
        """Count one attempt of ``call``; its trace hook."""
        call.info.attempts += 1
        self.stats.count_request()
        return RequestTrace(self.stats)

    def on_headers(self, response: Reply, call: _Call, trace: RequestTrace) -> _BodyCap:
        """Record what the response headers tell (info, stats); the body's collector."""
        trace.finish()
        elapsed = time.perf_counter() - call.start
        info = call.info
        info.status_code = response.status_code
        info.http_version = response.http_version
        info.time_to_headers = elapsed
        self.stats.time_to_headers.record(elapsed)
        self.stats.count_version(response.http_version)
        return _BodyCap(response, self.config.max_response_bytes, self.endpoint)

    def status(self, response: Reply, call: _Call, cap: _BodyCap) -> _AttemptError:
        """The failure of a non-2xx reply whose (capped) body was collected in ``cap``."""
        return _status_failure(
            response, cap.body(), self.endpoint, self.config.retry.retry_statuses, call.secrets
        )

    def body(self, response: Reply, call: _Call, cap: _BodyCap) -> bytes:
        """The whole body of a 2xx reply; raises the failure of any other."""
        if call.info.time_to_first_byte is None:
            call.info.time_to_first_byte = time.perf_counter() - call.start
        if not cap.ok:
            raise self.status(response, call, cap)
        return cap.body()

    # -- failures -----------------------------------------------------------------------

    def typed(self, exc: httpx.HTTPError) -> TransportError:
        """The typed error of an httpx failure, to raise outside any ``except`` block.

        Its cause is ``exc``, except when ``exc``'s text may quote a request header (an
        API key): then it has no cause and no context at all.
        """
        error = map_httpx_error(exc, self.endpoint)
        error.__cause__ = None if quotes_header(exc) else exc
        error.__suppress_context__ = True
        return error

    def stream_failure(self, exc: httpx.HTTPError, call: _Call) -> TransportError:
        """The typed error of a failure after body bytes reached the caller (no retry).

        The call's breakers are told at the stream's end: the headers had arrived, so a
        connection the peer dropped (a GOAWAY, a recycling proxy) is not held against the
        model; a timeout is.
        """
        error = self.typed(exc)
        if call.guard is not None:
            if counts_as_breaker_failure(exc, headers_received=True):
                call.guard.ended(_MODEL_STALLED, error)
            else:
                call.guard.ended(_STREAM_CUT)
        return error

    def classify(
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
            self.stats.count_retry(replay=True)
            return None
        breaker_failure = not stale and counts_as_breaker_failure(
            exc, headers_received=trace.headers_received
        )
        return _AttemptError(
            self.typed(exc),
            retryable=stale or is_retryable_httpx_error(exc),
            breaker_failure=breaker_failure,
            connect=isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)),
        )

    def after_failure(self, exc: BaseException, trace: RequestTrace, call: _Call) -> None:
        """Return to resend at once (stale connection); else raise the attempt's failure.

        Anything but an httpx error or an attempt failure (cancellation, a bug) is
        re-raised as it is, and tells the call's breakers nothing.
        """
        guard = call.guard
        if not isinstance(exc, (httpx.HTTPError, _AttemptError)):
            if guard is not None:
                guard.ended(IGNORED)
            raise exc
        failed = self.classify(exc, trace, call)
        if failed is None:
            # Resent at once: nothing may keep this failure's frames (and through them
            # the next attempt's response) alive. httpcore stores the exception on the
            # errored connection and re-raises it to later requests.
            forget_traceback(exc)
            return
        if guard is not None:
            guard.failed(failed)
        raise failed from None
