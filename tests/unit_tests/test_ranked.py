"""Unit tests of RankedFallbacks and the ranking policy (fake runnables, injected time)."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableGenerator,
    RunnableLambda,
    RunnableSequence,
)
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import (
    AllStrategiesFailedError,
    ConfigError,
    StrategyTimeoutError,
    StrategyValidationError,
)
from langchain_fastpipe.pipeline import (
    FixedOrderPolicy,
    MemoryStore,
    RankedFallbacks,
    RankingState,
    Strategy,
    StrategyStats,
    ThompsonPolicy,
)
from langchain_fastpipe.pipeline._policy import beta_posterior, expected_score, posterior_mean
from langchain_fastpipe.pipeline._ranked import check_output, failure_reason
from langchain_fastpipe.stats import get_stats


class FakeTime:
    """A clock that only moves when told; ``sleep`` advances it and yields once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        for _ in range(50):  # let every ready task run before time jumps
            await asyncio.sleep(0)
        self.now += seconds


async def never(_seconds: float) -> None:
    await asyncio.Event().wait()


@dataclass
class Behaviour:
    """What a fake streaming strategy does on each call."""

    chunks: list[str] = field(default_factory=lambda: ["ok"])
    fail: bool = False  # raise before the first chunk
    fail_after_first: bool = False
    hang: bool = False  # never produce a first chunk
    hang_after_first: bool = False
    calls: int = 0
    finally_ran: int = 0
    inputs: list[Any] = field(default_factory=list)


def fake(name: str, b: Behaviour, time: FakeTime | None = None, cost: float = 0.0):
    """A named streaming runnable (sync and async) driven by ``b``."""

    def sync(inputs: Iterator[Any]) -> Iterator[str]:
        b.inputs.append(next(iter(inputs)))
        b.calls += 1
        try:
            if time is not None:
                time.now += cost
            if b.fail:
                raise ValueError(f"{name} failed")
            for i, chunk in enumerate(b.chunks):
                yield chunk
                if i == 0 and b.fail_after_first:
                    raise ValueError(f"{name} failed mid-stream")
        finally:
            b.finally_ran += 1

    async def asyn(inputs: AsyncIterator[Any]) -> AsyncIterator[str]:
        async for item in inputs:
            b.inputs.append(item)
            break
        b.calls += 1
        try:
            if time is not None:
                time.now += cost
            if b.hang:
                await asyncio.Event().wait()
            if b.fail:
                raise ValueError(f"{name} failed")
            for i, chunk in enumerate(b.chunks):
                yield chunk
                if i == 0 and b.fail_after_first:
                    raise ValueError(f"{name} failed mid-stream")
                if i == 0 and b.hang_after_first:
                    await asyncio.Event().wait()
        finally:
            b.finally_ran += 1

    return RunnableGenerator(sync, asyn, name=name)


def ranked(*pairs: tuple[str, Any], **kwargs: Any) -> RankedFallbacks[Any, Any]:
    return RankedFallbacks(strategies=[Strategy(name=n, runnable=r) for n, r in pairs], **kwargs)


# -- pure pieces ---------------------------------------------------------------------


def test_beta_posterior_weights_recent_outcomes_more() -> None:
    old_fail = StrategyStats(name="a", recent=(False,) * 10 + (True,) * 10)
    old_ok = StrategyStats(name="a", recent=(True,) * 10 + (False,) * 10)
    assert posterior_mean(*beta_posterior(old_fail, 5.0)) > 0.5
    assert posterior_mean(*beta_posterior(old_ok, 5.0)) < 0.5
    assert beta_posterior(old_fail, None) == (11.0, 11.0)
    assert beta_posterior(StrategyStats(name="x"), 5.0) == (1.0, 1.0)


def test_expected_score_prefers_success_per_second() -> None:
    assert expected_score(1.0, 0.05, 1.0) > expected_score(0.4, 0.14, 1.0)
    assert expected_score(0.5, 10.0, 0.0) == 0.5


