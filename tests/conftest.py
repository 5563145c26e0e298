"""Shared fixtures: emulator servers on 127.0.0.1 (thread-backed, event-loop independent).

- ``emulator``: session-scoped, HTTP/1.1 over plain http.
- ``emulator_h2``: session-scoped, TLS with ALPN h2 and http/1.1 (clients use
  ``verify=emulator_h2.ca_cert_path``).
- ``make_emulator(config=None, *, http2=False, tls=False)``: a fresh server for one test,
  stopped after it (use it for custom profiles, ``goaway_after`` or exact counters).

Injected faults and recorded requests of the session servers are cleared before and after
every test that uses them (counters such as ``requests`` keep growing: compare deltas).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer

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
