"""The ``"h2"`` engine: the pool's async HTTP/2 calls on :mod:`._h2native` connections.

:class:`H2Engine` is the connection pool of one origin on one event loop: streams share
a connection up to its limit (ours, ``limits.max_concurrent_streams``, and the peer's
SETTINGS_MAX_CONCURRENT_STREAMS); a new connection opens when all are full, up to
``limits.max_connections``; idle ones close after ``limits.keepalive_expiry`` (beyond
``limits.max_keepalive_connections`` at once). Streams the server never processed
(above a GOAWAY's ``last_stream_id``, refused) are sent again on another connection
before the caller sees anything; what else fails raises the httpx exception httpcore
would, so the pool classifies it unchanged (a stream without headers on an HTTP/2
connection is a stale-connection replay candidate). Connection-specific request headers
(RFC 9113 section 8.2.2) are dropped; one with CR, LF or NUL in its value is refused
locally. Connections open with happy eyeballs. A server that closes every new connection
with a GOAWAY before taking a stream fails the acquire after :data:`_REFUSED_CONNECTIONS`
of them (a ``ConnectError``: the pool backs off).

If TLS ALPN does not select ``h2``, the origin is served by httpx (:class:`NotH2`; the
engine remembers it). Each event loop's client is still an ``httpx.AsyncClient``: its
transport, :func:`native_transport`, owns the engine (``aclose()`` closes its
connections) and serves requests made through the client itself (warm-ups) on it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import httpx

from langchain_fastpipe.transport._config import EndpointConfig
from langchain_fastpipe.transport._h2_transport import _AsyncTransport, async_transport
from langchain_fastpipe.transport._h2native import H2Conn, Unprocessed
from langchain_fastpipe.transport._h2native_reply import H2Reply

__all__ = ["H2Engine", "NotH2", "engine_of", "native_transport"]

#: Sends of one request on new connections after its stream was not processed.
_RESENDS: Final = 16
#: Request headers HTTP/2 forbids or carries as pseudo-headers (RFC 9113 section 8.2.2);
#: ``te`` is kept only as ``te: trailers``.
_SKIPPED: Final = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
     b"upgrade", b"te"}
)  # fmt: skip
#: New connections one acquire may see closed by a GOAWAY before it got a stream on one.
_REFUSED_CONNECTIONS: Final = 3
#: Happy eyeballs (RFC 8305) when a name resolves to several addresses, as anyio does.
_HAPPY_EYEBALLS_DELAY: Final = 0.25
_TIMED_OUT: Final = object()
#: Seconds :meth:`H2Engine.aclose` waits for the connections to end before aborting them.
_CLOSE_GRACE: Final = 5.0


class NotH2(Exception):  # noqa: N818 - a signal: serve this origin with httpx
    """TLS ALPN did not select HTTP/2: the origin is httpx's."""


def _note(trace: Any, name: str) -> None:
    if trace is not None:
        trace.trace(name, {})


def _default_headers() -> list[tuple[bytes, bytes]]:
    """The default request headers of httpx (those HTTP/2 allows)."""
    from httpx._decoders import SUPPORTED_DECODERS

    encodings = ", ".join(key for key in SUPPORTED_DECODERS if key != "identity")
    return [
        (b"accept", b"*/*"),
        (b"accept-encoding", encodings.encode()),
        (b"user-agent", f"python-httpx/{httpx.__version__}".encode()),
    ]


