"""transport/_h2*.py against scripted in-memory HTTP/2 servers (h2, server side).

Each connection the client opens gets a :class:`Wire`: an ``h2`` server connection fed
the client's bytes, whose frames the test script queues as separate chunks (one client
read each), so frames arrive one by one, in the order a real server would send them. The
client is the real thing: an httpx client over :func:`async_transport` /
:func:`sync_transport` with an in-memory httpcore network backend.

Nothing is timed: deadlines only stop a hang (a broken GOAWAY handling would wait for
frames that never come).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import httpcore
import httpx
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame

from langchain_fastpipe.transport import EndpointConfig, _h2
from langchain_fastpipe.transport._h2 import (
    REFUSED_RESENDS,
    WRITTEN_FOR,
    GracefulH2Connection,
    async_transport,
    sync_transport,
)

CONFIG = EndpointConfig(base_url="http://h2.test", http2_prior_knowledge=True)
DEADLINE = 30.0  # stops a hang only
NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM
CANCEL = h2.errors.ErrorCodes.CANCEL


# ------------------------------------------------------------------ in-memory servers


class Wire:
    """The server end of one in-memory connection, scripted by its :class:`Server`."""

    def __init__(self, server: Server, index: int) -> None:
        self.server = server
        self.index = index
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.chunks: deque[bytes] = deque()
        self.eof = False
        self.broken = False  # client writes fail (the peer is gone)
        # The next client write meets a reset: it fails, and what the client had not read
        # yet is gone (an asyncio transport force-closed by a failed write drops it).
        self.resets_on_write = False
        self.dead = False
        self.client_closed = False
        self.paths: dict[int, str] = {}
        self.ended: list[int] = []  # request streams, in the order their END_STREAM came
        self.resets: dict[int, int] = {}  # RST_STREAM codes the client sent
        self.pings = 0
        self.cond = threading.Condition()
        self.event: asyncio.Event | None = None
        self.h2.initiate_connection()
        self.flush()

    # client side
    def feed(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers or [])
                assert event.stream_id is not None
                self.paths[event.stream_id] = str(headers[":path"])
            elif isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id is not None
                self.ended.append(event.stream_id)
                self.server.on_request(self, event.stream_id, self.paths[event.stream_id])
            elif isinstance(event, h2.events.StreamReset):
                assert event.stream_id is not None
                self.resets[event.stream_id] = int(event.error_code or 0)
            elif isinstance(event, h2.events.PingReceived):
                self.pings += 1
                self.server.on_ping(self)
        self.flush()

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    # server side
    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.push(data)

    def push(self, data: bytes) -> None:
        with self.cond:
            self.chunks.append(data)
            self.cond.notify_all()
        if self.event is not None:
            self.event.set()

    def close(self) -> None:
        with self.cond:
            self.eof = True
            self.cond.notify_all()
        if self.event is not None:
            self.event.set()

    def answer(self, stream_id: int, body: str, *, end: bool = True) -> None:
        """Headers, then the body in two DATA frames (each its own chunk)."""
        self.h2.send_headers(stream_id, [(":status", "200")])
        self.flush()
        data = body.encode()
        self.h2.send_data(stream_id, data[:3])
        self.flush()
        self.h2.send_data(stream_id, data[3:], end_stream=end)
        self.flush()

    def goaway(self, last_stream_id: int, error_code: int = 0) -> None:
        """A GOAWAY written raw: h2's server side could send nothing after its own."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)
        self.push(frame.serialize())

    def refuse(self, stream_id: int) -> None:
        self.h2.reset_stream(stream_id, error_code=REFUSED)
        self.flush()


class Server:
    """Answers every request at once with ``<path>@<connection index>``."""

    def __init__(self) -> None:
        self.wires: list[Wire] = []

    def on_request(self, wire: Wire, stream_id: int, path: str) -> None:
        wire.answer(stream_id, f"{path}@{wire.index}")

    def on_ping(self, wire: Wire) -> None:
        pass

    def wire(self) -> Wire:
        wire = Wire(self, len(self.wires))
        self.wires.append(wire)
        return wire

    def seen(self, path: str) -> int:
        """How many times ``path`` was requested, over every connection."""
        return sum(list(w.paths.values()).count(path) for w in self.wires)


