"""HTTP/2 for the pooled transport: graceful GOAWAY, early-close resets, private walks.

h2 moves its connection state machine to CLOSED the moment it *receives* a GOAWAY
(python-hyper/h2#1181), and httpcore then fails every stream of the connection. RFC 9113
section 6.8 says otherwise: the server still completes the streams up to the GOAWAY's
``last_stream_id``; the higher ones were never processed and are safe to send again.
This module owns that behaviour, at the depth where it lives:

* :class:`GracefulH2Connection` (h2): a received GOAWAY is recorded (the lowest
  ``last_stream_id`` received) instead of closing the state machine, so the frames of the
  streams still being completed are accepted; opening a new stream is refused.
* :class:`AsyncGracefulHTTP2Connection` / :class:`GracefulHTTP2Connection` (httpcore).
  After a GOAWAY, whatever its error code, the connection takes no new streams
  (``is_available()`` is False) and closes once drained. A stream above
  ``last_stream_id`` without response headers raises httpcore's
  ``ConnectionNotAvailable``, so httpcore's pool sends it again on another connection;
  streams up to it keep reading (after an error GOAWAY they fail if the server drops the
  connection first). RST_STREAM(REFUSED_STREAM) before response headers is resent the
  same way, up to :data:`REFUSED_RESENDS` refusals in a row per connection. Nothing is
  resent once response headers arrived, so never after a byte reached the caller. A
  stream closed before its end (``break``, cancellation) is reset with
  RST_STREAM(CANCEL) by the connection itself, so the server stops sending and the
  stream slot is freed (streams closed early without a reset exhaust the slots: "Max
  outbound streams" errors).
* Two things keep the streams a server kept alive until their end. A server silent for
  :data:`_PROBE_AFTER` after its GOAWAY, while kept streams are open, gets one PING: a
  server that dropped its HTTP/2 state with the GOAWAY (hypercorn) then closes, and the
  streams fail at once instead of at the read timeout. And before each write (async),
  what the socket holds is read into memory first (``_read_first``): a reset
  connection otherwise loses the end of streams the server already sent (nginx resets
  connections it had sent GOAWAY on when a reload closes them; asyncio drops what it
  had not read when a write fails).
* The connection, pool and transport classes that build them: :func:`async_transport`
  and :func:`sync_transport` return httpx transports over them.
* :func:`abort_dead_loop_client`: closes the sockets of a client whose event loop died.

The httpx engine's walks of private httpx/httpcore/h2/anyio attributes live here. Some
httpcore methods are copied and adapted (marked "Adapted from"); they follow the
versions in :data:`WRITTEN_FOR`, and a unit test fails when the installed ones differ.
"""

from __future__ import annotations

import contextlib
import logging
import select
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Union

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import httpcore
import httpx
from httpcore._trace import Trace

from langchain_fastpipe.transport._config import EndpointConfig
from langchain_fastpipe.transport._retry import forget_traceback

if TYPE_CHECKING:
    from hyperframe.frame import Frame, GoAwayFrame

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

#: The versions this module was written against (copied methods, private attributes).
WRITTEN_FOR: Final = {"httpx": "0.28.1", "httpcore": "1.0.9", "h2": "4.4.1"}

#: REFUSED_STREAM resets in a row on one connection that are resent transparently; past
#: that the refusal is reported (the pool's replays and retries take over, with backoff).
REFUSED_RESENDS: Final = 3

#: Reads, at most, that drain the socket before a write (``_read_first``), and how long
#: one may wait for a frame (readable bytes may be a TLS record that is none).
_DRAIN_READS: Final = 32
_POLL_READ: Final = 0.05

_GOAWAY_PING: Final = b"fp-goawy"  # opaque data of the PING probe sent after a GOAWAY
#: Seconds of silence, after a GOAWAY while streams it kept are open, before the probe.
#: A live server is not harmed by it; a stalled one is found well before a read timeout.
_PROBE_AFTER: Final = 0.25

