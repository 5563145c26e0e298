"""The sync graceful HTTP/2 connection: the twin of :mod:`._h2_async`, without awaits.

:class:`GracefulHTTP2Connection` does the blocking reads and writes around the decisions
of :class:`~._h2_core.GracefulCore`. Unlike the async twin it reads nothing before
writing, and its h2 state is locked (httpcore's sync connection serves many threads).
"""

from __future__ import annotations

from collections.abc import Iterator

import h2.events
import h2.exceptions
import httpcore
from httpcore._trace import Trace

from langchain_fastpipe.transport._h2_core import LOG, GracefulCore
from langchain_fastpipe.transport._retry import forget_traceback

__all__ = ["GracefulHTTP2Connection"]


class GracefulHTTP2Connection(GracefulCore, httpcore.HTTP2Connection):
    """Sync :class:`~._h2_async.AsyncGracefulHTTP2Connection`."""

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: httpcore.NetworkStream,
        keepalive_expiry: float | None = None,
    ) -> None:
        """Create the connection over an open network stream (as httpcore's)."""
        super().__init__(origin, stream, keepalive_expiry)
        self._adopt_graceful_state(threads=True)

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on a new stream (ConnectionNotAvailable after a GOAWAY).

        Unlike the async twin, nothing is read before writing: a failed write leaves
        what a socket received readable, and reading while other threads send would
        race them on the h2 state (httpcore's sync HTTP/2 has no lock around it).
        """
        if self._goaway_received():
            raise httpcore.ConnectionNotAvailable
        return super().handle_request(request)

    def is_available(self) -> bool:
        """Whether new streams may go out here (never after a GOAWAY)."""
        return not self._goaway_received() and super().is_available()

    def _send_request_headers(self, request: httpcore.Request, stream_id: int) -> None:
        self._open_stream(request, stream_id)
        try:
            super()._send_request_headers(request, stream_id)
        except h2.exceptions.StreamIDTooLowError:
            raise self._not_available() from None  # a later stream went first: resend

    def _wait_for_outgoing_flow(self, request: httpcore.Request, stream_id: int) -> int:
        # Adapted from httpcore 1.0.9 (see the async twin).
        while not (flow := self._outgoing_flow(stream_id)):
            self._receive_events(request, flow_for=stream_id)
        return flow

    def _send_end_stream(self, request: httpcore.Request, stream_id: int) -> None:
        self._resend_if_above_goaway(stream_id)
        super()._send_end_stream(request, stream_id)

    def _receive_stream_event(
        self, request: httpcore.Request, stream_id: int
    ) -> h2.events.ResponseReceived | h2.events.DataReceived | h2.events.StreamEnded:
        # Adapted from httpcore 1.0.9 (see the async twin).
        while not self._events.get(stream_id):
            self._receive_events(request, stream_id)
        return self._next_event(stream_id)

    def _receive_events(
        self,
        request: httpcore.Request,
        stream_id: int | None = None,
        *,
        flow_for: int | None = None,
    ) -> None:
        # Adapted from httpcore 1.0.9 (see the async twin).
        with self._read_lock:
            self._resend_if_unprocessed(stream_id or flow_for)
            if stream_id is None or not self._events.get(stream_id):
                for event in self._queue_events(self._read_incoming_data(request)):
                    with Trace("receive_remote_settings", LOG, request) as trace:
                        self._receive_remote_settings_change(event)
                        trace.return_value = event
        self._flush_quietly(request)

    def _receive_response_body(self, request: httpcore.Request, stream_id: int) -> Iterator[bytes]:
        # Adapted from httpcore 1.0.9 (see the async twin).
        while True:
            event = self._receive_stream_event(request, stream_id)
            if isinstance(event, h2.events.DataReceived):
                self._graceful.acknowledge_received_data(event.flow_controlled_length, stream_id)
                self._flush_quietly(request)
                yield event.data
            elif isinstance(event, h2.events.StreamEnded):
                break

    def _read_incoming_data(self, request: httpcore.Request) -> list[h2.events.Event]:
        # Adapted from httpcore 1.0.9 (see the async twin).
        timeout = self._probe_wait()
        if timeout is None:
            return super()._read_incoming_data(request)
        try:
            data = self._network_stream.read(self.READ_NUM_BYTES, timeout)
        except httpcore.ReadTimeout:
            self._graceful.probe()
            self._flush_quietly(request)
            return super()._read_incoming_data(request)
        except Exception as exc:
            self._read_failed(exc)
            raise
        if not data:
            return super()._read_incoming_data(request)
        return self._graceful.receive_data(data)

    def _flush_quietly(self, request: httpcore.Request) -> None:
        """Sync :meth:`~._h2_async.AsyncGracefulHTTP2Connection._flush_quietly`."""
        try:
            self._write_outgoing_data(request)
        except httpcore.WriteError as exc:
            forget_traceback(exc)

    def _response_closed(self, stream_id: int) -> None:
        request = self._cancel_on_close(stream_id)  # RST_STREAM(CANCEL) if still open
        if request is not None:
            try:
                self._write_outgoing_data(request)
            except Exception as exc:  # the connection failed; its streams will see it
                forget_traceback(exc)
        super()._response_closed(stream_id)
