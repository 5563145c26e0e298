"""The httpx transports over the graceful HTTP/2 connections, and what builds them.

httpcore's connection (connect, TLS, ALPN) picks the HTTP version of a fresh socket and
builds httpcore's own HTTP/2 connection; here the same steps build ours
(:mod:`._h2_async`, :mod:`._h2_sync`), under httpcore's pool and httpx's transport
(request building, error mapping). :func:`async_transport` and :func:`sync_transport`
are the entry points; :func:`transport_kwargs` gives the clients the same options.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpcore
import httpx

from langchain_fastpipe.transport._config import EndpointConfig
from langchain_fastpipe.transport._h2_async import AsyncGracefulHTTP2Connection
from langchain_fastpipe.transport._h2_sync import GracefulHTTP2Connection

__all__ = ["async_transport", "sync_transport", "transport_kwargs"]


def _check_origin(connection: httpcore.AsyncHTTPConnection | httpcore.HTTPConnection,
                  request: httpcore.Request) -> None:  # fmt: skip
    """Httpcore's guard: a connection only serves requests to its own origin."""
    if not connection.can_handle_request(request.url.origin):
        msg = (
            f"Attempted to send request to {request.url.origin} "
            f"on connection to {connection._origin}"
        )
        raise RuntimeError(msg)


def _speaks_h2(connection: httpcore.AsyncHTTPConnection | httpcore.HTTPConnection,
               stream: httpcore.AsyncNetworkStream | httpcore.NetworkStream) -> bool:  # fmt: skip
    """Whether the fresh ``stream`` speaks HTTP/2: ALPN chose it, or prior knowledge."""
    ssl_object = stream.get_extra_info("ssl_object")
    negotiated = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
    return negotiated or (connection._http2 and not connection._http1)


class _AsyncConnection(httpcore.AsyncHTTPConnection):
    """httpcore's connection (connect, TLS, ALPN) building our HTTP/2 connection."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Connect on first use, then send ``request`` over HTTP/1.1 or HTTP/2."""
        # Adapted from httpcore 1.0.9: the HTTP/2 connection class is ours.
        _check_origin(self, request)
        try:
            async with self._request_lock:
                connection = self._connection
                if connection is None:
                    stream = await self._connect(request)
                    expiry = self._keepalive_expiry
                    if _speaks_h2(self, stream):
                        connection = AsyncGracefulHTTP2Connection(self._origin, stream, expiry)
                    else:
                        connection = httpcore.AsyncHTTP11Connection(self._origin, stream, expiry)
                    self._connection = connection
        except BaseException:
            self._connect_failed = True
            raise
        return await connection.handle_async_request(request)


class _Connection(httpcore.HTTPConnection):
    """Sync :class:`_AsyncConnection`."""

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        """Connect on first use, then send ``request`` over HTTP/1.1 or HTTP/2."""
        # Adapted from httpcore 1.0.9: the HTTP/2 connection class is ours.
        _check_origin(self, request)
        try:
            with self._request_lock:
                connection = self._connection
                if connection is None:
                    stream = self._connect(request)
                    expiry = self._keepalive_expiry
                    if _speaks_h2(self, stream):
                        connection = GracefulHTTP2Connection(self._origin, stream, expiry)
                    else:
                        connection = httpcore.HTTP11Connection(self._origin, stream, expiry)
                    self._connection = connection
        except BaseException:
            self._connect_failed = True
            raise
        return connection.handle_request(request)


def _connection_kwargs(
    pool: httpcore.AsyncConnectionPool | httpcore.ConnectionPool, origin: httpcore.Origin
) -> dict[str, Any]:
    """The arguments of a direct (no proxy) connection of ``pool`` to ``origin``."""
    return {
        "origin": origin, "ssl_context": pool._ssl_context,
        "keepalive_expiry": pool._keepalive_expiry, "http1": pool._http1, "http2": pool._http2,
        "retries": pool._retries, "local_address": pool._local_address, "uds": pool._uds,
        "network_backend": pool._network_backend, "socket_options": pool._socket_options,
    }  # fmt: skip


class _AsyncPool(httpcore.AsyncConnectionPool):
    """httpcore's pool whose direct connections are :class:`_AsyncConnection`."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        """A new connection to ``origin`` (not connected yet)."""
        if self._proxy is not None:  # httpx gives proxies their own transports
            return super().create_connection(origin)
        return _AsyncConnection(**_connection_kwargs(self, origin))


class _Pool(httpcore.ConnectionPool):
    """Sync :class:`_AsyncPool`."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        """A new connection to ``origin`` (not connected yet)."""
        if self._proxy is not None:
            return super().create_connection(origin)
        return _Connection(**_connection_kwargs(self, origin))


class _AsyncTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (request building, error mapping) over :class:`_AsyncPool`."""

    def __init__(self, pool: _AsyncPool) -> None:
        # httpx's __init__ would only build a pool (and an SSL context) to be replaced.
        self._pool = pool


class _Transport(httpx.HTTPTransport):
    """Sync :class:`_AsyncTransport`."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool


def transport_kwargs(config: EndpointConfig, ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    """The httpx transport options of ``config``: ``verify``, ``limits``, ``http1``, ``http2``.

    The clients take them too (httpx builds the transports of proxies found in the
    environment from them).

    Args:
        config: The endpoint configuration.
        ssl_context: The endpoint's SSL context (None for plain http).
    """
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs["verify"] = ssl_context
    if config.pooling:
        limits = config.limits
        kwargs["limits"] = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
        kwargs["http2"] = config.http2 or config.http2_prior_knowledge
        kwargs["http1"] = not config.http2_prior_knowledge
    else:
        kwargs["limits"] = httpx.Limits(max_connections=1, max_keepalive_connections=0)
    return kwargs


def _pool_kwargs(
    config: EndpointConfig,
    ssl_context: ssl.SSLContext | None,
    network_backend: httpcore.AsyncNetworkBackend | httpcore.NetworkBackend | None,
) -> dict[str, Any]:
    """The httpcore pool arguments httpx would derive from :func:`transport_kwargs`."""
    options = transport_kwargs(config, ssl_context)
    limits: httpx.Limits = options["limits"]
    return {
        "ssl_context": ssl_context,
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": options.get("http1", True),
        "http2": options.get("http2", False),
        "network_backend": network_backend,
    }


def async_transport(
    config: EndpointConfig,
    ssl_context: ssl.SSLContext | None,
    *,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncHTTPTransport:
    """The async httpx transport of ``config``, graceful on HTTP/2 GOAWAY.

    Args:
        config: The endpoint configuration (limits, HTTP versions).
        ssl_context: The endpoint's SSL context (None for plain http).
        network_backend: httpcore network backend (tests); the default opens sockets.
    """
    return _AsyncTransport(_AsyncPool(**_pool_kwargs(config, ssl_context, network_backend)))


def sync_transport(
    config: EndpointConfig,
    ssl_context: ssl.SSLContext | None,
    *,
    network_backend: httpcore.NetworkBackend | None = None,
) -> httpx.HTTPTransport:
    """Sync :func:`async_transport`."""
    return _Transport(_Pool(**_pool_kwargs(config, ssl_context, network_backend)))
