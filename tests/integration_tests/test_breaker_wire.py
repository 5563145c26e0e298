"""Circuit breakers over real sockets: per (endpoint, model), per call, and they let go.

The issue's cases against the emulator:

* "bad model, good model": a model that always answers 500 opens its own breaker; a healthy
  model on the same server keeps working, and no call hides the real error while it is
  still being counted;
* "server comes back": a server that was down and came up is served again (at once with
  the default policy; after the short cooldown's probe once the endpoint breaker opened);
* ``with_fallbacks`` reaches its fallback at once while a breaker is open, and the
  refusal carries the real ``ServerError`` as its cause.

Every pool gets a fake clock (cooldowns pass by advancing it) and a recording back-off
sleep, so nothing here really waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig

import langchain_fastpipe.chat_models as chat_models_module
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.emulator import EmulatorConfig, EmulatorServer, Fault, ModelProfile
from langchain_fastpipe.errors import CircuitOpenError, EndpointConnectError, ServerError
from langchain_fastpipe.prometheus import render_prometheus
from langchain_fastpipe.transport import EndpointConfig, PooledClient

MakeEmulator = Callable[..., EmulatorServer]

PROMPT = "tell me about the harbor"
CHAT = "/v1/chat/completions"
MODES = ("invoke", "ainvoke", "stream", "astream")


class FakeClock:
    """The breakers' monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pools:
    """ChatFastpipe's pools for one test: fake clock, recorded back-off sleeps."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.delays: list[float] = []
        self.made: dict[EndpointConfig, PooledClient] = {}

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def get_pool(self, config: EndpointConfig) -> PooledClient:
        pool = self.made.get(config)
        if pool is None:
            pool = self.made[config] = PooledClient(
                config, clock=self.clock, sleep=self.sleep, sync_sleep=self.delays.append
            )
        return pool


@pytest.fixture
async def pools(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Pools]:
    """Route ChatFastpipe through this test's own pools (and so its own breakers)."""
    made = Pools()
    monkeypatch.setattr(chat_models_module, "get_pool", made.get_pool)
    yield made
    for pool in made.made.values():
        await pool.aclose()


def always_500() -> ModelProfile:
    return ModelProfile(fail_rate=1.0, fail_fault=Fault.status(500, message="model crashed"))


def model_on(server: EmulatorServer, name: str, **kwargs: Any) -> ChatFastpipe:
    return ChatFastpipe(model=name, base_url=server.openai_base_url, **kwargs)


async def call(model: ChatFastpipe, mode: str) -> str:
    """The answer's text, through ``mode``."""
    if mode == "invoke":
        return model.invoke(PROMPT).text
    if mode == "ainvoke":
        return (await model.ainvoke(PROMPT)).text
    if mode == "stream":
        return "".join(chunk.text for chunk in model.stream(PROMPT))
    return "".join([chunk.text async for chunk in model.astream(PROMPT)])


def requests_of(server: EmulatorServer, name: str) -> int:
    """Completion requests the server received for model ``name`` (since its last reset)."""
    return sum(1 for body in server.bodies(CHAT) if body.get("model") == name)


# --------------------------------------------------------------------------- bad model, good model


@pytest.mark.parametrize("mode", MODES)
async def test_the_issue_case_two_failing_calls_block_nothing(
    make_emulator: MakeEmulator, pools: Pools, mode: str
) -> None:
    """Defaults: two calls of an always-500 model (3 attempts each) open nothing."""
    server = make_emulator(EmulatorConfig(models={"bad": always_500()}))
    bad, good = model_on(server, "bad"), model_on(server, "good")
    for _ in range(3):  # even a third call still gets the real error
        with pytest.raises(ServerError, match="model crashed"):
            await call(bad, mode)
    assert requests_of(server, "bad") == 9  # every retry was sent
    assert await call(good, mode) == await call(model_on(server, "good"), "ainvoke")
    assert requests_of(server, "good") == 2


@pytest.mark.parametrize("mode", MODES)
async def test_an_open_model_breaker_leaves_other_models_alone(
    make_emulator: MakeEmulator, pools: Pools, mode: str
) -> None:
    server = make_emulator(EmulatorConfig(models={"bad": always_500()}))
    policy = {"breaker_min_calls": 2, "breaker_cooldown": 0.5}
    bad, good = model_on(server, "bad", **policy), model_on(server, "good", **policy)
    for _ in range(2):
        with pytest.raises(ServerError):
            await call(bad, mode)
    with pytest.raises(CircuitOpenError) as info:
        await call(bad, mode)
    assert requests_of(server, "bad") == 6  # refused without a request
    refused = info.value
    assert (refused.model, refused.scope, refused.endpoint) == ("bad", "model", bad.pool.endpoint)
    assert refused.retry_in == 0.5
    assert "next probe in 0.50s" in str(refused)
    assert isinstance(refused.__cause__, ServerError)
    assert refused.__cause__.status_code == 500

    assert await call(good, mode)  # the same server, a healthy model: served
    assert requests_of(server, "good") == 1

    stats = bad.pool.stats()["breaker"]
    assert (stats["state"], stats["models"]["good"]["state"]) == ("closed", "closed")
    assert stats["models"]["bad"]["state"] == "open"
    metrics = render_prometheus({"pools": {bad.pool.endpoint: bad.pool.stats()}})
    labels = f'endpoint="{bad.pool.endpoint}",fastpipe_breaker_state="open",model="bad"'
    assert f"fastpipe_breaker_state{{{labels}}} 1.0\n" in metrics  # a state set


