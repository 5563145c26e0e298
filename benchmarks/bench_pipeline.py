"""Ranked fallbacks, hedging and first-chunk timeouts against the emulator, side by side.

Run: ``python benchmarks/bench_pipeline.py`` (about 30-40 s). Prints one table:

1. Strategy A fails 60% of the time after 200 ms (it hangs; its 200 ms read timeout
   fires), strategy B succeeds. After 50 warm-up requests, RankedFallbacks vs
   ``with_fallbacks([A, B])``, requests interleaved: mean latency and success rate.
2. A heavy-tailed server (6.5% of first tokens 250 ms late): p50/p95 unhedged vs hedged,
   and the extra requests hedging cost.
3. A strategy that hangs before its first byte: how long until the fallback starts,
   against the first-chunk timeout.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.pipeline import RankedFallbacks, Strategy, is_answer
from langchain_fastpipe.transport import get_pool

WARMUP = 50
MEASURED = 80
TAIL_REQUESTS = 240
HANG_RUNS = 10
FIRST_CHUNK_TIMEOUT = 0.2


def chain(
    server: EmulatorServer, model: str, *, breaker: bool = True, **kwargs: Any
) -> Runnable[Any, str]:
    if not breaker:
        # Figure 1 is about ranking: keep the endpoint's circuit breaker from turning A's
        # 200 ms failures into instant ones (for with_fallbacks and ranked alike).
        kwargs["breaker_min_calls"] = 1_000_000
    llm = ChatFastpipe(
        model=model, base_url=server.openai_base_url, api_key="sk-bench", max_retries=0, **kwargs
    )
    return llm | StrOutputParser()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def timed(runnable: Runnable[Any, str], question: str) -> tuple[float, bool]:
    start = time.perf_counter()
    try:
        ok = bool((await runnable.ainvoke(question)).strip())
    except Exception:
        ok = False
    return time.perf_counter() - start, ok


async def figure_ranked(server: EmulatorServer) -> dict[str, Any]:
    a = chain(server, "a-flaky", timeout=FIRST_CHUNK_TIMEOUT, breaker=False)
    b = chain(server, "b-steady")
    baseline = a.with_fallbacks([b])
    ranked = RankedFallbacks(runnable=a, fallbacks=[b], names=["A", "B"], seed=0)
    for i in range(WARMUP):
        await ranked.ainvoke(f"warm-up {i}")
    base, rank = [], []
    for i in range(MEASURED):  # interleaved: both see the same server at the same time
        base.append(await timed(baseline, f"question {i}"))
        rank.append(await timed(ranked, f"question {i}"))
    base_mean = statistics.mean(t for t, _ in base)
    rank_mean = statistics.mean(t for t, _ in rank)
    return {
        "baseline_mean": base_mean,
        "ranked_mean": rank_mean,
        "ratio": rank_mean / base_mean,
        "baseline_success": sum(ok for _, ok in base) / len(base),
        "ranked_success": sum(ok for _, ok in rank) / len(rank),
    }


async def figure_hedging(server: EmulatorServer) -> dict[str, Any]:
    def strategies() -> list[Strategy]:
        return [
            Strategy(name="replica-1", runnable=chain(server, "tail-1"), validator=is_answer),
            Strategy(name="replica-2", runnable=chain(server, "tail-2"), validator=is_answer),
        ]

    plain = RankedFallbacks(strategies=strategies(), optimized=False)
    # The learned delay is a quantile of the leader's time to first chunk; with 6.5% of
    # requests in the tail, p95 lies inside the tail, so this server is hedged at p92.
    hedged = RankedFallbacks(
        strategies=strategies(),
        optimized=True,
        seed=0,
        hedge=True,
        hedge_quantile=0.92,
        hedge_min_samples=20,
    )
    for i in range(30):
        await hedged.ainvoke(f"warm-up {i}")
    extra_before = hedged.stats()["extra_requests"]
    plain_t, hedged_t = [], []
    for i in range(TAIL_REQUESTS):
        plain_t.append((await timed(plain, f"q {i}"))[0])
        hedged_t.append((await timed(hedged, f"q {i}"))[0])
    extra = hedged.stats()["extra_requests"] - extra_before
    return {
        "plain_p50": quantile(plain_t, 0.5),
        "plain_p95": quantile(plain_t, 0.95),
        "hedged_p50": quantile(hedged_t, 0.5),
        "hedged_p95": quantile(hedged_t, 0.95),
        "p95_ratio": quantile(hedged_t, 0.95) / quantile(plain_t, 0.95),
        "extra_share": extra / TAIL_REQUESTS,
    }


class _FallbackClock(AsyncCallbackHandler):
    """Records when the attempt of the ``works`` strategy starts."""

    def __init__(self) -> None:
        self.started: float | None = None

    async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        if kwargs.get("name") == "works" and self.started is None:
            self.started = time.perf_counter()


async def figure_hang(server: EmulatorServer) -> dict[str, Any]:
    hangs = ChatFastpipe(
        model="hangs", base_url=server.openai_base_url, api_key="sk-bench", max_retries=0
    )
    ranked = RankedFallbacks(
        strategies=[
            Strategy(name="hangs", runnable=hangs | StrOutputParser()),
            Strategy(name="works", runnable=chain(server, "b-steady")),
        ],
        optimized=False,
        first_chunk_timeout=FIRST_CHUNK_TIMEOUT,
    )
    delays = []
    for i in range(HANG_RUNS):
        clock = _FallbackClock()
        start = time.perf_counter()
        chunks = [c async for c in ranked.astream(f"q {i}", {"callbacks": [clock]})]
        assert "".join(chunks).strip()
        assert clock.started is not None
        delays.append(clock.started - start)
    return {
        "median": statistics.median(delays),
        "max": max(delays),
        "in_flight": get_pool(hangs.endpoint_config).stats()["in_flight"],
    }


async def main() -> None:
    steady = dict(first_token_seconds=0.03, inter_token_seconds=0.002, answer_tokens=8)
    tail = dict(
        first_token_seconds=0.01,
        inter_token_seconds=0.001,
        answer_tokens=4,
        ttft_tail_rate=0.065,
        ttft_tail_seconds=0.25,
    )
    config = EmulatorConfig(
        seed=1,
        models={
            "a-flaky": ModelProfile(
                first_token_seconds=0.02,
                inter_token_seconds=0.002,
                answer_tokens=8,
                fail_rate=0.6,
                fail_fault=Fault.hang_before_first_byte(1.0),
            ),
            "b-steady": ModelProfile(**steady),  # type: ignore[arg-type]
            "tail-1": ModelProfile(**tail),  # type: ignore[arg-type]
            "tail-2": ModelProfile(**tail),  # type: ignore[arg-type]
            "hangs": ModelProfile(fail_rate=1.0, fail_fault=Fault.hang_before_first_byte(3.0)),
        },
    )
    began = time.perf_counter()
    with EmulatorServer(config) as server:
        ranked = await figure_ranked(server)
        hedging = await figure_hedging(server)
        hang = await figure_hang(server)
    ms = 1000.0
    rows = [
        (
            "1 ranked vs with_fallbacks",
            "mean latency",
            f"{ranked['baseline_mean'] * ms:.0f} ms",
            f"{ranked['ranked_mean'] * ms:.0f} ms",
            f"{ranked['ratio']:.2f}x",
            "<= 0.50x",
        ),
        (
            "",
            "success rate",
            f"{ranked['baseline_success']:.0%}",
            f"{ranked['ranked_success']:.0%}",
            "",
            "no lower",
        ),
        (
            "2 hedging (heavy tail)",
            "p50",
            f"{hedging['plain_p50'] * ms:.0f} ms",
            f"{hedging['hedged_p50'] * ms:.0f} ms",
            "",
            "",
        ),
        (
            "",
            "p95",
            f"{hedging['plain_p95'] * ms:.0f} ms",
            f"{hedging['hedged_p95'] * ms:.0f} ms",
            f"{hedging['p95_ratio']:.2f}x",
            "<= 0.50x",
        ),
        ("", "extra requests", "0%", f"{hedging['extra_share']:.1%}", "", "<= 10%"),
        (
            "3 hang before first byte",
            "fallback after (median/max)",
            f"limit {(FIRST_CHUNK_TIMEOUT + 0.05) * ms:.0f} ms",
            f"{hang['median'] * ms:.0f}/{hang['max'] * ms:.0f} ms",
            "",
            f"in_flight after: {hang['in_flight']}",
        ),
    ]
    header = ("figure", "measure", "baseline", "fastpipe", "ratio", "target")
    widths = [max(len(str(r[i])) for r in (*rows, header)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(
        f"plain p95/p50 = {hedging['plain_p95'] / hedging['plain_p50']:.1f}x; "
        f"total {time.perf_counter() - began:.1f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
