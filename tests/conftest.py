"""Shared fixtures: emulator servers on 127.0.0.1 (thread-backed, event-loop independent).

- ``emulator``: session-scoped, HTTP/1.1 over plain http.
- ``emulator_h2``: session-scoped, TLS with ALPN h2 and http/1.1 (clients use
  ``verify=emulator_h2.ca_cert_path``).
- ``make_emulator(config=None, *, http2=False, tls=False)``: a fresh server for one test,
  stopped after it (use it for custom profiles, ``goaway_after`` or exact counters).

``response_tracker``: weak references to the responses of the pools a test hooks, for leak
checks that count only what the test created.

Injected faults and recorded requests of the session servers are cleared before and after
every test that uses them (counters such as ``requests`` keep growing: compare deltas).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer
from langchain_fastpipe.transport import PooledClient
from langchain_fastpipe.transport._aiohttp import direct_session

MakeEmulator = Callable[..., EmulatorServer]

_SESSION_EMULATORS = ("emulator", "emulator_h2")


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    """The shared HTTP/1.1 emulator (plain http)."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture(scope="session")
def emulator_h2() -> Iterator[EmulatorServer]:
    """The shared TLS emulator offering h2 and http/1.1 by ALPN."""
    with EmulatorServer(http2=True, tls=True) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_session_emulators(request: pytest.FixtureRequest) -> Iterator[None]:
    """Clear faults and history of the session emulators a test uses, before and after it."""
    used = [
        request.getfixturevalue(name) for name in _SESSION_EMULATORS if name in request.fixturenames
    ]
    for server in used:
        server.reset_state()
    yield
    for server in used:
        server.reset_state()
        _reset_breakers_of(server)


def _reset_breakers_of(server: EmulatorServer) -> None:
    """Close the circuit breakers of every live pool that talks to a session emulator.

    Tests inject failures into the shared servers; the breakers of the shared pools would
    carry those outcomes into the next test, which is not what that test is about.
    """
    origin = server.base_url.rstrip("/")
    for pool in runtime().live_pools():
        if pool.config.base_url.startswith(origin):
            pool.breakers.reset()


@pytest.fixture
def make_emulator() -> Iterator[MakeEmulator]:
    """Factory of fresh emulators: ``make_emulator(config=..., http2=..., tls=...)``."""
    servers: list[EmulatorServer] = []

    def make(
        config: EmulatorConfig | None = None, *, http2: bool = False, tls: bool = False
    ) -> EmulatorServer:
        server = EmulatorServer(config, http2=http2, tls=tls).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class ResponseTracker:
    """Weak references to the HTTP responses of the pools a test tracks, to find leaks.

    A leak check counts what the test itself created: only responses made by the tracked
    pools' clients (hooked with httpx's ``response`` event hook), never every object in
    the process.
    """

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Any]] = []

    def _record(self, response: Any) -> None:
        self.refs.append(weakref.ref(response))

    async def _arecord(self, response: httpx.Response) -> None:
        self._record(response)

    def track_sync(self, pool: PooledClient) -> None:
        """Record every response of ``pool``'s sync client."""
        pool._clients.client().event_hooks["response"].append(self._record)

    def track_async(self, pool: PooledClient) -> None:
        """Record every response of ``pool``'s async client of the running loop.

        On the aiohttp engine the pool's calls skip httpx: their ``aiohttp.ClientResponse``
        objects are recorded (from an ``on_request_end`` trace of the loop's session). On
        the h2 engine, the engine's replies are (its ``asend`` is wrapped).
        """
        client = pool._clients.aclient()
        client.event_hooks["response"].append(self._arecord)
        from langchain_fastpipe.transport._h2native_pool import engine_of

        engine = engine_of(client)
        if engine is not None:
            send = engine.asend

            async def asend(*args: Any, **kwargs: Any) -> Any:
                reply = await send(*args, **kwargs)
                self._record(reply)
                return reply

            engine.asend = asend  # type: ignore[method-assign]
        session = direct_session(client)
        if session is not None:
            trace = aiohttp.TraceConfig()

            async def on_end(session: Any, ctx: Any, params: Any) -> None:
                self._record(params.response)

            trace.on_request_end.append(on_end)
            trace.freeze()
            session._trace_configs.append(trace)

    def alive(self) -> int:
        """How many recorded responses are still alive after a full garbage collection."""
        gc.collect()
        return sum(1 for ref in self.refs if ref() is not None)


@pytest.fixture
def response_tracker() -> ResponseTracker:
    """A fresh :class:`ResponseTracker` (hook it to the pools under test)."""
    return ResponseTracker()
