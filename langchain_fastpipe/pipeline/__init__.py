"""The answer pipeline: ranked fallbacks that learn, strategies, statistics stores."""

from __future__ import annotations

from langchain_fastpipe.pipeline._pipeline import AnswerPipeline, PipelineInput
from langchain_fastpipe.pipeline._policy import (
    FixedOrderPolicy,
    Ranking,
    RankingPolicy,
    RankingState,
    ThompsonPolicy,
    beta_posterior,
    expected_score,
    posterior_mean,
)
from langchain_fastpipe.pipeline._ranked import (
    RankedFallbacks,
    Strategy,
    StrategyTimeoutError,
    StrategyValidationError,
    Validator,
    check_output,
    failure_reason,
)
from langchain_fastpipe.pipeline._store import (
    DEFAULT_SQLITE_PATH,
    DEFAULT_WINDOW,
    MemoryStore,
    Outcome,
    RedisStore,
    SQLiteStore,
    StatsStore,
    StrategyStats,
    apply_outcome,
    make_store,
)
from langchain_fastpipe.pipeline._strategies import (
    Extraction,
    default_strategies,
    direct_strategy,
    few_shot_strategy,
    is_answer,
    normalize_input,
    parse_extraction,
    structured_strategy,
)

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "DEFAULT_WINDOW",
    "AnswerPipeline",
    "Extraction",
    "FixedOrderPolicy",
    "MemoryStore",
    "Outcome",
    "PipelineInput",
    "RankedFallbacks",
    "Ranking",
    "RankingPolicy",
    "RankingState",
    "RedisStore",
    "SQLiteStore",
    "StatsStore",
    "Strategy",
    "StrategyStats",
    "StrategyTimeoutError",
    "StrategyValidationError",
    "ThompsonPolicy",
    "Validator",
    "apply_outcome",
    "beta_posterior",
    "check_output",
    "default_strategies",
    "direct_strategy",
    "expected_score",
    "failure_reason",
    "few_shot_strategy",
    "is_answer",
    "make_store",
    "normalize_input",
    "parse_extraction",
    "posterior_mean",
    "structured_strategy",
]
