"""The pipeline over the wire: ChatFastpipe against the emulator on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable

from langchain_core.output_parsers import StrOutputParser

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.pipeline import AnswerPipeline, RankedFallbacks, Strategy, is_answer
from langchain_fastpipe.transport import get_pool

MakeEmulator = Callable[..., EmulatorServer]


def chat(server: EmulatorServer, model: str, **kwargs: object) -> ChatFastpipe:
    return ChatFastpipe(
        model=model, base_url=server.openai_base_url, api_key="sk-test", max_retries=0, **kwargs
    )


async def test_hanging_strategy_falls_back_by_first_chunk_timeout(
    make_emulator: MakeEmulator,
) -> None:
    server = make_emulator(
        EmulatorConfig(
            models={
                "hangs": ModelProfile(fail_rate=1.0, fail_fault=Fault.hang_before_first_byte(10.0)),
                "works": ModelProfile(answer_tokens=6),
            }
        )
    )
    hangs, works = chat(server, "hangs"), chat(server, "works")
    ranked = RankedFallbacks(
        strategies=[
            Strategy(name="hangs", runnable=hangs | StrOutputParser(), validator=is_answer),
            Strategy(name="works", runnable=works | StrOutputParser(), validator=is_answer),
        ],
        optimized=False,
        first_chunk_timeout=2.0,  # "works" answers well within it on a busy machine
    )
    chunks = [c async for c in ranked.astream("Hello there")]
    assert len(chunks) >= 6
    assert "".join(chunks).strip()
    stats = ranked.stats()["strategies"]
    assert stats["hangs"]["failures"] == {"first_chunk_timeout": 1}
    assert stats["works"]["successes"] == 1
    # The abandoned stream was closed: nothing is left in flight on the shared pool.
    assert get_pool(hangs.endpoint_config).stats()["in_flight"] == 0
    assert server.chat_requests == 2


async def test_ranked_pipeline_prefers_reliable_model_after_warmup(
    make_emulator: MakeEmulator,
) -> None:
    server = make_emulator(
        EmulatorConfig(
            seed=3,
            models={
                "flaky-extractor": ModelProfile(
                    fail_rate=0.8, fail_fault=Fault.status(500), answer_tokens=5
                ),
                "formatter": ModelProfile(answer_tokens=8),
            },
        )
    )
    pipeline = AnswerPipeline(
        extraction_model=chat(server, "flaky-extractor"),
        formatting_model=chat(server, "formatter"),
        seed=11,
    )
    for _ in range(30):
        answer = await pipeline.ainvoke({"question": "Why is the sky blue?", "context": None})
        assert answer.strip()
    counters = pipeline.stats()["strategies"]
    before = counters["structured"]["attempts"] + counters["few_shot"]["attempts"]
    direct_before = counters["direct"]["ranked_first"]
    for _ in range(20):
        await pipeline.ainvoke("Why is the sky blue?")
    counters = pipeline.stats()["strategies"]
    after = counters["structured"]["attempts"] + counters["few_shot"]["attempts"]
    assert after - before <= 5, counters
    assert counters["direct"]["ranked_first"] - direct_before >= 15
    assert pipeline.learned()["direct"].success_rate == 1.0


async def test_structured_extraction_over_the_wire(make_emulator: MakeEmulator) -> None:
    server = make_emulator(EmulatorConfig(models={"m": ModelProfile(answer_tokens=5)}))
    model = chat(server, "m")
    pipeline = AnswerPipeline(extraction_model=model, formatting_model=model, optimized=False)
    tokens = [
        t async for t in pipeline.astream({"question": "What is HTTP/2?", "context": "A protocol."})
    ]
    assert len(tokens) >= 5
    counters = pipeline.stats()["strategies"]
    assert counters["structured"]["successes"] == 1  # schema-valid JSON from the emulator
    assert pipeline.invoke("What is HTTP/2?").strip()
