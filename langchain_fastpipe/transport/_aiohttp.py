"""The aiohttp engine: an httpx transport on aiohttp's HTTP/1.1 client.

httpx's own HTTP/1.1 pool (httpcore) costs several times more client CPU per request
than aiohttp at hundreds of concurrent streams (encode/httpx#3215). ``httpx_aiohttp``'s
``AiohttpTransport`` keeps the httpx API (requests, responses, streaming, errors) and
moves the wire work to aiohttp. The default for plain ``http://`` endpoints
(``EndpointConfig.async_engine``), or forced with ``engine="aiohttp"``. Async calls only,
HTTP/1.1 only.

Two things are adapted here:

* Statistics. httpcore's ``trace`` request extension does not exist in aiohttp, so an
  ``aiohttp.TraceConfig`` replays the events the pool's ``RequestTrace`` listens to
  (connection opened, request headers sent) to the ``trace`` callable of the request
  being sent, found through a context variable (aiohttp runs trace callbacks in the
  caller's task). ``connections_opened``, ``pool_wait`` and the "was this connection
  reused" signal behind stale-connection replays therefore mean what they mean on httpx.
* Errors. ``httpx_aiohttp`` maps every ``aiohttp.ClientConnectionError`` to
  ``httpx.ConnectTimeout`` (a refused connection looks like a timeout); the exception is
  mapped again here from its aiohttp cause, in the request phase and while streaming.

And one walk of aiohttp's private attributes, :func:`mark_aiohttp_closed`: a client whose
event loop ended without ``aclose_pools()`` cannot close its session any more; once its
sockets are closed (``_h2.abort_dead_loop_client``) the session and connector are
marked closed, so they do not warn "Unclosed client session" / "Unclosed connector".
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import httpx

from langchain_fastpipe.transport._config import EndpointConfig

__all__ = ["aiohttp_transport", "mark_aiohttp_closed", "remap_aiohttp_error"]

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


def remap_aiohttp_error(exc: httpx.TransportError) -> httpx.TransportError:
    """The httpx exception matching the aiohttp cause of ``exc`` (``exc`` when none fits).

    Args:
        exc: An exception raised by ``httpx_aiohttp`` (its ``__cause__`` is aiohttp's).

    Returns:
        ``ConnectTimeout``/``ReadTimeout`` for timeouts, ``ConnectError`` for failed
        connects, ``RemoteProtocolError`` for a server that closed the connection,
        ``ReadError`` for other broken connections or bodies.
    """
    import aiohttp

    cause = exc.__cause__
    message = str(exc)
    mapped: httpx.TransportError
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        mapped = httpx.ConnectTimeout(message)
    elif isinstance(cause, aiohttp.ServerTimeoutError):
        mapped = httpx.ReadTimeout(message)
    elif isinstance(cause, aiohttp.ClientConnectorError):
        mapped = httpx.ConnectError(message)
    elif isinstance(cause, aiohttp.ServerDisconnectedError):
        mapped = httpx.RemoteProtocolError(message)
    elif isinstance(cause, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        mapped = httpx.ReadError(message)
    else:
        return exc
    mapped.__cause__ = cause
    return mapped


def _trace_config() -> Any:
    """An ``aiohttp.TraceConfig`` forwarding connection events to the current request."""
    import aiohttp

    config = aiohttp.TraceConfig()

    def forward(name: str) -> Callable[[Any, SimpleNamespace, Any], Awaitable[None]]:
        async def on_event(session: Any, ctx: SimpleNamespace, params: Any) -> None:
            hook = _CURRENT_TRACE.get()
            if hook is not None:
                await hook(name, {})

        return on_event

    for signal, name in _EVENTS:
        getattr(config, signal).append(forward(name))
    config.freeze()
    return config


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
    import aiohttp
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
