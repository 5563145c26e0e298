"""What the async and sync graceful HTTP/2 connections decide, once, without I/O.

httpcore has an async and a sync HTTP/2 connection with the same logic; so do we
(:mod:`._h2_async`, :mod:`._h2_sync`). Their shared part lives here, in
:class:`GracefulCore`, a mixin of both over httpcore's connection attributes: which
streams a GOAWAY kept and which must be resent, REFUSED_STREAM resends, the queueing of
stream events read, the reset of a stream closed early, when to probe a silent server.
The twins keep only the reads, writes and awaits around these calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Final, Union

import h2.errors
import h2.events
import httpcore

from langchain_fastpipe.transport._h2_state import GracefulH2Connection

if TYPE_CHECKING:
    import h2.config
    import h2.connection

__all__ = [
    "LOG",
    "PROBE_AFTER",
    "REFUSED_RESENDS",
    "GracefulCore",
    "StreamEvent",
]

#: REFUSED_STREAM resets in a row on one connection that are resent transparently; past
#: that the refusal is reported (the pool's replays and retries take over, with backoff).
REFUSED_RESENDS: Final = 3

#: Seconds of silence, after a GOAWAY while streams it kept are open, before the probe.
#: A live server is not harmed by it; a stalled one is found well before a read timeout.
PROBE_AFTER: Final = 0.25

#: How long a polling read (the async twin's ``_read_first``) waits for a frame.
_POLL_READ: Final = 0.05

LOG = logging.getLogger("httpcore.http2")  # httpcore's logger: the traces stay alike

StreamEvent = Union[  # noqa: UP007 - httpcore's own alias style, readable in 3.10
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
_NO_SETTINGS: Final[tuple[h2.events.RemoteSettingsChanged, ...]] = ()


class GracefulCore:
    """The I/O-free half of :class:`~._h2_async.AsyncGracefulHTTP2Connection` and its twin.

    Mixed in before httpcore's connection class; :meth:`_adopt_graceful_state` (from the
    twin's ``__init__``) puts a :class:`GracefulH2Connection` in httpcore's place. The
    ``_resend_*`` methods raise httpcore's ``ConnectionNotAvailable`` (through
    :meth:`_not_available`), which makes httpcore's pool send the request again on
    another connection; nothing is resent once its response headers arrived.

    Attributes:
        _graceful: The connection's h2 state (also httpcore's ``_h2_state``).
        _answered: Streams whose response headers arrived (never resent).
        _requests: The request of each stream that sent headers (for closing writes).
        _refused: REFUSED_STREAM resets since the last response headers.
    """

    _graceful: GracefulH2Connection
    _answered: set[int]
    _requests: dict[int, httpcore.Request]
    _refused: int

    if TYPE_CHECKING:  # what the core uses of httpcore's HTTP/2 connections (both alike)
        CONFIG: ClassVar[h2.config.H2Configuration]
        _h2_state: h2.connection.H2Connection
        _events: dict[int, list[StreamEvent]]
        _request_count: int
        _connection_error: bool
        _connection_terminated: h2.events.ConnectionTerminated | None
        _read_exception: Exception | None

        def is_closed(self) -> bool: ...

    def _adopt_graceful_state(self, *, threads: bool) -> None:
        """Replace httpcore's h2 state by a :class:`GracefulH2Connection` (in ``__init__``)."""
        self._graceful = GracefulH2Connection(config=self.CONFIG, threads=threads)
        self._h2_state = self._graceful
        self._answered = set()
        self._requests = {}
        self._refused = 0

    # -- new streams

    def _goaway_received(self) -> bool:
        """Whether a GOAWAY was received: no new stream goes out on this connection."""
        return self._graceful.goaway_last_stream_id is not None

    def _not_available(self) -> httpcore.ConnectionNotAvailable:
        """The error that has httpcore's pool send the request on another connection."""
        self._request_count -= 1
        return httpcore.ConnectionNotAvailable()

    def _open_stream(self, request: httpcore.Request, stream_id: int) -> None:
        """Record ``request`` on ``stream_id`` before its headers go out (none after a GOAWAY).

        The twins call it before any await: until the headers are queued, another
        request would be given the same stream id.
        """
        if self._goaway_received():
            raise self._not_available()  # the stream id was taken, the stream never sent
        self._requests[stream_id] = request

    # -- streams above a GOAWAY's last_stream_id: never processed, resent

    def _above_goaway(self, stream_id: int) -> bool:
        """Whether a received GOAWAY says the server never processed ``stream_id``."""
        last = self._graceful.goaway_last_stream_id
        return last is not None and stream_id > last

    def _resend_if_above_goaway(self, stream_id: int) -> None:
        """Resend ``stream_id``'s request if the server will ignore the rest of its body."""
        if self._above_goaway(stream_id):
            raise self._not_available()

    def _resend_if_unprocessed(self, stream_id: int | None) -> None:
        """Before a read for ``stream_id``: resend it if it waits for nothing (above GOAWAY).

        The twins call it under the read lock, so a GOAWAY read by another stream is
        always seen before reading again.
        """
        if (
            stream_id is not None
            and self._above_goaway(stream_id)
            and stream_id not in self._answered
            and not self._events.get(stream_id)
        ):
            raise self._not_available()

    def _outgoing_flow(self, stream_id: int) -> int:
        """The bytes ``stream_id`` may send now (0: wait for credit); resend above GOAWAY.

        Checked before each wait, so that a GOAWAY above the stream ends the wait (the
        server would never open its window).
        """
        self._resend_if_above_goaway(stream_id)
        state = self._graceful
        return min(state.local_flow_control_window(stream_id), state.max_outbound_frame_size)

    # -- events read

    def _queue_events(
        self, events: list[h2.events.Event]
    ) -> Sequence[h2.events.RemoteSettingsChanged]:
        """Queue the stream events of one read; the settings changes the twin must apply.

        Events of closed streams are dropped; a ``ConnectionTerminated`` (GOAWAY) is
        stored for httpcore. The settings changes are applied by the twin after the
        stream events of the same read are queued.
        """
        settings: list[h2.events.RemoteSettingsChanged] | None = None
        queues = self._events
        for event in events:
            if isinstance(event, _STREAM_EVENTS):
                stream_id = event.stream_id
                queue = queues.get(stream_id) if stream_id is not None else None
                if queue is None or stream_id is None:
                    continue
                queue.append(event)
                if isinstance(event, h2.events.ResponseReceived):
                    self._answered.add(stream_id)
                    self._refused = 0
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if settings is None:
                    settings = []
                settings.append(event)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._connection_terminated = event
        return _NO_SETTINGS if settings is None else settings

    def _next_event(
        self, stream_id: int
    ) -> h2.events.ResponseReceived | h2.events.DataReceived | h2.events.StreamEnded:
        """Pop ``stream_id``'s next queued event; a reset is resent or reported."""
        event = self._events[stream_id].pop(0)
        if isinstance(event, h2.events.StreamReset):
            if self._resend_after_reset(stream_id, event):
                raise self._not_available()
            raise httpcore.RemoteProtocolError(event)
        return event

    def _resend_after_reset(self, stream_id: int, event: h2.events.StreamReset) -> bool:
        """Whether a reset stream is resent (False: the reset is reported).

        Only before its response headers: above a GOAWAY's ``last_stream_id``, or
        refused (REFUSED_STREAM, at most :data:`REFUSED_RESENDS` in a row).
        """
        if stream_id in self._answered:
            return False
        if self._above_goaway(stream_id):
            return True
        if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and (
            self._refused < REFUSED_RESENDS
        ):
            self._refused += 1
            return True
        return False

    def _probe_wait(self, *, poll: bool = False) -> float | None:
        """The timeout of a read of ours, or None when httpcore's own read applies.

        After a GOAWAY, a server silent for :data:`PROBE_AFTER` while streams it kept
        are open gets the PING probe. ``poll`` (async only): the socket was readable,
        but its bytes may hold no frame (a TLS session ticket), so wait only briefly.
        """
        if self._read_exception is not None:
            return None
        if poll:
            return _POLL_READ
        return PROBE_AFTER if self._graceful.probe_due() else None

    def _read_failed(self, exc: Exception) -> None:
        """Store a failed read as httpcore does: every later read of the connection fails."""
        self._read_exception = exc
        self._connection_error = True

    # -- closing

    def _cancel_on_close(self, stream_id: int) -> httpcore.Request | None:
        """Forget a closed stream; queue RST_STREAM(CANCEL) if it was still open.

        Returns the request to write the reset with (None: nothing to write). A stream
        above a GOAWAY's ``last_stream_id`` is left alone: the server never processed it.
        """
        self._answered.discard(stream_id)
        request = self._requests.pop(stream_id, None)
        if (
            request is None
            or self._connection_error
            or self.is_closed()
            or self._above_goaway(stream_id)
            or not self._graceful.cancel(stream_id)
        ):
            return None
        return request
