"""Circuit breakers per (endpoint, model): the state machine, the registry and the pool's use.

Time is a fake clock everywhere; retries sleep through a recorder. Nothing here waits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from langchain_fastpipe.errors import (
    CircuitOpenError,
    ConfigError,
    EndpointConnectError,
    EndpointTimeoutError,
    NotFoundError,
    ServerError,
)
from langchain_fastpipe.prometheus import render_prometheus
from langchain_fastpipe.transport import (
    BreakerPolicy,
    BreakerRegistry,
    CircuitBreaker,
    EndpointConfig,
    PooledClient,
    RetryPolicy,
)
from langchain_fastpipe.transport._breaker import IGNORED, SUCCESS, Verdict

ENDPOINT = "http://h:80/v1"
SERVER_DOWN = Verdict("failure", "ignored")
MODEL_ERROR = Verdict("success", "failure")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    *,
    window: float = 30.0,
    min_calls: int = 3,
    rate: float = 0.5,
    cooldown: float = 2.0,
    max_cooldown: float = 60.0,
    factor: float = 2.0,
    probes: int = 1,
    model: str | None = "m",
) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    policy = BreakerPolicy(
        window=window, min_calls=min_calls, failure_rate=rate, cooldown=cooldown,
        max_cooldown=max_cooldown, cooldown_factor=factor, half_open_max_calls=probes,
    )  # fmt: skip
    return CircuitBreaker(policy, endpoint=ENDPOINT, model=model, clock=clock), clock


def state_of(breaker: CircuitBreaker) -> str:
    """The breaker's state (a plain str: each read is a new observation)."""
    return breaker.state


def boom(text: str = "boom") -> ServerError:
    """A ServerError that was really raised (it has a traceback)."""
    try:
        raise ServerError(f"{ENDPOINT} answered HTTP 500: {text}", endpoint=ENDPOINT,
                          status_code=500, body=text)  # fmt: skip
    except ServerError as exc:
        return exc


def fail(breaker: CircuitBreaker, error: BaseException | None = None) -> None:
    breaker.on_failure(breaker.before_call(), error or boom())


def succeed(breaker: CircuitBreaker) -> None:
    breaker.on_success(breaker.before_call())


