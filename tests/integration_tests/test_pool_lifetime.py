"""Pools live as long as something uses them; dead loops' aiohttp sessions do not warn.

- A pool nobody holds any more (its ``ChatFastpipe`` was dropped) leaves the runtime's
  registry and the ``"pools"`` statistics, and its sockets to the server are closed: the
  sync client's, those of a loop that ended, and those of a loop still running.
- A process whose ``asyncio.run()`` calls ended without ``aclose_pools()`` (aiohttp engine,
  the default for ``http://``) prints no "Unclosed client session"/"Unclosed connector".
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorServer
from langchain_fastpipe.stats import get_stats
from tests.integration_tests._sockets import client_sockets, local_ends

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/net/tcp"), reason="counts sockets in /proc/net/tcp"
)

MakeEmulator = Callable[..., EmulatorServer]


def model_for(server: EmulatorServer, **kwargs: Any) -> ChatFastpipe:
    return ChatFastpipe(provider="openai", model="emu", base_url=server.openai_base_url, **kwargs)


def pools_to(port: int) -> list[str]:
    """The ``"pools"`` statistics keys naming ``port``."""
    return [key for key in get_stats()["pools"] if f":{port}/" in key]


@pytest.mark.parametrize("engine", ["aiohttp", "httpx"])
def test_a_dropped_models_pool_is_closed_and_forgotten(
    make_emulator: MakeEmulator, engine: str
) -> None:
    server = make_emulator()
    before = local_ends(server.port)
    model = model_for(server, engine=engine)
    assert model.invoke("hi").content
    assert asyncio.run(model.ainvoke("hi")).content  # a loop that ends: its client stays
    config = model.endpoint_config
    pool = weakref.ref(model.pool)
    assert runtime()._pools.get(config) is pool()
    assert pools_to(server.port)
    assert client_sockets(server.port, besides=before) == 2  # the sync one, the dead loop's

    del model
    gc.collect()

    assert pool() is None
    assert runtime()._pools.get(config) is None
    assert pools_to(server.port) == []
    assert client_sockets(server.port, besides=before) == 0


async def test_a_pool_dropped_while_its_loop_runs_closes_that_loops_client(
    make_emulator: MakeEmulator,
) -> None:
    server = make_emulator()
    before = local_ends(server.port)
    model = model_for(server)
    assert (await model.ainvoke("hi")).content
    assert client_sockets(server.port, besides=before) == 1
    pool = weakref.ref(model.pool)

    del model
    gc.collect()

    assert pool() is None
    for _ in range(200):  # the client's aclose() is a task of this loop
        if client_sockets(server.port, besides=before) == 0:
            break
        await asyncio.sleep(0.01)
    assert client_sockets(server.port, besides=before) == 0


SCRIPT = """
import asyncio, sys
from langchain_fastpipe import ChatFastpipe

model = ChatFastpipe(provider="openai", model="emu", base_url=sys.argv[1], engine="auto")
print(asyncio.run(model.ainvoke("hi")).content != "")
print(asyncio.run(model.ainvoke("hi")).content != "")
"""


def test_ended_loops_leave_no_unclosed_aiohttp_session(emulator: EmulatorServer) -> None:
    out = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-W", "always::ResourceWarning", "-c", SCRIPT, emulator.openai_base_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == ["True", "True"]
    assert "Unclosed" not in out.stderr, out.stderr