def test_check_output_predicate_and_schema() -> None:
    class Answer(BaseModel):
        text: str

    assert check_output(None, "anything") is None
    assert check_output(bool, "") is not None
    assert check_output(bool, "x") is None
    assert check_output(Answer, '{"text": "hi"}') is None
    assert check_output(Answer, {"text": "hi"}) is None
    assert "Answer" in (check_output(Answer, '{"nope": 1}') or "")
    assert "ZeroDivisionError" in (check_output(lambda _: 1 / 0, "x") or "")


def test_failure_reason_labels() -> None:
    assert failure_reason(ValueError()) == "error"
    assert failure_reason(StrategyValidationError("a", "bad")) == "invalid"


def test_thompson_is_deterministic_with_seed() -> None:
    stats = {
        n: StrategyStats(name=n, recent=(True, False) * 5, latencies=(0.1,) * 10) for n in "abc"
    }
    state = RankingState(names=list("abc"), stats=stats, now=0.0)
    one = [ThompsonPolicy(seed=7).rank(state).order for _ in range(1)]
    p1, p2 = ThompsonPolicy(seed=7), ThompsonPolicy(seed=7)
    assert [p1.rank(state).order for _ in range(20)] == [p2.rank(state).order for _ in range(20)]
    assert one[0] == ThompsonPolicy(seed=7).rank(state).order


def test_policy_config_errors() -> None:
    with pytest.raises(ConfigError, match="skip_threshold"):
        ThompsonPolicy(skip_threshold=2.0)
    with pytest.raises(ConfigError, match="unique"):
        ranked(("a", RunnableLambda(str)), ("a", RunnableLambda(str)))
    with pytest.raises(ConfigError, match="first_chunk_timeout"):
        ranked(("a", RunnableLambda(str)), first_chunk_timeout=0)


# -- learning ------------------------------------------------------------------------


def test_ranking_converges_to_reliable_strategy() -> None:
    time = FakeTime()
    rng = random.Random(1)
    calls = {"A": 0, "B": 0}

    def strat_a(x: str) -> str:
        calls["A"] += 1
        if rng.random() < 0.6:
            time.now += 0.2
            raise ValueError("A failed")
        time.now += 0.05
        return "a"

    def strat_b(x: str) -> str:
        calls["B"] += 1
        time.now += 0.05
        return "b"

    r = ranked(
        ("A", RunnableLambda(strat_a)), ("B", RunnableLambda(strat_b)), seed=3, clock=time.clock
    )
    for _ in range(50):
        r.invoke("q")
    before = dict(calls)
    results = [r.invoke("q") for _ in range(50)]
    assert set(results) <= {"a", "b"}
    a_tries = calls["A"] - before["A"]
    assert a_tries <= 5, a_tries  # A is rarely tried first any more
    assert r.stats()["strategies"]["B"]["ranked_first"] >= 90
    learned = r.learned()
    assert learned["B"].success_rate == 1.0
    assert learned["A"].failures > 0


def test_fixed_order_when_not_optimized() -> None:
    a, b = Behaviour(fail=True), Behaviour()
    r = ranked(("A", fake("A", a)), ("B", fake("B", b)), optimized=False, seed=0)
    for _ in range(30):
        assert r.invoke("q") == "ok"
    assert a.calls == 30  # tried first every time, like with_fallbacks
    assert isinstance(r._policy(), FixedOrderPolicy)


def test_skip_threshold_then_probe_and_recover() -> None:
    time = FakeTime()
    healthy = {"A": False}
    counts = {"A": 0}

    def strat_a(x: str) -> str:
        counts["A"] += 1
        time.now += 0.01
        if not healthy["A"]:
            raise ValueError("A down")
        return "a"

    def strat_b(x: str) -> str:
        time.now += 0.1
        return "b"

    policy = ThompsonPolicy(
        seed=5, skip_threshold=0.2, min_samples=5, probe_interval=30.0, probe_rate=0.0
    )
    r = ranked(
        ("A", RunnableLambda(strat_a)),
        ("B", RunnableLambda(strat_b)),
        policy=policy,
        clock=time.clock,
    )
    # Phase 1: A fails; once skipped it is only tried as a probe.
    for _ in range(40):
        assert r.invoke("q") == "b"
        time.now += 1.0
    skipped_phase = r.stats()["strategies"]["A"]["skipped"]
    assert skipped_phase > 20
    assert counts["A"] < 20
    assert policy.is_skipped(r.learned()["A"])
    # Phase 2: A recovers; probes (every 30 s) find out, and A, the faster one, leads again.
    healthy["A"] = True
    for _ in range(15):
        r.invoke("q")
        time.now += 31.0
    assert r.stats()["strategies"]["A"]["probes"] >= 2
    assert not policy.is_skipped(r.learned()["A"])
    results = []
    for _ in range(20):
        results.append(r.invoke("q"))
        time.now += 1.0
    assert results.count("a") >= 17


