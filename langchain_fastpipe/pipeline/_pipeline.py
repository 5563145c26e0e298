"""AnswerPipeline: question (+ context) -> extraction model -> formatting model, ranked.

A LangChain Runnable chain ``normalize_input | RankedFallbacks(strategies)``. Any
``BaseChatModel`` works for either stage (ChatFastpipe, ChatOpenAI, fakes). Output is the
answer text; ``astream`` yields the formatting stage's tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSerializable
from pydantic import ConfigDict, Field, PrivateAttr
from typing_extensions import override

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.pipeline._policy import ThompsonPolicy
from langchain_fastpipe.pipeline._ranked import RankedFallbacks, Strategy
from langchain_fastpipe.pipeline._store import StrategyStats, make_store
from langchain_fastpipe.pipeline._strategies import default_strategies, normalize_input

if TYPE_CHECKING:
    from langchain_fastpipe.config import FastpipeConfig

__all__ = ["AnswerPipeline", "PipelineInput"]

#: ``"question"`` or ``{"question": str, "context": str | None}``.
PipelineInput = str | dict[str, Any]

_CONTINUATION_KEY = "partial_answer"


class AnswerPipeline(RunnableSerializable[PipelineInput, str]):
    """Answer questions with ranked strategies that learn which one works.

    Example::

        pipeline = AnswerPipeline(extraction_model=small, formatting_model=big, seed=0)
        pipeline.invoke({"question": "Why is the sky blue?", "context": None})
        async for token in pipeline.astream("Why is the sky blue?"):
            print(token, end="")

    Attributes:
        extraction_model: The model for the extraction stage (default strategies).
        formatting_model: The model for the formatting stage (default strategies).
        strategies: Custom strategies; default: structured, direct, few_shot.
        optimized: False gives the plain behaviour: fixed order, one after another.
        continuation: Hand a partial streamed answer to the next strategy on failure.
        hedge: Start the next strategy when the leader is slow to its first token.
        hedge_delay: Fixed hedge delay; None uses the leader's learned p95.
        hedge_quantile: The learned quantile used as hedge delay (default 0.95).
        first_chunk_timeout: Seconds to the first formatting token before falling back.
        total_timeout: Seconds a strategy may take in all.
        store: Statistics store (default: in memory).
        policy: Ranking policy (default: Thompson sampling seeded with ``seed``).
        seed: Seed of the default policy.
        clock: Monotonic clock.
        sleep: Async sleep for timers.
    """

    extraction_model: BaseChatModel | None = None
    formatting_model: BaseChatModel | None = None
    strategies: list[Strategy] | None = None
    optimized: bool = True
    continuation: bool = False
    hedge: bool = False
    hedge_delay: float | None = None
    hedge_quantile: float = 0.95
    first_chunk_timeout: float | None = None
    total_timeout: float | None = None
    store: Any = None
    policy: Any = None
    seed: int | None = None
    clock: Callable[[], float] = Field(default=time.monotonic, exclude=True)
    sleep: Callable[[float], Awaitable[Any]] = Field(default=asyncio.sleep, exclude=True)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _ranked: RankedFallbacks[Any, str] = PrivateAttr()
    _normalize: Runnable[Any, dict[str, Any]] = PrivateAttr()
    _chain: Runnable[Any, str] = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        """Build the chain; see the class attributes for the arguments.

        Raises:
            ConfigError: When neither strategies nor both models are given.
        """
        if not kwargs.get("strategies") and (
            kwargs.get("extraction_model") is None or kwargs.get("formatting_model") is None
        ):
            msg = "AnswerPipeline needs strategies, or both extraction_model and formatting_model"
            raise ConfigError(msg)
        super().__init__(**kwargs)

    def model_post_init(self, context: Any, /) -> None:
        """Build the ranked fallbacks and the chain."""
        strategies = self.strategies
        if not strategies:
            assert self.extraction_model is not None  # noqa: S101 - checked in __init__
            assert self.formatting_model is not None  # noqa: S101
            strategies = default_strategies(self.extraction_model, self.formatting_model)
        self._ranked = RankedFallbacks(
            strategies=strategies,
            name=f"{self.get_name()}.strategies",
            optimized=self.optimized,
            continuation_key=_CONTINUATION_KEY if self.continuation else None,
            hedge=self.hedge,
            hedge_delay=self.hedge_delay,
            hedge_quantile=self.hedge_quantile,
            first_chunk_timeout=self.first_chunk_timeout,
            total_timeout=self.total_timeout,
            store=self.store,
            policy=self.policy,
            seed=self.seed,
            clock=self.clock,
            sleep=self.sleep,
        )
        self.store = self._ranked.store
        self._normalize = RunnableLambda(normalize_input, name="normalize_input")
        self._chain = self._normalize | self._ranked

    @classmethod
    def from_config(
        cls,
        config: FastpipeConfig,
        *,
        extraction_model: BaseChatModel | None = None,
        formatting_model: BaseChatModel | None = None,
        **overrides: Any,
    ) -> AnswerPipeline:
        """A pipeline configured by a :class:`~langchain_fastpipe.config.FastpipeConfig`.

        Reads ``enable_optimized_pipeline`` (ranked and adaptive, or fixed order),
        ``hedging``, ``first_chunk_timeout_seconds``, ``pipeline.min_success_rate`` (the
        policy's skip threshold), ``pipeline.probe_rate`` and ``pipeline.store`` /
        ``store_url`` (``memory``; ``sqlite`` with a file, default
        ``fastpipe-strategies.sqlite3``; ``redis`` with its URL).

        Args:
            config: The configuration.
            extraction_model: The extraction stage's model; default
                ``ChatFastpipe.from_config(config, model=backend.extraction_model or
                backend.model)``
                (not preloaded here: warm it with ``ModelPreloader.from_config(config)``).
            formatting_model: The formatting stage's model; default likewise with
                ``backend.formatting_model``.
            **overrides: Further fields of this class (``seed``, ``clock``, ``strategies``...),
                winning over the configuration.

        Returns:
            The pipeline.

        Raises:
            ConfigError: A model is neither given nor named in ``backend``.
        """
        po, settings = config.performance_optimizations, config.pipeline
        fields: dict[str, Any] = {
            "optimized": po.enable_optimized_pipeline,
            "hedge": po.hedging,
            "first_chunk_timeout": po.first_chunk_timeout_seconds,
        }
        fields.update(overrides)
        if "store" not in fields:
            fields["store"] = make_store(settings.store, settings.store_url)
        if "policy" not in fields:
            fields["policy"] = ThompsonPolicy(
                seed=fields.get("seed"),
                skip_threshold=settings.min_success_rate,
                probe_rate=settings.probe_rate,
            )
        if not fields.get("strategies"):
            fields["extraction_model"] = extraction_model or _config_model(
                config, config.backend.extraction_model, "extraction_model"
            )
            fields["formatting_model"] = formatting_model or _config_model(
                config, config.backend.formatting_model, "formatting_model"
            )
        return cls(**fields)

    @property
    def ranked(self) -> RankedFallbacks[Any, str]:
        """The ranked fallbacks over the strategies."""
        return self._ranked

    def stats(self) -> dict[str, Any]:
        """In-process counters of the strategies (also in ``get_stats()["strategies"]``)."""
        return self._ranked.stats()

    def learned(self) -> dict[str, StrategyStats]:
        """What the store knows about each strategy."""
        return self._ranked.learned()

    def _chain_for(self, kwargs: Mapping[str, Any]) -> Runnable[Any, str]:
        """The chain, its ranked step bound to ``kwargs`` when there are any.

        A sequence passes call kwargs to its first step only, so they are bound to the
        ranked fallbacks, which hand them to each strategy.
        """
        if not kwargs:
            return self._chain
        return self._normalize | self._ranked.bind(**kwargs)

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        merged: RunnableConfig = dict(config or {})  # type: ignore[assignment]
        merged.setdefault("run_name", self.get_name())
        return merged

    @override
    def invoke(
        self, input: PipelineInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> str:
        """Answer (sync path; works inside a running event loop).

        ``kwargs`` go to every strategy's runnable, as ``with_fallbacks`` passes them.
        """
        return self._chain_for(kwargs).invoke(input, self._config(config))

    @override
    async def ainvoke(
        self, input: PipelineInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> str:
        """Answer; ``kwargs`` go to every strategy's runnable."""
        return await self._chain_for(kwargs).ainvoke(input, self._config(config))

    @override
    def stream(
        self, input: PipelineInput, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> Iterator[str]:
        """Stream the formatting stage's tokens (sync path); ``kwargs`` go to the strategies."""
        yield from self._chain_for(kwargs).stream(input, self._config(config))

    @override
    async def astream(
        self, input: PipelineInput, config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> AsyncIterator[str]:
        """Stream the formatting stage's tokens; fall back before the first one.

        ``kwargs`` go to every strategy's runnable.
        """
        async for chunk in self._chain_for(kwargs).astream(input, self._config(config)):
            yield chunk


def _config_model(config: FastpipeConfig, name: str | None, stage: str) -> BaseChatModel:
    """The ChatFastpipe of one pipeline stage: ``backend.<stage>`` else ``backend.model``.

    Raises:
        ConfigError: Neither is set.
    """
    model = name or config.backend.model
    if not model:
        msg = (
            f"AnswerPipeline.from_config: no model for the {stage.split('_')[0]} stage; set "
            f"backend.{stage} or backend.model in the configuration, or pass {stage}="
        )
        raise ConfigError(msg)
    from langchain_fastpipe.chat_models import ChatFastpipe

    return ChatFastpipe.from_config(config, model=model, preload=False)  # the preloader warms