class AsyncMemoryStream(httpcore.AsyncNetworkStream):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        wire.event = asyncio.Event()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wire, event = self.wire, self.wire.event
        assert event is not None
        if wire.dead:
            raise httpcore.ReadError("connection reset")
        while not wire.chunks:
            if wire.eof:
                return b""
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except asyncio.TimeoutError:
                raise httpcore.ReadTimeout("read timed out") from None
        return wire.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return  # as anyio's: nothing reaches the socket
        if self.wire.resets_on_write:
            self.wire.chunks.clear()
            self.wire.dead = True
        if self.wire.broken or self.wire.dead:
            raise httpcore.WriteError("the peer is gone")
        self.wire.feed(buffer)

    async def aclose(self) -> None:
        self.wire.client_closed = True

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return bool(self.wire.chunks) or self.wire.eof
        return None


class MemoryStream(httpcore.NetworkStream):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wire = self.wire
        with wire.cond:
            if not wire.cond.wait_for(lambda: bool(wire.chunks) or wire.eof, timeout):
                raise httpcore.ReadTimeout("read timed out")
            return wire.take(max_bytes) if wire.chunks else b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self.wire.broken:
            raise httpcore.WriteError("the peer is gone")
        with self.wire.cond:  # one server, fed by many client threads
            self.wire.feed(buffer)

    def close(self) -> None:
        self.wire.client_closed = True

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return bool(self.wire.chunks) or self.wire.eof
        return None


class AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, server: Server) -> None:
        self.server = server

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return AsyncMemoryStream(self.server.wire())

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Backend(httpcore.NetworkBackend):
    def __init__(self, server: Server) -> None:
        self.server = server

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return MemoryStream(self.server.wire())

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError


def aclient(server: Server) -> httpx.AsyncClient:
    transport = async_transport(CONFIG, None, network_backend=AsyncBackend(server))
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None))


def client(server: Server) -> httpx.Client:
    transport = sync_transport(CONFIG, None, network_backend=Backend(server))
    return httpx.Client(transport=transport, timeout=httpx.Timeout(DEADLINE))  # hang guard


async def post_all(server: Server, paths: list[str]) -> list[str | BaseException]:
    async with aclient(server) as http:

        async def one(path: str) -> str:
            response = await http.post(f"http://h2.test{path}", content=b"{}")
            return response.text

        gathered = asyncio.gather(*(one(p) for p in paths), return_exceptions=True)
        return list(await asyncio.wait_for(gathered, DEADLINE))


PATHS = [f"/r{i}" for i in range(7)]  # streams 1..13 on the first connection


class GoawayAfterAll(Server):
    """Connection 0 waits for 7 requests, then GOAWAY(code, last), then answers streams
    up to ``answered_upto`` and closes; later connections answer at once."""

    def __init__(self, last: int, error_code: int = 0, answered_upto: int | None = None):
        super().__init__()
        self.last = last
        self.error_code = error_code
        self.answered_upto = last if answered_upto is None else answered_upto

    def on_request(self, wire: Wire, stream_id: int, path: str) -> None:
        if wire.index > 0:
            super().on_request(wire, stream_id, path)
            return
        if len(wire.ended) < len(PATHS):
            return
        wire.goaway(self.last, self.error_code)
        for sid in sorted(wire.ended):
            if sid <= self.answered_upto:
                wire.answer(sid, f"{wire.paths[sid]}@0")
        wire.close()


def kept_and_resent(server: Server, last: int) -> tuple[set[str], set[str]]:
    first = server.wires[0]
    kept = {p for sid, p in first.paths.items() if sid <= last}
    return kept, set(PATHS) - kept


