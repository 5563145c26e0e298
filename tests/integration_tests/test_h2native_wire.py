"""The ``"h2"`` engine (our HTTP/2 client on asyncio and h2) over real sockets on 127.0.0.1.

Streams and JSON over TLS (ALPN) and h2c against the emulator (hypercorn) and behind nginx;
multiplexing; early close and cancellation (reset streams, no slot or socket leaked); read
timeout; refused connect; a server that declines HTTP/2 in ALPN (httpx takes over); GOAWAY
(hypercorn's, nginx's ``keepalive_requests`` and reloads) with nothing lost; dead-loop and
dropped-pool cleanup. Nothing is timed: deadlines only stop hangs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hyperframe.frame import GoAwayFrame

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.emulator._nginx import NginxProxy, find_nginx
from langchain_fastpipe.errors import EndpointConnectError, EndpointTimeoutError
from langchain_fastpipe.transport import EndpointConfig, PooledClient, get_pool
from langchain_fastpipe.transport._config import _AUTO_HTTP2, RetryPolicy
from langchain_fastpipe.transport._h2native_pool import H2Engine, engine_of
from langchain_fastpipe.transport._h2native_reply import ReplyHeaders
from tests.integration_tests._sockets import client_sockets, local_ends

MakeEmulator = Callable[..., EmulatorServer]

PROMPT = "native http2 prompt"
CHAT = {"model": "emu", "messages": [{"role": "user", "content": PROMPT}]}
STREAM = {**CHAT, "stream": True}

pytestmark = [pytest.mark.timeout(300)]


def model_for(server: EmulatorServer, **kwargs: Any) -> ChatFastpipe:
    kwargs.setdefault("verify", server.ca_cert_path or True)
    kwargs.setdefault("engine", "h2")
    return ChatFastpipe(provider="openai", model="emu", base_url=server.openai_base_url, **kwargs)


async def stream_text(model: ChatFastpipe, prompt: str = PROMPT) -> str:
    return "".join([chunk.text async for chunk in model.astream(prompt)])


async def settle(condition: Callable[[], bool], attempts: int = 500) -> bool:
    """Poll ``condition`` (closing happens on later loop turns and the server's thread)."""
    for i in range(attempts):
        if condition():
            return True
        if i % 20 == 0:
            gc.collect()
        await asyncio.sleep(0.01)
    return condition()


def engine(pool: PooledClient) -> H2Engine:
    found = engine_of(pool._clients.aclient())
    assert found is not None
    return found


# --------------------------------------------------------------------------- pure parts


def test_reply_headers_are_case_insensitive_and_join_repeats() -> None:
    headers = ReplyHeaders(
        [(b"content-type", b"text/event-stream"), (b"x-a", b"1"), (b"x-a", b"2")]
    )
    assert headers["Content-Type"] == "text/event-stream"
    assert headers.get("X-A") == "1, 2"
    assert "CONTENT-TYPE" in headers
    assert "nope" not in headers
    assert headers.get("missing", "d") == "d"
    assert len(headers) == 2
    assert sorted(headers) == ["content-type", "x-a"]


def test_request_headers_drop_connection_headers_and_add_defaults() -> None:
    config = EndpointConfig(base_url="https://example.test:8443/v1")
    built = H2Engine(config, None)._request_headers(
        "POST", httpx.URL("https://example.test:8443/v1/chat?x=1"),
        {"Authorization": "Bearer k", "Connection": "keep-alive", "Host": "x", "Accept": "a/b"},
        b"{}",
    )  # fmt: skip
    assert built[:4] == [
        (b":method", b"POST"), (b":path", b"/v1/chat?x=1"), (b":scheme", b"https"),
        (b":authority", b"example.test:8443"),
    ]  # fmt: skip
    names = [name for name, _ in built[4:]]
    assert b"connection" not in names
    assert b"host" not in names
    assert (b"authorization", b"Bearer k") in built
    assert (b"accept", b"a/b") in built
    assert names.count(b"accept") == 1
    assert (b"content-length", b"2") in built
    assert b"user-agent" in names
    assert b"accept-encoding" in names


@pytest.mark.parametrize(
    ("kwargs", "engine"),
    [
        ({"base_url": "https://h"}, _AUTO_HTTP2),
        ({"base_url": "http://h", "http2_prior_knowledge": True}, _AUTO_HTTP2),
        ({"base_url": "https://h", "engine": "h2"}, "h2"),
        ({"base_url": "http://h", "http2_prior_knowledge": True, "engine": "h2"}, "h2"),
        ({"base_url": "http://h"}, "aiohttp"),
        ({"base_url": "https://h", "http2": False}, "httpx"),
        ({"base_url": "https://h", "pooling": False}, "httpx"),
        ({"base_url": "https://h", "engine": "httpx"}, "httpx"),
        ({"base_url": "http://h", "engine": "h2"}, "httpx"),  # no HTTP/2 spoken there
    ],
)
def test_engine_resolution(kwargs: dict[str, Any], engine: str) -> None:
    assert EndpointConfig(**kwargs).async_engine == engine


# --------------------------------------------------------------------------- the wire


@pytest.fixture(params=["tls", "h2c"])
def h2_server(request: pytest.FixtureRequest, make_emulator: MakeEmulator) -> EmulatorServer:
    tls = request.param == "tls"
    return make_emulator(http2=True, tls=tls)


def h2_model(server: EmulatorServer, **kwargs: Any) -> ChatFastpipe:
    if not server.tls:
        kwargs.setdefault("http2_prior_knowledge", True)
    return model_for(server, **kwargs)


async def test_streams_and_json_multiplex_on_one_connection(
    h2_server: EmulatorServer, response_tracker: Any
) -> None:
    before = local_ends(h2_server.port)  # a reused port's closing sockets
    model = h2_model(h2_server)
    pool = get_pool(model.endpoint_config)
    response_tracker.track_async(pool)
    ref = (await model.ainvoke(PROMPT)).text
    streams = await asyncio.gather(*(stream_text(model) for _ in range(40)))
    replies = await asyncio.gather(*(model.ainvoke(PROMPT) for _ in range(40)))
    assert streams == [ref] * 40
    assert [r.text for r in replies] == [ref] * 40
    data, info = await pool.apost_json("/chat/completions", CHAT)
    assert data["choices"][0]["message"]["content"] == ref
    assert info.http_version == "HTTP/2"
    stats = pool.stats()
    assert stats["http_versions"] == {"HTTP/2": 82}
    assert stats["connections_opened"] == 1
    assert stats["in_flight"] == 0
    assert stats["failures"] == 0
    assert not engine(pool).fallback
    assert response_tracker.alive() == 0
    await pool.aclose()
    assert await settle(lambda: client_sockets(h2_server.port, besides=before) == 0)


async def test_warm_up_uses_the_engine(h2_server: EmulatorServer) -> None:
    model = h2_model(h2_server)
    pool = get_pool(model.endpoint_config)
    await pool.awarm(4)
    stats = pool.stats()
    assert stats["connections_opened"] == 1
    assert stats["http_versions"] == {"HTTP/2": 4}
    assert len(engine(pool)._conns) == 1
    await pool.aclose()


async def test_early_close_resets_the_stream_and_keeps_the_connection(
    make_emulator: MakeEmulator,
) -> None:
    slow = EmulatorConfig(default=ModelProfile(inter_token_seconds=0.02, answer_tokens=40))
    server = make_emulator(slow, http2=True, tls=True)
    model = model_for(server)
    pool = get_pool(model.endpoint_config)
    for _ in range(5):
        chunks = pool.astream("/chat/completions", STREAM)
        async for _chunk in chunks:
            break
        await chunks.aclose()  # type: ignore[attr-defined]
    eng = engine(pool)
    (conn,) = eng._conns
    assert conn.streams == {}
    assert conn.reserved == 0
    assert await settle(lambda: server.active_requests == 0)  # the server saw the resets
    assert (await model.ainvoke(PROMPT)).text
    assert pool.stats()["connections_opened"] == 1
    await pool.aclose()


async def test_1000_cancelled_streams_leak_no_slot_or_socket(make_emulator: MakeEmulator) -> None:
    slow = EmulatorConfig(default=ModelProfile(inter_token_seconds=0.01, answer_tokens=30))
    server = make_emulator(slow, http2=True, tls=True)
    before = local_ends(server.port)  # a reused port's closing sockets
    model = model_for(server)
    pool = get_pool(model.endpoint_config)
    ref = (await model.ainvoke(PROMPT)).text

    async def consume(started: asyncio.Event) -> None:
        async for _ in model.astream(PROMPT):
            started.set()
            await asyncio.sleep(3600)

    for _ in range(10):
        events = [asyncio.Event() for _ in range(100)]
        tasks = [asyncio.ensure_future(consume(e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events[:50])), 120)
        for task in tasks:  # half are streaming, the others wait for headers or admission
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    eng = engine(pool)
    assert await settle(lambda: all(c.reserved == 0 and not c.streams for c in eng._conns))
    assert pool.stats()["in_flight"] == 0
    assert await settle(lambda: server.active_requests == 0)
    assert client_sockets(server.port, besides=before) <= 1
    assert await asyncio.gather(*(stream_text(model) for _ in range(20))) == [ref] * 20
    await pool.aclose()
    assert await settle(lambda: client_sockets(server.port, besides=before) == 0)


async def test_read_timeout(make_emulator: MakeEmulator) -> None:
    server = make_emulator(http2=True, tls=True)
    model = model_for(server, timeout=1.5, max_retries=0)  # the hang lasts 5 s
    assert (await model.ainvoke(PROMPT)).text
    server.inject(Fault.hang_before_first_byte(5.0))
    with pytest.raises(EndpointTimeoutError):
        await model.ainvoke(PROMPT)
    assert (await model.ainvoke(PROMPT)).text  # the connection is still usable


async def test_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = ChatFastpipe(
        provider="openai", model="emu", base_url=f"https://127.0.0.1:{port}/v1",
        engine="h2", max_retries=0,
    )  # fmt: skip
    with pytest.raises(EndpointConnectError):
        await model.ainvoke(PROMPT)
    pool = get_pool(model.endpoint_config)
    assert engine(pool)._conns == []


async def test_alpn_http11_only_server_falls_back_to_httpx(make_emulator: MakeEmulator) -> None:
    server = make_emulator(http2=False, tls=True)  # ALPN offers http/1.1 only
    before = local_ends(server.port)  # a reused port's closing sockets
    model = model_for(server)
    pool = get_pool(model.endpoint_config)
    ref = (await model.ainvoke(PROMPT)).text
    texts = await asyncio.gather(*(stream_text(model) for _ in range(10)))
    assert texts == [ref] * 10
    await pool.awarm(2)
    stats = pool.stats()
    assert stats["http_versions"] == {"HTTP/1.1": 13}
    assert stats["failures"] == 0
    assert engine(pool).fallback
    await pool.aclose()
    assert await settle(lambda: client_sockets(server.port, besides=before) == 0)


@pytest.mark.parametrize("tls", [True, False])
async def test_hypercorn_goaway_loses_no_call(make_emulator: MakeEmulator, tls: bool) -> None:
    # hypercorn (keep_alive_max_requests) sends its GOAWAY when request N+1 arrives, by
    # closing its own h2 state machine (python-hyper/h2#1181 on the server side): every
    # stream it had not finished is dropped, although last_stream_id covers it. Streams
    # without response headers are replayed by the pool; a stream cut mid-body cannot be
    # (its first bytes may have reached the caller), so this runs non-streamed calls,
    # whose cut bodies never reach the caller and are retried. nginx completes the
    # streams it keeps: test_nginx_goaway.py streams through it with retries off.
    server = make_emulator(EmulatorConfig(goaway_after=10), http2=True, tls=tls)
    model = h2_model(server)
    pool = get_pool(model.endpoint_config)
    ref = (await model.ainvoke(PROMPT)).text
    for _ in range(10):
        replies = await asyncio.gather(*(model.ainvoke(PROMPT) for _ in range(8)))
        assert [r.text for r in replies] == [ref] * 8
    stats = pool.stats()
    assert stats["failures"] == 0
    assert set(stats["http_versions"]) == {"HTTP/2"}
    assert stats["retries"] > 0  # hypercorn did drop calls, and they were sent again
    assert server.connections_opened >= 81 // 10  # the server did send its GOAWAYs
    await pool.aclose()


class H2Server:
    """A tiny h2c server (h2's server side) whose first connection misbehaves on purpose.

    ``mode="goaway"``: once ``wait_for`` requests arrived on the first connection it sends
    GOAWAY(last_stream_id=1), answers stream 1 and closes; ``mode="refuse"``: it resets
    stream 3 with REFUSED_STREAM and answers the others. Later connections answer all.
    """

    def __init__(self, mode: str, wait_for: int) -> None:
        self.mode = mode
        self.wait_for = wait_for
        self.connections = 0
        self.answered: list[tuple[int, int]] = []  # (connection, stream id)
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> H2Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection
        import h2.errors
        import h2.events

        self.connections += 1
        index = self.connections
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        pending: list[int] = []

        def answer(stream_id: int) -> None:
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json")])
            conn.send_data(stream_id, b'{"ok": true}', end_stream=True)
            self.answered.append((index, stream_id))

        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        pending.append(event.stream_id)
                if index == 1 and self.mode == "goaway":
                    writer.write(conn.data_to_send())  # SETTINGS ack
                    if len(pending) < self.wait_for:
                        continue
                    # GOAWAY first, then stream 1 completes (h2's server side would
                    # refuse to send after its own GOAWAY: the frame is written by hand).
                    writer.write(GoAwayFrame(0, last_stream_id=1).serialize())
                    answer(1)
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    break
                for stream_id in pending:
                    if index == 1 and self.mode == "refuse" and stream_id == 3:
                        conn.reset_stream(3, h2.errors.ErrorCodes.REFUSED_STREAM)
                    else:
                        answer(stream_id)
                pending.clear()
                writer.write(conn.data_to_send())
                await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass  # the test is over
        finally:
            writer.close()


@pytest.mark.parametrize("mode", ["goaway", "refuse"])
async def test_unprocessed_streams_are_resent_on_another_connection(mode: str) -> None:
    async with H2Server(mode, wait_for=4) as server:
        config = EndpointConfig(
            base_url=server.url, http2_prior_knowledge=True, engine="h2",
            retry=RetryPolicy(max_retries=0),
        )  # fmt: skip
        pool = PooledClient(config)
        replies = await asyncio.wait_for(
            asyncio.gather(*(pool.apost_json("/x", {"i": i}) for i in range(4))), 60
        )
        assert [data for data, _ in replies] == [{"ok": True}] * 4
        stats = pool.stats()
        assert stats["failures"] == 0
        assert stats["replays"] == 0
        assert stats["http_versions"] == {"HTTP/2": 4}
        if mode == "goaway":  # stream 1 answered on the first connection, 3 others resent
            assert (1, 1) in server.answered
            assert sum(1 for conn, _ in server.answered if conn > 1) == 3
            assert server.connections == 2
        else:
            assert (1, 3) not in server.answered
            assert len(server.answered) == 4
        await pool.aclose()


# --------------------------------------------------------------------------- nginx


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmulatorServer]:
    if find_nginx() is None:
        pytest.fail("nginx is missing: `make test` installs Debian's nginx package")
    with EmulatorServer(EmulatorConfig(default=ModelProfile(answer_tokens=4))) as server:
        yield server


