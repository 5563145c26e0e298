"""Ranking policies: which strategy to try first, which to skip, which to probe.

A policy is a small object with one method, :meth:`RankingPolicy.rank`, over one state
object (:class:`RankingState`), in the style of tenacity's stop/wait callables. The
helpers (:func:`beta_posterior`, :func:`posterior_mean`, :func:`expected_score`) are
pure functions so each rule can be tested on its own.

:class:`ThompsonPolicy` orders by ``p / latency ** latency_weight``, where ``p`` is drawn
from each strategy's Beta posterior of success: the classic rule for trying options one
after another at least expected cost to the first success (highest success probability
per second first). Recent outcomes weigh more (``half_life``), so a strategy that
recovers climbs back. A strategy whose posterior mean falls below ``skip_threshold``
is skipped (moved after all others, as a last resort), except when probed: every
``probe_interval`` seconds, or with probability ``probe_rate``, it is put first.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.pipeline._store import StrategyStats

__all__ = [
    "FixedOrderPolicy",
    "Ranking",
    "RankingPolicy",
    "RankingState",
    "ThompsonPolicy",
    "beta_posterior",
    "expected_score",
    "posterior_mean",
]

_LATENCY_FLOOR = 1e-3


@dataclass(frozen=True)
class RankingState:
    """Everything a policy may look at for one request.

    Attributes:
        names: The strategy names, in their configured order.
        stats: What the store knows about each name.
        now: The current time (the injected clock).
        last_tried: When each strategy was last attempted by this process.
    """

    names: Sequence[str]
    stats: Mapping[str, StrategyStats]
    now: float
    last_tried: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Ranking:
    """A policy's decision for one request.

    Attributes:
        order: The strategies to try, first to last (includes probes; skipped ones only
            when kept as a last resort).
        skipped: Strategies demoted for a low success rate.
        probes: Skipped strategies that are tried first this time to see if they recovered.
    """

    order: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()


class RankingPolicy(Protocol):
    """Anything that turns a :class:`RankingState` into a :class:`Ranking`."""

    def rank(self, state: RankingState) -> Ranking:
        """Decide the order of one request."""


class FixedOrderPolicy:
    """The plain behaviour of ``with_fallbacks``: configured order, nothing learned."""

    def rank(self, state: RankingState) -> Ranking:
        """Return the configured order."""
        return Ranking(order=tuple(state.names))

    def __repr__(self) -> str:
        """Short description."""
        return "FixedOrderPolicy()"


def beta_posterior(stats: StrategyStats, half_life: float | None) -> tuple[float, float]:
    """Beta(successes + 1, failures + 1) over the recent window, newest weighted most.

    Args:
        stats: The strategy's record.
        half_life: Number of attempts after which an outcome weighs half; None for equal
            weights.

    Returns:
        The ``(alpha, beta)`` parameters.
    """
    alpha = beta = 1.0
    n = len(stats.recent)
    for i, success in enumerate(stats.recent):
        weight = 1.0 if half_life is None else 0.5 ** ((n - 1 - i) / half_life)
        if success:
            alpha += weight
        else:
            beta += weight
    return alpha, beta


def posterior_mean(alpha: float, beta: float) -> float:
    """The mean of Beta(alpha, beta)."""
    return alpha / (alpha + beta)


def expected_score(p_success: float, latency: float, latency_weight: float) -> float:
    """Successes per unit of cost: ``p / latency ** latency_weight`` (higher is better)."""
    return float(p_success / max(latency, _LATENCY_FLOOR) ** latency_weight)


class ThompsonPolicy:
    """Thompson sampling over Beta posteriors with a latency penalty, skips and probes.

    Args:
        seed: Seed of the policy's own ``random.Random`` (deterministic rankings).
        latency_weight: Exponent of the latency penalty; 0 ranks by success alone.
        half_life: Attempts after which an outcome weighs half (recovery speed); None
            weighs the whole window equally.
        skip_threshold: Skip a strategy whose posterior mean success is below this.
        min_samples: Attempts in the window before a strategy may be skipped.
        probe_interval: Seconds after which a skipped strategy is probed again.
        probe_rate: Probability of probing a skipped strategy on any request.
        last_resort: Keep skipped strategies at the end of the order instead of dropping
            them.
        rng: An explicit random generator (overrides ``seed``).
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        latency_weight: float = 1.0,
        half_life: float | None = 20.0,
        skip_threshold: float = 0.2,
        min_samples: int = 5,
        probe_interval: float = 30.0,
        probe_rate: float = 0.02,
        last_resort: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        """Create the policy; see the class docstring for the arguments."""
        if not 0.0 <= skip_threshold <= 1.0:
            msg = f"skip_threshold must be within 0..1, got {skip_threshold}"
            raise ConfigError(msg)
        if not 0.0 <= probe_rate <= 1.0:
            msg = f"probe_rate must be within 0..1, got {probe_rate}"
            raise ConfigError(msg)
        if half_life is not None and half_life <= 0:
            msg = f"half_life must be > 0 or None, got {half_life}"
            raise ConfigError(msg)
        if latency_weight < 0:
            msg = f"latency_weight must be >= 0, got {latency_weight}"
            raise ConfigError(msg)
        self.latency_weight = latency_weight
        self.half_life = half_life
        self.skip_threshold = skip_threshold
        self.min_samples = min_samples
        self.probe_interval = probe_interval
        self.probe_rate = probe_rate
        self.last_resort = last_resort
        self.rng = rng if rng is not None else random.Random(seed)

    def __repr__(self) -> str:
        """Short description."""
        return (
            f"ThompsonPolicy(latency_weight={self.latency_weight}, half_life={self.half_life}, "
            f"skip_threshold={self.skip_threshold}, probe_interval={self.probe_interval}, "
            f"probe_rate={self.probe_rate})"
        )

    def is_skipped(self, stats: StrategyStats) -> bool:
        """True when ``stats`` has enough samples and a posterior mean below the threshold."""
        if len(stats.recent) < self.min_samples:
            return False
        return posterior_mean(*beta_posterior(stats, self.half_life)) < self.skip_threshold

    def wants_probe(self, name: str, state: RankingState) -> bool:
        """True when skipped strategy ``name`` is due for a probe."""
        last = state.last_tried.get(name)
        if last is None or state.now - last >= self.probe_interval:
            return True
        return self.rng.random() < self.probe_rate

    def rank(self, state: RankingState) -> Ranking:
        """Sample a score per strategy and order by it; demote and probe as configured.

        Before anything was learned the configured order is kept (a drop-in behaves
        like ``with_fallbacks`` on its first request).
        """
        if not any(s.recent for s in state.stats.values()):
            return Ranking(order=tuple(state.names))
        known = [s.latency_mean for s in state.stats.values() if s.latency_mean is not None]
        default_latency = min(known) if known else 1.0
        scores: dict[str, float] = {}
        for name in state.names:
            stats = state.stats.get(name) or StrategyStats(name=name)
            alpha, beta = beta_posterior(stats, self.half_life)
            latency = stats.latency_mean if stats.latency_mean is not None else default_latency
            scores[name] = expected_score(
                self.rng.betavariate(alpha, beta), latency, self.latency_weight
            )
        ranked = sorted(state.names, key=lambda n: -scores[n])
        skipped = [
            n for n in ranked if self.is_skipped(state.stats.get(n) or StrategyStats(name=n))
        ]
        probes = [n for n in skipped if self.wants_probe(n, state)]
        active = [n for n in ranked if n not in skipped]
        rest = [n for n in skipped if n not in probes] if self.last_resort else []
        return Ranking(
            order=(*probes, *active, *rest), skipped=tuple(skipped), probes=tuple(probes)
        )


#: A callable form of a policy, for composition (``policy.rank``).
RankFunction = Callable[[RankingState], Ranking]
