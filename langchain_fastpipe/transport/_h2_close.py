"""Closing what the httpx engine opened: streamed responses, and a dead loop's sockets.

:func:`aclose_response` / :func:`close_response` close a streamed response (the graceful
HTTP/2 connections reset a stream closed before its end). :func:`abort_dead_loop_client`
closes the sockets of a client whose event loop is gone, found by walking private
httpx/httpcore/anyio (and aiohttp, h2 engine) attributes in :func:`_socket_transports`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

__all__ = ["abort_dead_loop_client", "aclose_response", "close_response"]


async def aclose_response(response: httpx.Response, chunks: Any = None) -> None:
    """Close a streamed response and its started byte iterator ``chunks``, if any.

    An HTTP/2 stream closed before its end is reset (RST_STREAM CANCEL) by
    :class:`~._h2_async.AsyncGracefulHTTP2Connection` as it is released.
    """
    if chunks is not None:
        await chunks.aclose()
    await response.aclose()


def close_response(response: httpx.Response, chunks: Any = None) -> None:
    """Sync :func:`aclose_response`."""
    if chunks is not None:
        chunks.close()
    response.close()


def _socket_transports(client: httpx.AsyncClient) -> list[Any]:
    """The asyncio transports under ``client``'s pooled connections.

    Walks private attributes (httpx client -> httpcore pool -> connection -> AnyIOStream
    -> anyio TLSStream/SocketStream -> asyncio transport; for the aiohttp engine, the
    session's connector; for the h2 engine, its connections' transports, TLS wrapper
    first); returns what it finds, ``[]`` when the layout differs.
    """
    found: list[Any] = []
    transport = getattr(client, "_transport", None)
    for conn in list(getattr(getattr(transport, "_pool", None), "_connections", None) or ()):
        stream: Any = getattr(getattr(conn, "_connection", None), "_network_stream", None)
        for _ in range(4):
            if stream is None:
                break
            raw = getattr(stream, "_transport", None)
            if raw is not None:
                found.append(raw)
                break
            stream = getattr(stream, "_stream", None) or getattr(stream, "transport_stream", None)
    engine = getattr(transport, "h2native", None)  # the h2 engine's own connections
    if engine is not None:
        found.extend(engine.socket_transports())
    session = getattr(transport, "client", None)
    conns = getattr(getattr(session, "connector", None), "_conns", None)
    if isinstance(conns, dict):
        for queue in list(conns.values()):
            for item in list(queue):
                proto = item[0] if isinstance(item, tuple) else item
                raw = getattr(proto, "transport", None)
                if raw is not None:
                    found.append(raw)
    return found


def abort_dead_loop_client(client: httpx.AsyncClient) -> None:
    """Close the sockets of a client whose event loop is closed (no await possible).

    ``transport.abort()`` marks the transport closing, then fails scheduling its callback
    on the closed loop; the socket is then closed directly, and forgotten by the
    transport so its finalizer has nothing left to warn about.
    """
    for raw in _socket_transports(client):
        with contextlib.suppress(Exception):
            raw.abort()
        sock = getattr(raw, "_sock", None)
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()
                raw._sock = None
