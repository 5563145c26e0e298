"""The answer pipeline: ranked fallbacks that learn, strategies, statistics stores.

Public names:

- :class:`AnswerPipeline`: a question in, an answer out, through ranked strategies.
- :class:`RankedFallbacks`: a drop-in for ``runnable.with_fallbacks(...)`` that learns
  which :class:`Strategy` to try first; :func:`is_answer` is a validator for plain answers.
- Ranking policies: the :class:`RankingPolicy` protocol (one ``rank`` method from a
  :class:`RankingState` to a :class:`Ranking`), :class:`ThompsonPolicy` (the default) and
  :class:`FixedOrderPolicy` (the plain ``with_fallbacks`` order).
- Statistics stores: the :class:`StatsStore` protocol (it records an :class:`Outcome` and
  returns :class:`StrategyStats`), :class:`MemoryStore`, :class:`SQLiteStore`,
  :class:`RedisStore`.
- :class:`~langchain_fastpipe.errors.StrategyTimeoutError` and
  :class:`~langchain_fastpipe.errors.StrategyValidationError`, re-exported from
  :mod:`langchain_fastpipe.errors`.

Mechanics (the default strategies, the posterior helpers, the store's update rule) live in
private modules.
"""

from __future__ import annotations

from langchain_fastpipe.errors import StrategyTimeoutError, StrategyValidationError
from langchain_fastpipe.pipeline._pipeline import AnswerPipeline
from langchain_fastpipe.pipeline._policy import (
    FixedOrderPolicy,
    Ranking,
    RankingPolicy,
    RankingState,
    ThompsonPolicy,
)
from langchain_fastpipe.pipeline._ranked import RankedFallbacks, Strategy
from langchain_fastpipe.pipeline._store import (
    MemoryStore,
    Outcome,
    RedisStore,
    SQLiteStore,
    StatsStore,
    StrategyStats,
)
from langchain_fastpipe.pipeline._strategies import is_answer

__all__ = [
    "AnswerPipeline",
    "FixedOrderPolicy",
    "MemoryStore",
    "Outcome",
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
    "is_answer",
]
