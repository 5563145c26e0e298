"""The measuring side of ``fastpipe bench``: fresh backends, a pipeline per configuration.

One "query" is a question through the
:class:`~langchain_fastpipe.pipeline.AnswerPipeline` built from the configuration's flags
(optimized on: ranked, learning strategies; off: the fixed order ``structured``,
``direct``, ``few_shot``, one after another), streamed with
:func:`~langchain_fastpipe.streaming.astream_chunks`. The chat models come from
:meth:`FastpipeConfig.chat_model`, so pooling and streaming are the config's own flags.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_fastpipe._bench.results import (
    BACKENDS,
    QUESTIONS,
    BackendReport,
    BenchConfig,
    BenchOptions,
    ConfigResult,
    Progress,
    QuerySample,
    summarize,
)
from langchain_fastpipe.errors import ConfigError, LocalServerError, PreloadError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from langchain_fastpipe.pipeline import AnswerPipeline

_EMULATOR_MODEL = "emulated-model"


# ----------------------------------------------------------------------- measuring (I/O)
async def measure_query(
    runnable: Any, question: str, *, clock: Callable[[], float] = time.perf_counter
) -> QuerySample:
    """Stream one question through ``runnable``; time the first chunk and the whole answer.

    Never raises for a failed query: the failure is recorded in the sample.
    """
    from langchain_fastpipe.streaming import astream_chunks

    start = clock()
    ttfc: float | None = None
    chunks = 0
    try:
        async for chunk in astream_chunks(runnable, {"question": question}, collector=None):
            if chunk.text:
                if ttfc is None:
                    ttfc = clock() - start
                chunks += 1
    except Exception as exc:  # a failed query is a measured outcome
        return QuerySample(
            total=clock() - start,
            ttfc=ttfc,
            chunks=chunks,
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
        )
    return QuerySample(total=clock() - start, ttfc=ttfc, chunks=chunks)


def _pipeline(
    config: BenchConfig, extraction: BaseChatModel, formatting: BaseChatModel
) -> AnswerPipeline:
    from langchain_fastpipe.pipeline import AnswerPipeline

    return AnswerPipeline(
        extraction_model=extraction,
        formatting_model=formatting,
        optimized=config.optimized,
        seed=0,
    )


def _local_pipeline(config: BenchConfig, model: BaseChatModel) -> AnswerPipeline:
    """The pipeline for the 270M base model: a few-shot answer, then the default ``direct``.

    The default ``structured`` and ``few_shot`` strategies are left out: grammar-constrained
    JSON from this model takes 10-40 s on a 2-core CPU and is cut at ``max_tokens`` (the
    model lists "facts" without end), so every query would fail over to ``direct`` after
    paying for it, and the run would take far longer than the benchmark's budget.
    """
    from langchain_core.output_parsers import StrOutputParser

    from langchain_fastpipe.pipeline import AnswerPipeline, Strategy, is_answer
    from langchain_fastpipe.pipeline._strategies import direct_strategy
    from langchain_fastpipe.prompts import FEW_SHOT_PROMPT

    few_shot = Strategy(
        name="few_shot_answer",
        runnable=FEW_SHOT_PROMPT | model | StrOutputParser(),
        validator=is_answer,
    )
    return AnswerPipeline(
        strategies=[few_shot, direct_strategy(model)], optimized=config.optimized, seed=0
    )


async def _preload(models: Sequence[object], timeout: float) -> float:
    """Warm ``models`` in order with a fresh preloader; the seconds it took.

    Raises:
        PreloadError: A warm-up failed (the benchmark would measure nothing useful).
    """
    from langchain_fastpipe.preload import ModelPreloader

    preloader = ModelPreloader()
    seconds = 0.0
    for index, model in enumerate(models):
        name = preloader.register(model, timeout=timeout, name=f"bench-{index}")
        for result in await preloader.preload(names=[name]):
            seconds += result.seconds
            if not result.ok:
                raise PreloadError(f"bench: preloading {name} failed: {result.error}")
    return seconds


async def _warm_queries(
    pipeline: Any,
    questions: Sequence[str],
    count: int,
    *,
    progress: Progress,
    label: str,
    clock: Callable[[], float],
) -> list[QuerySample]:
    samples: list[QuerySample] = []
    for i in range(count):
        question = questions[(i + 1) % len(questions)]
        samples.append(await measure_query(pipeline, question, clock=clock))
        progress.step(label)
    return samples


async def run_emulator_config(
    config: BenchConfig,
    *,
    queries: int,
    load_seconds: float,
    first_token_seconds: float = 0.3,
    tokens_per_second: float = 30.0,
    answer_tokens: int = 30,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
    questions: Sequence[str] = QUESTIONS,
) -> ConfigResult:
    """Measure one configuration on a fresh emulator (its model not loaded yet).

    Args:
        config: The flags to measure.
        queries: Warm queries after the first one.
        load_seconds: The emulated model load, paid by the first request.
        first_token_seconds: Emulated time to the first token.
        tokens_per_second: Emulated generation speed.
        answer_tokens: Tokens in each emulated answer.
        progress: Progress bar to advance (one step per query, one for the preload).
        clock: Clock of the measurements.
        questions: Questions asked in turn.

    Returns:
        The configuration's result; ``loads_in_first_query`` counts the emulator's model
        loads while the first query's clock ran.
    """
    from langchain_fastpipe.chat_models import ChatFastpipe
    from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, ModelProfile

    bar = progress or Progress(0, None)
    label = f"backend=emulator config={config.name}"
    profile = ModelProfile(
        load_seconds=load_seconds,
        first_token_seconds=first_token_seconds,
        inter_token_seconds=1.0 / tokens_per_second,
        answer_tokens=answer_tokens,
    )
    server = EmulatorServer(EmulatorConfig(default=profile))
    await asyncio.to_thread(server.start)
    try:
        fcfg = config.fastpipe_config(server.openai_base_url, _EMULATOR_MODEL)
        model = ChatFastpipe.from_config(fcfg, preload=False)
        pipeline = _pipeline(config, model, model)
        preload_seconds: float | None = None
        if config.preloading:
            bar.show(f"{label} preloading")
            preload_seconds = await _preload([model], timeout=max(60.0, 3 * load_seconds))
        bar.step(f"{label} cold query")
        before = sum(server.load_counts.values())
        cold = await measure_query(pipeline, questions[0], clock=clock)
        loads = sum(server.load_counts.values()) - before
        bar.step(label)
        warm = await _warm_queries(
            pipeline, questions, queries, progress=bar, label=label, clock=clock
        )
    finally:
        await asyncio.to_thread(server.stop)
    return summarize(
        config, cold, warm, loads_in_first_query=loads, preload_seconds=preload_seconds
    )


async def run_local_config(
    config: BenchConfig,
    *,
    queries: int,
    max_tokens: int = 32,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
    questions: Sequence[str] = QUESTIONS,
    server_factory: Callable[[int], Any] | None = None,
) -> ConfigResult:
    """Measure one configuration on a freshly started real local model.

    Without preloading the first query's clock includes the ``llama-server`` start;
    with it, the server is started and the model warmed before the clock starts.

    Args:
        config: The flags to measure.
        queries: Warm queries after the first one.
        max_tokens: Bound of every answer (the base model never stops by itself).
        progress: Progress bar to advance.
        clock: Clock of the measurements.
        questions: Questions asked in turn.
        server_factory: Builds the server for a port (default: ``LocalModelServer``).

    Returns:
        The configuration's result; ``loads_in_first_query`` counts server starts while
        the first query's clock ran.

    Raises:
        LocalServerError: The server binary or model is missing or never became healthy.
    """
    from langchain_fastpipe.chat_models import ChatFastpipe
    from langchain_fastpipe.local import LocalModelServer, find_free_port

    bar = progress or Progress(0, None)
    label = f"backend=local config={config.name}"
    port = find_free_port()
    server = (server_factory or (lambda p: LocalModelServer(port=p)))(port)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        fcfg = config.fastpipe_config(base_url, server.model)
        # A few-shot prompt and a newline stop make the base model answer in a few words;
        # max_tokens bounds it (it never ends a turn by itself).
        model = ChatFastpipe.from_config(
            fcfg, preload=False, temperature=0.0, max_tokens=max_tokens, stop=["\n"]
        )
        pipeline = _local_pipeline(config, model)
        preload_seconds: float | None = None
        starts_before = server.starts
        if config.preloading:
            bar.show(f"{label} preloading (server start + warm-up)")
            preload_seconds = await _preload([server, model], timeout=120.0)
            bar.step(f"{label} cold query")
            starts_before = server.starts
            cold = await measure_query(pipeline, questions[0], clock=clock)
        else:
            bar.step(f"{label} cold start + first query")
            start = clock()
            await asyncio.to_thread(server.start)
            started = clock() - start
            cold = (await measure_query(pipeline, questions[0], clock=clock)).shifted(started)
        loads = server.starts - starts_before
        bar.step(label)
        warm = await _warm_queries(
            pipeline, questions, queries, progress=bar, label=label, clock=clock
        )
    finally:
        await asyncio.to_thread(server.stop)
    return summarize(
        config, cold, warm, loads_in_first_query=loads, preload_seconds=preload_seconds
    )


# ----------------------------------------------------------------------- orchestration
async def run_bench(
    options: BenchOptions,
    *,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[BackendReport]:
    """Measure every configuration on every backend of ``options``.

    A local backend that cannot start (binary or model missing) is reported as skipped
    when other backends were asked for too; alone, its error is raised.

    Raises:
        LocalServerError: Only the local backend was asked for and it cannot start.
        PreloadError: Only the local backend was asked for and its warm-up failed.
    """
    bar = progress or Progress(options.steps(), None)
    reports: list[BackendReport] = []
    for backend in options.backends:
        if backend == "emulator":
            report = BackendReport(
                backend="emulator",
                title=options.emulator_title(),
                profile={
                    "load_seconds": options.load_seconds,
                    "first_token_seconds": options.first_token_seconds,
                    "tokens_per_second": options.tokens_per_second,
                    "answer_tokens": options.answer_tokens,
                },
            )

            def one(cfg: BenchConfig) -> Any:
                return run_emulator_config(
                    cfg,
                    queries=options.queries,
                    load_seconds=options.load_seconds,
                    first_token_seconds=options.first_token_seconds,
                    tokens_per_second=options.tokens_per_second,
                    answer_tokens=options.answer_tokens,
                    progress=bar,
                    clock=clock,
                )

            if options.sequential:
                report.results = [await one(cfg) for cfg in options.configs]
            else:
                report.results = list(await asyncio.gather(*(one(c) for c in options.configs)))
        elif backend == "local":
            report = BackendReport(
                backend="local",
                title=options.local_title(),
                profile={"model": "gemma-3-270m Q4_K_M", "max_tokens": options.local_max_tokens},
            )
            try:
                for cfg in options.configs:
                    report.results.append(
                        await run_local_config(
                            cfg,
                            queries=options.queries,
                            max_tokens=options.local_max_tokens,
                            progress=bar,
                            clock=clock,
                        )
                    )
            except (LocalServerError, PreloadError) as exc:
                if len(options.backends) == 1:
                    raise
                report.skipped = f"local model unavailable: {exc}"
                left = len(options.configs) - len(report.results)
                bar.step("backend=local skipped", left * (options.queries + 2))
        else:
            raise ConfigError(f"bench: unknown backend {backend!r}; use one of {BACKENDS}")
        reports.append(report)
    return reports