def test_skipped_not_tried_without_last_resort() -> None:
    a, b = Behaviour(fail=True), Behaviour(fail=True)
    policy = ThompsonPolicy(
        seed=1, min_samples=3, probe_rate=0.0, probe_interval=1e9, last_resort=False
    )
    r = ranked(("A", fake("A", a)), ("B", fake("B", b)), policy=policy)
    for _ in range(5):
        with pytest.raises(AllStrategiesFailedError):
            r.invoke("q")
    calls_before = a.calls + b.calls
    with pytest.raises(AllStrategiesFailedError) as info:
        r.invoke("q")
    # Both are skipped and probed once already: nothing to try now.
    assert a.calls + b.calls == calls_before
    assert info.value.errors == []


# -- fallback triggers ----------------------------------------------------------------


async def test_validator_failure_falls_back() -> None:
    a, b = Behaviour(chunks=["bad"]), Behaviour(chunks=["good"])
    r = RankedFallbacks(
        strategies=[
            Strategy(name="A", runnable=fake("A", a), validator=lambda out: out == "good"),
            Strategy(name="B", runnable=fake("B", b)),
        ],
        optimized=False,
    )
    assert await r.ainvoke("q") == "good"
    assert r.invoke("q") == "good"
    assert r.stats()["strategies"]["A"]["failures"] == {"invalid": 2}


async def test_schema_validator() -> None:
    class Answer(BaseModel):
        answer: str

    a = Behaviour(chunks=['{"answer": 1', "}"])  # wrong type
    b = Behaviour(chunks=['{"answer": ', '"42"}'])
    r = RankedFallbacks(
        strategies=[
            Strategy(name="A", runnable=fake("A", a), validator=Answer),
            Strategy(name="B", runnable=fake("B", b), validator=Answer),
        ],
        optimized=False,
    )
    assert await r.ainvoke("q") == '{"answer": "42"}'


async def test_unhandled_exception_propagates() -> None:
    def boom(_: str) -> str:
        raise KeyError("not handled")

    b = Behaviour()
    r = RankedFallbacks(
        runnable=RunnableLambda(boom),
        fallbacks=[fake("B", b)],
        exceptions_to_handle=(ValueError,),
        optimized=False,
    )
    with pytest.raises(KeyError):
        await r.ainvoke("q")
    with pytest.raises(KeyError):
        r.invoke("q")
    assert b.calls == 0


async def test_all_failed_lists_every_cause() -> None:
    r = ranked(
        ("A", fake("A", Behaviour(fail=True))),
        ("B", fake("B", Behaviour(fail=True))),
        optimized=False,
    )
    with pytest.raises(AllStrategiesFailedError) as info:
        await r.ainvoke("q")
    assert [name for name, _ in info.value.errors] == ["A", "B"]
    assert r.stats()["all_failed"] == 1


async def test_first_chunk_timeout_falls_back_and_closes_stream() -> None:
    time = FakeTime()
    a, b = Behaviour(hang=True), Behaviour(chunks=["b1", "b2"])
    r = ranked(
        ("A", fake("A", a)),
        ("B", fake("B", b)),
        optimized=False,
        first_chunk_timeout=5.0,
        clock=time.clock,
        sleep=time.sleep,
    )
    chunks = [c async for c in r.astream("q")]
    assert chunks == ["b1", "b2"]
    assert a.finally_ran == 1  # the hanging stream was closed
    assert time.sleeps[0] == 5.0
    assert r.stats()["strategies"]["A"]["failures"] == {"first_chunk_timeout": 1}


