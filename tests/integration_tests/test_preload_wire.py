"""Preloading over the wire against the emulator (real sockets on 127.0.0.1).

Cold starts are asserted through the emulator's load counter and loaded-model set, and
concurrency through its count of in-flight requests, never through timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from langchain_core.output_parsers import StrOutputParser

from langchain_fastpipe._chat import _preload as chat_preload
from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.pipeline import AnswerPipeline
from langchain_fastpipe.preload import (
    ModelPreloader,
    PreloadSpec,
    PreloadStatus,
    default_preloader,
)
from langchain_fastpipe.prompts import FEW_SHOT_PROMPT

MakeEmulator = Callable[..., EmulatorServer]
LOAD = 3.0


def _slow(*names: str, load: float = LOAD) -> EmulatorConfig:
    return EmulatorConfig(models={n: ModelProfile(load_seconds=load) for n in names})


def _ollama(emu: EmulatorServer, model: str, **kw: object) -> ChatFastpipe:
    params: dict[str, object] = {
        "provider": "ollama",
        "model": model,
        "base_url": emu.base_url,
        "temperature": 0,
        "max_tokens": 8,
        "keep_alive": "10m",
        "model_kwargs": {"num_ctx": 2048, "top_k": 20},
    }
    params.update(kw)
    return ChatFastpipe(**params)  # type: ignore[arg-type]


def _openai(emu: EmulatorServer, model: str, **kw: object) -> ChatFastpipe:
    params: dict[str, object] = {
        "provider": "openai",
        "model": model,
        "base_url": f"{emu.base_url}/v1",
        "api_key": "sk-test-not-real",
        "max_tokens": 8,
    }
    params.update(kw)
    return ChatFastpipe(**params)  # type: ignore[arg-type]


async def test_after_preload_the_first_query_triggers_no_load(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(_slow("slow"))
    llm = _ollama(emu, "slow")
    pre = ModelPreloader()
    pre.register(llm)
    (result,) = await pre.preload()
    assert result.status is PreloadStatus.OK, result.error
    assert result.steps == ("connections", "model_load")
    assert "slow" in emu.loaded_models
    assert emu.load_counts == {"slow": 1}
    connections = emu.connections_opened

    reply = await llm.ainvoke("Why is the sky blue?")
    assert reply.content
    assert emu.load_counts == {"slow": 1}  # the query paid no load
    assert emu.connections_opened == connections  # and reused the warmed connection


async def test_without_preload_the_first_query_pays_the_load(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(_slow("slow"))
    llm = _ollama(emu, "slow")
    assert emu.loaded_models == set()
    reply = await llm.ainvoke("Why is the sky blue?")
    assert reply.content
    assert emu.load_counts == {"slow": 1}  # loaded by the query itself
    assert len(emu.bodies("/api/generate")) == 0


async def test_ollama_warmup_carries_the_same_options_as_real_requests(
    make_emulator: MakeEmulator,
) -> None:
    emu = make_emulator()
    llm = _ollama(emu, "m")
    pre = ModelPreloader()
    pre.register(llm)
    (result,) = await pre.preload()
    assert result.ok, result.error
    await llm.ainvoke("hello")
    async for _ in llm.astream("hello"):
        pass
    (warm,) = emu.bodies("/api/generate")
    chats = emu.bodies("/api/chat")
    assert len(chats) == 2
    assert warm["model"] == "m"
    assert "prompt" not in warm or not warm["prompt"]
    assert warm["keep_alive"] == "10m"
    assert warm["options"]["num_ctx"] == 2048
    for chat in chats:
        assert chat["options"] == warm["options"]
        assert chat["keep_alive"] == warm["keep_alive"]


async def test_openai_warmup_is_a_one_token_request(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(_slow("gpt-slow"))
    llm = _openai(emu, "gpt-slow")
    pre = ModelPreloader()
    pre.register(llm)
    (result,) = await pre.preload()
    assert result.ok, result.error
    (warm,) = emu.bodies("/v1/chat/completions")
    assert warm["max_tokens"] == 1
    assert emu.load_counts == {"gpt-slow": 1}
    (recorded,) = emu.recorded("/v1/chat/completions")
    assert "sk-test-not-real" not in str(recorded.headers)
    await llm.ainvoke("hi")
    assert emu.load_counts == {"gpt-slow": 1}


async def test_two_models_warm_concurrently(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(_slow("a", "b"))
    pre = ModelPreloader()
    pre.register(_ollama(emu, "a"))
    pre.register(_openai(emu, "b"))
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, emu.active_requests)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    results = await pre.preload()
    stop.set()
    await watcher
    assert [r.status for r in results] == [PreloadStatus.OK, PreloadStatus.OK]
    assert emu.load_counts == {"a": 1, "b": 1}
    # Both 3 s loads were in flight at the same moment: concurrent, not one after another.
    assert peak == 2


async def test_timeout_is_reported_and_the_model_still_works(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(_slow("slow"))
    llm = _ollama(emu, "slow")
    pre = ModelPreloader()
    pre.register(llm, timeout=1.5)  # under the 3 s load, over a busy machine's connect
    (result,) = await pre.preload()
    assert result.status is PreloadStatus.TIMED_OUT
    assert result.steps == ("connections",)
    assert "exceeded 1.5s" in (result.error or "")
    reply = await llm.ainvoke("still there?")
    assert reply.content


async def test_failed_warmup_is_reported_and_the_model_still_works(
    make_emulator: MakeEmulator,
) -> None:
    emu = make_emulator()
    llm = _openai(emu, "m", max_retries=0)
    emu.inject(Fault.status(503), times=1)
    pre = ModelPreloader()
    pre.register(llm)
    (result,) = await pre.preload()
    assert result.status is PreloadStatus.FAILED
    assert "503" in (result.error or "")
    assert "sk-test-not-real" not in (result.error or "")
    assert result.steps == ("connections",)
    assert (await llm.ainvoke("hi")).content


def test_preload_sync_warms_the_sync_client(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(_slow("slow", load=0.5))
    llm = _openai(emu, "slow")
    pre = ModelPreloader()
    pre.register(llm)
    (result,) = pre.preload_sync()
    assert result.ok, result.error
    assert result.steps == ("connections", "model_load")
    connections = emu.connections_opened
    assert llm.invoke("hi").content
    assert emu.load_counts == {"slow": 1}
    assert emu.connections_opened == connections


async def test_env_spec_is_built_and_warmed_lazily(make_emulator: MakeEmulator) -> None:
    emu = make_emulator()
    pre = ModelPreloader()
    name = pre.register(PreloadSpec("ollama", "envmodel", emu.base_url))
    assert emu.requests == 0  # registering contacts nothing
    (result,) = await pre.preload()
    assert result.name == name
    assert result.ok, result.error
    assert "envmodel" in emu.loaded_models


async def test_chat_model_preload_true_registers_and_preload_warms_it(
    make_emulator: MakeEmulator,
) -> None:
    emu = make_emulator()
    llm = _ollama(emu, "eager", preload=True)
    name = f"ollama:eager@{emu.base_url}"
    try:
        assert name in default_preloader.names()
        assert emu.requests == 0  # the constructor only registers
        assert not default_preloader._background
        (result,) = await default_preloader.preload([name])
        assert result.ok, result.error
        assert "eager" in emu.loaded_models
        await llm.ainvoke("hi")
        assert emu.load_counts == {"eager": 1}
    finally:
        default_preloader.unregister(name)


@pytest.fixture
def fresh_default_preloader(monkeypatch: pytest.MonkeyPatch) -> ModelPreloader:
    """The runtime's default preloader replaced by an empty one for one test."""
    pre = ModelPreloader()
    monkeypatch.setattr(runtime(), "_preloader", pre)
    monkeypatch.setattr(chat_preload, "_preloaded", set())
    return pre


