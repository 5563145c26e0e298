"""Unit tests of langchain_fastpipe.streaming: fake models, hand-written sources, fake clocks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableGenerator, RunnableLambda
from pydantic import BaseModel

from langchain_fastpipe.errors import (
    ConfigError,
    FirstChunkTimeoutError,
    InterChunkTimeoutError,
    StreamStallError,
)
from langchain_fastpipe.stats import get_stats
from langchain_fastpipe.streaming import (
    StreamingChunk,
    StreamStatsCollector,
    TimeToFirstTokenHandler,
    acollect,
    aconsume,
    astream_chunks,
    collect,
    consume,
    default_collector,
    extract_text,
    guard_stream,
    resolve_model_name,
    stream_chunks,
)

# --------------------------------------------------------------------------- helpers


class FakeClock:
    """A clock the sources move forward."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TickClock:
    """Each call returns the next integer: deterministic when callers call it once per event."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(self) -> float:
        return float(next(self._counter))


class Probe:
    """Records what happened to a hand-written source."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = False
        self.cancelled = False


async def timed_source(
    clock: FakeClock, schedule: list[tuple[float, Any]], end: float, probe: Probe | None = None
) -> AsyncIterator[Any]:
    probe = probe or Probe()
    try:
        for at, item in schedule:
            clock.now = at
            probe.produced += 1
            yield item
        clock.now = end
    finally:
        probe.closed = True


async def hanging_source(probe: Probe, first: list[str] | None = None) -> AsyncIterator[str]:
    try:
        for item in first or []:
            probe.produced += 1
            yield item
        await asyncio.Event().wait()  # never set: a stalled server
        yield "never"
    except asyncio.CancelledError:
        probe.cancelled = True
        raise
    finally:
        probe.closed = True


async def endless_source(probe: Probe) -> AsyncIterator[str]:
    try:
        while True:
            probe.produced += 1
            yield f"t{probe.produced} "
            await asyncio.sleep(0)
    finally:
        probe.closed = True


async def drain(source: AsyncIterator[Any], into: list[Any]) -> None:
    async for item in source:
        into.append(item)


async def settle(condition: Any, ticks: int = 20) -> bool:
    """Yield the loop until ``condition()`` holds: LangChain's nested generators are closed by the
    loop's async-generator finalizer a few iterations after the outer one is closed."""
    for _ in range(ticks):
        if condition():
            return True
        gc.collect()
        await asyncio.sleep(0)
    return bool(condition())


def fake_model(text: str = "hello big world", n: int = 20) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)] * n))


def chain_of(model: Any) -> Any:
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    return prompt | model | StrOutputParser()


class Answer(BaseModel):
    answer: str


# --------------------------------------------------------------------------- text extraction


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("plain", "plain"),
        (AIMessageChunk(content="hi"), "hi"),
        (AIMessage(content="whole"), "whole"),
        (
            AIMessageChunk(content=[{"type": "text", "text": "a"}, {"type": "image_url"}, "b"]),
            "ab",
        ),
        (ChatGenerationChunk(message=AIMessageChunk(content="gen")), "gen"),
        (b"bytes", "bytes"),
        ({"answer": AIMessageChunk(content="wrapped")}, "wrapped"),
        ({"answer": "x", "other": "y"}, ""),
        (Answer(answer="structured"), ""),
        (None, ""),
        (42, ""),
    ],
)
def test_extract_text(item: Any, expected: str) -> None:
    assert extract_text(item) == expected


# --------------------------------------------------------------------------- the timing core


