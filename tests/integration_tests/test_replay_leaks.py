"""A replayed request's good response is not pinned by the failure that caused the replay.

The scenario traced in a fresh-machine run: HTTP/2 streams in flight on one connection, the
server drops the connection before any response header, the pool replays every stream on a
new connection and they succeed. httpcore keeps the errored connection (and its stored read
exception) in its pool until the keep-alive expiry; that exception's traceback went through
our attempt loop, whose frame then held the replayed stream's response. After the calls end,
every response the pool made must be collectable while the pool itself is still alive.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.transport import get_pool

MakeEmulator = Callable[..., EmulatorServer]

PROMPT = "replay me"
IN_FLIGHT = 3
#: The streams wait on the model's load while the fault drops their connection.
SLOW_LOAD = EmulatorConfig(default=ModelProfile(load_seconds=1.5))
HANG_GUARD = 60.0  # stops a hang; never reached on a working pool


def h2_model(server: EmulatorServer) -> ChatFastpipe:
    return ChatFastpipe(
        provider="openai", model="emu", base_url=server.openai_base_url,
        verify=server.ca_cert_path or True, http2=True, engine="httpx",
    )  # fmt: skip


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, "the streams never reached the server"
        time.sleep(0.01)


def test_sync_streams_replayed_after_a_disconnect_leave_no_response_pinned(
    make_emulator: MakeEmulator, response_tracker: Any
) -> None:
    server = make_emulator(SLOW_LOAD, http2=True, tls=True)
    model = h2_model(server)
    pool = get_pool(model.endpoint_config)
    response_tracker.track_sync(pool)
    texts: list[str] = []
    lock = threading.Lock()

    def stream() -> None:
        text = "".join(chunk.text for chunk in model.stream(PROMPT))
        with lock:
            texts.append(text)

    before = server.chat_requests
    threads = [threading.Thread(target=stream) for _ in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    wait_for(lambda: server.chat_requests - before >= IN_FLIGHT)
    server.inject(Fault.reset_before_headers())  # the next request drops the connection
    threads.append(threading.Thread(target=stream))
    threads[-1].start()
    for thread in threads:
        thread.join(HANG_GUARD)
        assert not thread.is_alive()

    ref = model.invoke(PROMPT).text
    assert texts == [ref] * (IN_FLIGHT + 1)
    stats = pool.stats()
    assert stats["replays"] >= IN_FLIGHT, stats  # the in-flight streams were resent
    assert stats["in_flight"] == 0
    assert response_tracker.refs, "the tracker saw no response"
    assert response_tracker.alive() == 0


async def test_async_streams_replayed_after_a_disconnect_leave_no_response_pinned(
    make_emulator: MakeEmulator, response_tracker: Any
) -> None:
    server = make_emulator(SLOW_LOAD, http2=True, tls=True)
    model = h2_model(server)
    pool = get_pool(model.endpoint_config)
    response_tracker.track_async(pool)

    async def stream() -> str:
        return "".join([chunk.text async for chunk in model.astream(PROMPT)])

    before = server.chat_requests
    tasks = [asyncio.ensure_future(stream()) for _ in range(IN_FLIGHT)]
    deadline = time.monotonic() + HANG_GUARD
    while server.chat_requests - before < IN_FLIGHT:
        assert time.monotonic() < deadline, "the streams never reached the server"
        await asyncio.sleep(0.01)
    server.inject(Fault.reset_before_headers())
    tasks.append(asyncio.ensure_future(stream()))
    texts = await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD)

    ref = (await model.ainvoke(PROMPT)).text
    assert texts == [ref] * (IN_FLIGHT + 1)
    stats = pool.stats()
    assert stats["replays"] >= IN_FLIGHT, stats
    assert stats["in_flight"] == 0
    del tasks
    assert response_tracker.refs, "the tracker saw no response"
    assert response_tracker.alive() == 0
