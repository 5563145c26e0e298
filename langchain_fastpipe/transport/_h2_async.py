"""The async graceful HTTP/2 connection: httpcore's, with our GOAWAY/reset behaviour.

:class:`AsyncGracefulHTTP2Connection` does the reads, writes and awaits around the
decisions of :class:`~._h2_core.GracefulCore` (shared with the sync twin in
:mod:`._h2_sync`). Its own concern is reading before writing (``_read_first``): anyio
reads a socket only while a stream waits for data, and a connection reset by the server
otherwise loses the end of streams the server already sent.
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Callable
from typing import Final

import h2.events
import h2.exceptions
import httpcore
from httpcore._trace import Trace

from langchain_fastpipe.transport._h2_core import LOG, GracefulCore
from langchain_fastpipe.transport._retry import forget_traceback

__all__ = ["AsyncGracefulHTTP2Connection"]

#: Reads, at most, that drain the socket before a write (``_read_first``).
_DRAIN_READS: Final = 32


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


class AsyncGracefulHTTP2Connection(GracefulCore, httpcore.AsyncHTTP2Connection):
    """httpcore's async HTTP/2 connection, graceful on GOAWAY (see :mod:`._h2`)."""

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: httpcore.AsyncNetworkStream,
        keepalive_expiry: float | None = None,
    ) -> None:
        """Create the connection over an open network stream (as httpcore's)."""
        super().__init__(origin, stream, keepalive_expiry)
        self._adopt_graceful_state(threads=False)
        self._set_up = False
        self._readable = _readability(stream)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on a new stream (ConnectionNotAvailable after a GOAWAY)."""
        await self._read_first(request)  # a GOAWAY that arrived is seen before sending
        if self._goaway_received() or self._connection_error:
            raise httpcore.ConnectionNotAvailable
        return await super().handle_async_request(request)

    def is_available(self) -> bool:
        """Whether new streams may go out here (never after a GOAWAY)."""
        return not self._goaway_received() and super().is_available()

    async def _send_request_headers(self, request: httpcore.Request, stream_id: int) -> None:
        self._open_stream(request, stream_id)  # no await before this
        self._set_up = True  # the preface and the stream limits are in place
        try:
            await super()._send_request_headers(request, stream_id)
        except h2.exceptions.StreamIDTooLowError:
            raise self._not_available() from None  # a later stream went first: resend

    async def _wait_for_outgoing_flow(self, request: httpcore.Request, stream_id: int) -> int:
        # Adapted from httpcore 1.0.9: waits with ``flow_for`` (see _outgoing_flow).
        while not (flow := self._outgoing_flow(stream_id)):
            await self._receive_events(request, flow_for=stream_id)
        return flow

    async def _send_end_stream(self, request: httpcore.Request, stream_id: int) -> None:
        self._resend_if_above_goaway(stream_id)
        await super()._send_end_stream(request, stream_id)

    async def _receive_stream_event(
        self, request: httpcore.Request, stream_id: int
    ) -> h2.events.ResponseReceived | h2.events.DataReceived | h2.events.StreamEnded:
        # Adapted from httpcore 1.0.9: a reset stream may be resent.
        while not self._events.get(stream_id):
            await self._receive_events(request, stream_id)
        return self._next_event(stream_id)

    async def _receive_events(
        self,
        request: httpcore.Request,
        stream_id: int | None = None,
        *,
        flow_for: int | None = None,
        poll: bool = False,
    ) -> None:
        # Adapted from httpcore 1.0.9: after a GOAWAY, streams up to its last_stream_id
        # keep reading; one above it (``stream_id``, or ``flow_for`` waiting for credit)
        # is resent. ``poll``: read only if the socket (still) holds bytes, and leave
        # the flush to the caller.
        async with self._read_lock:
            self._resend_if_unprocessed(stream_id or flow_for)
            if poll and not self._readable():
                return
            if stream_id is None or not self._events.get(stream_id):
                events = await self._read_incoming_data(request, poll=poll)
                for event in self._queue_events(events):
                    async with Trace("receive_remote_settings", LOG, request) as trace:
                        await self._receive_remote_settings_change(event)
                        trace.return_value = event
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
        # Adapted from httpcore 1.0.9 (under the read lock): see _probe_wait.
        timeout = self._probe_wait(poll=poll)
        if timeout is None:
            return await super()._read_incoming_data(request)
        try:
            data = await self._network_stream.read(self.READ_NUM_BYTES, timeout)
        except httpcore.ReadTimeout:
            if poll:
                return []  # no frame in what was readable: no error
            self._graceful.probe()
            await self._flush_quietly(request, reading=True)
            return await super()._read_incoming_data(request)
        except Exception as exc:
            self._read_failed(exc)
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
        request = self._cancel_on_close(stream_id)  # RST_STREAM(CANCEL) if still open
        if request is not None:
            try:
                await self._write_outgoing_data(request)
            except Exception as exc:  # the connection failed; its streams will see it
                forget_traceback(exc)
        await super()._response_closed(stream_id)