async def test_chunk_times_and_stats_are_deterministic_with_injected_clock() -> None:
    clock = FakeClock()
    collector = StreamStatsCollector()
    schedule = [(1.0, "a"), (1.5, "b"), (2.0, "c"), (4.0, "d")]
    chunks = [
        c
        async for c in astream_chunks(
            timed_source(clock, schedule, end=5.0), model="m1", clock=clock, collector=collector
        )
    ]
    assert [c.text for c in chunks] == ["a", "b", "c", "d", ""]
    assert [c.index for c in chunks] == [0, 1, 2, 3, 4]
    assert [c.since_start for c in chunks] == [1.0, 1.5, 2.0, 4.0, 5.0]
    assert [c.since_previous for c in chunks] == [1.0, 0.5, 0.5, 2.0, 1.0]
    assert [c.is_first for c in chunks] == [True, False, False, False, False]
    assert [c.is_last for c in chunks] == [False, False, False, False, True]
    assert all(c.stats is None for c in chunks[:-1])
    stats = chunks[-1].stats
    assert stats is not None
    assert stats.model == "m1"
    assert stats.n_chunks == 4
    assert stats.time_to_first_chunk == 1.0
    assert stats.time_to_first_text == 1.0
    assert stats.inter_chunk_p50 == 0.5
    assert stats.inter_chunk_p95 == pytest.approx(1.85)  # sorted gaps 0.5, 0.5, 2.0
    assert stats.inter_chunk_max == 2.0
    assert stats.chunks_per_second == pytest.approx(1.0)  # 3 gaps over 3 seconds
    assert stats.total_time == 5.0
    assert stats.outcome == "completed"
    snap = collector.snapshot()
    assert snap["streams"] == 1
    model = snap["models"]["m1"]
    assert model["chunks"] == 4
    assert model["outcomes"] == {"completed": 1}
    assert model["time_to_first_chunk"]["count"] == 1
    assert model["time_to_first_chunk"]["p50"] == 1.0
    assert model["inter_chunk_max"]["max"] == 2.0
    assert model["total_time"]["sum"] == 5.0


async def test_time_to_first_text_skips_empty_role_chunk() -> None:
    clock = FakeClock()
    schedule = [(1.0, AIMessageChunk(content="")), (3.0, AIMessageChunk(content="hi"))]
    chunks = [
        c
        async for c in astream_chunks(
            timed_source(clock, schedule, end=3.0), model="m", clock=clock, collector=None
        )
    ]
    stats = chunks[-1].stats
    assert stats is not None
    assert stats.time_to_first_chunk == 1.0
    assert stats.time_to_first_text == 3.0
    assert chunks[0].is_first


async def test_empty_stream_emits_one_first_and_last_record() -> None:
    clock = FakeClock()
    chunks = [
        c
        async for c in astream_chunks(
            timed_source(clock, [], end=2.0), model="m", clock=clock, collector=None
        )
    ]
    assert len(chunks) == 1
    only = chunks[0]
    assert only.is_first
    assert only.is_last
    assert only.text == ""
    assert only.stats is not None
    assert only.stats.n_chunks == 0
    assert only.stats.time_to_first_chunk is None
    assert only.stats.inter_chunk_p50 is None
    assert only.stats.chunks_per_second is None
    assert only.stats.total_time == 2.0


async def test_usage_and_metadata_are_kept_and_summed() -> None:
    clock = FakeClock()
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    schedule = [
        (1.0, AIMessageChunk(content="x", response_metadata={"model_name": "served-model"})),
        (2.0, AIMessageChunk(content="", usage_metadata=usage)),
        (3.0, AIMessageChunk(content="", usage_metadata=usage)),
    ]
    chunks = [
        c
        async for c in astream_chunks(
            timed_source(clock, schedule, end=3.0), clock=clock, collector=None
        )
    ]
    assert chunks[0].metadata == {"model_name": "served-model"}
    assert chunks[1].usage == usage
    assert chunks[0].usage is None
    assert chunks[-1].stats is not None
    assert chunks[-1].stats.model == "served-model"  # from response metadata


async def test_async_and_sync_twins_produce_same_texts_and_flags() -> None:
    model = fake_model()
    async_chunks = [c async for c in astream_chunks(model, "hi", collector=None)]
    sync_chunks = list(stream_chunks(model, "hi", collector=None))
    for chunks in (async_chunks, sync_chunks):
        assert "".join(c.text for c in chunks) == "hello big world"
        assert sum(c.is_last for c in chunks) == 1
        assert chunks[-1].is_last
        assert chunks[-1].text == "world"  # chat models flag their last chunk themselves
        assert chunks[-1].stats is not None
        assert sum(c.is_first for c in chunks) == 1
        assert chunks[0].is_first


async def test_chain_gets_terminal_record_and_model_name_from_inner_model() -> None:
    chain = chain_of(fake_model())
    result = await acollect(astream_chunks(chain, {"q": "x"}, collector=None))
    assert result.text == "hello big world"
    assert result.chunks[-1].is_last
    assert result.chunks[-1].text == ""
    assert result.chunks[-1].value is None
    assert result.stats.model == "GenericFakeChatModel"


