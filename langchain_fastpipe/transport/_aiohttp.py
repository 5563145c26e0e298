"""The aiohttp engine: the pool's async calls on aiohttp's HTTP/1.1 client.

httpx's own HTTP/1.1 pool (httpcore) costs several times more client CPU per request
than aiohttp at hundreds of concurrent streams (encode/httpx#3215). The default for plain
``http://`` endpoints (``EndpointConfig.async_engine``), or forced with
``engine="aiohttp"``. Async calls only, HTTP/1.1 only.

Each event loop's client is still an ``httpx.AsyncClient`` (one object per loop to open,
close and abandon, whatever the engine), whose transport, ``httpx_aiohttp``'s
``AiohttpTransport``, owns the ``aiohttp.ClientSession``. The pool's calls skip httpx's
request and response layer, though (about 0.3 ms of client CPU per streamed request):
:func:`asend` sends on the session directly and returns an :class:`AiohttpReply`, the few
members of ``httpx.Response`` the pool reads. Requests through the httpx client itself
(warm-ups) still go through ``AiohttpTransport``.

Adapted here:

* Statistics. httpcore's ``trace`` request extension does not exist in aiohttp, so an
  ``aiohttp.TraceConfig`` replays the events the pool's ``RequestTrace`` listens to
  (connection opened, request headers sent) to the request's trace: the one passed as
  aiohttp's ``trace_request_ctx`` by :func:`asend`, else the ``trace`` extension of the
  httpx request being sent, found through a context variable (aiohttp runs trace
  callbacks in the caller's task). ``connections_opened``, ``pool_wait`` and the "was
  this connection reused" signal behind stale-connection replays therefore mean what
  they mean on httpx.
* Errors. aiohttp's exceptions become the httpx exceptions the pool classifies
  (:func:`httpx_error`); ``httpx_aiohttp`` maps every ``aiohttp.ClientConnectionError`` to
  ``httpx.ConnectTimeout`` (a refused connection looks like a timeout), so its errors are
  mapped again from their aiohttp cause (:func:`remap_aiohttp_error`).

And one walk of aiohttp's private attributes, :func:`mark_aiohttp_closed`: a client whose
event loop ended without ``aclose_pools()`` cannot close its session any more; once its
sockets are closed (``_h2.abort_dead_loop_client``) the session and connector are
marked closed, so they do not warn "Unclosed client session" / "Unclosed connector".
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx

from langchain_fastpipe.transport._config import EndpointConfig

__all__ = [
    "AiohttpReply",
    "aiohttp_transport",
    "asend",
    "httpx_error",
    "mark_aiohttp_closed",
    "remap_aiohttp_error",
]

TraceHook = Callable[[str, dict[str, Any]], Awaitable[None]]

#: The httpcore-style ``trace`` callable of the request this task is sending, if any.
_CURRENT_TRACE: contextvars.ContextVar[TraceHook | None] = contextvars.ContextVar(
    "fastpipe_aiohttp_trace", default=None
)

#: aiohttp trace signals -> the httpcore event names ``RequestTrace`` understands.
_EVENTS = (
    ("on_connection_create_start", "connection.connect_tcp.started"),
    ("on_connection_create_end", "connection.connect_tcp.complete"),
    ("on_request_headers_sent", "http11.send_request_headers.started"),
)


def httpx_error(cause: BaseException, message: str | None = None) -> httpx.TransportError | None:
    """The httpx exception an aiohttp (or timeout) exception stands for; None when none fits.

    Args:
        cause: The exception aiohttp raised (it becomes the result's ``__cause__``).
        message: The text of the result (default: ``str(cause)``).

    Returns:
        ``ConnectTimeout``/``ReadTimeout`` for timeouts, ``ConnectError`` for failed
        connects, ``RemoteProtocolError`` for a server that closed the connection or sent
        a malformed reply, ``ReadError`` for other broken connections or bodies.
    """
    text = str(cause) if message is None else message
    mapped: httpx.TransportError
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        mapped = httpx.ConnectTimeout(text)
    elif isinstance(cause, (aiohttp.ServerTimeoutError, TimeoutError)):
        mapped = httpx.ReadTimeout(text or "read timed out")
    elif isinstance(cause, aiohttp.ClientConnectorError):
        mapped = httpx.ConnectError(text)
    elif isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        mapped = httpx.RemoteProtocolError(text)
    elif isinstance(cause, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        mapped = httpx.ReadError(text)
    else:
        return None
    mapped.__cause__ = cause
    return mapped


def remap_aiohttp_error(exc: httpx.TransportError) -> httpx.TransportError:
    """The httpx exception matching the aiohttp cause of ``exc`` (``exc`` when none fits).

    Args:
        exc: An exception raised by ``httpx_aiohttp`` (its ``__cause__`` is aiohttp's).

    Returns:
        :func:`httpx_error` of the cause, with ``exc``'s message.
    """
    cause = exc.__cause__
    if cause is None:
        return exc
    return httpx_error(cause, str(exc)) or exc


def _trace_config() -> Any:
    """An ``aiohttp.TraceConfig`` forwarding connection events to the current request."""
    config = aiohttp.TraceConfig()

    def forward(name: str) -> Callable[[Any, SimpleNamespace, Any], Awaitable[None]]:
        async def on_event(session: Any, ctx: SimpleNamespace, params: Any) -> None:
            trace = ctx.trace_request_ctx
            if trace is not None:  # sent by asend(): the attempt's RequestTrace
                trace.trace(name, {})
                return
            hook = _CURRENT_TRACE.get()
            if hook is not None:
                await hook(name, {})

        return on_event

    for signal, name in _EVENTS:
        getattr(config, signal).append(forward(name))
    config.freeze()
    return config


class AiohttpReply:
    """A streamed aiohttp reply, with the members of ``httpx.Response`` the pool reads.

    ``status_code``, ``http_version``, ``headers`` (case-insensitive), the body as
    ``aiter_raw()``/``aiter_bytes()`` (aiohttp already removed any content encoding, so
    both give the decoded bytes) and ``aclose()``. Read failures raise httpx exceptions
    (:func:`httpx_error`).

    Closing a body that was not read to its end closes its connection (HTTP/1.1 cannot
    reuse it). aiohttp frees the connector's slot at once but the socket only on the next
    loop turn (asyncio's transport ``close``); :meth:`aclose` lets that turn pass, so when
    it returns the socket is gone and the pool's connection limit bounds real sockets.
    """

    __slots__ = ("_ended", "_response", "headers", "http_version", "status_code")

    is_stream_consumed = False  # the body is only ever read through the iterators below

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        """Wrap ``response``, whose headers have arrived."""
        self._response = response
        self._ended = False
        self.status_code: int = response.status
        version = response.version
        self.http_version = "HTTP/1.1" if version is None else f"HTTP/{version[0]}.{version[1]}"
        self.headers: Mapping[str, str] = response.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (at most one pass)."""
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            mapped = httpx_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        self._ended = True

    aiter_bytes = aiter_raw

    async def aclose(self) -> None:
        """Return the connection to the pool, or close it if the body was not read to its end."""
        response = self._response
        response.release()
        await response.wait_for_close()
        if not self._ended:
            await asyncio.sleep(0)  # the transport's connection_lost runs in this turn


def direct_session(client: httpx.AsyncClient) -> aiohttp.ClientSession | None:
    """The aiohttp session under ``client`` (created on first use); None for other transports."""
    owner = getattr(client._transport, "aiohttp_session", None)
    return None if owner is None else owner()


async def asend(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    content: bytes | None,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    trace: Any,
) -> AiohttpReply:
    """Send one request on ``session``; the reply once its headers arrived.

    Args:
        session: The loop's session (:func:`direct_session`).
        method: The HTTP method.
        url: The absolute URL.
        content: The body, or None.
        headers: The request headers.
        timeout: httpx's timeouts: ``connect`` bounds the TCP connect, ``read`` each
            read, ``pool`` the wait for a connection (with its opening), as
            ``httpx_aiohttp`` maps them.
        trace: The attempt's ``RequestTrace`` (told of connection and header events).

    Raises:
        httpx.TransportError: The request failed (:func:`httpx_error`).
    """
    try:
        response = await session.request(
            method, url, data=content, headers=headers, allow_redirects=False,
            timeout=_client_timeout(timeout), trace_request_ctx=trace,
        )  # fmt: skip
    except (aiohttp.ClientError, TimeoutError) as exc:
        mapped = httpx_error(exc)
        if mapped is None:
            raise
        raise mapped from exc
    return AiohttpReply(response)


_TIMEOUTS: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}


def _client_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """Aiohttp's timeouts for httpx's (built once per distinct value)."""
    key = (timeout.connect, timeout.read, timeout.pool)
    found = _TIMEOUTS.get(key)
    if found is None:
        found = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout.connect, sock_read=timeout.read, connect=timeout.pool
        )
        if len(_TIMEOUTS) < 64:
            _TIMEOUTS[key] = found
    return found


class _MappedStream(httpx.AsyncByteStream):
    """A response body stream whose errors are re-mapped by :func:`remap_aiohttp_error`.

    Closing a body that was not read to its end closes its connection (HTTP/1.1 cannot
    reuse it). aiohttp frees the connector's slot at once but the socket only on the next
    loop turn (asyncio's transport ``close``); :meth:`aclose` lets that turn pass, so when
    it returns the socket is gone and the pool's connection limit bounds real sockets.
    """

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx.TransportError as exc:
            raise remap_aiohttp_error(exc) from exc.__cause__
        self._ended = True

    async def aclose(self) -> None:
        await self._stream.aclose()
        if not self._ended:
            await asyncio.sleep(0)  # the transport's connection_lost runs in this turn


def aiohttp_transport(
    config: EndpointConfig, ssl_context: ssl.SSLContext | None
) -> httpx.AsyncBaseTransport:
    """An ``AiohttpTransport`` honouring ``config``'s limits, TLS and keep-alive.

    The aiohttp session is created lazily, on the first request, inside the running event
    loop (the transport belongs to one per-loop httpx client, closed with it).

    Args:
        config: The endpoint configuration (``limits``, ``verify``).
        ssl_context: The endpoint's SSL context (None for plain http).

    Returns:
        The httpx transport.
    """
    from httpx_aiohttp import AiohttpTransport

    limits = config.limits
    trace = _trace_config()
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    if config.verify is False:
        verify = False

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections,
            limit_per_host=0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=verify,
        )
        return aiohttp.ClientSession(connector=connector, trace_configs=[trace])

    class Transport(AiohttpTransport):
        def aiohttp_session(self) -> aiohttp.ClientSession:
            if not isinstance(self.client, aiohttp.ClientSession):
                self.client = self.get_client()
            return self.client

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            token = _CURRENT_TRACE.set(request.extensions.get("trace"))
            try:
                response: httpx.Response = await super().handle_async_request(request)
            except httpx.TransportError as exc:
                raise remap_aiohttp_error(exc) from exc.__cause__
            finally:
                _CURRENT_TRACE.reset(token)
            if isinstance(response.stream, httpx.AsyncByteStream):
                response.stream = _MappedStream(response.stream)
            return response

    transport: httpx.AsyncBaseTransport = Transport(client=session)
    return transport


def mark_aiohttp_closed(client: httpx.AsyncClient) -> None:
    """Mark the aiohttp session and connector under ``client`` closed, without I/O.

    For a client whose event loop is closed, after its sockets were closed directly:
    aiohttp's ``close()`` needs the loop. The connector forgets its idle connections
    and is flagged closed, the session drops it (``session.closed`` is then True).
    Does nothing for other transports, or when aiohttp's layout differs.
    """
    transport = getattr(client, "_transport", None)
    if not isinstance(transport, httpx.AsyncBaseTransport):
        return
    session: Any = getattr(transport, "client", None)
    connector: Any = getattr(session, "_connector", None)
    if session is None or connector is None or not hasattr(connector, "_conns"):
        return
    conns = getattr(connector, "_conns", None)
    if isinstance(conns, dict):
        conns.clear()
    connector._closed = True
    session._connector = None