def refusal(breaker: CircuitBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    return info.value


# --------------------------------------------------------------------------- policy


def test_policy_defaults_are_short_and_rate_based() -> None:
    policy = BreakerPolicy()
    assert (policy.window, policy.min_calls, policy.failure_rate) == (30.0, 5, 0.5)
    assert (policy.cooldown, policy.max_cooldown, policy.cooldown_factor) == (2.0, 60.0, 2.0)
    assert policy.half_open_max_calls == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"window": 0}, r"BreakerPolicy\.window must be finite and > 0, got 0"),
        ({"window": float("inf")}, r"BreakerPolicy\.window .*got inf"),
        ({"min_calls": 0}, r"BreakerPolicy\.min_calls must be >= 1, got 0"),
        ({"min_calls": 2.5}, r"BreakerPolicy\.min_calls must be an int, got float"),
        ({"failure_rate": 0.0}, r"BreakerPolicy\.failure_rate must be finite and > 0, got 0\.0"),
        ({"failure_rate": 50}, r"BreakerPolicy\.failure_rate must be a fraction .*got 50"),
        ({"cooldown": -1.0}, r"BreakerPolicy\.cooldown must be finite and >= 0, got -1\.0"),
        (
            {"max_cooldown": 1.0},
            r"max_cooldown must be >= BreakerPolicy\.cooldown \(2\.0\), got 1\.0",
        ),
        ({"cooldown_factor": 0.5}, r"BreakerPolicy\.cooldown_factor .*>= 1, got 0\.5"),
        ({"half_open_max_calls": 0}, r"BreakerPolicy\.half_open_max_calls must be >= 1, got 0"),
    ],
)
def test_policy_messages_name_the_field_and_quote_the_value(
    kwargs: dict[str, object], pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- state machine


def test_needs_min_calls_in_the_window_before_opening() -> None:
    breaker, _ = make(min_calls=3)
    fail(breaker)
    fail(breaker)
    assert state_of(breaker) == "closed"
    fail(breaker)
    assert state_of(breaker) == "open"


def test_opens_on_the_failure_rate_not_on_a_streak() -> None:
    below, _ = make(min_calls=4, rate=0.5)
    for outcome in (succeed, fail, succeed, succeed, fail):  # 2 of 5 failed: 40 %
        outcome(below)
    assert state_of(below) == "closed"
    at_rate, _ = make(min_calls=4, rate=0.5)
    for outcome in (succeed, fail, succeed):
        outcome(at_rate)
    assert state_of(at_rate) == "closed"  # below min_calls
    fail(at_rate)  # never two failures in a row, but half of four calls
    assert state_of(at_rate) == "open"


def test_outcomes_older_than_the_window_no_longer_count() -> None:
    breaker, clock = make(window=10.0, min_calls=3)
    fail(breaker)
    fail(breaker)
    clock.now += 10.0
    fail(breaker)
    assert state_of(breaker) == "closed"
    assert breaker.snapshot()["calls_in_window"] == 1


def test_refusal_names_endpoint_model_next_probe_and_the_real_cause() -> None:
    breaker, clock = make(min_calls=1, cooldown=2.0)
    error = boom("model crashed")
    fail(breaker, error)
    clock.now += 0.5
    refused = refusal(breaker)
    assert (refused.endpoint, refused.model, refused.scope) == (ENDPOINT, "m", "model")
    assert refused.retry_at == 1002.0
    assert refused.retry_in == pytest.approx(1.5)
    assert str(refused) == (
        f"circuit breaker open for model 'm' at {ENDPOINT}: failing fast, next probe in 1.50s"
    )
    cause = refused.__cause__
    assert isinstance(cause, ServerError)
    assert cause is not error  # a copy: the breaker pins no frames of the failed call
    assert (str(cause), cause.status_code, cause.body) == (str(error), 500, "model crashed")
    assert cause.__traceback__ is None
    assert refused.__suppress_context__


def test_half_open_probe_goes_as_soon_as_the_cooldown_ends() -> None:
    breaker, clock = make(min_calls=1, cooldown=2.0)
    fail(breaker)
    clock.now += 1.999
    refusal(breaker)
    clock.now = 1002.0
    assert state_of(breaker) == "half_open"
    probe = breaker.before_call()
    assert probe is True
    busy = refusal(breaker)  # the single probe slot is taken
    assert busy.retry_in == 0.0
    assert "a probe call is in flight" in str(busy)
    breaker.on_success(probe)
    assert state_of(breaker) == "closed"
    assert breaker.before_call() is False


def test_a_successful_probe_closes_with_an_empty_window() -> None:
    breaker, clock = make(min_calls=2, cooldown=1.0)
    fail(breaker)
    fail(breaker)
    clock.now += 1.0
    breaker.on_success(breaker.before_call())
    fail(breaker)  # one failure after closing: below min_calls again
    assert state_of(breaker) == "closed"


def test_cooldown_grows_while_probes_fail_up_to_the_max() -> None:
    breaker, clock = make(min_calls=1, cooldown=1.0, factor=2.0, max_cooldown=5.0)
    fail(breaker)
    cooldowns = []
    for _ in range(5):
        cooldowns.append(breaker.snapshot()["cooldown"])
        clock.now += breaker.snapshot()["retry_in"]
        fail(breaker)  # the probe fails: open again
    assert cooldowns == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert breaker.times_opened == 6


def test_reopening_soon_after_closing_keeps_growing_a_quiet_window_resets() -> None:
    breaker, clock = make(window=10.0, min_calls=1, cooldown=1.0, factor=3.0)
    fail(breaker)
    clock.now += 1.0
    succeed(breaker)  # the probe closes it
    clock.now += 5.0
    fail(breaker)  # within one window of closing: the failures go on
    assert breaker.snapshot()["cooldown"] == 3.0
    clock.now += 3.0
    succeed(breaker)
    clock.now += 10.0
    fail(breaker)  # a whole quiet window later: a fresh, short cooldown
    assert breaker.snapshot()["cooldown"] == 1.0


def test_outcomes_of_calls_admitted_before_opening_change_nothing() -> None:
    breaker, clock = make(min_calls=1, cooldown=1.0)
    early = breaker.before_call()
    fail(breaker)
    breaker.on_success(early)
    assert state_of(breaker) == "open"
    clock.now += 1.0
    late = False  # admitted before it opened: not a probe
    breaker.on_success(late)
    assert state_of(breaker) == "half_open"


def test_ignored_outcomes_do_not_count_and_free_the_probe_slot() -> None:
    breaker, clock = make(min_calls=1, cooldown=1.0)
    breaker.on_ignored(breaker.before_call())
    assert breaker.snapshot()["calls_in_window"] == 0
    fail(breaker)
    clock.now += 1.0
    breaker.on_ignored(breaker.before_call())
    assert breaker.before_call() is True


def test_snapshot_is_json_with_state_window_and_cooldown() -> None:
    breaker, clock = make(min_calls=2, rate=0.6, cooldown=4.0)
    succeed(breaker)
    fail(breaker, boom("overloaded"))
    fail(breaker)  # 2 of 3
    clock.now += 1.0
    snap = breaker.snapshot()
    json.dumps(snap)
    assert snap == {
        "state": "open",
        "calls_in_window": 3,
        "failures_in_window": 2,
        "failure_rate": pytest.approx(2 / 3),
        "cooldown": 4.0,
        "retry_in": 3.0,
        "times_opened": 1,
        "last_error": f"ServerError: {ENDPOINT} answered HTTP 500: boom",
    }


# --------------------------------------------------------------------------- registry


def registry(**kwargs: float) -> tuple[BreakerRegistry, FakeClock]:
    clock = FakeClock()
    policy = BreakerPolicy(min_calls=2, cooldown=1.0, **kwargs)  # type: ignore[arg-type]
    return BreakerRegistry(policy, endpoint=ENDPOINT, clock=clock), clock


def test_a_failing_model_does_not_block_another_model() -> None:
    breakers, _ = registry()
    for _ in range(2):
        breakers.admit("bad").report(MODEL_ERROR, boom())
    with pytest.raises(CircuitOpenError) as info:
        breakers.admit("bad")
    assert info.value.model == "bad"
    breakers.admit("good").report(SUCCESS)
    assert state_of(breakers.get("good")) == "closed"
    assert state_of(breakers.endpoint_breaker) == "closed"  # the server answered every call


def test_reset_closes_every_breaker_with_an_empty_window() -> None:
    breakers, _ = registry()
    down = EndpointConnectError(f"connection to {ENDPOINT} failed", endpoint=ENDPOINT)
    for _ in range(2):
        breakers.admit("bad").report(MODEL_ERROR, boom())
    for _ in range(2):
        breakers.admit("other").report(SERVER_DOWN, down)
    with pytest.raises(CircuitOpenError):
        breakers.admit("bad")
    with pytest.raises(CircuitOpenError):
        breakers.admit("other")
    breakers.reset()
    breakers.admit("bad").report(SUCCESS)
    assert state_of(breakers.get("bad")) == "closed"
    assert state_of(breakers.endpoint_breaker) == "closed"
    assert breakers.endpoint_breaker.snapshot()["failures_in_window"] == 0


def test_connect_failures_open_the_endpoint_for_every_model() -> None:
    breakers, _ = registry()
    down = EndpointConnectError(f"connection to {ENDPOINT} failed", endpoint=ENDPOINT)
    breakers.admit("a").report(SERVER_DOWN, down)
    breakers.admit("b").report(SERVER_DOWN, down)
    assert breakers.get("a").snapshot()["calls_in_window"] == 0  # not the model's fault
    with pytest.raises(CircuitOpenError) as info:
        breakers.admit("never-called")
    error = info.value
    assert (error.scope, error.model) == ("endpoint", "never-called")
    assert str(error).startswith(f"circuit breaker open for every model at {ENDPOINT}")
    assert "failing fast for model 'never-called'" in str(error)
    assert isinstance(error.__cause__, EndpointConnectError)


def test_a_refusing_model_frees_the_endpoint_probe() -> None:
    breakers, clock = registry()
    breakers.admit(None).report(SERVER_DOWN)
    breakers.admit(None).report(SERVER_DOWN)  # the endpoint is open until 1001.0
    clock.now += 0.5
    fail(breakers.get("bad"))
    fail(breakers.get("bad"))  # "bad" is open until 1001.5
    clock.now += 0.5  # the endpoint may probe, "bad" may not
    with pytest.raises(CircuitOpenError) as info:
        breakers.admit("bad")
    assert info.value.scope == "model"
    probe = breakers.admit("good")  # the endpoint's probe slot is still free
    probe.report(SUCCESS)
    assert state_of(breakers.endpoint_breaker) == "closed"


def test_calls_without_a_model_report_everything_to_the_endpoint_breaker() -> None:
    breakers, _ = registry()
    breakers.admit(None).report(MODEL_ERROR)
    breakers.admit(None).report(Verdict("ignored", "failure"))
    assert state_of(breakers.endpoint_breaker) == "open"
    assert breakers.models() == {}


def test_each_call_reports_once() -> None:
    breakers, _ = registry()
    admission = breakers.admit("m")
    admission.report(MODEL_ERROR)
    admission.report(MODEL_ERROR)
    admission.report(IGNORED)
    assert breakers.get("m").snapshot()["failures_in_window"] == 1


def test_idle_model_breakers_are_forgotten_beyond_the_cap() -> None:
    breakers, _ = registry()
    breakers.admit("busy").report(MODEL_ERROR)
    for i in range(300):
        breakers.get(f"idle-{i}")
    names = breakers.models()
    assert "busy" in names  # it has outcomes in its window
    assert len(names) <= 257


# --------------------------------------------------------------------------- the pool


def by_model(
    replies: dict[str, Callable[[], httpx.Response]],
) -> tuple[Callable[[httpx.Request], httpx.Response], dict[str, int]]:
    """A MockTransport handler answering per ``model`` of the JSON body; counts requests."""
    counts: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        counts[model] = counts.get(model, 0) + 1
        return replies[model]()

    return handler, counts


def pool_with(
    handler: Callable[[httpx.Request], httpx.Response],
    clock: FakeClock,
    delays: list[float],
    **policy: float,
) -> PooledClient:
    async def asleep(seconds: float) -> None:
        delays.append(seconds)

    config = EndpointConfig(
        base_url=ENDPOINT,
        retry=RetryPolicy(max_retries=2),
        breaker=BreakerPolicy(**policy),  # type: ignore[arg-type]
    )
    return PooledClient(
        config, transport=httpx.MockTransport(handler), clock=clock,
        sleep=asleep, sync_sleep=delays.append, rng=lambda: 0.5,
    )  # fmt: skip


async def test_pool_counts_calls_not_attempts_and_keeps_models_apart() -> None:
    handler, counts = by_model(
        {"bad": lambda: httpx.Response(500, json={"error": "x"}),
         "good": lambda: httpx.Response(200, json={"ok": True})}
    )  # fmt: skip
    clock, delays = FakeClock(), list[float]()
    pool = pool_with(handler, clock, delays, min_calls=2, cooldown=1.0)
    with pytest.raises(ServerError):
        await pool.apost_json("/chat", {"model": "bad"}, model="bad")
    with pytest.raises(ServerError):  # the real error, not CircuitOpenError
        pool.post_json("/chat", {"model": "bad"}, model="bad")
    assert counts == {"bad": 6}  # three attempts each
    assert pool.breakers.get("bad").snapshot()["calls_in_window"] == 2
    with pytest.raises(CircuitOpenError) as info:
        await pool.apost_json("/chat", {"model": "bad"}, model="bad")
    assert counts == {"bad": 6}  # refused without a request
    assert isinstance(info.value.__cause__, ServerError)
    data, _ = await pool.apost_json("/chat", {"model": "good"}, model="good")
    assert data == {"ok": True}
    clock.now += 1.0
    with pytest.raises(ServerError):  # the probe went out, and failed
        await pool.apost_json("/chat", {"model": "bad"}, model="bad")
    assert counts["bad"] == 9
    assert pool.breakers.get("bad").snapshot()["cooldown"] == 2.0


async def test_pool_4xx_and_cancellations_never_count() -> None:
    entered, gate = asyncio.Event(), asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["model"] == "slow":
            entered.set()
            await gate.wait()
        return httpx.Response(404, json={"error": "no such model"})

    pool = PooledClient(
        EndpointConfig(base_url=ENDPOINT, breaker=BreakerPolicy(min_calls=1)),
        transport=httpx.MockTransport(handler), clock=FakeClock(),
    )  # fmt: skip
    with pytest.raises(NotFoundError):
        await pool.apost_json("/chat", {"model": "m"}, model="m")
    task = asyncio.create_task(pool.apost_json("/chat", {"model": "slow"}, model="slow"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert set(pool.breakers.models()) == {"m", "slow"}
    m = pool.breakers.get("m").snapshot()
    assert (m["state"], m["calls_in_window"], m["failures_in_window"]) == ("closed", 1, 0)
    assert pool.breakers.get("slow").snapshot()["calls_in_window"] == 0
    assert pool.breaker.snapshot()["failures_in_window"] == 0


class StallAfter(httpx.AsyncByteStream):
    """Yields one chunk, then fails with a read timeout (a model that stalls mid-answer)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        raise httpx.ReadTimeout("stalled")


async def test_a_stream_reports_its_outcome_once_at_its_end() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=StallAfter())

    pool = pool_with(handler, FakeClock(), [], min_calls=1)
    with pytest.raises(EndpointTimeoutError):
        async for _ in pool.astream("/chat", {"model": "m"}, model="m"):
            pass
    snap = pool.breakers.get("m").snapshot()
    assert (snap["calls_in_window"], snap["failures_in_window"]) == (1, 1)  # not 1 + 1
    assert snap["state"] == "open"
    assert pool.breaker.snapshot()["calls_in_window"] == 0  # connected fine


async def test_stats_export_every_breaker_as_json_and_prometheus() -> None:
    handler, _ = by_model(
        {"bad": lambda: httpx.Response(503), "good": lambda: httpx.Response(200, json={})}
    )
    pool = pool_with(handler, FakeClock(), [], min_calls=1, cooldown=3.0)
    with pytest.raises(ServerError):
        await pool.apost_json("/chat", {"model": "bad"}, model="bad")
    await pool.apost_json("/chat", {"model": "good"}, model="good")
    stats = pool.stats()
    json.dumps(stats)
    assert stats["breaker"]["state"] == "closed"
    assert stats["breaker"]["models"]["bad"]["state"] == "open"
    assert stats["breaker"]["models"]["good"]["state"] == "closed"
    text = render_prometheus({"pools": {pool.endpoint: stats}})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def sample(name: str, model: str, **labels: str) -> float:
        key = tuple(sorted({"endpoint": ENDPOINT, "model": model, **labels}.items()))
        return samples[(name, key)]

    state = "fastpipe_breaker_state"  # a state set: the label is named like the metric
    assert sample(state, "bad", fastpipe_breaker_state="open") == 1
    assert sample(state, "bad", fastpipe_breaker_state="closed") == 0
    assert sample(state, "good", fastpipe_breaker_state="closed") == 1
    assert sample(state, "*", fastpipe_breaker_state="closed") == 1
    assert sample("fastpipe_breaker_failures_in_window", "bad") == 1
    assert sample("fastpipe_breaker_cooldown_seconds", "bad") == 3.0
    assert sample("fastpipe_breaker_retry_in_seconds", "bad") == 3.0
    assert sample("fastpipe_breaker_times_opened_total", "bad") == 1
    assert not any("pools_breaker" in name for name, _ in samples)  # no duplicates