async def test_a_recovered_model_is_probed_after_the_cooldown_and_closes(
    make_emulator: MakeEmulator, pools: Pools
) -> None:
    server = make_emulator()
    flaky = model_on(server, "flaky", breaker_min_calls=2, breaker_cooldown=0.5, max_retries=0)
    server.inject(Fault.status(503), times=2, model="flaky")
    for _ in range(2):
        with pytest.raises(ServerError):
            await flaky.ainvoke(PROMPT)
    with pytest.raises(CircuitOpenError):
        await flaky.ainvoke(PROMPT)
    pools.clock.now += 0.5  # the cooldown is over: the next call is the probe
    assert (await flaky.ainvoke(PROMPT)).text
    assert flaky.pool.breakers.get("flaky").state == "closed"
    assert requests_of(server, "flaky") == 3


# --------------------------------------------------------------------------- server comes back


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_a_server_down_for_two_calls_is_served_as_soon_as_it_is_back(
    make_emulator: MakeEmulator, pools: Pools, mode: str
) -> None:
    """Defaults, the issue's case: two refused calls, then the server is up: served."""
    server = make_emulator()
    model = model_on(server, "m")
    server.stop()
    for _ in range(2):
        with pytest.raises(EndpointConnectError):
            await call(model, mode)
    server.start()  # the same port
    assert server.base_url in model.pool.endpoint
    assert await call(model, mode)
    assert requests_of(server, "m") == 1


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_an_open_endpoint_breaker_probes_the_server_after_its_short_cooldown(
    make_emulator: MakeEmulator, pools: Pools, mode: str
) -> None:
    server = make_emulator()
    policy = {"breaker_min_calls": 2, "breaker_cooldown": 0.25}
    model, other = model_on(server, "m", **policy), model_on(server, "other", **policy)
    server.stop()
    for _ in range(2):
        with pytest.raises(EndpointConnectError):
            await call(model, mode)
    server.start()
    with pytest.raises(CircuitOpenError) as info:  # the server is down for every model
        await call(other, mode)
    assert (info.value.scope, info.value.model) == ("endpoint", "other")
    assert isinstance(info.value.__cause__, EndpointConnectError)
    assert server.chat_requests == 0
    pools.clock.now += 0.25
    assert await call(other, mode)  # the probe: the server is back
    assert model.pool.breaker.state == "closed"
    assert await call(model, mode)
    assert server.chat_requests == 2


# --------------------------------------------------------------------------- with_fallbacks


class ErrorRecorder(BaseCallbackHandler):
    """Records the errors of every chat model run (as a tracer would see them)."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **_: Any
    ) -> None:
        self.errors.append(error)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_with_fallbacks_reaches_its_fallback_at_once_while_a_breaker_is_open(
    make_emulator: MakeEmulator, pools: Pools, mode: str
) -> None:
    primary_server = make_emulator(EmulatorConfig(models={"primary": always_500()}))
    fallback_server = make_emulator()
    primary = model_on(primary_server, "primary", breaker_min_calls=2, breaker_cooldown=30.0)
    fallback = model_on(fallback_server, "fallback")
    for _ in range(2):
        with pytest.raises(ServerError):
            await primary.ainvoke(PROMPT)
    sent_before, slept_before = primary_server.chat_requests, len(pools.delays)

    recorder = ErrorRecorder()
    chain = primary.with_fallbacks([fallback])
    config: RunnableConfig = {"callbacks": [recorder]}
    if mode == "invoke":
        answer = chain.invoke(PROMPT, config=config)
    else:
        answer = await chain.ainvoke(PROMPT, config=config)

    assert answer.text == (await model_on(fallback_server, "fallback").ainvoke(PROMPT)).text
    assert primary_server.chat_requests == sent_before  # nothing sent to the open model
    assert len(pools.delays) == slept_before  # no retry, no back-off: at once
    [refused] = recorder.errors
    assert isinstance(refused, CircuitOpenError)
    assert isinstance(refused.__cause__, ServerError)
    assert "model crashed" in str(refused.__cause__)