async def test_behind_nginx_streams_and_json(upstream: EmulatorServer) -> None:
    with NginxProxy(upstream.base_url) as proxy:
        model = ChatFastpipe(
            model="emulator", base_url=proxy.base_url + "/v1", verify=proxy.ca_path, engine="h2"
        )
        assert model.endpoint_config.async_engine == "h2"
        pool = get_pool(model.endpoint_config)
        ref = (await model.ainvoke(PROMPT)).text
        assert await asyncio.gather(*(stream_text(model) for _ in range(64))) == [ref] * 64
        stats = pool.stats()
        assert stats["http_versions"] == {"HTTP/2": 65}
        assert stats["connections_opened"] == 1
        await pool.aclose()


STREAMS = 1000


@pytest.mark.parametrize("provider", ["openai", "ollama"])
async def test_nginx_goaway_and_reloads_lose_nothing(
    upstream: EmulatorServer, response_tracker: Any, provider: str
) -> None:
    suffix = "/v1" if provider == "openai" else ""
    direct = ChatFastpipe(model="emulator", provider=provider, base_url=upstream.base_url + suffix)
    ref = (await direct.ainvoke(PROMPT)).text
    with NginxProxy(upstream.base_url, keepalive_requests=100) as proxy:
        model = ChatFastpipe(
            model="emulator", provider=provider, base_url=proxy.base_url + suffix,
            verify=proxy.ca_path, engine="h2", max_retries=0,
        )  # fmt: skip
        pool = get_pool(model.endpoint_config)
        response_tracker.track_async(pool)
        gate = asyncio.Semaphore(64)
        finished = 0

        async def one() -> str:
            nonlocal finished
            async with gate:
                try:
                    return await stream_text(model)
                finally:
                    finished += 1
                    if finished % 300 == 0 and finished < STREAMS:
                        proxy.reload()

        results = await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(STREAMS)), return_exceptions=True), 240
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], f"{len(errors)} failed, first: {errors[0]!r}\n{proxy.error_log()}"
        assert results == [ref] * STREAMS
        stats = pool.stats()
        assert stats["http_versions"] == {"HTTP/2": STREAMS}
        assert stats["connections_opened"] >= STREAMS // 100
        assert stats["in_flight"] == 0
        assert proxy.reloads == STREAMS // 300
        await pool.aclose()
    assert response_tracker.alive() == 0