def test_resolve_model_name_order() -> None:
    fake = FakeListChatModel(responses=["x"])
    assert resolve_model_name(fake) == "FakeListChatModel"
    assert resolve_model_name(fake, {"model_name": "meta"}) == "meta"
    bound = fake.bind(stop=["x"])
    assert resolve_model_name(bound) == "FakeListChatModel"
    lam = RunnableLambda(lambda x: x, name="my_step")
    assert resolve_model_name(lam) == "my_step"
    assert resolve_model_name(None) == "unknown"

    class Named:
        model = "gpt-test"

    assert resolve_model_name(Named(), {"model_name": "meta"}) == "gpt-test"


async def test_structured_stream_keeps_value() -> None:
    async def gen(_: AsyncIterator[Any]) -> AsyncIterator[Answer]:
        yield Answer(answer="a")
        yield Answer(answer="ab")

    result = await acollect(astream_chunks(RunnableGenerator(gen), "x", collector=None))
    assert result.text == ""
    assert [c.value for c in result.chunks[:-1]] == [Answer(answer="a"), Answer(answer="ab")]
    assert result.stats.n_chunks == 2


# --------------------------------------------------------------------------- modes


async def test_async_callback_mode_accepts_sync_and_async_callbacks() -> None:
    model = fake_model()
    seen_sync: list[StreamingChunk] = []
    stats = await aconsume(astream_chunks(model, "hi", collector=None), seen_sync.append)
    assert "".join(c.text for c in seen_sync) == "hello big world"
    assert stats.n_chunks == 5
    assert stats.outcome == "completed"

    seen_async: list[str] = []

    async def on_chunk(chunk: StreamingChunk) -> None:
        await asyncio.sleep(0)
        seen_async.append(chunk.text)

    stats = await aconsume(astream_chunks(model, "hi", collector=None), on_chunk)
    assert "".join(seen_async) == "hello big world"
    assert stats.n_chunks == 5


async def test_callback_error_closes_stream_and_propagates() -> None:
    probe = Probe()

    async def gen(_: AsyncIterator[Any]) -> AsyncIterator[str]:
        async for item in endless_source(probe):
            yield item

    def boom(chunk: StreamingChunk) -> None:
        if chunk.index == 2:
            raise RuntimeError("consumer failed")

    collector = StreamStatsCollector()
    with pytest.raises(RuntimeError, match="consumer failed"):
        await aconsume(
            astream_chunks(RunnableGenerator(gen), "x", model="m", collector=collector), boom
        )
    assert await settle(lambda: probe.closed)
    assert collector.snapshot()["models"]["m"]["outcomes"] == {"cancelled": 1}


def test_sync_callback_and_buffer_modes() -> None:
    model = fake_model()
    seen: list[str] = []
    stats = consume(stream_chunks(model, "hi", collector=None), lambda c: seen.append(c.text))
    assert "".join(seen) == "hello big world"
    assert stats.n_chunks == 5
    result = collect(stream_chunks(model, "hi", collector=None))
    assert result.text == "hello big world"
    assert result.stats.n_chunks == 5
    assert result.chunks[-1].stats == result.stats


def test_sync_callback_rejects_coroutine_function() -> None:
    async def cb(chunk: StreamingChunk) -> None:
        return None

    with pytest.raises(TypeError, match="aconsume"):
        consume(stream_chunks(fake_model(), "hi", collector=None), cb)


async def test_sync_twins_work_inside_a_running_loop() -> None:
    # As in Jupyter: a loop is running in this thread; the sync twin must not start one.
    asyncio.get_running_loop()
    result = collect(stream_chunks(chain_of(fake_model()), {"q": "x"}, collector=None))
    assert result.text == "hello big world"
    texts = [c.text for c in stream_chunks(fake_model(), "hi", collector=None)]
    assert texts[0] == "hello"


def test_sync_break_closes_source() -> None:
    closed: list[bool] = []

    def source() -> Iterator[str]:
        try:
            yield from ("a", "b", "c")
        finally:
            closed.append(True)

    collector = StreamStatsCollector()
    with contextlib.closing(stream_chunks(source(), model="m", collector=collector)) as chunks:
        for chunk in chunks:
            if chunk.index == 0:
                break
    assert closed == [True]
    assert collector.snapshot()["models"]["m"]["outcomes"] == {"cancelled": 1}


