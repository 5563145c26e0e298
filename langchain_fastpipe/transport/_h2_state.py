"""h2's connection state machine, graceful on a received GOAWAY (no I/O, no httpcore).

h2 moves its state machine to CLOSED the moment it *receives* a GOAWAY
(python-hyper/h2#1181), so the DATA that follows for the streams the server is still
completing raises ``ProtocolError``. RFC 9113 section 6.8 says the server completes the
streams up to the GOAWAY's ``last_stream_id``. :class:`GracefulH2Connection` owns that
at h2's level, and the two other things the HTTP/2 connections need of h2 itself:
stream ids reserved per request, and a lock for httpcore's threaded sync connection.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

if TYPE_CHECKING:
    from hyperframe.frame import Frame, GoAwayFrame

__all__ = ["GracefulH2Connection"]

_GOAWAY_PING: Final = b"fp-goawy"  # opaque data of the PING probe sent after a GOAWAY


def _error_code(code: int) -> h2.errors.ErrorCodes | int:
    """The ErrorCodes member of ``code``, or ``code`` itself when it is unknown."""
    try:
        return h2.errors.ErrorCodes(code)
    except ValueError:
        return code


class GracefulH2Connection(h2.connection.H2Connection):
    """h2's connection, with RFC 9113 section 6.8 semantics for a received GOAWAY.

    The GOAWAY only records its ``last_stream_id`` and yields the usual
    ``ConnectionTerminated`` event (h2 would close the state machine); the outbound
    buffer is kept (flow-control credit and resets still matter to the streams the
    server completes) and new streams are refused. :meth:`probe` queues a PING for a
    server silent since.

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

    # Every other entry point httpcore and the connections use, under the lock.

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