async def test_first_chunk_timeout_with_real_sleep() -> None:
    a, b = Behaviour(hang=True), Behaviour(chunks=["b"])
    r = ranked(("A", fake("A", a)), ("B", fake("B", b)), optimized=False, first_chunk_timeout=0.05)
    assert await r.ainvoke("q") == "b"
    assert a.finally_ran == 1


async def test_total_timeout_after_first_chunk_falls_back_in_ainvoke() -> None:
    time = FakeTime()
    a, b = Behaviour(chunks=["a1", "a2"], hang_after_first=True), Behaviour(chunks=["b"])
    r = ranked(
        ("A", fake("A", a)),
        ("B", fake("B", b)),
        optimized=False,
        total_timeout=30.0,
        clock=time.clock,
        sleep=time.sleep,
    )
    assert await r.ainvoke("q") == "b"
    assert a.finally_ran == 1
    assert r.stats()["strategies"]["A"]["failures"] == {"timeout": 1}


async def test_hedging_starts_next_and_cancels_loser() -> None:
    time = FakeTime()
    a, b = Behaviour(hang=True), Behaviour(chunks=["b"])
    r = ranked(
        ("A", fake("A", a)),
        ("B", fake("B", b)),
        optimized=True,
        policy=FixedOrderPolicy(),
        hedge=True,
        hedge_delay=0.5,
        clock=time.clock,
        sleep=time.sleep,
    )
    assert await r.ainvoke("q") == "b"
    assert (a.calls, b.calls) == (1, 1)
    assert a.finally_ran == 1  # the loser's generator was closed
    stats = r.stats()
    assert stats["extra_requests"] == 1
    assert stats["hedge_wins"] == 1
    assert stats["strategies"]["A"]["cancelled"] == 1
    assert stats["strategies"]["A"]["failures"] == {}  # cancelled, not failed
    learned = r.learned()["A"]
    assert (learned.attempts, learned.ttfcs) == (0, (0.5,))  # its wait, as a lower bound
    assert time.sleeps == [0.5]


async def test_hedging_uses_learned_p95_and_not_before_samples() -> None:
    time = FakeTime()
    a, b = Behaviour(chunks=["a"]), Behaviour(chunks=["b"])
    r = ranked(
        ("A", fake("A", a, time, cost=0.1)),
        ("B", fake("B", b)),
        policy=FixedOrderPolicy(),
        hedge=True,
        hedge_min_samples=5,
        clock=time.clock,
        sleep=time.sleep,
    )
    for _ in range(5):
        assert await r.ainvoke("q") == "a"
    assert r.stats()["extra_requests"] == 0  # no learned delay yet, never hedged
    assert time.sleeps == []
    a.hang = True
    assert await r.ainvoke("q") == "b"
    assert r.stats()["extra_requests"] == 1
    assert time.sleeps == [pytest.approx(0.1)]  # the learned p95 time to first chunk


async def test_no_hedge_when_leader_is_fast() -> None:
    a, b = Behaviour(chunks=["a"]), Behaviour(chunks=["b"])
    r = ranked(
        ("A", fake("A", a)),
        ("B", fake("B", b)),
        policy=FixedOrderPolicy(),
        hedge=True,
        hedge_delay=10.0,
        sleep=never,
    )
    assert await r.ainvoke("q") == "a"
    assert b.calls == 0
    assert r.stats()["extra_requests"] == 0


# -- streaming -----------------------------------------------------------------------


async def test_stream_error_after_first_chunk_is_raised_without_continuation() -> None:
    a, b = Behaviour(chunks=["Hello ", "x"], fail_after_first=True), Behaviour()
    r = ranked(("A", fake("A", a)), ("B", fake("B", b)), optimized=False)
    got: list[str] = []

    async def consume() -> None:
        async for chunk in r.astream({"question": "q"}):
            got.append(chunk)

    with pytest.raises(ValueError, match="mid-stream"):
        await consume()
    assert got == ["Hello "]
    assert b.calls == 0  # no duplicate output