def test_sync_callback_error_closes_source_and_records_cancelled() -> None:
    closed: list[bool] = []

    def source() -> Iterator[str]:
        try:
            yield from ("a", "b", "c")
        finally:
            closed.append(True)

    def boom(chunk: StreamingChunk) -> None:
        raise RuntimeError("consumer failed")

    collector = StreamStatsCollector()
    with pytest.raises(RuntimeError, match="consumer failed"):
        consume(stream_chunks(source(), model="m", collector=collector), boom)
    assert closed == [True]
    assert collector.snapshot()["models"]["m"]["outcomes"] == {"cancelled": 1}


async def test_buffer_mode_sums_usage_in_both_twins() -> None:
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    items = [
        AIMessageChunk(content="a", usage_metadata=usage),
        AIMessageChunk(content="b"),
        AIMessageChunk(content="", usage_metadata=usage),
    ]

    async def source() -> AsyncIterator[AIMessageChunk]:
        for item in items:
            yield item

    result = await acollect(astream_chunks(source(), model="m", collector=None))
    assert result.text == "ab"
    assert result.usage is not None
    assert (result.usage["input_tokens"], result.usage["total_tokens"]) == (6, 10)
    assert collect(stream_chunks(iter(items), model="m", collector=None)).usage == result.usage
    assert collect(stream_chunks(iter(["x"]), collector=None)).usage is None