# --------------------------------------------------------------------------- lifetimes

_DEAD_LOOP = """
import asyncio, gc, sys, warnings
warnings.simplefilter("always")
from langchain_fastpipe.chat_models import ChatFastpipe
model = ChatFastpipe(provider="openai", model="emu", base_url=sys.argv[1], verify=sys.argv[2],
                     engine="h2")
for _ in range(2):
    print(asyncio.run(model.ainvoke("hi")).text[:5])
del model
gc.collect()
"""


def test_dead_loops_and_dropped_pools_close_their_sockets(make_emulator: MakeEmulator) -> None:
    server = make_emulator(http2=True, tls=True)
    before = local_ends(server.port)  # a reused port's closing sockets
    model = model_for(server)
    assert asyncio.run(model.ainvoke(PROMPT)).text  # a loop that ends: its client stays
    assert client_sockets(server.port, besides=before) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del model
        gc.collect()
    assert client_sockets(server.port, besides=before) == 0
    assert [w for w in caught if "nclosed" in str(w.message)] == []
    env = {**os.environ, "PYTHONWARNINGS": "always", "PYTHONDEVMODE": "1"}
    done = subprocess.run(  # noqa: S603 - this interpreter, a literal script
        [sys.executable, "-c", _DEAD_LOOP, server.openai_base_url, str(server.ca_cert_path)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 2
    assert "nclosed" not in done.stderr, done.stderr


async def test_a_pool_dropped_while_its_loop_runs_aborts_its_connections(
    make_emulator: MakeEmulator,
) -> None:
    server = make_emulator(http2=True, tls=True)
    before = local_ends(server.port)  # a reused port's closing sockets
    model = model_for(server)
    assert (await model.ainvoke(PROMPT)).text
    assert client_sockets(server.port, besides=before) == 1
    del model
    gc.collect()
    assert await settle(lambda: client_sockets(server.port, besides=before) == 0)