class H2Engine:
    """The HTTP/2 connections of one origin on one event loop (see the module docstring).

    Attributes:
        fallback: TLS ALPN did not select h2: httpx serves this origin from now on.
    """

    def __init__(self, config: EndpointConfig, ssl_context: ssl.SSLContext | None) -> None:
        """The engine of ``config``'s origin; connections open on first use."""
        url = httpx.URL(config.base_url)
        self._tls = url.scheme == "https"
        self._host = url.host
        self._port = url.port or (443 if self._tls else 80)
        self._origin = (url.scheme, url.host, url.port)
        self._pseudo = [(b":scheme", url.scheme.encode()), (b":authority", url.netloc)]
        self._defaults = _default_headers()
        self._ssl = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["http/1.1", "h2"])  # as httpcore sets it
        self._limits = config.limits
        self._connect_timeout = config.connect_timeout
        self._conns: list[H2Conn] = []
        self._waiters: deque[asyncio.Future[object]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.fallback = False
        self.closed = False

    # -- requests

    def serves(self, url: httpx.URL) -> bool:
        """Whether ``url`` is this engine's (its origin, HTTP/2 not declined)."""
        return not self.fallback and (url.scheme, url.host, url.port) == self._origin

    def _request_headers(
        self, method: str, url: httpx.URL, headers: Mapping[str, str] | httpx.Headers,
        body: bytes | None,
    ) -> list[tuple[bytes, bytes]]:  # fmt: skip
        out = [(b":method", method.encode()), (b":path", url.raw_path), *self._pseudo]
        names: set[bytes] = set()
        items = headers.raw if isinstance(headers, httpx.Headers) else headers.items()
        for key, value in items:
            name = (key if isinstance(key, bytes) else key.encode()).lower()
            raw = value if isinstance(value, bytes) else value.encode()
            if name in _SKIPPED and (name != b"te" or raw.strip().lower() != b"trailers"):
                continue
            if b"\r" in raw or b"\n" in raw or b"\0" in raw:  # RFC 9113 8.2.1; h2 sends them
                msg = f"request header {name!r}: CR, LF or NUL in its value (value withheld)"
                raise httpx.LocalProtocolError(msg)
            names.add(name)
            out.append((name, raw))
        for name, value in self._defaults:
            if name not in names:
                out.append((name, value))
        if body and b"content-length" not in names:
            out.append((b"content-length", str(len(body)).encode()))
        return out

    async def asend(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        headers: Mapping[str, str] | httpx.Headers,
        timeout: httpx.Timeout,
        trace: Any,
    ) -> H2Reply:
        """Send one request; its reply once the response headers arrived.

        Args:
            method: The HTTP method.
            url: The absolute URL (this engine's origin).
            content: The body, or None.
            headers: The request headers.
            timeout: ``connect`` bounds opening a connection, ``pool`` the wait for a
                stream slot, ``write`` each wait for send-window credit, ``read`` each
                wait for the response (headers, then each body chunk).
            trace: Told httpcore's connection and request-header events
                (``trace(name, info)``, a :class:`~._stats.RequestTrace`), or None.

        Raises:
            NotH2: TLS ALPN did not select h2: send it with httpx.
            httpx.TransportError: The request failed.
        """
        headers_list = self._request_headers(method, url, headers, content)
        for _ in range(_RESENDS):
            conn = await self._acquire(trace, timeout)
            try:
                stream, rest = conn.start(headers_list, content)
            except Unprocessed:
                conn.unreserve()
                continue
            except BaseException:
                conn.unreserve()
                raise
            _note(trace, "http2.send_request_headers.started")
            try:
                if rest is not None:
                    await stream.send_body(rest, timeout.write)
                status = await stream.response(timeout.read)
            except Unprocessed:
                stream.close()
                continue
            except BaseException:
                stream.close()
                raise
            return H2Reply(stream, status, timeout.read)
        raise httpx.RemoteProtocolError("the server did not process the request (GOAWAY)")

    # -- connections

    async def _acquire(self, trace: Any, timeout: httpx.Timeout) -> H2Conn:
        """A connection with a slot reserved for one stream (opening one if needed).

        Raises:
            httpx.ConnectError: :data:`_REFUSED_CONNECTIONS` new connections in a row were
                closed by a GOAWAY before taking a stream (a retryable failure: the pool
                backs off before trying again).
        """
        refused = 0
        while True:
            if self.fallback:
                raise NotH2
            if self.closed:
                raise httpx.ConnectError("the engine is closed")
            conn = next((c for c in self._conns if c.takes()), None)
            opened = False
            if conn is None and len(self._conns) < self._limits.max_connections:
                conn = self._open()
                opened = True
                _note(trace, "connection.connect_tcp.started")
            if conn is None:
                await self._wait_slot(timeout.pool)
                continue
            conn.reserved += 1
            fresh = not conn.ready.done()
            if fresh:
                try:
                    await asyncio.shield(conn.ready)
                except BaseException:
                    conn.unreserve()
                    raise
            if conn.ready.exception() is not None:
                conn.unreserve()
                raise _fresh(conn.ready.exception())
            if opened:
                _note(trace, "connection.connect_tcp.complete")
                _note(trace, "http2.send_connection_init.complete")
            if not conn.draining and conn.reserved <= conn.limit:
                return conn
            conn.unreserve()
            if fresh and conn.draining:
                refused += 1
                if refused >= _REFUSED_CONNECTIONS:
                    msg = (
                        f"{self._host}:{self._port} closed {refused} new HTTP/2 connections"
                        " in a row with a GOAWAY before taking a stream"
                    )
                    raise httpx.ConnectError(msg)

    def _open(self) -> H2Conn:
        loop = asyncio.get_running_loop()
        conn = H2Conn(loop, self._limits.max_concurrent_streams, self._changed)
        self._conns.append(conn)
        conn.ready.add_done_callback(_retrieve)
        task = loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    async def _connect(self, conn: H2Conn) -> None:
        """Open ``conn`` (TCP, TLS with ALPN, the preface, the server's SETTINGS)."""
        try:
            await asyncio.wait_for(self._handshake(conn), self._connect_timeout)
        except BaseException as exc:
            error: BaseException
            if isinstance(exc, NotH2):
                self.fallback = True
                error = exc
            elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                error = httpx.ConnectTimeout(f"connect to {self._host}:{self._port} timed out")
            elif isinstance(exc, httpx.TransportError):
                error = exc
            elif isinstance(exc, (OSError, ssl.SSLError)):
                error = httpx.ConnectError(str(exc) or type(exc).__name__)
            else:
                error = httpx.ConnectError(f"connect failed: {exc!r}")
            conn.abort()
            self._forget(conn)
            if not conn.ready.done():
                conn.ready.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        conn.ready.set_result(None)
        if conn.reserved == 0:  # its callers went away while it opened
            self._changed(conn)

    async def _handshake(self, conn: H2Conn) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: conn, self._host, self._port, ssl=self._ssl,
            server_hostname=self._host if self._tls else None,
            happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY, interleave=1,
        )  # fmt: skip
        transport = conn.transport
        if self._tls:
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                raise NotH2
        conn.initiate()
        await conn.settings
        if conn.transport is None:
            raise httpx.ConnectError("the server closed the connection during the HTTP/2 preface")

    def _changed(self, conn: H2Conn) -> None:
        """``conn`` freed a slot, started draining or ended: tidy up, wake a waiter."""
        if conn.transport is None:
            self._forget(conn)
        elif conn.reserved == 0 and not conn.draining and conn.ready.done():
            idle = sum(1 for c in self._conns if c.reserved == 0 and not c.draining)
            conn.idle(self._limits.keepalive_expiry, idle > self._limits.max_keepalive_connections)
        self._wake_one()

    def _wake_one(self) -> None:
        """Wake the first caller still waiting for a slot (it checks the connections)."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _forget(self, conn: H2Conn) -> None:
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    async def _wait_slot(self, timeout: float | None) -> None:
        """Wait until :meth:`_changed` wakes this caller (a slot may be free)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[object] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            woken = await waiter  # no wait_for: Python 3.11's swallows a racing cancel
        except BaseException:
            # Woken, then cancelled before it could look: pass the wake-up on, or a
            # free slot waits for the next release with callers queued.
            if waiter.done() and not waiter.cancelled():
                self._wake_one()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if woken is _TIMED_OUT:
            raise httpx.PoolTimeout("no HTTP/2 stream slot became free in time")

    # -- closing

    async def aclose(self) -> None:
        """Close every connection (GOAWAY, then the socket); cancel connects in progress."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        pending = [conn.lost for conn in conns if not conn.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_GRACE)
        for conn in conns:
            if not conn.lost.done():
                conn.abort()
        self._conns.clear()

    def socket_transports(self) -> list[Any]:
        """The asyncio transports of every connection (closing a dead loop's client)."""
        return [raw for conn in list(self._conns) for raw in conn.socket_transports()]


def _time_out(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failed connect as seen (nobody may be waiting for it)."""
    if not future.cancelled():
        future.exception()


def _fresh(error: BaseException | None) -> BaseException:
    """A new exception like ``error`` (one raised to many callers keeps no traceback chain)."""
    if isinstance(error, NotH2):
        return NotH2()
    if isinstance(error, httpx.TransportError):
        return type(error)(str(error))
    return error if error is not None else httpx.ConnectError("connect failed")


class _ReplyStream(httpx.AsyncByteStream):
    """An :class:`H2Reply`'s body as httpx's response stream."""

    def __init__(self, reply: H2Reply) -> None:
        self._reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._reply.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        await self._reply.aclose()


class NativeTransport(_AsyncTransport):
    """httpx's transport of the ``"h2"`` engine: requests on :class:`H2Engine`.

    Origins that declined HTTP/2 go to the graceful httpx transport underneath.

    Attributes:
        h2native: The engine.
    """

    def __init__(self, inner: httpx.AsyncHTTPTransport, engine: H2Engine) -> None:
        """Serve on ``engine``; ``inner``'s pool serves origins that are not HTTP/2."""
        super().__init__(inner._pool)  # type: ignore[arg-type]
        self.h2native = engine

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the engine (httpx when its origin declined HTTP/2)."""
        engine = self.h2native
        if engine.serves(request.url):
            hook = request.extensions.get("trace")
            trace = getattr(hook, "__self__", None) if inspect.ismethod(hook) else None
            raw: dict[str, float | None] = request.extensions.get("timeout", {})
            timeout = httpx.Timeout(
                connect=raw.get("connect"), read=raw.get("read"),
                write=raw.get("write"), pool=raw.get("pool"),
            )  # fmt: skip
            content = await request.aread()
            try:
                reply = await engine.asend(
                    request.method, request.url, content or None, request.headers, timeout,
                    trace if hasattr(trace, "trace") else None,
                )  # fmt: skip
            except NotH2:
                pass
            else:
                return httpx.Response(
                    reply.status_code, headers=reply.headers.raw, stream=_ReplyStream(reply),
                    extensions={"http_version": b"HTTP/2"},
                )  # fmt: skip
        return await super().handle_async_request(request)

    async def aclose(self) -> None:
        """Close the engine's connections, then httpx's."""
        await self.h2native.aclose()
        await super().aclose()


def native_transport(config: EndpointConfig, ssl_context: ssl.SSLContext | None) -> NativeTransport:
    """The ``"h2"`` engine's httpx transport of ``config``."""
    return NativeTransport(async_transport(config, ssl_context), H2Engine(config, ssl_context))


def engine_of(client: httpx.AsyncClient) -> H2Engine | None:
    """The engine under ``client``, or None for other transports."""
    engine = getattr(client._transport, "h2native", None)
    return engine if isinstance(engine, H2Engine) else None
