"""The ``"h2"`` engine's HTTP/2 connection: one ``asyncio.Protocol`` driving h2's state machine.

httpcore's HTTP/2 connection costs over 1 ms of client CPU per stream (anyio locks and
events, a timeout per read, one reader dispatching for every stream). Here the event
loop hands each read to :meth:`H2Conn.data_received`, which turns h2's events into
per-stream state (:class:`Stream`: the response headers, a deque of body chunks, a
waiter future) and wakes only the stream concerned. The callers' side
(:meth:`Stream.response`, :meth:`Stream.body`) reads that state, waiting with one
future and one ``call_later`` timer per wait.

RFC 9113 section 6.8 as the ``_h2*`` modules give httpcore (see :mod:`._h2`), with h2's
GOAWAY handling from :class:`~._h2_state.GracefulH2Connection`: after a GOAWAY the
connection takes no new stream, streams up to its ``last_stream_id`` complete, streams
above it without response headers fail with :data:`UNPROCESSED` (the engine sends them
again on another connection), and the connection closes once drained. A
RST_STREAM(REFUSED_STREAM) before headers is :data:`UNPROCESSED` too (at most
``REFUSED_RESENDS`` in a row per connection). Nothing is resent once response headers
arrived. A stream released while h2 still holds it open (its body not read to the end,
or its response ended before our request body did) is reset with RST_STREAM(CANCEL).

Our SETTINGS go in the preface. Every body chunk the caller consumed is acknowledged to
h2 at once (h2 batches the WINDOW_UPDATE frames): that is what refills the connection's
receive window, shared by all streams.

Failures are httpx exceptions, as httpcore would raise them: ``ReadError`` for a
connection reset, ``RemoteProtocolError`` for a peer that closed the connection, reset
the stream after its headers or broke the protocol, ``ReadTimeout``/``WriteTimeout``. A
reset before the response headers (other than REFUSED_STREAM) is :class:`StreamResetError`,
a ``RemoteProtocolError`` retried after the pool's backoff, not replayed at once as a
stale connection (the server may have processed it). A request header h2 rejects is
``LocalProtocolError`` (without the header's value), and the connection drains: h2's
HPACK encoder no longer matches the server's decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import h2.config
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx

from langchain_fastpipe.transport._h2_core import PROBE_AFTER, REFUSED_RESENDS
from langchain_fastpipe.transport._h2_state import GracefulH2Connection

__all__ = ["UNPROCESSED", "H2Conn", "Stream", "StreamResetError", "Unprocessed"]

_CONFIG: Final = h2.config.H2Configuration(
    client_side=True, header_encoding=None, validate_inbound_headers=False
)
#: Our receive windows: per stream (bounds what one stream buffers) and per connection.
STREAM_WINDOW: Final = 1 << 20
_CONNECTION_WINDOW: Final = 1 << 24
#: Our SETTINGS, sent in the preface (h2 applies them to our side at once, no ACK awaited).
_SETTINGS: Final = {
    h2.settings.SettingCodes.ENABLE_PUSH: 0,
    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
}
_TIMED_OUT: Final = object()


class Unprocessed(Exception):  # noqa: N818 - a signal, not an error of the caller's
    """The server never processed the stream (above a GOAWAY, or refused): send it again."""


class StreamResetError(httpx.RemoteProtocolError):
    """The server reset the stream before its response headers (not REFUSED_STREAM).

    It may have processed the request, so the engine does not resend it, and it is not
    a stale pooled connection either (``maybe_processed``: the pool does not replay it at
    once): an ordinary retryable failure, resent after the retry backoff, held against
    the called model's breaker (the server answered), not the endpoint's.
    """

    maybe_processed = True


#: The one instance (it never reaches a caller: the engine resends).
UNPROCESSED: Final = Unprocessed()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class Stream:
    """One request/response exchange on an :class:`H2Conn`.

    Filled by the connection as frames arrive; read by the caller through
    :meth:`response` and :meth:`body`. :meth:`close` (idempotent) frees its slot.
    """

    __slots__ = (
        "chunks",
        "conn",
        "ended",
        "error",
        "flow",
        "headers",
        "id",
        "released",
        "sending",
        "status",
        "waiter",
    )

    def __init__(self, conn: H2Conn, stream_id: int) -> None:
        """A stream of ``conn`` whose id is ``stream_id`` (headers not sent yet)."""
        self.conn = conn
        self.id = stream_id
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.flow = 0  # flow-controlled bytes buffered in ``chunks`` (not acknowledged)
        self.ended = False  # END_STREAM received: the body is complete
        self.error: BaseException | None = None  # raised once the buffered body is read
        self.waiter: asyncio.Future[Any] | None = None
        self.sending = False  # waiting for send-window credit
        self.released = False

    def wake(self) -> None:
        """Wake the caller waiting on this stream, if any."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error`` (after what is buffered), unless it ended already."""
        if not self.ended and self.error is None:
            self.error = error
            self.wake()

    def _failure(self) -> BaseException:
        """The error to raise now (a new :class:`Unprocessed` each time: no traceback grows)."""
        error = self.error
        return Unprocessed() if error is UNPROCESSED or error is None else error

    async def _wait(self, timeout: float | None, kind: type[httpx.TimeoutException]) -> None:
        loop = self.conn.loop
        waiter = self.waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()
        if waiter.result() is _TIMED_OUT:
            raise kind("timed out")

    async def send_body(self, body: memoryview, timeout: float | None) -> None:
        """Send the rest of the request body as the send window allows."""
        conn = self.conn
        while body:
            if self.error is not None:
                raise self._failure()
            try:
                sent = conn.send_data(self.id, body)
            except h2.exceptions.ProtocolError:
                return  # the server closed its side (answered early): its reply tells
            if self.ended:
                return
            if sent:
                body = body[sent:]
                continue
            self.sending = True
            try:
                await self._wait(timeout, httpx.WriteTimeout)
            finally:
                self.sending = False

    async def response(self, timeout: float | None) -> int:
        """Wait for the response headers; their status."""
        while self.status is None:
            if self.error is not None:
                raise self._failure()
            await self._wait(timeout, httpx.ReadTimeout)
        return self.status

    async def body(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (what arrived together comes as one chunk)."""
        chunks = self.chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._consumed()
                yield data
            elif self.ended:
                self.close()
                return
            elif self.error is not None:
                raise self._failure()
            else:
                await self._wait(timeout, httpx.ReadTimeout)

    def _consumed(self) -> None:
        # Every consumed chunk goes back to h2 at once: its window managers batch the
        # WINDOW_UPDATE frames, and the connection window (shared by every stream) is
        # only ever refilled this way (holding bytes back per stream starves it).
        flow = self.flow
        self.flow = 0
        self.conn.acknowledge(self.id, flow)

    def close(self) -> None:
        """Release the stream; one not ended is reset (RST_STREAM CANCEL) first."""
        if self.released:
            return
        self.released = True
        self.conn.release(self)


class H2Conn(asyncio.Protocol):
    """One HTTP/2 client connection (see the module docstring).

    Attributes:
        limit: Streams it carries at once: ours, then also the peer's
            SETTINGS_MAX_CONCURRENT_STREAMS.
        reserved: Streams given to callers and not released (pending ones included).
        draining: No new stream may start (a GOAWAY, our close, exhausted ids).
        error: Why the connection failed (it takes nothing more), or None.
        ready: Done when the server's first SETTINGS arrived (or the connect failed).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, limit: int, on_change: Callable[[H2Conn], None]
    ) -> None:
        """A connection on ``loop``; ``on_change`` hears of freed slots, drains and ends."""
        self.loop = loop
        self.limit = limit
        self._configured = limit
        self.h2 = GracefulH2Connection(config=_CONFIG)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.reserved = 0
        self.draining = False
        self.error: BaseException | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.settings: asyncio.Future[None] = loop.create_future()
        self.idle_since: float | None = None
        self._on_change = on_change
        self._refused = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport (the preface is sent by :meth:`initiate`)."""
        self.transport = transport  # type: ignore[assignment]

    def initiate(self) -> None:
        """Send the connection preface and our settings (RFC 9113 section 3.4)."""
        h2c = self.h2
        # In the preface's SETTINGS frame, as httpcore does: settings sent later by
        # update_settings() would only apply once the server acknowledged them (until
        # then h2 gives new streams a 65535-byte receive window).
        h2c.local_settings = h2.settings.Settings(client=True, initial_values=_SETTINGS)
        h2c.initiate_connection()
        h2c.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        """Feed h2; route its events to the streams."""
        self._last_read = self.loop.time()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.flush()  # h2 queued its GOAWAY: closing (not aborting) still sends it
            self.abort(httpx.RemoteProtocolError(str(exc) or type(exc).__name__), flush=True)
            return
        streams = self.streams
        event: Any
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                stream = streams.get(event.stream_id)
                if stream is None:  # a stream we let go: its bytes still count
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length,
                        event.stream_id,
                    )
                    continue
                if event.data:
                    stream.chunks.append(event.data)
                stream.flow += event.flow_controlled_length
                stream.wake()
            elif kind is h2.events.StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.ended = True
                    stream.wake()
                    if self.draining:
                        self._close_if_drained()
            elif kind is h2.events.ResponseReceived:
                self._headers(event)
            elif kind is h2.events.StreamReset:
                self._reset(event)
            elif kind is h2.events.ConnectionTerminated:
                self._goaway()
            elif kind is h2.events.RemoteSettingsChanged:
                self._remote_settings()
            elif kind is h2.events.WindowUpdated:
                for stream in streams.values():
                    if stream.sending:
                        stream.wake()
        self.flush()

    def eof_received(self) -> bool | None:
        """The peer closed its side: close ours (``connection_lost`` follows)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every stream still open, as httpcore would: ReadError or RemoteProtocolError."""
        self.transport = None
        self.draining = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for stream in self.streams.values():
            if stream.ended or stream.error is not None:
                continue
            if exc is not None:
                stream.fail(httpx.ReadError(str(exc) or type(exc).__name__))
            elif stream.status is None:
                stream.fail(httpx.RemoteProtocolError("Server disconnected without response"))
            else:
                stream.fail(httpx.RemoteProtocolError("peer closed connection mid-body"))
        if self.error is None:
            self.error = httpx.ReadError(str(exc)) if exc else httpx.RemoteProtocolError("closed")
        for future in (self.settings, self.lost):
            if not future.done():
                future.set_result(None)
        self._on_change(self)

    # -- events

    def _headers(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        self._refused = 0
        status = 0
        raw = stream.headers
        for name, value in event.headers or ():
            if name[:1] == b":":
                if name == b":status":
                    status = int(value)
            else:
                raw.append((name, value))
        stream.status = status
        stream.wake()

    def _reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.ended:
            return
        refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        if stream.status is None and (
            self._above_goaway(stream.id) or (refused and self._refused_again())
        ):
            stream.fail(UNPROCESSED)
        elif stream.status is None and not refused:
            # It may have been processed: a retryable failure (backoff), no replay.
            stream.fail(StreamResetError(f"stream reset before the response: {event!r}"))
        else:
            stream.fail(httpx.RemoteProtocolError(repr(event)))
        if self.draining:
            self._close_if_drained()

    def _refused_again(self) -> bool:
        self._refused += 1
        return self._refused <= REFUSED_RESENDS

    def _above_goaway(self, stream_id: int) -> bool:
        last = self.h2.goaway_last_stream_id
        return last is not None and stream_id > last

    def _goaway(self) -> None:
        """A GOAWAY: no new stream; those above ``last_stream_id`` go elsewhere."""
        self.draining = True
        for stream in self.streams.values():
            if stream.status is None and self._above_goaway(stream.id):
                stream.fail(UNPROCESSED)
        if not self._close_if_drained():
            # A server that dropped its HTTP/2 state with the GOAWAY (hypercorn) fails on
            # a PING and closes: the kept streams then fail at once, not at a timeout.
            self.loop.call_later(PROBE_AFTER, self._probe)
        self._on_change(self)

    def _probe(self) -> None:
        """Send the PING once the server was silent for ``PROBE_AFTER`` (kept streams open)."""
        if self.transport is None or not self.h2.probe_due():
            return
        silent = self.loop.time() - self._last_read
        if silent < PROBE_AFTER:
            self.loop.call_later(PROBE_AFTER - silent, self._probe)
            return
        self.h2.probe()
        self.flush()

    def _remote_settings(self) -> None:
        peer = self.h2.remote_settings.max_concurrent_streams
        previous = self.limit
        self.limit = min(self._configured, peer)  # the peer may raise its limit again
        if not self.settings.done():
            self.settings.set_result(None)
        elif self.limit > previous:
            self._on_change(self)  # slots freed for waiting callers
        for stream in self.streams.values():
            if stream.sending:
                stream.wake()

    # -- what the engine and the streams call

    def flush(self) -> None:
        """Write what h2 queued."""
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def takes(self) -> bool:
        """Whether a new stream may be given to a caller now."""
        return not self.draining and self.reserved < self.limit

    def start(
        self, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> tuple[Stream, memoryview | None]:
        """Open a stream, send its headers and what fits of ``body``; the rest of the body.

        Raises:
            Unprocessed: The connection cannot open it (GOAWAY, exhausted ids, peer limit).
        """
        if self.draining or self.transport is None:
            raise Unprocessed
        h2c = self.h2
        try:
            stream_id = h2c.get_next_available_stream_id()
            h2c.send_headers(stream_id, headers, end_stream=not body)
        except h2.exceptions.NoAvailableStreamIDError:
            self.draining = True
            raise Unprocessed from None
        except h2.exceptions.TooManyStreamsError:
            if self.reserved <= self.limit:
                # h2 counts streams we do not (it should not happen): use another one.
                self.drain()
            raise Unprocessed from None
        except h2.exceptions.ProtocolError as exc:
            if h2c.goaway_last_stream_id is not None or isinstance(
                exc, h2.exceptions.StreamIDTooLowError
            ):
                raise Unprocessed from None
            # h2 rejected a header while HPACK-encoding the block: its encoder's table
            # no longer matches the server's, so no more HEADERS may go out on this
            # connection. Its text may quote the value (an API key): not passed on.
            self.drain()
            msg = (
                "a request header is not allowed in HTTP/2 "
                f"(h2 {type(exc).__name__}; the header value is withheld)"
            )
            raise httpx.LocalProtocolError(msg) from None
        stream = self.streams[stream_id] = Stream(self, stream_id)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        rest = None
        if body:
            rest = memoryview(body)
            sent = self.send_data(stream_id, rest, flush=False)
            rest = rest[sent:] if sent < len(rest) else None
        self.flush()
        return stream, rest

    def send_data(self, stream_id: int, body: memoryview, *, flush: bool = True) -> int:
        """Send what the send windows allow of ``body`` (ending the stream with its end)."""
        h2c = self.h2
        size = len(body)
        sent = 0
        while sent < size:
            window = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
            if window <= 0:
                break
            end = min(size, sent + window)
            h2c.send_data(stream_id, body[sent:end].tobytes(), end_stream=end == size)
            sent = end
        if flush and sent:
            self.flush()
        return sent

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Give ``size`` consumed bytes of ``stream_id`` back to the peer's windows."""
        if size and self.transport is not None:
            h2c = self.h2
            h2c.acknowledge_received_data(size, stream_id)
            if h2c.has_data_to_send():  # h2 sends a WINDOW_UPDATE once enough is owed
                self.flush()

    def release(self, stream: Stream) -> None:
        """Forget ``stream`` (its caller is done); reset it first if still open."""
        if self.streams.pop(stream.id, None) is None:
            return
        self.reserved -= 1
        owed = stream.flow
        if self.transport is not None:
            # Reset any stream h2 still holds open, also one whose response ended before
            # our request body did (half-closed): it counts towards the server's limit.
            if (
                stream.error is not UNPROCESSED
                and not self._above_goaway(stream.id)
                and self.h2.cancel(stream.id)
            ):
                self.flush()
            if owed:
                self.acknowledge(stream.id, owed)
        stream.chunks.clear()
        if self.draining:
            self._close_if_drained()
        self._on_change(self)

    def drain(self) -> None:
        """Take no new stream; close once the streams in progress ended."""
        self.draining = True
        self._close_if_drained()
        self._on_change(self)

    def unreserve(self) -> None:
        """Give back a slot reserved for a stream that never started."""
        self.reserved -= 1
        self._on_change(self)

    def idle(self, expiry: float, close_now: bool) -> None:
        """No stream left: close now, or after ``expiry`` seconds unless used again."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if close_now or expiry <= 0:
            self.close()
        else:
            self._idle_timer = self.loop.call_later(expiry, self._expire_idle)

    def _expire_idle(self) -> None:
        self._idle_timer = None
        if self.reserved == 0:
            self.close()

    def _close_if_drained(self) -> bool:
        """Close a draining connection whose streams all ended; whether it did."""
        if any(s.error is None and not s.ended for s in self.streams.values()):
            return False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        return True

    def close(self) -> None:
        """Close gracefully: GOAWAY(NO_ERROR), then the transport (streams fail as it ends)."""
        self.draining = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
        self.flush()
        transport.close()

    def abort(self, error: BaseException | None = None, *, flush: bool = False) -> None:
        """Drop the connection at once (``error``: why, given to its open streams).

        With ``flush``, what was written still goes out first (h2's GOAWAY after a
        protocol error), then the socket closes.
        """
        self.draining = True
        if error is not None:
            self.error = error
            for stream in self.streams.values():
                stream.fail(error)
        transport = self.transport
        if transport is not None:
            if flush:
                transport.close()
            else:
                transport.abort()

    def socket_transports(self) -> list[Any]:
        """The asyncio transport(s) under this connection (TLS: the wrapper, then the raw one)."""
        transport = self.transport
        if transport is None:
            return []
        raw = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        return [transport] if raw is None else [transport, raw]