# ------------------------------------------------------------------ GOAWAY


async def test_goaway_no_error_completes_kept_streams_and_resends_the_others() -> None:
    server = GoawayAfterAll(last=7)
    results = await post_all(server, PATHS)
    assert sorted(server.wires[0].paths) == [1, 3, 5, 7, 9, 11, 13]  # N-2..N+4 were open
    kept, resent = kept_and_resent(server, 7)
    assert len(kept) == 4
    assert len(resent) == 3
    expected = [f"{p}@0" if p in kept else f"{p}@1" for p in PATHS]
    assert results == expected  # full bodies, from the DATA frames after the GOAWAY
    assert len(server.wires) == 2
    assert sorted(server.wires[1].paths.values()) == sorted(resent)
    assert all(server.seen(p) == (2 if p in resent else 1) for p in PATHS)
    assert server.wires[0].client_closed  # drained, then closed
    assert server.wires[0].resets == {}  # nothing reset: every kept stream read to its end


async def test_goaway_with_error_fails_only_unfinished_kept_streams() -> None:
    server = GoawayAfterAll(last=7, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR, answered_upto=3)
    results = await post_all(server, PATHS)
    first = server.wires[0]
    by_stream = {sid: results[PATHS.index(path)] for sid, path in first.paths.items()}
    assert by_stream[1] == f"{first.paths[1]}@0"
    assert by_stream[3] == f"{first.paths[3]}@0"
    for sid in (5, 7):  # kept by the server, never finished: the connection ended
        assert isinstance(by_stream[sid], httpx.RemoteProtocolError)
    for sid in (9, 11, 13):  # never processed: resent on a new connection
        assert by_stream[sid] == f"{first.paths[sid]}@1"


async def test_goaway_last_stream_id_0_resends_everything() -> None:
    server = GoawayAfterAll(last=0)
    results = await post_all(server, PATHS)
    assert results == [f"{p}@1" for p in PATHS]
    assert all(server.seen(p) == 2 for p in PATHS)


def test_sync_goaway_no_error_completes_kept_streams_and_resends_the_others() -> None:
    server = GoawayAfterAll(last=7)
    with client(server) as http, ThreadPoolExecutor(len(PATHS)) as pool:

        def one(path: str) -> str:
            return http.post(f"http://h2.test{path}", content=b"{}").text

        futures = [pool.submit(one, p) for p in PATHS]
        results = [f.result(timeout=DEADLINE) for f in futures]
    assert sorted(server.wires[0].paths) == [1, 3, 5, 7, 9, 11, 13]
    kept, resent = kept_and_resent(server, 7)
    assert results == [f"{p}@0" if p in kept else f"{p}@1" for p in PATHS]
    assert sorted(server.wires[1].paths.values()) == sorted(resent)
    assert server.wires[0].client_closed


class SilentAfterGoaway(Server):
    """Connection 0: GOAWAY keeping the request, then silence; on a PING it either dies
    (hypercorn drops its HTTP/2 state with the GOAWAY) or answers."""

    def __init__(self, *, dies: bool) -> None:
        super().__init__()
        self.dies = dies

    def on_request(self, wire: Wire, stream_id: int, path: str) -> None:
        if wire.index > 0:
            super().on_request(wire, stream_id, path)
        else:
            wire.goaway(stream_id)

    def on_ping(self, wire: Wire) -> None:
        if self.dies:
            wire.close()
        else:
            wire.answer(1, "late@0")


@pytest.mark.parametrize("dies", [True, False])
async def test_a_server_silent_after_goaway_is_probed(dies: bool) -> None:
    server = SilentAfterGoaway(dies=dies)
    [result] = await post_all(server, ["/only"])
    assert server.wires[0].pings == 1
    if dies:  # fails at once (the pool may resend it), not at a read timeout
        assert isinstance(result, httpx.RemoteProtocolError)
    else:
        assert result == "late@0"


