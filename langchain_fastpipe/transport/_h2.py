"""HTTP/2 for the pooled transport (httpx engine): the entry module and the version pin.

h2 moves its connection state machine to CLOSED the moment it *receives* a GOAWAY
(python-hyper/h2#1181), and httpcore then fails every stream of the connection. RFC 9113
section 6.8 says otherwise: the server still completes the streams up to the GOAWAY's
``last_stream_id``; the higher ones were never processed and are safe to send again.
The ``_h2*`` modules own that behaviour, each at the depth where it lives:

* :mod:`._h2_state`: :class:`GracefulH2Connection` (h2). A received GOAWAY is recorded
  (the lowest ``last_stream_id``) instead of closing the state machine, so the frames of
  the streams still being completed are accepted; new streams are refused. Stream ids
  are reserved per request; the sync connection's h2 state is locked.
* :mod:`._h2_core`: ``GracefulCore``, what the two httpcore connections below decide,
  once, without I/O. After a GOAWAY, whatever its error code, a connection takes no new
  streams (``is_available()`` is False) and closes once drained. A stream above
  ``last_stream_id`` without response headers raises httpcore's
  ``ConnectionNotAvailable``, so httpcore's pool sends it again on another connection;
  streams up to it keep reading (after an error GOAWAY they fail if the server drops the
  connection first). RST_STREAM(REFUSED_STREAM) before response headers is resent the
  same way, up to :data:`REFUSED_RESENDS` refusals in a row per connection. Nothing is
  resent once response headers arrived, so never after a byte reached the caller. A
  stream closed before its end (``break``, cancellation) is reset with
  RST_STREAM(CANCEL), so the server stops sending and the stream slot is freed (streams
  closed early without a reset exhaust the slots: "Max outbound streams" errors). A
  server silent for a moment after its GOAWAY, while kept streams are open, gets one
  PING: one that dropped its HTTP/2 state (hypercorn) then closes, and the streams fail
  at once instead of at the read timeout.
* :mod:`._h2_async` / :mod:`._h2_sync`: :class:`AsyncGracefulHTTP2Connection` /
  :class:`GracefulHTTP2Connection`, httpcore's HTTP/2 connections with the reads and
  writes around those decisions. The async one also reads what the socket holds before
  each write (a reset connection otherwise loses the end of streams the server already
  sent: nginx resets connections it had sent GOAWAY on when a reload closes them, and
  asyncio drops what it had not read when a write fails).
* :mod:`._h2_transport`: httpcore's connection, pool and httpx's transport building
  them: :func:`async_transport`, :func:`sync_transport`, :func:`transport_kwargs`.
* :mod:`._h2_close`: :func:`aclose_response`, :func:`close_response`, and
  :func:`abort_dead_loop_client` (closes the sockets of a client whose event loop died).

The httpx engine's walks of private httpx/httpcore/h2/anyio attributes live in these
modules only. Some httpcore methods are copied and adapted (marked "Adapted from");
they follow the versions in :data:`WRITTEN_FOR`, and a unit test fails when the
installed ones differ. Callers import from this module only.
"""

from __future__ import annotations

from typing import Final

from langchain_fastpipe.transport._h2_async import AsyncGracefulHTTP2Connection
from langchain_fastpipe.transport._h2_close import _socket_transports as _socket_transports
from langchain_fastpipe.transport._h2_close import (
    abort_dead_loop_client,
    aclose_response,
    close_response,
)
from langchain_fastpipe.transport._h2_core import REFUSED_RESENDS
from langchain_fastpipe.transport._h2_state import GracefulH2Connection
from langchain_fastpipe.transport._h2_sync import GracefulHTTP2Connection
from langchain_fastpipe.transport._h2_transport import (
    async_transport,
    sync_transport,
    transport_kwargs,
)

__all__ = [
    "REFUSED_RESENDS",
    "WRITTEN_FOR",
    "AsyncGracefulHTTP2Connection",
    "GracefulH2Connection",
    "GracefulHTTP2Connection",
    "abort_dead_loop_client",
    "aclose_response",
    "async_transport",
    "close_response",
    "sync_transport",
    "transport_kwargs",
]

#: The versions the ``_h2*`` modules were written against (copied methods, private
#: attributes).
WRITTEN_FOR: Final = {"httpx": "0.28.1", "httpcore": "1.0.9", "h2": "4.4.1"}
