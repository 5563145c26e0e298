"""Unit tests of AnswerPipeline and its default strategies (langchain-core fake chat models)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableGenerator, RunnableLambda

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.config import FastpipeConfig
from langchain_fastpipe.errors import AllStrategiesFailedError, ConfigError
from langchain_fastpipe.pipeline import (
    AnswerPipeline,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    Strategy,
    ThompsonPolicy,
    is_answer,
)
from langchain_fastpipe.pipeline._store import make_store
from langchain_fastpipe.pipeline._strategies import (
    Extraction,
    direct_strategy,
    normalize_input,
    parse_extraction,
)

GOOD_JSON = '{"answer": "Paris", "facts": ["Paris is the capital of France."]}'


class RecordingChat(FakeListChatModel):
    """FakeListChatModel that remembers the prompts it was given."""

    seen: list[list[BaseMessage]] = []  # noqa: RUF012 - one list per test via fresh model

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.seen.append(list(messages))
        return super()._call(messages, *args, **kwargs)

    def _stream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._stream(messages, *args, **kwargs)

    async def _astream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        async for chunk in super()._astream(messages, *args, **kwargs):
            yield chunk


def models(extraction: str = GOOD_JSON, answer: str = "The capital is Paris."):
    return (FakeListChatModel(responses=[extraction]), FakeListChatModel(responses=[answer]))


# -- pure helpers ------------------------------------------------------------------------


def test_normalize_input() -> None:
    assert normalize_input("Why?") == {
        "question": "Why?",
        "context": "",
        "partial_answer": "",
        "continuation": "",
    }
    data = normalize_input({"question": "Q", "context": None, "partial_answer": "Half"})
    assert data["context"] == ""
    assert "Half" in data["continuation"]
    with pytest.raises(ConfigError, match="question"):
        normalize_input({"context": "c"})
    with pytest.raises(ConfigError, match="str or a dict"):
        normalize_input(42)


def test_parse_extraction() -> None:
    assert parse_extraction(GOOD_JSON).answer == "Paris"
    fenced = f"Sure!\n```json\n{GOOD_JSON}\n```"
    assert parse_extraction(AIMessage(content=fenced)).facts == ["Paris is the capital of France."]
    assert parse_extraction({"answer": "x"}) == Extraction(answer="x")
    with pytest.raises(OutputParserException):
        parse_extraction("no json here")
    with pytest.raises(OutputParserException):
        parse_extraction('{"facts": []}')


def test_is_answer() -> None:
    assert is_answer("text")
    assert not is_answer("   ")
    assert not is_answer(None)
    assert is_answer(AIMessage(content="hi"))


def test_needs_models_or_strategies() -> None:
    with pytest.raises(ConfigError, match="extraction_model"):
        AnswerPipeline(formatting_model=FakeListChatModel(responses=["x"]))


# -- the pipeline --------------------------------------------------------------------


async def test_structured_then_formatting() -> None:
    ext, fmt = models()
    pipeline = AnswerPipeline(extraction_model=ext, formatting_model=fmt, optimized=False)
    assert pipeline.invoke("Capital of France?") == "The capital is Paris."
    assert await pipeline.ainvoke({"question": "Capital?", "context": "France."}) == (
        "The capital is Paris."
    )
    assert pipeline.stats()["strategies"]["structured"]["successes"] == 2
    assert pipeline.stats()["strategies"]["direct"]["attempts"] == 0


async def test_bad_extraction_falls_back_to_direct() -> None:
    ext, fmt = models(extraction="I am not JSON")
    pipeline = AnswerPipeline(extraction_model=ext, formatting_model=fmt, optimized=False)
    assert await pipeline.ainvoke("Capital?") == "The capital is Paris."
    counters = pipeline.stats()["strategies"]
    assert counters["structured"]["failures"] == {"error": 1}
    assert counters["direct"]["successes"] == 1


async def test_empty_answer_fails_validation_then_all_fail() -> None:
    ext, fmt = models(answer="   ")
    pipeline = AnswerPipeline(extraction_model=ext, formatting_model=fmt, optimized=False)
    with pytest.raises(AllStrategiesFailedError) as info:
        await pipeline.ainvoke("Q?")
    assert [n for n, _ in info.value.errors] == ["structured", "direct", "few_shot"]
    assert pipeline.stats()["strategies"]["direct"]["failures"] == {"invalid": 1}


async def test_astream_yields_formatting_tokens() -> None:
    ext = FakeListChatModel(responses=[GOOD_JSON])
    fmt = GenericFakeChatModel(messages=iter([AIMessage(content="The capital is Paris.")]))
    pipeline = AnswerPipeline(extraction_model=ext, formatting_model=fmt, optimized=False)
    chunks = [c async for c in pipeline.astream("Capital?")]
    assert len(chunks) > 3
    assert all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == "The capital is Paris."


async def test_ranking_learns_to_skip_a_broken_extraction() -> None:
    ext, fmt = models(extraction="broken")
    pipeline = AnswerPipeline(extraction_model=ext, formatting_model=fmt, seed=4)
    for _ in range(30):
        assert await pipeline.ainvoke("Q?") == "The capital is Paris."
    counters = pipeline.stats()["strategies"]
    before = counters["structured"]["attempts"] + counters["few_shot"]["attempts"]
    for _ in range(20):
        await pipeline.ainvoke("Q?")
    counters = pipeline.stats()["strategies"]
    after = counters["structured"]["attempts"] + counters["few_shot"]["attempts"]
    assert after - before <= 3  # broken strategies are skipped, only probed
    assert counters["direct"]["ranked_first"] >= 35


async def test_attempts_visible_in_astream_events() -> None:
    ext, fmt = models(extraction="broken")
    pipeline = AnswerPipeline(extraction_model=ext, formatting_model=fmt, optimized=False)
    events = [e async for e in pipeline.astream_events("Q?", version="v2")]
    starts = {e["name"]: e for e in events if e["event"] == "on_chain_start"}
    assert {"AnswerPipeline", "structured", "direct"} <= set(starts)
    assert "attempt:structured" in starts["structured"]["tags"]
    assert "attempt:direct" in starts["direct"]["tags"]
    tokens = [e for e in events if e["event"] == "on_chat_model_stream"]
    assert tokens  # the formatting model's tokens are visible too


async def test_sync_invoke_and_stream_inside_running_loop() -> None:
    asyncio.get_running_loop()
    ext, fmt = models()
    pipeline = AnswerPipeline(extraction_model=ext, formatting_model=fmt)
    assert pipeline.invoke("Q?") == "The capital is Paris."
    assert "".join(pipeline.stream("Q?")) == "The capital is Paris."


def _breaks_mid_stream(first: str):
    def sync(inputs: Iterator[Any]) -> Iterator[str]:
        next(iter(inputs))
        yield first
        raise ValueError("connection reset mid-stream")

    async def asyn(inputs: AsyncIterator[Any]) -> AsyncIterator[str]:
        async for _ in inputs:
            break
        yield first
        raise ValueError("connection reset mid-stream")

    return RunnableGenerator(sync, asyn, name="breaks")


async def test_continuation_mode_hands_partial_answer_on() -> None:
    recorder = RecordingChat(responses=["the rest."])
    recorder.seen = []
    pipeline = AnswerPipeline(
        strategies=[
            Strategy(name="breaks", runnable=_breaks_mid_stream("Half of ")),
            direct_strategy(recorder),
        ],
        optimized=False,
        continuation=True,
    )
    chunks = [c async for c in pipeline.astream({"question": "Q?"})]
    assert "".join(chunks) == "Half of the rest."
    prompt = recorder.seen[-1][-1].content
    assert "continue it exactly where it stops" in prompt
    assert "Half of " in prompt


async def test_without_continuation_mid_stream_error_is_raised() -> None:
    recorder = RecordingChat(responses=["the rest."])
    recorder.seen = []
    pipeline = AnswerPipeline(
        strategies=[
            Strategy(name="breaks", runnable=_breaks_mid_stream("Half of ")),
            direct_strategy(recorder),
        ],
        optimized=False,
    )
    with pytest.raises(ValueError, match="mid-stream"):
        _ = [c async for c in pipeline.astream({"question": "Q?"})]
    assert recorder.seen == []


async def test_first_chunk_timeout_in_pipeline() -> None:
    closed = []

    async def hang(inputs: AsyncIterator[Any]) -> AsyncIterator[str]:
        try:
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.append(True)

    _, fmt = models()
    pipeline = AnswerPipeline(
        strategies=[Strategy(name="hangs", runnable=RunnableGenerator(hang)), direct_strategy(fmt)],
        optimized=False,
        first_chunk_timeout=1.0,  # the hang never ends; the next strategy answers at once
    )
    assert "".join([c async for c in pipeline.astream("Q?")]) == "The capital is Paris."
    assert closed == [True]
    assert pipeline.stats()["strategies"]["hangs"]["failures"] == {"first_chunk_timeout": 1}


# -- from_config and call kwargs ------------------------------------------------------


def _config(**sections: Any) -> FastpipeConfig:
    backend = {"provider": "ollama", "base_url": "http://127.0.0.1:9", "model": "base"}
    backend.update(sections.pop("backend", {}))
    return FastpipeConfig(backend=backend, **sections)


def test_from_config_applies_flags_policy_and_store(tmp_path: Path) -> None:
    config = _config(
        performance_optimizations={
            "enable_optimized_pipeline": False,
            "hedging": True,
            "first_chunk_timeout_seconds": 2.5,
        },
        pipeline={
            "min_success_rate": 0.35,
            "probe_rate": 0.125,
            "store": "sqlite",
            "store_url": str(tmp_path / "s.db"),
        },
    )
    extraction, formatting = models()
    pipeline = AnswerPipeline.from_config(
        config, extraction_model=extraction, formatting_model=formatting, seed=3
    )
    ranked = pipeline.ranked
    assert (ranked.optimized, ranked.hedge, ranked.first_chunk_timeout) == (False, True, 2.5)
    assert isinstance(ranked.policy, ThompsonPolicy)
    assert (ranked.policy.skip_threshold, ranked.policy.probe_rate) == (0.35, 0.125)
    assert isinstance(pipeline.store, SQLiteStore)
    assert pipeline.store.path == str(tmp_path / "s.db")
    assert pipeline.extraction_model is extraction
    pipeline.store.close()


def test_from_config_defaults_and_models_from_the_backend() -> None:
    config = _config(backend={"extraction_model": "small", "formatting_model": "big"})
    pipeline = AnswerPipeline.from_config(config)
    ranked = pipeline.ranked
    assert (ranked.optimized, ranked.hedge, ranked.first_chunk_timeout) == (True, False, None)
    assert isinstance(pipeline.store, MemoryStore)
    extraction, formatting = pipeline.extraction_model, pipeline.formatting_model
    assert isinstance(extraction, ChatFastpipe)
    assert isinstance(formatting, ChatFastpipe)
    assert (extraction.model_name, formatting.model_name) == ("small", "big")
    assert (extraction.provider, extraction.base_url) == ("ollama", "http://127.0.0.1:9")
    assert extraction.preload is False  # warming is the preloader's job


def test_from_config_names_the_missing_model() -> None:
    config = FastpipeConfig(backend={"provider": "ollama"})
    with pytest.raises(ConfigError, match=r"backend\.extraction_model or backend\.model"):
        AnswerPipeline.from_config(config)


def test_make_store_follows_the_config_names(tmp_path: Path) -> None:
    assert isinstance(make_store("memory"), MemoryStore)
    assert isinstance(make_store("redis", "redis://127.0.0.1:1/0"), RedisStore)
    with pytest.raises(ConfigError, match="store_url"):
        make_store("redis")
    with pytest.raises(ConfigError, match="'memory', 'sqlite' or 'redis'"):
        make_store("postgres")


async def test_call_kwargs_reach_the_strategies() -> None:
    seen: list[Any] = []

    def recorder(_: Any) -> str:
        return "ok"

    class Probe(RunnableLambda):  # type: ignore[type-arg]
        def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
            seen.append(kwargs)
            return super().invoke(input, config)

        def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
            seen.append(kwargs)
            return super().stream(input, config)

        async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
            seen.append(kwargs)
            async for chunk in super().astream(input, config):
                yield chunk

    pipeline = AnswerPipeline(strategies=[Strategy(name="p", runnable=Probe(recorder))])
    assert pipeline.invoke("Q?", stop=["\n"]) == "ok"
    assert list(pipeline.stream("Q?", stop=["\n"])) == ["ok"]
    assert await pipeline.ainvoke("Q?", stop=["\n"]) == "ok"
    assert [c async for c in pipeline.astream("Q?", stop=["\n"])] == ["ok"]
    assert seen == [{"stop": ["\n"]}] * 4
    seen.clear()
    assert pipeline.invoke("Q?") == "ok"
    assert seen == [{}]