async def test_what_arrived_is_read_before_writing() -> None:
    """A kept stream's end and the GOAWAY wait unread when a new request comes; the
    server resets the connection on the next frame it gets (nginx does, closing on a
    reload a connection it had sent GOAWAY on). Reading first keeps the stream's end
    and sends the new request to a new connection instead."""
    server = Streaming()
    async with (
        aclient(server) as http,
        http.stream("POST", "http://h2.test/long", content=b"{}") as kept,
    ):
        chunks = kept.aiter_raw()
        assert await anext(chunks) == b"first"
        wire = server.wires[0]
        wire.goaway(1)
        wire.h2.send_data(1, b"-tail", end_stream=True)
        wire.flush()
        wire.resets_on_write = True
        new = await asyncio.wait_for(http.post("http://h2.test/whole", content=b"{}"), DEADLINE)
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"-tail"
    assert new.text == "/whole@1"
    assert not wire.dead  # nothing was written to it after the GOAWAY


# ------------------------------------------------------------------ resets


class Refusing(Server):
    """Refuses (REFUSED_STREAM) the first ``times`` requests of each path, before headers
    (or after them when ``after_headers``)."""

    def __init__(self, times: int, *, after_headers: bool = False) -> None:
        super().__init__()
        self.times = times
        self.after_headers = after_headers

    def on_request(self, wire: Wire, stream_id: int, path: str) -> None:
        if self.seen(path) > self.times:
            super().on_request(wire, stream_id, path)
            return
        if self.after_headers:
            wire.h2.send_headers(stream_id, [(":status", "200")])
            wire.flush()
        wire.refuse(stream_id)


async def test_refused_stream_is_resent() -> None:
    server = Refusing(times=1)
    results = await post_all(server, ["/a", "/b"])
    assert results == ["/a@0", "/b@0"]  # resent on the same connection
    assert server.seen("/a") == server.seen("/b") == 2


async def test_refusals_in_a_row_are_resent_a_bounded_number_of_times() -> None:
    server = Refusing(times=100)
    [result] = await post_all(server, ["/busy"])
    assert isinstance(result, httpx.RemoteProtocolError)
    assert server.seen("/busy") == 1 + REFUSED_RESENDS


async def test_refused_after_headers_is_not_resent() -> None:
    server = Refusing(times=1, after_headers=True)
    [result] = await post_all(server, ["/late"])
    assert isinstance(result, httpx.RemoteProtocolError)
    assert server.seen("/late") == 1


class Streaming(Server):
    """Headers and a first chunk; the stream stays open (a long answer)."""

    def on_request(self, wire: Wire, stream_id: int, path: str) -> None:
        if path == "/whole":
            super().on_request(wire, stream_id, path)
            return
        wire.h2.send_headers(stream_id, [(":status", "200")])
        wire.h2.send_data(stream_id, b"first")
        wire.flush()


async def test_early_close_resets_the_stream_and_keeps_the_connection() -> None:
    server = Streaming()
    async with aclient(server) as http:
        async with http.stream("POST", "http://h2.test/long", content=b"{}") as response:
            async for chunk in response.aiter_raw():
                assert chunk == b"first"
                break
        whole = await asyncio.wait_for(http.post("http://h2.test/whole", content=b"{}"), DEADLINE)
    wire = server.wires[0]
    assert wire.resets == {1: CANCEL}  # the unfinished stream only
    assert whole.text == "/whole@0"  # same connection, still usable
    assert len(server.wires) == 1


def test_sync_early_close_resets_the_stream() -> None:
    server = Streaming()
    with client(server) as http:
        with http.stream("POST", "http://h2.test/long", content=b"{}") as response:
            assert next(response.iter_raw()) == b"first"
        assert http.post("http://h2.test/whole", content=b"{}").text == "/whole@0"
    assert server.wires[0].resets == {1: CANCEL}


class Tracer:
    """An httpcore ``trace`` extension: reachable from the request that carries it."""

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        pass