async def test_producers_reject_wrong_arguments_at_the_call() -> None:
    model = fake_model()
    with pytest.raises(TypeError, match="input is missing"):
        astream_chunks(model)
    with pytest.raises(TypeError, match="input is missing"):
        stream_chunks(model)
    with pytest.raises(TypeError, match="input and config apply to a Runnable"):
        stream_chunks(iter(["a"]), "hi")
    with pytest.raises(TypeError, match="input and config apply to a Runnable"):
        astream_chunks(endless_source(Probe()), config={"tags": ["x"]})
    with pytest.raises(TypeError, match="unexpected keyword argument 'modle'"):
        astream_chunks(model, "hi", modle="m")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no stall watchdog; use astream_chunks"):
        stream_chunks(model, "hi", first_chunk_timeout=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="use astream_chunks for an async iterable"):
        stream_chunks(endless_source(Probe()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a Runnable or an async iterable"):
        astream_chunks(["a"])  # type: ignore[arg-type]


def test_none_is_a_runnable_input_like_any_other() -> None:
    echo = RunnableLambda(lambda x: "got None" if x is None else "got something")
    assert collect(stream_chunks(echo, None, collector=None)).text == "got None"


async def test_consumers_refuse_a_stream_without_its_last_chunk() -> None:
    chunks = list(stream_chunks(iter(["a", "b"]), collector=None))
    assert chunks[-1].is_last

    async def cut() -> AsyncIterator[StreamingChunk]:
        for chunk in chunks[:-1]:
            yield chunk

    with pytest.raises(ValueError, match="without their is_last chunk"):
        await acollect(cut())
    with pytest.raises(ValueError, match="without their is_last chunk"):
        await aconsume(cut(), lambda c: None)
    with pytest.raises(ValueError, match="without their is_last chunk"):
        collect(iter(chunks[:-1]))
    with pytest.raises(ValueError, match="without their is_last chunk"):
        consume(iter(chunks[:-1]), lambda c: None)
    assert collect(iter(chunks)).stats == chunks[-1].stats


# --------------------------------------------------------------------------- aggregation


async def test_default_collector_is_registered_and_aggregates_per_model() -> None:
    before = default_collector.snapshot()["models"].get("agg-model", {}).get("streams", 0)
    for _ in range(3):
        await acollect(astream_chunks(fake_model(), "hi", model="agg-model"))
    collect(stream_chunks(fake_model(), "hi", model="agg-model"))
    stats = get_stats()["streams"]
    entry = stats["models"]["agg-model"]
    assert entry["streams"] == before + 4
    assert entry["time_to_first_chunk"]["count"] >= 4
    assert entry["inter_chunk_p95"]["p95"] is not None
    assert "buckets" in entry["total_time"]


def test_collector_caps_model_names() -> None:
    collector = StreamStatsCollector()
    for i in range(300):
        collector.record_ttft(f"model-{i}", 0.01)
    models = collector.snapshot()["models"]
    assert len(models) == 257
    assert models["__other__"]["time_to_first_token"]["count"] == 300 - 256
    collector.reset()
    assert collector.snapshot() == {"streams": 0, "models": {}}


# --------------------------------------------------------------------------- watchdog


async def test_guard_first_chunk_timeout_raises_and_closes_source() -> None:
    probe = Probe()
    with pytest.raises(FirstChunkTimeoutError) as info:
        async for _ in guard_stream(hanging_source(probe), first_chunk_timeout=0.02):
            pass
    assert info.value.chunks_received == 0
    assert info.value.timeout == 0.02
    assert isinstance(info.value, StreamStallError)
    assert isinstance(info.value, TimeoutError)
    assert "first_chunk_timeout" in str(info.value)
    assert probe.closed
    assert probe.cancelled  # the pending read was cancelled inside the source


async def test_guard_inter_chunk_timeout_raises_and_closes_source() -> None:
    probe = Probe()
    got: list[str] = []
    guarded = guard_stream(
        hanging_source(probe, ["a", "b"]), first_chunk_timeout=5, inter_chunk_timeout=0.02
    )
    with pytest.raises(InterChunkTimeoutError) as info:
        await drain(guarded, got)
    assert got == ["a", "b"]
    assert info.value.chunks_received == 2
    assert probe.closed


async def test_guard_passes_through_and_ignores_slow_consumer() -> None:
    # The inter-chunk timer counts time waiting on the source, not the consumer's time.
    probe = Probe()
    got: list[str] = []
    async for item in guard_stream(
        timed_source(FakeClock(), [(0, "a"), (0, "b"), (0, "c")], 0, probe),
        inter_chunk_timeout=0.01,
    ):
        got.append(item)
        await asyncio.sleep(0.05)
    assert got == ["a", "b", "c"]
    assert probe.closed


async def test_guard_does_not_mistake_source_timeout_error_for_stall() -> None:
    async def source() -> AsyncIterator[str]:
        yield "a"
        raise TimeoutError("from the source")

    with pytest.raises(TimeoutError, match="from the source") as info:
        async for _ in guard_stream(source(), inter_chunk_timeout=5):
            pass
    assert not isinstance(info.value, StreamStallError)


async def test_guard_rejects_bad_timeouts() -> None:
    with pytest.raises(ConfigError, match="inter_chunk_timeout"):
        guard_stream(hanging_source(Probe()), inter_chunk_timeout=0)
    with pytest.raises(ConfigError, match="first_chunk_timeout"):
        astream_chunks(fake_model(), "hi", first_chunk_timeout=-1)


async def test_guard_closes_source_when_consumer_breaks() -> None:
    probe = Probe()
    async with contextlib.aclosing(guard_stream(endless_source(probe), inter_chunk_timeout=5)) as g:
        async for _ in g:
            break
    assert probe.closed


async def test_stall_through_runnable_records_stalled_outcome() -> None:
    probe = Probe()

    async def gen(_: AsyncIterator[Any]) -> AsyncIterator[str]:
        async for item in hanging_source(probe, ["a"]):
            yield item

    collector = StreamStatsCollector()
    with pytest.raises(InterChunkTimeoutError):
        await acollect(
            astream_chunks(
                RunnableGenerator(gen),
                "x",
                model="m",
                inter_chunk_timeout=0.02,
                collector=collector,
            )
        )
    assert probe.closed
    entry = collector.snapshot()["models"]["m"]
    assert entry["outcomes"] == {"stalled": 1}
    assert entry["chunks"] == 1


# --------------------------------------------------------------------------- cancellation


async def test_task_cancel_closes_source_and_records_cancelled() -> None:
    probe = Probe()
    collector = StreamStatsCollector()
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in astream_chunks(hanging_source(probe, ["a"]), model="m", collector=collector):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    await asyncio.sleep(0)  # let the consumer block on the stalled source
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.cancelled
    assert probe.closed
    assert collector.snapshot()["models"]["m"]["outcomes"] == {"cancelled": 1}


async def test_break_with_aclosing_closes_source_at_once() -> None:
    probe = Probe()
    collector = StreamStatsCollector()
    async with contextlib.aclosing(
        astream_chunks(endless_source(probe), model="m", collector=collector)
    ) as chunks:
        async for chunk in chunks:
            if chunk.index == 2:
                break
    assert probe.closed
    assert collector.snapshot()["models"]["m"]["outcomes"] == {"cancelled": 1}


async def test_plain_break_closes_source_soon_after() -> None:
    probe = Probe()
    async for _ in astream_chunks(endless_source(probe), model="m", collector=None):
        break
    gc.collect()
    for _ in range(10):  # the loop's async-generator finalizer runs aclose() as a task
        if probe.closed:
            break
        await asyncio.sleep(0)
    assert probe.closed


async def test_many_cancelled_streams_leave_nothing_open() -> None:
    probes = [Probe() for _ in range(200)]
    handler = TimeToFirstTokenHandler(collector=None)
    for probe in probes:

        async def gen(_: AsyncIterator[Any], probe: Probe = probe) -> AsyncIterator[str]:
            async for item in endless_source(probe):
                yield item

        runnable = RunnableGenerator(gen)
        async with contextlib.aclosing(
            astream_chunks(runnable, "x", {"callbacks": [handler]}, collector=None)
        ) as chunks:
            async for _ in chunks:
                break
    assert await settle(lambda: all(p.closed for p in probes))
    assert handler.in_progress == 0


# --------------------------------------------------------------------------- backpressure


async def test_direct_mode_never_reads_ahead_of_a_slow_consumer() -> None:
    probe = Probe()
    max_ahead = 0
    consumed = 0
    async with contextlib.aclosing(
        astream_chunks(endless_source(probe), collector=None, inter_chunk_timeout=30)
    ) as chunks:
        async for _ in chunks:
            consumed += 1
            max_ahead = max(max_ahead, probe.produced - consumed)
            for _ in range(3):  # a slow consumer: yields the loop a few times per chunk
                await asyncio.sleep(0)
            if consumed == 200:
                break
    assert probe.produced <= 201
    assert max_ahead <= 1


async def test_callback_mode_waits_for_the_callback() -> None:
    probe = Probe()
    max_ahead = 0
    consumed = 0

    async def gen(_: AsyncIterator[Any]) -> AsyncIterator[str]:
        async for item in endless_source(probe):
            yield item
            if probe.produced >= 100:
                return

    async def slow(chunk: StreamingChunk) -> None:
        nonlocal consumed, max_ahead
        for _ in range(3):
            await asyncio.sleep(0)
        if chunk.value is not None:
            consumed += 1
        max_ahead = max(max_ahead, probe.produced - consumed)

    stats = await aconsume(astream_chunks(RunnableGenerator(gen), "x", collector=None), slow)
    assert stats.n_chunks == 100
    assert max_ahead <= 1


# --------------------------------------------------------------------------- TTFT handler


async def test_ttft_handler_inside_lcel_chain_with_tick_clock() -> None:
    collector = StreamStatsCollector()
    handler = TimeToFirstTokenHandler(clock=TickClock(), collector=collector)
    chain = chain_of(fake_model())
    text = "".join([c async for c in chain.astream({"q": "x"}, {"callbacks": [handler]})])
    assert text == "hello big world"
    assert len(handler.timings) == 1
    timing = handler.timings[0]
    # start at tick 0, first token at tick 1, 5 tokens (ticks 1..5), end at tick 6
    assert timing.time_to_first_token == 1.0
    assert timing.tokens == 5
    assert timing.total_time == 6.0
    assert timing.model == "GenericFakeChatModel"
    assert timing.parent_run_id is not None  # it ran inside the chain
    assert handler.get(timing.run_id) == timing
    assert handler.in_progress == 0
    ttft = collector.snapshot()["models"]["GenericFakeChatModel"]["time_to_first_token"]
    assert ttft["count"] == 1
    assert ttft["p50"] == 1.0


async def test_ttft_handler_under_astream_events() -> None:
    handler = TimeToFirstTokenHandler(collector=None)
    chain = chain_of(fake_model())
    tokens = []
    async for event in chain.astream_events({"q": "x"}, {"callbacks": [handler]}, version="v2"):
        if event["event"] == "on_chat_model_stream":
            tokens.append(event["data"]["chunk"].content)
    assert "".join(tokens) == "hello big world"
    assert len(handler.timings) == 1
    assert handler.timings[0].time_to_first_token is not None
    assert handler.timings[0].tokens == 5


def test_ttft_handler_names_model_from_ls_params_and_skips_empty_tokens() -> None:
    handler = TimeToFirstTokenHandler(clock=TickClock(), collector=None)

    class Named(GenericFakeChatModel):
        model_name: str = "named-model"

    model = Named(messages=iter([AIMessage(content="a b")]))
    list(model.stream("hi", {"callbacks": [handler]}))
    assert handler.timings[0].model == "named-model"

    # An empty first token (a role-only chunk) is not the first token.
    from uuid import uuid4

    run_id = uuid4()
    handler.on_chat_model_start({}, [[]], run_id=run_id, invocation_params={"model": "inv"})
    handler.on_llm_new_token("", run_id=run_id)
    handler.on_llm_new_token("x", run_id=run_id)
    handler.on_llm_error(RuntimeError("boom"), run_id=run_id)
    timing = handler.get(run_id)
    assert timing is not None
    assert timing.model == "inv"
    assert timing.time_to_first_token == 2.0
    assert timing.tokens == 2
    assert timing.error


def test_ttft_handler_without_streaming_records_no_ttft() -> None:
    collector = StreamStatsCollector()
    handler = TimeToFirstTokenHandler(collector=collector)
    FakeListChatModel(responses=["x"]).invoke("hi", {"callbacks": [handler]})
    assert handler.timings[0].time_to_first_token is None
    assert collector.snapshot()["models"] == {}


def test_each_item_is_resolved_once_and_its_metadata_not_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_fastpipe.streaming import _timer

    spy = mock.Mock(wraps=_timer.message_of)
    monkeypatch.setattr(_timer, "message_of", spy)
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    items = [
        AIMessageChunk(content="a", response_metadata={"model_name": "m"}),
        ChatGenerationChunk(message=AIMessageChunk(content="b", usage_metadata=usage)),
        AIMessageChunk(content="", chunk_position="last"),
    ]
    chunks = list(stream_chunks(iter(items), collector=None))
    assert spy.call_count == len(items)  # one resolution per item, not one per field
    assert [c.text for c in chunks] == ["a", "b", ""]
    assert chunks[0].metadata is items[0].response_metadata  # no per-chunk dict copy
    assert chunks[1].usage == usage
    assert chunks[2].is_last


# --------------------------------------------------------------------------- hot-path internals


def test_fast_built_chunk_is_a_real_frozen_streaming_chunk() -> None:
    import dataclasses

    from langchain_fastpipe.streaming import _chunk

    item = AIMessageChunk(content="hi", response_metadata={"model_name": "m"})
    chunk = next(stream_chunks(iter([item]), model="m", collector=None))
    assert type(chunk) is StreamingChunk
    expected = StreamingChunk(
        index=0,
        text="hi",
        since_start=chunk.since_start,
        since_previous=chunk.since_previous,
        is_first=True,
        is_last=False,
        usage=None,
        metadata=item.response_metadata,
        value=item,
    )
    assert chunk == expected
    assert repr(chunk) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk.text = "changed"  # type: ignore[misc]
    assert _chunk.ChunkBuilder.__slots__ == StreamingChunk.__slots__


async def test_long_stream_keeps_recent_gaps_and_the_true_max(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_fastpipe.streaming import _timer

    monkeypatch.setattr(_timer, "_MAX_GAPS", 8)
    clock = FakeClock()
    # one early 50 s gap, then 1 s gaps: the big gap is dropped from the quantiles, kept as max
    schedule = [(1.0, "a"), (51.0, "b")] + [(52.0 + i, "x") for i in range(20)]
    source = timed_source(clock, schedule, end=80.0)
    chunks = [c async for c in astream_chunks(source, model="m", clock=clock, collector=None)]
    stats = chunks[-1].stats
    assert stats is not None
    assert stats.n_chunks == 22
    assert stats.inter_chunk_max == 50.0
    assert stats.inter_chunk_p50 == 1.0
    assert stats.inter_chunk_p95 == 1.0