async def test_continuation_hands_partial_to_next_strategy() -> None:
    a = Behaviour(chunks=["Hello ", "x"], fail_after_first=True)
    b = Behaviour(chunks=["world"])
    r = ranked(
        ("A", fake("A", a)), ("B", fake("B", b)), optimized=False, continuation_key="partial_answer"
    )
    got = [c async for c in r.astream({"question": "q"})]
    assert got == ["Hello ", "world"]
    assert b.inputs[-1] == {"question": "q", "partial_answer": "Hello "}
    sync_got = list(r.stream({"question": "q"}))
    assert sync_got == ["Hello ", "world"]


async def test_fallback_before_first_chunk_in_stream() -> None:
    r = ranked(
        ("A", fake("A", Behaviour(fail=True))),
        ("B", fake("B", Behaviour(chunks=["1", "2"]))),
        optimized=False,
    )
    assert [c async for c in r.astream("q")] == ["1", "2"]
    assert list(r.stream("q")) == ["1", "2"]


async def test_attempts_are_named_child_runs_in_astream_events() -> None:
    r = ranked(
        ("A", fake("A", Behaviour(fail=True))),
        ("B", fake("B", Behaviour(chunks=["x"]))),
        optimized=False,
        name="ranked",
    )
    starts = [
        e async for e in r.astream_events("q", version="v2") if e["event"] == "on_chain_start"
    ]
    names = [e["name"] for e in starts]
    assert names == ["ranked", "A", "B"]
    assert "attempt:A" in starts[1]["tags"]
    assert "attempt:B" in starts[2]["tags"]
    assert starts[1]["parent_ids"] == [starts[0]["run_id"]]


async def test_sync_invoke_inside_running_loop() -> None:
    asyncio.get_running_loop()  # we are inside a loop, like Jupyter
    r = ranked(
        ("A", fake("A", Behaviour(fail=True))),
        ("B", fake("B", Behaviour(chunks=["o", "k"]))),
        optimized=False,
    )
    assert r.invoke("q") == "ok"
    assert r.batch(["q", "q"]) == ["ok", "ok"]


def test_drop_in_constructor_and_registry() -> None:
    a, b = RunnableLambda(lambda x: x + "!", name="shout"), RunnableLambda(str, name="shout")
    r = RankedFallbacks(runnable=a, fallbacks=[b], name="dropin-test", seed=0)
    assert [s.name for s in r.strategies] == ["shout", "shout-2"]
    assert r.invoke("hi") == "hi!"
    assert get_stats()["strategies"]["dropin-test"]["requests"] == 1
    assert isinstance(r.store, MemoryStore)


# -- one deadline per attempt, counters under a lock, kwargs forwarded ----------------