async def test_a_failed_reset_keeps_nothing_alive() -> None:
    """The close path moves past a failed write; its traceback must not pin anything.

    httpcore stores a failed write's exception on the connection (and re-raises it to
    later writes); the frames of its traceback hold the request of the closed stream,
    and through it the caller's request extensions, for as long as the connection lives.
    """
    server = Streaming()
    tracer = Tracer()
    async with aclient(server) as http:
        request = http.build_request(
            "POST", "http://h2.test/long", content=b"{}", extensions={"trace": tracer}
        )
        response = await http.send(request, stream=True)
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"first"
        server.wires[0].broken = True
        await chunks.aclose()
        await response.aclose()  # the RST_STREAM write fails, quietly
        refs = [weakref.ref(tracer), weakref.ref(response)]
        del tracer, request, response, chunks
        for _ in range(100):  # suspended inner generators are closed by loop tasks
            gc.collect()
            if all(ref() is None for ref in refs):
                break
            await asyncio.sleep(0)
        assert [ref() for ref in refs] == [None, None]
        pool: Any = http._transport._pool  # type: ignore[attr-defined]
        assert pool.connections  # the failed connection is still alive in the pool


class Hold:
    """A ``trace`` extension holding its request before its headers until ``go`` is set."""

    def __init__(self, go: asyncio.Event) -> None:
        self.go = go

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name == "http2.send_request_headers.started":
            await self.go.wait()


class Mark:
    """A ``trace`` extension setting ``sent`` once its request's headers went out."""

    def __init__(self, sent: asyncio.Event) -> None:
        self.sent = sent

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name == "http2.send_request_headers.complete":
            self.sent.set()


async def test_requests_never_share_a_stream_id() -> None:
    """A request that yields between taking its stream id and sending its headers (an
    async trace hook does) must not share that id with the request that goes first."""
    server = Server()
    sent = asyncio.Event()
    async with aclient(server) as http:
        assert (await http.post("http://h2.test/warm", content=b"{}")).text == "/warm@0"
        held = http.post("http://h2.test/a", content=b"{}", extensions={"trace": Hold(sent)})
        first = http.post("http://h2.test/b", content=b"{}", extensions={"trace": Mark(sent)})
        a, b = await asyncio.wait_for(asyncio.gather(held, first), DEADLINE)
    assert (a.text, b.text) == ("/a@0", "/b@0")
    wire = server.wires[0]
    assert server.seen("/a") == server.seen("/b") == 1  # the held one was resent unsent
    ids = {path: sid for sid, path in wire.paths.items()}
    assert ids["/a"] > ids["/b"] > ids["/warm"]
    assert wire.resets == {}


# ------------------------------------------------------------------ h2 itself


def _client_and_server() -> tuple[GracefulH2Connection, h2.connection.H2Connection, int]:
    client_side = GracefulH2Connection(h2.config.H2Configuration(client_side=True))
    server_side = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client_side.initiate_connection()
    server_side.initiate_connection()
    server_side.receive_data(client_side.data_to_send())
    client_side.receive_data(server_side.data_to_send())
    sid = client_side.get_next_available_stream_id()
    client_side.send_headers(
        sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )  # fmt: skip
    server_side.receive_data(client_side.data_to_send())
    server_side.send_headers(sid, [(":status", "200")])
    client_side.receive_data(server_side.data_to_send())
    return client_side, server_side, sid


def test_h2_accepts_data_of_kept_streams_after_goaway_and_refuses_new_streams() -> None:
    client_side, _, sid = _client_and_server()
    goaway = GoAwayFrame(0, last_stream_id=sid, error_code=0).serialize()
    data = DataFrame(sid, data=b"tail", flags=["END_STREAM"]).serialize()
    events = client_side.receive_data(goaway + data)
    assert [type(e) for e in events] == [
        h2.events.ConnectionTerminated, h2.events.DataReceived, h2.events.StreamEnded,
    ]  # fmt: skip
    assert client_side.goaway_last_stream_id == sid
    with pytest.raises(h2.exceptions.ProtocolError, match="GOAWAY received"):
        client_side.send_headers(client_side.get_next_available_stream_id(), [(":method", "GET")])
    # a later GOAWAY may only lower last_stream_id
    client_side.receive_data(GoAwayFrame(0, last_stream_id=sid + 10).serialize())
    assert client_side.goaway_last_stream_id == sid