_log = logging.getLogger("httpcore.http2")  # httpcore's logger: the traces stay alike

_StreamEvent = Union[  # noqa: UP007 - httpcore's own alias style, readable in 3.10
    h2.events.ResponseReceived,
    h2.events.DataReceived,
    h2.events.StreamEnded,
    h2.events.StreamReset,
]
_STREAM_EVENTS: Final = (
    h2.events.ResponseReceived,
    h2.events.DataReceived,
    h2.events.StreamEnded,
    h2.events.StreamReset,
)


def _error_code(code: int) -> h2.errors.ErrorCodes | int:
    """The ErrorCodes member of ``code``, or ``code`` itself when it is unknown."""
    try:
        return h2.errors.ErrorCodes(code)
    except ValueError:
        return code


def _readability(stream: httpcore.AsyncNetworkStream) -> Callable[[], bool]:
    """A cheap "does the socket hold unread bytes" check of ``stream``.

    One ``poll`` of the raw socket (httpcore's ``is_readable`` rebuilds anyio's whole
    attribute table, a ``getpeername`` included, on every call); streams without a socket
    answer ``is_readable`` themselves. A closed socket counts as readable (its read says so).
    """
    sock = stream.get_extra_info("socket")
    if sock is None or not hasattr(select, "poll"):
        return lambda: bool(stream.get_extra_info("is_readable"))
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return lambda: bool(poller.poll(0))