async def test_total_timeout_arms_one_timer_per_attempt_not_one_per_chunk() -> None:
    sleeps: list[float] = []

    async def counting_never(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.Event().wait()

    a = Behaviour(chunks=[f"c{i}" for i in range(20)])
    r = ranked(("A", fake("A", a)), optimized=False, total_timeout=30.0, sleep=counting_never)
    assert [c async for c in r.astream("q")] == a.chunks
    assert await r.ainvoke("q") == "".join(a.chunks)
    assert len(sleeps) == 2  # one per attempt (two calls), none per chunk


async def test_total_timeout_passing_while_the_consumer_is_away_fails_the_next_read() -> None:
    fire = asyncio.Event()

    async def controlled(_seconds: float) -> None:
        await fire.wait()

    a = Behaviour(chunks=["a1", "a2", "a3"])
    r = ranked(("A", fake("A", a)), optimized=False, total_timeout=30.0, sleep=controlled)
    stream = r.astream("q")
    assert await stream.__anext__() == "a1"
    fire.set()  # the deadline passes while the consumer holds the first chunk
    for _ in range(5):
        await asyncio.sleep(0)
    with pytest.raises(StrategyTimeoutError):
        await stream.__anext__()
    assert a.finally_ran == 1
    assert r.stats()["strategies"]["A"]["failures"] == {"timeout": 1}


async def test_cancelling_the_consumer_is_not_turned_into_a_timeout() -> None:
    a = Behaviour(chunks=["a1", "a2"], hang_after_first=True)
    r = ranked(("A", fake("A", a)), optimized=False, total_timeout=30.0, sleep=never)
    got: list[str] = []

    async def consume() -> None:
        async for chunk in r.astream("q"):
            got.append(chunk)

    task = asyncio.create_task(consume())
    for _ in range(50):
        await asyncio.sleep(0)
    assert got == ["a1"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.finally_ran == 1
    assert r.stats()["strategies"]["A"]["failures"] == {}


def test_counters_stay_exact_under_concurrent_threads() -> None:
    r = RankedFallbacks(
        runnable=RunnableLambda(lambda x: x), names=["A"], policy=FixedOrderPolicy()
    )
    threads, calls = 4, 400

    def work() -> None:
        for _ in range(calls):
            r.invoke("q")

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        with ThreadPoolExecutor(threads) as pool:  # .result() re-raises a worker's error
            for future in [pool.submit(work) for _ in range(threads)]:
                future.result()
    finally:
        sys.setswitchinterval(previous)
    stats = r.stats()
    total = threads * calls
    assert stats["requests"] == total
    assert stats["strategies"]["A"]["attempts"] == total
    assert stats["strategies"]["A"]["successes"] == total
    assert stats["strategies"]["A"]["ranked_first"] == total


class KwargsProbe(Runnable[Any, str]):
    """Records the keyword arguments each call receives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> str:
        self.seen.append(("invoke", kwargs))
        return "ok"

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[str]:
        self.seen.append(("stream", kwargs))
        yield "ok"

    async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[str]:
        self.seen.append(("astream", kwargs))
        yield "ok"


async def test_call_kwargs_reach_the_strategy_like_with_fallbacks() -> None:
    probe = KwargsProbe()
    r = ranked(("P", probe))
    assert r.invoke("q", stop=["\n"]) == "ok"
    assert list(r.stream("q", stop=["\n"])) == ["ok"]
    assert await r.ainvoke("q", stop=["\n"]) == "ok"
    assert [c async for c in r.astream("q", stop=["\n"])] == ["ok"]
    assert probe.seen == [
        ("stream", {"stop": ["\n"]}),
        ("stream", {"stop": ["\n"]}),
        ("astream", {"stop": ["\n"]}),
        ("astream", {"stop": ["\n"]}),
    ]


# -- chat-model methods applied to every strategy (bind_tools ...) --------------------


class Suffixer(Runnable[Any, str]):
    """Appends a suffix (or fails); ``with_suffix`` returns a new runnable, like bind_tools."""

    def __init__(self, name: str, suffix: str = "", *, fail: bool = False) -> None:
        self.name = name
        self.suffix = suffix
        self.fail = fail
        self.count = 0  # a plain attribute, not a method returning a runnable

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> str:
        if self.fail:
            raise ValueError(f"{self.name} failed")
        return f"{input}{self.suffix}"

    def with_suffix(self, suffix: str) -> Suffixer:
        return Suffixer(self.name, self.suffix + suffix, fail=self.fail)

    def with_maybe(self, suffix: str) -> Suffixer | None:  # not always a runnable
        return None

    def lies(self) -> Runnable[Any, str]:  # annotated as a runnable, returns text
        return cast("Runnable[Any, str]", "not a runnable")


def chat(model: str) -> ChatFastpipe:
    return ChatFastpipe(model=model, base_url="http://127.0.0.1:9/v1", api_key="sk-test")


@tool
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


class Answer(BaseModel):
    """A short answer."""

    text: str


def test_bind_tools_and_structured_output_apply_to_every_candidate_keeping_names() -> None:
    r = RankedFallbacks(runnable=chat("a"), fallbacks=[chat("b")], seed=3, first_chunk_timeout=5.0)
    bound = r.bind_tools([magic_function], tool_choice="auto")
    assert isinstance(bound, RankedFallbacks)
    assert [s.name for s in bound.strategies] == [s.name for s in r.strategies]
    for strategy in bound.strategies:
        assert isinstance(strategy.runnable, RunnableBinding)
        assert [t["function"]["name"] for t in strategy.runnable.kwargs["tools"]] == [
            "magic_function"
        ]
        assert strategy.runnable.kwargs["tool_choice"] == "auto"
    assert [s.runnable.bound.model_name for s in bound.strategies] == ["a", "b"]
    assert (bound.store, bound.policy) == (r.store, r.policy)
    assert (bound.seed, bound.first_chunk_timeout) == (3, 5.0)
    structured = bound.with_structured_output(Answer)  # a RunnableSequence per candidate
    assert isinstance(structured, RankedFallbacks)
    assert all(isinstance(s.runnable, RunnableSequence) for s in structured.strategies)
    assert [s.name for s in structured.strategies] == [s.name for s in r.strategies]
    assert structured.store is r.store
    assert r.strategies[0].runnable.model_name == "a"  # the original is untouched


def test_derived_instances_share_what_was_learned_both_ways() -> None:
    r = RankedFallbacks(
        runnable=Suffixer("A", fail=True),
        fallbacks=[Suffixer("B")],
        names=["A", "B"],
        validators=[None, lambda out: out.endswith("!")],
        seed=0,
    )
    d = r.with_suffix("!")
    assert d.invoke("hi") == "hi!"  # A fails, B passes its validator thanks to the suffix
    assert r.learned()["A"].failures == 1
    assert r.learned()["B"].successes == 1
    assert r.stats()["strategies"]["A"]["failures"] == {"error": 1}
    for _ in range(10):
        assert r.with_suffix("?").with_suffix("!").invoke("q") == "q?!"  # derived twice
    assert r.learned()["B"].successes == 11
    assert r.stats()["requests"] == d.stats()["requests"] == 11
    assert r.rank(r.learned()).order[0] == "B"  # the origin ranks by the shared record
    with pytest.raises(AllStrategiesFailedError):
        r.invoke("q")  # B's validator rejects the unsuffixed answer: validators are kept


def test_derived_instances_appear_once_in_the_registry_and_outlive_their_origin() -> None:
    r = RankedFallbacks(runnable=Suffixer("A"), name="derived-registry-test", seed=0)
    d = r.with_suffix("!")
    assert d.invoke("x") == "x!"
    assert r.invoke("x") == "x"
    names = [n for n in get_stats()["strategies"] if n.startswith("derived-registry-test")]
    assert names == ["derived-registry-test"]
    del r
    gc.collect()
    assert get_stats()["strategies"]["derived-registry-test"]["requests"] == 2


def test_runnable_methods_wrap_the_ranked_instance_itself() -> None:
    probe = KwargsProbe()
    r = ranked(("P", probe))
    bound = r.bind(stop=["\n"]).with_config(run_name="renamed")
    assert isinstance(bound, RunnableBinding)
    assert bound.bound is r
    assert bound.invoke("q") == "ok"
    assert probe.seen == [("stream", {"stop": ["\n"]})]
    assert r.stats()["requests"] == 1


def test_attributes_that_are_not_runnable_methods_raise_attribute_error() -> None:
    r = RankedFallbacks(runnable=Suffixer("A"), fallbacks=[Suffixer("B")], names=["A", "B"])
    with pytest.raises(AttributeError, match="'count' is not one on strategies \\['A', 'B'\\]"):
        _ = r.count
    with pytest.raises(AttributeError, match="'with_maybe' is not one"):
        r.with_maybe("!")
    with pytest.raises(AttributeError, match="'nothing', nor do its strategies"):
        _ = r.nothing
    with pytest.raises(AttributeError, match="'_private'"):
        _ = r._private
    assert not hasattr(r, "model_name")
    assert getattr(r, "model_name", None) is None  # how langchain probes a model
    mixed = RankedFallbacks(
        runnable=chat("a"), fallbacks=[chat("b") | StrOutputParser()], names=["a", "b|parse"]
    )
    with pytest.raises(
        AttributeError, match="'bind_tools' is not one on strategies \\['b\\|parse'"
    ):
        mixed.bind_tools([magic_function])
    with pytest.raises(TypeError, match="lies\\(\\) of strategy 'A' returned str, not a Runnable"):
        r.lies()


def test_a_property_failing_inside_keeps_its_own_error() -> None:
    class Broken(RankedFallbacks[Any, Any]):
        @property
        def broken(self) -> int:
            raise AttributeError("the real cause")

    r = Broken(runnable=Suffixer("A"))
    with pytest.raises(AttributeError, match="the real cause"):
        _ = r.broken