def test_h2_stream_ids_are_reserved() -> None:
    client_side, _, sid = _client_and_server()
    first, second = (
        client_side.get_next_available_stream_id(),
        client_side.get_next_available_stream_id(),
    )
    assert sid < first < second
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    client_side.send_headers(second, headers, end_stream=True)
    with pytest.raises(h2.exceptions.StreamIDTooLowError):
        client_side.send_headers(first, headers, end_stream=True)


def test_plain_h2_rejects_the_same_frames() -> None:
    """The control: h2's own connection closes on GOAWAY (python-hyper/h2#1181)."""
    plain = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    plain.initiate_connection()
    server_side = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server_side.initiate_connection()
    plain.receive_data(server_side.data_to_send())
    plain.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                           (":authority", "x")], end_stream=True)  # fmt: skip
    goaway = GoAwayFrame(0, last_stream_id=1, error_code=0).serialize()
    with pytest.raises(h2.exceptions.ProtocolError, match="RECV_DATA in state"):
        plain.receive_data(goaway + DataFrame(1, data=b"tail").serialize())


# ------------------------------------------------------------------ the versions


@pytest.mark.parametrize("package", sorted(WRITTEN_FOR))
def test_written_for_the_installed_versions(package: str) -> None:
    installed = importlib.metadata.version(package)
    assert installed == WRITTEN_FOR[package], (
        f"langchain_fastpipe/transport/_h2*.py were written for {package} "
        f"{WRITTEN_FOR[package]}, {installed} is installed. Re-check what they adapt: the "
        "methods marked 'Adapted from httpcore' (_h2_async.py, _h2_sync.py, "
        "_h2_transport.py) against httpcore's _async/http2.py, _sync/http2.py and "
        "connection.py (handle_request, _receive_events, _receive_stream_event, "
        "_receive_response_body, _read_incoming_data, _wait_for_outgoing_flow), the "
        "private attributes they use (httpcore's _h2_state, _events, _read_lock, "
        "_connection_terminated, _read_exception, _request_count, the pool's connection "
        "arguments; h2's _receive_goaway_frame and _data_to_send; httpx's "
        "HTTPTransport._pool), and _h2_close.py's walk; then run "
        "tests/unit_tests/test_transport_h2.py and tests/integration_tests/"
        "test_nginx_goaway.py and update WRITTEN_FOR in _h2.py."
    )


def test_the_pools_build_graceful_http2_connections() -> None:
    server = Server()
    with client(server) as http:
        assert http.post("http://h2.test/x", content=b"{}").text == "/x@0"
        pool: Any = http._transport._pool  # type: ignore[attr-defined]
        assert [type(c._connection) for c in pool.connections] == [_h2.GracefulHTTP2Connection]


def test_the_entry_module_keeps_what_the_transport_calls() -> None:
    """``_loops`` reaches these through a ModuleType (no type check sees a lost name)."""
    for name in (
        "abort_dead_loop_client", "_socket_transports", "transport_kwargs",
        "async_transport", "sync_transport", "aclose_response", "close_response",
    ):  # fmt: skip
        assert callable(getattr(_h2, name)), name


def test_the_twins_share_one_core() -> None:
    """The GOAWAY/refusal decisions are written once, for both connections."""
    from langchain_fastpipe.transport._h2_core import GracefulCore

    for twin in (_h2.AsyncGracefulHTTP2Connection, _h2.GracefulHTTP2Connection):
        assert twin.__mro__[1] is GracefulCore
        for decision in ("_next_event", "_queue_events", "_cancel_on_close", "_outgoing_flow"):
            assert decision not in vars(twin), (twin, decision)