async def test_first_async_call_warms_what_nothing_warmed(
    make_emulator: MakeEmulator, fresh_default_preloader: ModelPreloader
) -> None:
    emu = make_emulator()
    other = _ollama(emu, "other", preload=True)
    llm = _ollama(emu, "first", preload=True)
    assert emu.requests == 0
    await llm.ainvoke("hi")  # no lifespan, no preload(): the first call starts them
    # The warm-up task may already be done (finished tasks leave _background).
    await asyncio.gather(*fresh_default_preloader._background)
    results = list(fresh_default_preloader.results.values())
    assert len(results) == 2
    assert all(r.ok for r in results), results
    assert "other" in emu.loaded_models
    await other.ainvoke("hi")
    assert emu.load_counts["other"] == 1  # warmed in the background, not by this call


def test_first_sync_call_warms_in_a_short_lived_thread(
    make_emulator: MakeEmulator, fresh_default_preloader: ModelPreloader
) -> None:
    emu = make_emulator()
    _ollama(emu, "threaded", preload=True)
    llm = _ollama(emu, "caller", preload=True)
    llm.invoke("hi")
    for thread in threading.enumerate():
        if thread.name == "fastpipe-preload":
            thread.join()  # the warm-up thread ends with its warm-ups
    name = f"ollama:threaded@{emu.base_url}"
    assert fresh_default_preloader.results[name].ok
    assert "threaded" in emu.loaded_models


