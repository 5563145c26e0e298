"""A small h2c (HTTP/2 over cleartext TCP) server on 127.0.0.1 for the ``"h2"`` engine's tests.

Built on h2's server side; the behaviour of each request is chosen by its ``:path``:

``/big/<n>``
    200 and ``n`` bytes of ``x``.
``/gather/<count>/<n>``
    Held until ``count`` such requests arrived on the connection, then 200 and ``n``
    bytes each, sent round-robin in 16 KiB frames as the flow-control windows allow.
``/barrier/<count>``
    Held until ``count`` streams are open at once on the connection, then all answered.
``/early``
    413 with END_STREAM at once: the request body is neither read nor reset.
``/echo``
    200 and the request body's length, once the body ended.
``/empty``
    204.
``/gzip/<n>``
    200, ``content-encoding: gzip``, ``n`` bytes of ``x`` compressed.
``/headers``
    200 and the request headers as a JSON object.
``/reset/<code>``
    RST_STREAM(``code``) before any response header.
``/reset-after/<code>``
    200, 10 bytes, then RST_STREAM(``code``).
``/raise-limit/<limit>``
    SETTINGS_MAX_CONCURRENT_STREAMS raised to ``limit``, then 204.

Options (keyword arguments of :class:`H2TestServer`): ``settings`` (the server's
initial SETTINGS), ``hold_body`` (never acknowledge request DATA), ``goaway_at_once``
(SETTINGS then GOAWAY(last_stream_id=0) on every connection), ``no_settings_ack`` (never
acknowledge the client's SETTINGS).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import SettingsFrame

__all__ = ["H2TestServer"]

_FRAME: int = 16384


class _NoAckConnection(h2.connection.H2Connection):
    """h2's server side that never acknowledges the client's SETTINGS."""

    def _receive_settings_frame(self, frame: Any) -> Any:
        frames, events = super()._receive_settings_frame(frame)
        kept = [f for f in frames if not (isinstance(f, SettingsFrame) and "ACK" in f.flags)]
        return kept, events


class _Proto(asyncio.Protocol):
    def __init__(self, server: H2TestServer) -> None:
        self.server = server
        self.opts = server.opts
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        cls = _NoAckConnection if self.opts.get("no_settings_ack") else h2.connection.H2Connection
        self.conn = cls(config=config)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, bytes] = {}  # stream -> body bytes still to send
        self.bodies: dict[int, int] = {}  # stream -> request body bytes received
        self.paths: dict[int, str] = {}
        self.gather: list[tuple[int, int]] = []
        self.barrier: list[int] = []

    # -- plumbing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server.protos.append(self)
        settings = self.opts.get("settings")
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.conn.initiate_connection()
        if self.opts.get("goaway_at_once"):
            self.conn.close_connection(last_stream_id=0)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.server.errors.append(str(exc))
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = {k.decode(): v.decode() for k, v in event.headers or ()}
                self.server.requests.append(headers)
                self.paths[event.stream_id] = headers[":path"]
                self.on_request(event.stream_id, headers)
            elif isinstance(event, h2.events.DataReceived):
                sid = event.stream_id
                self.bodies[sid] = self.bodies.get(sid, 0) + len(event.data or b"")
                if not self.opts.get("hold_body"):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded):
                if self.paths.get(event.stream_id) == "/echo":
                    size = str(self.bodies.get(event.stream_id, 0)).encode()
                    self.conn.send_headers(event.stream_id, [(b":status", b"200")])
                    self.conn.send_data(event.stream_id, size, end_stream=True)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                changed = {int(k): v.new_value for k, v in event.changed_settings.items()}
                self.server.client_settings.append(changed)
            elif isinstance(event, h2.events.StreamReset):
                self.server.resets.append((event.stream_id, int(event.error_code or 0)))
                self.pending.pop(event.stream_id, None)
        self.pump()

    # -- behaviours

    def on_request(self, sid: int, headers: dict[str, str]) -> None:
        parts = headers[":path"].strip("/").split("/")
        kind, args = parts[0], parts[1:]
        conn = self.conn
        if kind == "big":
            conn.send_headers(sid, [(b":status", b"200")])
            self.pending[sid] = b"x" * int(args[0])
        elif kind == "gather":
            self.gather.append((sid, int(args[1])))
            if len(self.gather) >= int(args[0]):
                for stream_id, size in self.gather:
                    conn.send_headers(stream_id, [(b":status", b"200")])
                    self.pending[stream_id] = b"x" * size
                self.gather.clear()
        elif kind == "barrier":
            self.barrier.append(sid)
            if len(self.barrier) >= int(args[0]):
                self.server.max_open = max(self.server.max_open, len(self.barrier))
                for stream_id in self.barrier:
                    conn.send_headers(stream_id, [(b":status", b"200")])
                    conn.send_data(stream_id, b"ok", end_stream=True)
                self.barrier.clear()
        elif kind == "early":
            conn.send_headers(sid, [(b":status", b"413")])
            conn.send_data(sid, b"too big", end_stream=True)
        elif kind == "echo":
            pass  # answered at the body's end
        elif kind == "empty":
            conn.send_headers(sid, [(b":status", b"204")], end_stream=True)
        elif kind == "gzip":
            body = gzip.compress(b"x" * int(args[0]))
            conn.send_headers(sid, [(b":status", b"200"), (b"content-encoding", b"gzip")])
            self.pending[sid] = body
        elif kind == "headers":
            body = json.dumps(headers).encode()
            conn.send_headers(sid, [(b":status", b"200")])
            conn.send_data(sid, body, end_stream=True)
        elif kind == "reset":
            conn.reset_stream(sid, h2.errors.ErrorCodes(int(args[0])))
        elif kind == "reset-after":
            conn.send_headers(sid, [(b":status", b"200")])
            conn.send_data(sid, b"0123456789")
            conn.reset_stream(sid, h2.errors.ErrorCodes(int(args[0])))
        elif kind == "raise-limit":
            conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: int(args[0])})
            conn.send_headers(sid, [(b":status", b"204")], end_stream=True)
        else:
            conn.send_headers(sid, [(b":status", b"404")], end_stream=True)

    def pump(self) -> None:
        """Send pending bodies round-robin in 16 KiB frames while the windows allow."""
        conn = self.conn
        progress = True
        while progress and self.pending:
            progress = False
            for sid in list(self.pending):
                body = self.pending[sid]
                try:
                    window = conn.local_flow_control_window(sid)
                except h2.exceptions.ProtocolError:
                    del self.pending[sid]
                    continue
                size = min(window, conn.max_outbound_frame_size, _FRAME, len(body))
                if size <= 0:
                    continue
                conn.send_data(sid, body[:size], end_stream=size == len(body))
                progress = True
                if size == len(body):
                    del self.pending[sid]
                else:
                    self.pending[sid] = body[size:]
        self.flush()


class H2TestServer:
    """An h2c server on 127.0.0.1 (``async with``); see the module docstring.

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        connections: Connections accepted.
        requests: Every request's headers (pseudo-headers included), in arrival order.
        client_settings: The settings of each SETTINGS frame the clients sent.
        resets: ``(stream_id, error_code)`` of every RST_STREAM received.
        errors: h2 protocol errors raised by what the clients sent.
        max_open: The most streams a ``/barrier`` saw open at once.
    """

    def __init__(self, **opts: Any) -> None:
        self.opts = opts
        self.url = ""
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self.client_settings: list[dict[int, int]] = []
        self.resets: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.max_open = 0
        self.protos: list[_Proto] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> H2TestServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Proto(self), "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for proto in self.protos:
            if proto.transport is not None:
                proto.transport.abort()
        await self._server.wait_closed()