class GracefulH2Connection(h2.connection.H2Connection):
    """h2's connection, with RFC 9113 section 6.8 semantics for a received GOAWAY.

    h2 closes the whole state machine on GOAWAY, so the DATA that follows for streams the
    server is still completing raises ``ProtocolError``. Here the GOAWAY only records its
    ``last_stream_id`` and yields the usual ``ConnectionTerminated`` event; the outbound
    buffer is kept (flow-control credit and resets still matter to those streams) and
    new streams are refused. :meth:`probe` queues a PING for a server silent since.

    Stream ids are reserved: each :meth:`get_next_available_stream_id` returns a new one,
    so two requests never share one; a request whose headers would go out after a higher
    id's gets ``StreamIDTooLowError`` from :meth:`send_headers` and is resent. With
    ``threads=True`` (httpcore's sync connection, used by many threads at once) every
    entry point holds one lock: h2 is not thread-safe, and httpcore's sync HTTP/2 calls
    it from several threads with no lock around it.

    Attributes:
        goaway_last_stream_id: The lowest ``last_stream_id`` of the GOAWAYs received
            (a later GOAWAY may only lower it), or None before any.
    """

    def __init__(
        self, config: h2.config.H2Configuration | None = None, *, threads: bool = False
    ) -> None:
        """Create the connection (see ``h2.connection.H2Connection``)."""
        super().__init__(config=config)
        self.goaway_last_stream_id: int | None = None
        self._probed = False
        self._reserved: int | None = None  # the last stream id given out
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if threads else contextlib.nullcontext()
        )

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        if self.state_machine.state is h2.connection.ConnectionState.CLOSED:
            return super()._receive_goaway_frame(frame)  # closed by us: nothing changes
        last = frame.last_stream_id
        if self.goaway_last_stream_id is not None:
            last = min(last, self.goaway_last_stream_id)
        self.goaway_last_stream_id = last
        event = h2.events.ConnectionTerminated()
        event.error_code = _error_code(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def probe_due(self) -> bool:
        """Whether a PING probe is due: after a GOAWAY, once, while kept streams are open."""
        last = self.goaway_last_stream_id
        if last is None or self._probed:
            return False
        with self._lock:
            return any(sid <= last and not s.closed for sid, s in list(self.streams.items()))

    def cancel(self, stream_id: int) -> bool:
        """Queue RST_STREAM(CANCEL) for a stream still open; whether one was queued."""
        with self._lock:
            stream = self.streams.get(stream_id)
            if stream is None or stream.closed:
                return False
            try:
                self.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                return False
            return True

    def probe(self) -> None:
        """Queue the PING that asks a silent server whether it still serves kept streams.

        A server that honours its GOAWAY acknowledges it. One that dropped its HTTP/2
        state with the GOAWAY (hypercorn does, then goes silent) fails on it and closes
        the connection: the kept streams then fail at once, as a dropped connection
        the pool may resend, instead of waiting for the read timeout.
        """
        self._probed = True
        self.ping(_GOAWAY_PING)

    def has_data_to_send(self) -> bool:
        """Whether frames are queued for sending."""
        return bool(self._data_to_send)

    def get_next_available_stream_id(self) -> int:
        """A stream id no other request was given (see the class docstring)."""
        with self._lock:
            stream_id = super().get_next_available_stream_id()
            if self._reserved is not None:
                stream_id = max(stream_id, self._reserved + 2)
            if stream_id > self.HIGHEST_ALLOWED_STREAM_ID:
                msg = "Exhausted allowed stream IDs"
                raise h2.exceptions.NoAvailableStreamIDError(msg)
            self._reserved = stream_id
            return stream_id

    def send_headers(self, stream_id: int, *args: Any, **kwargs: Any) -> None:
        """Send headers; a new stream after a received GOAWAY raises ``ProtocolError``."""
        with self._lock:
            if self.goaway_last_stream_id is not None and stream_id not in self.streams:
                msg = f"GOAWAY received: stream {stream_id} may not be opened on this connection"
                raise h2.exceptions.ProtocolError(msg)
            super().send_headers(stream_id, *args, **kwargs)

    # Every other entry point httpcore and this module use, under the lock.

    def receive_data(self, data: Any) -> list[h2.events.Event]:
        """See ``H2Connection.receive_data``."""
        with self._lock:
            return super().receive_data(data)

    def data_to_send(self, amount: int | None = None) -> bytes:
        """See ``H2Connection.data_to_send``."""
        with self._lock:
            return super().data_to_send(amount)

    def send_data(self, stream_id: int, *args: Any, **kwargs: Any) -> None:
        """See ``H2Connection.send_data``."""
        with self._lock:
            super().send_data(stream_id, *args, **kwargs)

    def end_stream(self, stream_id: int) -> None:
        """See ``H2Connection.end_stream``."""
        with self._lock:
            super().end_stream(stream_id)

    def reset_stream(self, stream_id: int, error_code: h2.errors.ErrorCodes | int = 0) -> None:
        """See ``H2Connection.reset_stream``."""
        with self._lock:
            super().reset_stream(stream_id, error_code)

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """See ``H2Connection.acknowledge_received_data``."""
        with self._lock:
            super().acknowledge_received_data(acknowledged_size, stream_id)

    def increment_flow_control_window(self, increment: int, stream_id: int | None = None) -> None:
        """See ``H2Connection.increment_flow_control_window``."""
        with self._lock:
            super().increment_flow_control_window(increment, stream_id)

    def local_flow_control_window(self, stream_id: int) -> int:
        """See ``H2Connection.local_flow_control_window``."""
        with self._lock:
            return super().local_flow_control_window(stream_id)

    def ping(self, opaque_data: bytes | str) -> None:
        """See ``H2Connection.ping``."""
        with self._lock:
            super().ping(opaque_data)

    def close_connection(self, *args: Any, **kwargs: Any) -> None:
        """See ``H2Connection.close_connection``."""
        with self._lock:
            super().close_connection(*args, **kwargs)


class _Streams:
    """The GOAWAY bookkeeping of one HTTP/2 connection (no I/O; async and sync share it).

    Attributes:
        h2: The connection's h2 state.
        answered: Streams whose response headers arrived (never resent).
        requests: The request of each stream that sent headers (for closing writes).
        refused: REFUSED_STREAM resets since the last response headers.
    """

    __slots__ = ("answered", "h2", "refused", "requests")

    def __init__(self, state: GracefulH2Connection) -> None:
        self.h2 = state
        self.answered: set[int] = set()
        self.requests: dict[int, httpcore.Request] = {}
        self.refused = 0

    def above_goaway(self, stream_id: int) -> bool:
        """Whether a received GOAWAY says the server never processed ``stream_id``."""
        last = self.h2.goaway_last_stream_id
        return last is not None and stream_id > last

    def unprocessed(self, stream_id: int | None, events: dict[int, list[_StreamEvent]]) -> bool:
        """Whether ``stream_id`` waits for nothing but must be resent (GOAWAY above it)."""
        return (
            stream_id is not None
            and self.above_goaway(stream_id)
            and stream_id not in self.answered
            and not events.get(stream_id)
        )

    def note(self, event: _StreamEvent, events: dict[int, list[_StreamEvent]]) -> None:
        """Queue a stream event for its stream (dropped when the stream was closed)."""
        stream_id = event.stream_id
        queue = events.get(stream_id) if stream_id is not None else None
        if queue is None or stream_id is None:
            return
        queue.append(event)
        if isinstance(event, h2.events.ResponseReceived):
            self.answered.add(stream_id)
            self.refused = 0

    def resend_after_reset(self, stream_id: int, event: h2.events.StreamReset) -> bool:
        """Whether a reset stream is resent (False: the reset is reported).

        Only before its response headers: above a GOAWAY's ``last_stream_id``, or
        refused (REFUSED_STREAM, at most :data:`REFUSED_RESENDS` in a row).
        """
        if stream_id in self.answered:
            return False
        if self.above_goaway(stream_id):
            return True
        if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and (
            self.refused < REFUSED_RESENDS
        ):
            self.refused += 1
            return True
        return False

    def forget(self, stream_id: int) -> httpcore.Request | None:
        """Forget a closed stream; its request, if its headers were sent."""
        self.answered.discard(stream_id)
        return self.requests.pop(stream_id, None)

    def cancel(self, stream_id: int) -> bool:
        """Queue RST_STREAM(CANCEL) for a stream still open; whether one was queued.

        A stream above a GOAWAY's ``last_stream_id`` is left alone: the server never
        processed it.
        """
        return not self.above_goaway(stream_id) and self.h2.cancel(stream_id)


class AsyncGracefulHTTP2Connection(httpcore.AsyncHTTP2Connection):
    """httpcore's async HTTP/2 connection, graceful on GOAWAY (see the module docstring)."""

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: httpcore.AsyncNetworkStream,
        keepalive_expiry: float | None = None,
    ) -> None:
        """Create the connection over an open network stream (as httpcore's)."""
        super().__init__(origin, stream, keepalive_expiry)
        self._graceful = GracefulH2Connection(config=self.CONFIG)
        self._h2_state = self._graceful
        self._streams = _Streams(self._graceful)
        self._set_up = False
        self._readable = _readability(stream)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on a new stream (ConnectionNotAvailable after a GOAWAY)."""
        await self._read_first(request)  # a GOAWAY that arrived is seen before sending
        if self._graceful.goaway_last_stream_id is not None or self._connection_error:
            raise httpcore.ConnectionNotAvailable
        return await super().handle_async_request(request)

    def is_available(self) -> bool:
        """Whether new streams may go out here (never after a GOAWAY)."""
        return self._graceful.goaway_last_stream_id is None and super().is_available()

    def _not_available(self) -> httpcore.ConnectionNotAvailable:
        self._request_count -= 1
        return httpcore.ConnectionNotAvailable()

    async def _send_request_headers(self, request: httpcore.Request, stream_id: int) -> None:
        # No await before the headers are queued: until then another request would be
        # given the same stream id.
        if self._graceful.goaway_last_stream_id is not None:
            raise self._not_available()  # the stream id was taken, the stream never sent
        self._streams.requests[stream_id] = request
        self._set_up = True  # the preface and the stream limits are in place
        try:
            await super()._send_request_headers(request, stream_id)
        except h2.exceptions.StreamIDTooLowError:
            raise self._not_available() from None  # a later stream went first: resend

    async def _wait_for_outgoing_flow(self, request: httpcore.Request, stream_id: int) -> int:
        # Adapted from httpcore 1.0.9: waits with ``flow_for`` so that a GOAWAY above
        # the stream ends the wait (the server will never open its window).
        while True:
            if self._streams.above_goaway(stream_id):
                raise self._not_available()  # its body would be ignored: resend it
            state = self._graceful
            flow = min(state.local_flow_control_window(stream_id), state.max_outbound_frame_size)
            if flow:
                return flow
            await self._receive_events(request, flow_for=stream_id)

    async def _send_end_stream(self, request: httpcore.Request, stream_id: int) -> None:
        if self._streams.above_goaway(stream_id):
            raise self._not_available()
        await super()._send_end_stream(request, stream_id)

    async def _receive_stream_event(
        self, request: httpcore.Request, stream_id: int
    ) -> h2.events.ResponseReceived | h2.events.DataReceived | h2.events.StreamEnded:
        # Adapted from httpcore 1.0.9: a reset stream may be resent.
        while not self._events.get(stream_id):
            await self._receive_events(request, stream_id)
        event = self._events[stream_id].pop(0)
        if isinstance(event, h2.events.StreamReset):
            if self._streams.resend_after_reset(stream_id, event):
                raise self._not_available()
            raise httpcore.RemoteProtocolError(event)
        return event

    async def _receive_events(
        self,
        request: httpcore.Request,
        stream_id: int | None = None,
        *,
        flow_for: int | None = None,
        poll: bool = False,
    ) -> None:
        # Adapted from httpcore 1.0.9: after a GOAWAY, streams up to its last_stream_id
        # keep reading; a stream above it (``stream_id``, or ``flow_for`` waiting for
        # flow-control credit) is resent. The check runs under the read lock, so a
        # GOAWAY read by another stream is always seen before reading again. ``poll``:
        # read only if the socket (still) holds bytes, and leave the flush to the caller.
        async with self._read_lock:
            if self._streams.unprocessed(stream_id or flow_for, self._events):
                raise self._not_available()
            if poll and not self._readable():
                return
            if stream_id is None or not self._events.get(stream_id):
                for event in await self._read_incoming_data(request, poll=poll):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        async with Trace("receive_remote_settings", _log, request) as trace:
                            await self._receive_remote_settings_change(event)
                            trace.return_value = event
                    elif isinstance(event, _STREAM_EVENTS):
                        self._streams.note(event, self._events)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self._connection_terminated = event
        if not poll:
            await self._flush_quietly(request)

    async def _receive_response_body(
        self, request: httpcore.Request, stream_id: int
    ) -> AsyncIterator[bytes]:
        # Adapted from httpcore 1.0.9: flow-control credit is flushed quietly.
        while True:
            event = await self._receive_stream_event(request, stream_id)
            if isinstance(event, h2.events.DataReceived):
                self._graceful.acknowledge_received_data(event.flow_controlled_length, stream_id)
                await self._flush_quietly(request)
                yield event.data
            elif isinstance(event, h2.events.StreamEnded):
                break

    async def _write_outgoing_data(
        self, request: httpcore.Request, *, reading: bool = False
    ) -> None:
        if self._graceful.has_data_to_send() and not reading:
            await self._read_first(request)
        await super()._write_outgoing_data(request)

    async def _read_incoming_data(
        self, request: httpcore.Request, *, poll: bool = False
    ) -> list[h2.events.Event]:
        # Adapted from httpcore 1.0.9 (under the read lock). After a GOAWAY, a server
        # silent for _PROBE_AFTER while streams it kept are open gets the PING probe.
        # ``poll``: the socket was readable, but its bytes may hold no frame (a TLS
        # session ticket): wait for one only briefly, and a timeout is no error.
        if self._read_exception is not None or not (poll or self._graceful.probe_due()):
            return await super()._read_incoming_data(request)
        try:
            data = await self._network_stream.read(
                self.READ_NUM_BYTES, _POLL_READ if poll else _PROBE_AFTER
            )
        except httpcore.ReadTimeout:
            if poll:
                return []
            self._graceful.probe()
            await self._flush_quietly(request, reading=True)
            return await super()._read_incoming_data(request)
        except Exception as exc:
            self._read_exception = exc
            self._connection_error = True
            raise
        if not data:
            return await super()._read_incoming_data(request)  # the end: stored, raised
        return self._graceful.receive_data(data)

    async def _read_first(self, request: httpcore.Request) -> None:
        """Before writing, pull into memory what the kernel holds for this connection.

        anyio reads a socket only while some stream waits for data, so a busy client
        leaves the server's frames in the kernel, and what does not fit stays in the
        server's send buffer. A server that resets the connection then (nginx, when a
        reload closes a connection it had already sent GOAWAY on, and our newer frames
        are still unread) discards what it had not sent, and a failed write makes
        asyncio drop what the kernel held: the end of streams the server completed is
        lost. Draining first keeps those bytes safe in memory, keeps the receive window
        open, and reveals a GOAWAY before more new streams go out. A read failure here
        is the connection's (stored for its streams), not this write's.
        """
        if not self._set_up:
            return  # reading SETTINGS now would race the stream limits being set up
        for _ in range(_DRAIN_READS):
            if not self._readable():
                return
            try:
                await self._receive_events(request, poll=True)
            except Exception as exc:
                forget_traceback(exc)
                return

    async def _flush_quietly(self, request: httpcore.Request, *, reading: bool = False) -> None:
        """Write what reading queued (credit, acks, the GOAWAY probe); a dead peer is no error.

        A server may close (even reset) the connection right after the last stream it
        kept: failing to write then must not fail a stream whose data is read already
        or still queued; a dead connection fails the reads once they are drained.
        """
        try:
            await self._write_outgoing_data(request, reading=reading)
        except httpcore.WriteError as exc:
            forget_traceback(exc)

    async def _response_closed(self, stream_id: int) -> None:
        request = self._streams.forget(stream_id)
        if request is not None and self._may_write() and self._streams.cancel(stream_id):
            try:
                await self._write_outgoing_data(request)
            except Exception as exc:  # the connection failed; its streams will see it
                forget_traceback(exc)
        await super()._response_closed(stream_id)

    def _may_write(self) -> bool:
        return not self._connection_error and not self.is_closed()


class GracefulHTTP2Connection(httpcore.HTTP2Connection):
    """Sync :class:`AsyncGracefulHTTP2Connection`."""

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: httpcore.NetworkStream,
        keepalive_expiry: float | None = None,
    ) -> None:
        """Create the connection over an open network stream (as httpcore's)."""
        super().__init__(origin, stream, keepalive_expiry)
        self._graceful = GracefulH2Connection(config=self.CONFIG, threads=True)
        self._h2_state = self._graceful
        self._streams = _Streams(self._graceful)

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on a new stream (ConnectionNotAvailable after a GOAWAY).

        Unlike the async class, nothing is read before writing: a failed write leaves
        what a socket received readable, and reading while other threads send would
        race them on the h2 state (httpcore's sync HTTP/2 has no lock around it).
        """
        if self._graceful.goaway_last_stream_id is not None:
            raise httpcore.ConnectionNotAvailable
        return super().handle_request(request)

    def is_available(self) -> bool:
        """Whether new streams may go out here (never after a GOAWAY)."""
        return self._graceful.goaway_last_stream_id is None and super().is_available()

    def _not_available(self) -> httpcore.ConnectionNotAvailable:
        self._request_count -= 1
        return httpcore.ConnectionNotAvailable()

    def _send_request_headers(self, request: httpcore.Request, stream_id: int) -> None:
        if self._graceful.goaway_last_stream_id is not None:
            raise self._not_available()
        self._streams.requests[stream_id] = request
        try:
            super()._send_request_headers(request, stream_id)
        except h2.exceptions.StreamIDTooLowError:
            raise self._not_available() from None  # a later stream went first: resend

    def _wait_for_outgoing_flow(self, request: httpcore.Request, stream_id: int) -> int:
        # Adapted from httpcore 1.0.9 (see the async class).
        while True:
            if self._streams.above_goaway(stream_id):
                raise self._not_available()  # its body would be ignored: resend it
            state = self._graceful
            flow = min(state.local_flow_control_window(stream_id), state.max_outbound_frame_size)
            if flow:
                return flow
            self._receive_events(request, flow_for=stream_id)

    def _send_end_stream(self, request: httpcore.Request, stream_id: int) -> None:
        if self._streams.above_goaway(stream_id):
            raise self._not_available()
        super()._send_end_stream(request, stream_id)

    def _receive_stream_event(
        self, request: httpcore.Request, stream_id: int
    ) -> h2.events.ResponseReceived | h2.events.DataReceived | h2.events.StreamEnded:
        # Adapted from httpcore 1.0.9 (see the async class).
        while not self._events.get(stream_id):
            self._receive_events(request, stream_id)
        event = self._events[stream_id].pop(0)
        if isinstance(event, h2.events.StreamReset):
            if self._streams.resend_after_reset(stream_id, event):
                raise self._not_available()
            raise httpcore.RemoteProtocolError(event)
        return event

    def _receive_events(
        self,
        request: httpcore.Request,
        stream_id: int | None = None,
        *,
        flow_for: int | None = None,
    ) -> None:
        # Adapted from httpcore 1.0.9 (see the async class).
        with self._read_lock:
            if self._streams.unprocessed(stream_id or flow_for, self._events):
                raise self._not_available()
            if stream_id is None or not self._events.get(stream_id):
                for event in self._read_incoming_data(request):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        with Trace("receive_remote_settings", _log, request) as trace:
                            self._receive_remote_settings_change(event)
                            trace.return_value = event
                    elif isinstance(event, _STREAM_EVENTS):
                        self._streams.note(event, self._events)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self._connection_terminated = event
        self._flush_quietly(request)

    def _receive_response_body(self, request: httpcore.Request, stream_id: int) -> Iterator[bytes]:
        # Adapted from httpcore 1.0.9 (see the async class).
        while True:
            event = self._receive_stream_event(request, stream_id)
            if isinstance(event, h2.events.DataReceived):
                self._graceful.acknowledge_received_data(event.flow_controlled_length, stream_id)
                self._flush_quietly(request)
                yield event.data
            elif isinstance(event, h2.events.StreamEnded):
                break

    def _read_incoming_data(self, request: httpcore.Request) -> list[h2.events.Event]:
        # Adapted from httpcore 1.0.9 (see the async class).
        if self._read_exception is not None or not self._graceful.probe_due():
            return super()._read_incoming_data(request)
        try:
            data = self._network_stream.read(self.READ_NUM_BYTES, _PROBE_AFTER)
        except httpcore.ReadTimeout:
            self._graceful.probe()
            self._flush_quietly(request)
            return super()._read_incoming_data(request)
        except Exception as exc:
            self._read_exception = exc
            self._connection_error = True
            raise
        if not data:
            return super()._read_incoming_data(request)
        return self._graceful.receive_data(data)

    def _flush_quietly(self, request: httpcore.Request) -> None:
        """Sync :meth:`AsyncGracefulHTTP2Connection._flush_quietly`."""
        try:
            self._write_outgoing_data(request)
        except httpcore.WriteError as exc:
            forget_traceback(exc)

    def _response_closed(self, stream_id: int) -> None:
        request = self._streams.forget(stream_id)
        if request is not None and self._may_write() and self._streams.cancel(stream_id):
            try:
                self._write_outgoing_data(request)
            except Exception as exc:  # the connection failed; its streams will see it
                forget_traceback(exc)
        super()._response_closed(stream_id)

    def _may_write(self) -> bool:
        return not self._connection_error and not self.is_closed()


# -- connections, pools and transports that build the graceful HTTP/2 connection ----------


def _speaks_h2(stream: httpcore.AsyncNetworkStream | httpcore.NetworkStream, *, http1: bool,
               http2: bool) -> bool:  # fmt: skip
    """Whether a fresh connection speaks HTTP/2: ALPN chose it, or prior knowledge."""
    ssl_object = stream.get_extra_info("ssl_object")
    negotiated = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
    return negotiated or (http2 and not http1)


class _AsyncConnection(httpcore.AsyncHTTPConnection):
    """httpcore's connection (connect, TLS, ALPN) building our HTTP/2 connection."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Connect on first use, then send ``request`` over HTTP/1.1 or HTTP/2."""
        # Adapted from httpcore 1.0.9: the HTTP/2 connection class is ours.
        if not self.can_handle_request(request.url.origin):
            msg = (
                f"Attempted to send request to {request.url.origin} on connection to {self._origin}"
            )
            raise RuntimeError(msg)
        try:
            async with self._request_lock:
                connection = self._connection
                if connection is None:
                    stream = await self._connect(request)
                    expiry = self._keepalive_expiry
                    if _speaks_h2(stream, http1=self._http1, http2=self._http2):
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
        if not self.can_handle_request(request.url.origin):
            msg = (
                f"Attempted to send request to {request.url.origin} on connection to {self._origin}"
            )
            raise RuntimeError(msg)
        try:
            with self._request_lock:
                connection = self._connection
                if connection is None:
                    stream = self._connect(request)
                    expiry = self._keepalive_expiry
                    if _speaks_h2(stream, http1=self._http1, http2=self._http2):
                        connection = GracefulHTTP2Connection(self._origin, stream, expiry)
                    else:
                        connection = httpcore.HTTP11Connection(self._origin, stream, expiry)
                    self._connection = connection
        except BaseException:
            self._connect_failed = True
            raise
        return connection.handle_request(request)


class _AsyncPool(httpcore.AsyncConnectionPool):
    """httpcore's pool whose direct connections are :class:`_AsyncConnection`."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        """A new connection to ``origin`` (not connected yet)."""
        if self._proxy is not None:  # httpx gives proxies their own transports
            return super().create_connection(origin)
        return _AsyncConnection(
            origin=origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_expiry,
            http1=self._http1, http2=self._http2, retries=self._retries,
            local_address=self._local_address, uds=self._uds,
            network_backend=self._network_backend, socket_options=self._socket_options,
        )  # fmt: skip


class _Pool(httpcore.ConnectionPool):
    """Sync :class:`_AsyncPool`."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        """A new connection to ``origin`` (not connected yet)."""
        if self._proxy is not None:
            return super().create_connection(origin)
        return _Connection(
            origin=origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_expiry,
            http1=self._http1, http2=self._http2, retries=self._retries,
            local_address=self._local_address, uds=self._uds,
            network_backend=self._network_backend, socket_options=self._socket_options,
        )  # fmt: skip


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


# -- closing -----------------------------------------------------------------------------


async def aclose_response(response: httpx.Response, chunks: Any = None) -> None:
    """Close a streamed response and its started byte iterator ``chunks``, if any.

    An HTTP/2 stream closed before its end is reset (RST_STREAM CANCEL) by
    :class:`AsyncGracefulHTTP2Connection` as it is released.
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
    session's connector); returns what it finds, ``[]`` when the layout differs.
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