async def test_preload_over_tls_http2_does_the_handshake(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(http2=True, tls=True)
    llm = _openai(emu, "m", verify=emu.ca_cert_path)
    pre = ModelPreloader()
    pre.register(llm)
    (result,) = await pre.preload()
    assert result.ok, result.error
    opened = emu.connections_opened
    assert opened >= 1
    await llm.ainvoke("hi")
    assert emu.connections_opened == opened


async def test_from_config_warms_the_configured_models(make_emulator: MakeEmulator) -> None:
    from langchain_fastpipe.config import FastpipeConfig

    emu = make_emulator(_slow("a", "b", load=0.2))
    config = FastpipeConfig(
        backend={"provider": "ollama", "base_url": emu.base_url, "model": "a"},
        preload={"models": ["a", "b"]},
    )
    pre = ModelPreloader.from_config(config)
    results = await pre.preload()
    assert [r.status for r in results] == [PreloadStatus.OK, PreloadStatus.OK]
    assert emu.load_counts == {"a": 1, "b": 1}
    reply = await ChatFastpipe.from_config(config, model="b", preload=False).ainvoke("Hi")
    assert reply.content
    assert emu.load_counts == {"a": 1, "b": 1}  # the configured model was already loaded
    await pre.aclose()


# --------------------------------------------------------------------------- prompt warm-ups
def _rendered(question: str) -> list[dict[str, str]]:
    """FEW_SHOT_PROMPT's messages as the OpenAI wire format carries them."""
    return [
        {"role": "system", "content": "Answer with a few words only."},
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "Rome"},
        {"role": "user", "content": "What colour is the sky on a clear day?"},
        {"role": "assistant", "content": "Blue"},
        {"role": "user", "content": question},
    ]


async def test_openai_warmup_carries_the_rendered_prompt_prefix(
    make_emulator: MakeEmulator,
) -> None:
    emu = make_emulator(_slow("gpt-slow", load=0.2))
    llm = _openai(emu, "gpt-slow", temperature=0, stop=["\n"])
    pre = ModelPreloader()
    pre.register(llm, prompt=FEW_SHOT_PROMPT)
    (result,) = await pre.preload()
    assert result.ok, result.error
    assert result.steps == ("connections", "model_load", "prompt_prefix")
    (warm,) = emu.bodies("/v1/chat/completions")  # the prompt replaced the generic "hi"
    assert warm["messages"] == _rendered("")
    assert warm["max_tokens"] == 1
    assert emu.load_counts == {"gpt-slow": 1}

    await (FEW_SHOT_PROMPT | llm).ainvoke({"question": "What is the capital of France?"})
    _, real = emu.bodies("/v1/chat/completions")
    assert real["messages"] == _rendered("What is the capital of France?")
    assert emu.load_counts == {"gpt-slow": 1}
    # Same request but the question and the token limit: the server sees the same prefix.
    drop = ("messages", "max_tokens", "max_completion_tokens")
    assert {k: v for k, v in warm.items() if k not in drop} == {
        k: v for k, v in real.items() if k not in drop
    }
    assert real["messages"][:-1] == warm["messages"][:-1]


def test_sync_warmup_carries_the_prompt_given_as_a_chain(make_emulator: MakeEmulator) -> None:
    emu = make_emulator()
    llm = _openai(emu, "m")
    pre = ModelPreloader()
    name = pre.register(FEW_SHOT_PROMPT | llm.bind(stop=["\n"]) | StrOutputParser())
    assert name == f"openai:m@{emu.base_url}/v1"
    (result,) = pre.preload_sync()
    assert result.ok, result.error
    assert result.steps == ("connections", "model_load", "prompt_prefix")
    (warm,) = emu.bodies("/v1/chat/completions")
    assert warm["messages"] == _rendered("")


async def test_every_prompt_of_a_pipeline_feeding_the_model_is_sent(
    make_emulator: MakeEmulator,
) -> None:
    emu = make_emulator()
    extraction, formatting = _openai(emu, "extract"), _openai(emu, "format")
    pipeline = AnswerPipeline(extraction_model=extraction, formatting_model=formatting)
    pre = ModelPreloader()
    pre.register(formatting, prompt=pipeline, prompt_inputs={"context": "none"})
    (result,) = await pre.preload()
    assert result.ok, result.error
    bodies = emu.bodies("/v1/chat/completions")
    assert {b["model"] for b in bodies} == {"format"}
    # The formatting prompt and the direct prompt, each rendered once.
    systems = sorted(b["messages"][0]["content"] for b in bodies)
    assert systems == [
        "Answer the question clearly and completely, using the context if given.",
        "Write a clear, complete answer to the question from the draft and facts.",
    ]
    direct = next(b for b in bodies if b["messages"][0]["content"].startswith("Answer"))
    assert direct["messages"][1]["content"] == "Context:\nnone\n\nQuestion: "


async def test_ollama_prompt_warmup_uses_the_real_requests_options(
    make_emulator: MakeEmulator,
) -> None:
    emu = make_emulator()
    llm = _ollama(emu, "m")
    pre = ModelPreloader()
    pre.register(llm, prompt=[("system", "Be brief."), ("human", "Hi")])
    (result,) = await pre.preload()
    assert result.ok, result.error
    assert emu.bodies("/api/generate") == []  # the prompt request loads the model
    await llm.ainvoke([("system", "Be brief."), ("human", "Hi")])
    warm, real = emu.bodies("/api/chat")
    assert warm["messages"] == real["messages"]
    assert warm["options"].pop("num_predict") == 1
    assert real["options"].pop("num_predict") == 8
    assert warm["options"] == real["options"]
    assert warm["keep_alive"] == real["keep_alive"] == "10m"
