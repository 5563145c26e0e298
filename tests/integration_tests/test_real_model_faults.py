"""The faults of the matrix that apply to the real local model (llama-server + Gemma 3 270M).

The emulator covers every fault; these show the same outcomes against the real server:
the pool recovers by itself when the server restarts, a stopped server is a typed connect
error, a stall watchdog closes the stream and frees the server's slot, and the text is the
server's own, never a token twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from langchain_fastpipe import ChatFastpipe, astream_chunks
from langchain_fastpipe.errors import EndpointConnectError, FirstChunkTimeoutError
from langchain_fastpipe.local import LocalModelServer, find_binary, find_free_port
from langchain_fastpipe.prompts import FEW_SHOT_PROMPT

pytestmark = pytest.mark.real_model

QUESTION = {"question": "What is the capital of France?"}


@pytest.fixture(scope="module")
def port() -> int:
    find_binary()  # a missing binary is a clear LocalServerError, not a skip
    return find_free_port()


@pytest.fixture
def server(port: int) -> Iterator[LocalModelServer]:
    with LocalModelServer(port=port, parallel=1, ctx_size=2048) as running:
        yield running


def _model(port: int, **kwargs: object) -> ChatFastpipe:
    params: dict[str, object] = {
        "model": "gemma-3-270m",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "api_key": "not-needed",
        "temperature": 0.0,
        "max_tokens": 16,
        "stop": ["\n"],
        **kwargs,
    }
    return ChatFastpipe(**params)  # type: ignore[arg-type]


async def test_the_pool_recovers_when_the_server_restarts_between_requests(port: int) -> None:
    model = _model(port)
    chain = FEW_SHOT_PROMPT | model
    with LocalModelServer(port=port, parallel=1, ctx_size=2048):
        first = (await chain.ainvoke(QUESTION)).content
    # The pooled keep-alive connection now points at a dead process.
    with LocalModelServer(port=port, parallel=1, ctx_size=2048):
        second = (await chain.ainvoke(QUESTION)).content
    assert first == second
    assert "Paris" in str(second)
    assert model.pool.stats()["failures"] == 0


async def test_a_stopped_server_is_a_typed_connect_error(port: int) -> None:
    model = _model(port, max_retries=1)
    with pytest.raises(EndpointConnectError) as info:
        await model.ainvoke("hello")
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_stall_watchdog_closes_the_stream_and_frees_the_slot(
    server: LocalModelServer, port: int
) -> None:
    model = _model(port)
    chain = FEW_SHOT_PROMPT | model
    # A first-chunk limit no real server can meet: the watchdog must fire and close the stream.
    with pytest.raises(FirstChunkTimeoutError):
        async for _ in astream_chunks(chain, QUESTION, first_chunk_timeout=1e-6):
            pass
    assert model.pool.stats()["in_flight"] == 0
    # The server has one slot; the next request gets it, so the cancelled one released it.
    answer = await asyncio.wait_for(chain.ainvoke(QUESTION), timeout=60)
    assert "Paris" in str(answer.content)


async def test_streamed_text_is_the_servers_text_with_no_token_twice(
    server: LocalModelServer, port: int
) -> None:
    model = _model(port)
    chain = FEW_SHOT_PROMPT | model
    pieces = [chunk.text async for chunk in astream_chunks(chain, QUESTION)]
    plain = await (FEW_SHOT_PROMPT | _model(port, pooling=False)).ainvoke(QUESTION)
    assert "".join(pieces) == plain.content
