"""Unit tests of the preloader: fake warmers, injected clock and sleep, no sockets."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda, RunnableParallel

from langchain_fastpipe._chat import _preload as chat_preload
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.config import FastpipeConfig
from langchain_fastpipe.errors import PreloadError
from langchain_fastpipe.local import LocalModelServer
from langchain_fastpipe.preload import (
    WARMUP_RUN_NAME,
    ModelPreloader,
    PreloadSpec,
    PreloadStatus,
    fastpipe_lifespan,
    find_prompts,
    parse_duration,
    parse_preload_env,
    refresh_interval_for,
    register_from_env,
    warmup_messages,
)
from langchain_fastpipe.stats import get_stats
from langchain_fastpipe.transport import ResponseInfo


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Overlap:
    """Counts how many warmers run at once; each waits until ``n`` have started."""

    def __init__(self, n: int, clock: FakeClock | None = None) -> None:
        self.n = n
        self.active = 0
        self.max_active = 0
        self.all_started = asyncio.Event()
        self.clock = clock
        self.started_at: float | None = None

    def warmer(self, name: str, virtual_seconds: float) -> Callable[[Any], Any]:
        async def warm(done: Callable[[str], None]) -> None:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.clock is not None and self.started_at is None:
                self.started_at = self.clock.now
            if self.active == self.n:
                self.all_started.set()
            # Sequential warming would never get here: the others have not started.
            await self.all_started.wait()
            if self.clock is not None and self.started_at is not None:
                # Virtual time: this warm-up ends virtual_seconds after the common start.
                self.clock.now = max(self.clock.now, self.started_at + virtual_seconds)
            done("connections")
            done("model_load")
            self.active -= 1

        warm.__name__ = name
        return warm


async def test_models_warm_concurrently_total_is_the_longest() -> None:
    clock = FakeClock()
    pre = ModelPreloader(clock=clock)
    overlap = Overlap(2, clock)
    pre.register(overlap.warmer("a", 3.0), timeout=5)
    pre.register(overlap.warmer("b", 10.0), timeout=5)
    start = clock.now
    results = await pre.preload()
    assert [r.name for r in results] == ["a", "b"]
    assert all(r.status is PreloadStatus.OK for r in results)
    assert overlap.max_active == 2
    # Virtual time: the whole preload took the longer warm-up (10 s), not the sum (13 s).
    assert clock.now - start == pytest.approx(10.0)
    assert results[1].seconds == pytest.approx(10.0)
    assert results[0].steps == ("connections", "model_load")


async def test_seconds_come_from_the_injected_clock() -> None:
    clock = FakeClock()
    pre = ModelPreloader(clock=clock)

    async def warm(done: Callable[[str], None]) -> None:
        clock.now += 2.5
        done("model_load")

    pre.register(warm, name="m")
    (result,) = await pre.preload()
    assert result.seconds == pytest.approx(2.5)
    assert result.ok


async def test_timeout_is_reported_with_the_steps_done() -> None:
    pre = ModelPreloader()

    async def stuck(done: Callable[[str], None]) -> None:
        done("connections")
        await asyncio.Event().wait()

    pre.register(stuck, name="slow", timeout=0.05)
    (result,) = await pre.preload()
    assert result.status is PreloadStatus.TIMED_OUT
    assert result.steps == ("connections",)
    assert result.error is not None
    assert "slow" in result.error
    assert "0.05" in result.error


async def test_failure_is_reported_and_others_still_warm() -> None:
    pre = ModelPreloader()
    warmed: list[str] = []

    async def broken(done: Callable[[str], None]) -> None:
        done("connections")
        raise ConnectionRefusedError("nobody at 127.0.0.1:9")

    async def fine(done: Callable[[str], None]) -> None:
        warmed.append("fine")
        done("model_load")

    pre.register(broken, name="broken")
    pre.register(fine, name="fine")
    bad, good = await pre.preload()
    assert bad.status is PreloadStatus.FAILED
    assert bad.error == "ConnectionRefusedError: nobody at 127.0.0.1:9"
    assert bad.steps == ("connections",)
    assert good.ok
    assert warmed == ["fine"]
    assert pre.results["broken"] is bad


async def test_raise_on_error_raises_after_every_model_finished() -> None:
    pre = ModelPreloader()
    warmed: list[str] = []

    async def broken(done: Callable[[str], None]) -> None:
        raise RuntimeError("boom")

    async def fine(done: Callable[[str], None]) -> None:
        warmed.append("fine")

    pre.register(broken, name="broken")
    pre.register(fine, name="fine")
    with pytest.raises(
        PreloadError, match=r"1 of 2 warm-ups failed: broken: failed \(RuntimeError: boom\)"
    ):
        await pre.preload(raise_on_error=True)
    assert warmed == ["fine"]


async def test_preload_selected_names_and_unknown_name() -> None:
    pre = ModelPreloader()
    calls: list[str] = []

    def make(name: str) -> Callable[[Any], Any]:
        async def warm(done: Callable[[str], None]) -> None:
            calls.append(name)

        return warm

    pre.register(make("a"), name="a")
    pre.register(make("b"), name="b")
    results = await pre.preload(["b"])
    assert [r.name for r in results] == ["b"]
    assert calls == ["b"]
    with pytest.raises(PreloadError, match="unknown model name"):
        await pre.preload(["nope"])


def test_register_rejects_what_it_cannot_warm() -> None:
    pre = ModelPreloader()
    with pytest.raises(PreloadError, match="cannot warm a int"):
        pre.register(42)
    with pytest.raises(PreloadError, match="timeout must be > 0"):
        pre.register(PreloadSpec("ollama", "m"), timeout=0)
    with pytest.raises(PreloadError, match="refresh_every must be > 0"):
        pre.register(PreloadSpec("ollama", "m"), refresh_every=-1)


def test_register_same_name_replaces() -> None:
    pre = ModelPreloader()
    spec = PreloadSpec("ollama", "llama3", "http://127.0.0.1:11434")
    assert pre.register(spec) == "ollama:llama3@http://127.0.0.1:11434"
    pre.register(spec)
    assert pre.names() == ["ollama:llama3@http://127.0.0.1:11434"]
    pre.unregister(spec.name)
    assert pre.names() == []


class AwarmThing:
    def __init__(self) -> None:
        self.calls = 0

    async def awarm(self) -> None:
        self.calls += 1


async def test_object_with_awarm_is_warmed() -> None:
    pre = ModelPreloader()
    thing = AwarmThing()
    name = pre.register(thing, name="thing")
    (result,) = await pre.preload()
    assert result.name == name
    assert result.steps == ("awarm",)
    assert thing.calls == 1


class FakeLocalServer(LocalModelServer):
    """A LocalModelServer whose start/stop only count (no process)."""

    def __init__(self) -> None:
        super().__init__(port=1234)
        self.started = 0
        self.stopped = 0
        self._fake_running = False

    @property
    def is_running(self) -> bool:
        return self._fake_running

    async def astart(self, **_: Any) -> None:
        self.started += 1
        self._fake_running = True

    async def astop(self) -> None:
        self.stopped += 1
        self._fake_running = False


async def test_local_server_is_started_by_warmup_and_stopped_by_aclose() -> None:
    pre = ModelPreloader()
    server = FakeLocalServer()
    assert pre.register(server) == "local:gemma-3-270m"
    (result,) = await pre.preload()
    assert result.steps == ("server_start",)
    assert server.started == 1
    await pre.aclose()
    assert server.stopped == 1


async def test_already_running_local_server_is_not_stopped_by_aclose() -> None:
    pre = ModelPreloader()
    server = FakeLocalServer()
    await server.astart()
    pre.register(server)
    (result,) = await pre.preload()
    assert result.steps == ("server_running",)
    await pre.aclose()
    assert server.stopped == 0


async def test_keepalive_refresh_rewarms_with_injected_sleep_and_is_cancellable() -> None:
    sleeps: list[float] = []
    blocked = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) > 3:
            blocked.set()
            await asyncio.Event().wait()  # park until cancelled
        await asyncio.sleep(0)

    pre = ModelPreloader(sleep=fake_sleep)
    warms: list[int] = []

    async def warm(done: Callable[[str], None]) -> None:
        warms.append(1)

    pre.register(warm, name="m", refresh_every=240.0)
    pre.register(AwarmThing(), name="no-refresh")
    assert pre.start_refresh() == ["m"]
    await asyncio.wait_for(blocked.wait(), 5)
    assert sleeps == [240.0, 240.0, 240.0, 240.0]
    assert len(warms) == 3
    await pre.stop_refresh()
    assert pre._refresh_tasks == {}


def test_parse_duration_and_refresh_interval() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("90s") == 90
    assert parse_duration("1h") == 3600
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration(42) == 42
    assert parse_duration(None) is None
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    assert refresh_interval_for("5m") == pytest.approx(240)
    assert refresh_interval_for(None) == pytest.approx(240)  # Ollama's default 5m
    assert refresh_interval_for(-1) is None  # kept forever
    assert refresh_interval_for("0") is None  # unloaded at once


def test_parse_preload_env() -> None:
    specs, errors = parse_preload_env(
        "ollama:llama3:8b@http://host:11434, openai:gpt-4o-mini@https://api.example.com/v1;"
        " openai:local  bogus  mystery:model  ollama:x@ftp://nope  ollama:"
    )
    assert specs == [
        PreloadSpec("ollama", "llama3:8b", "http://host:11434"),
        PreloadSpec("openai", "gpt-4o-mini", "https://api.example.com/v1"),
        PreloadSpec("openai", "local", None),
    ]
    assert len(errors) == 4
    assert "'bogus': expected provider:model[@base_url]" in errors[0]
    assert "unknown provider 'mystery'" in errors[1]
    assert "'ftp://nope' is not http(s)://host" in errors[2]
    assert "'ollama:'" in errors[3]
    assert parse_preload_env("") == ([], [])


def test_register_from_env_logs_bad_entries_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pre = ModelPreloader()
    with caplog.at_level(logging.WARNING, logger="langchain_fastpipe.preload"):
        names = register_from_env(
            pre, {"FASTPIPE_PRELOAD": "ollama:llama3@http://127.0.0.1:11434,???"}
        )
    assert names == ["ollama:llama3@http://127.0.0.1:11434"]
    assert pre.names() == names
    assert "'???'" in caplog.text
    assert register_from_env(pre, {}) == []


async def test_results_are_recorded_in_stats() -> None:
    pre = ModelPreloader()

    async def broken(done: Callable[[str], None]) -> None:
        raise RuntimeError("stats-probe")

    pre.register(broken, name="stats-probe-model")
    before = get_stats()["preload"]["warmups"]["failed"]
    await pre.preload()
    snap = get_stats()["preload"]
    assert snap["warmups"]["failed"] == before + 1
    assert snap["models"]["stats-probe-model"]["status"] == "failed"
    assert snap["models"]["stats-probe-model"]["error"] == "RuntimeError: stats-probe"
    assert snap["seconds"]["count"] >= 1


async def test_preload_sync_inside_a_running_loop_uses_a_helper_thread() -> None:
    pre = ModelPreloader()
    threads: list[str] = []

    async def warm(done: Callable[[str], None]) -> None:
        threads.append(threading.current_thread().name)

    pre.register(warm, name="m")
    (result,) = pre.preload_sync()
    assert result.ok
    assert threads == ["fastpipe-preload"]  # a worker with its own short-lived loop, not ours


def test_preload_sync_without_a_loop() -> None:
    pre = ModelPreloader()
    thing = AwarmThing()
    pre.register(thing, name="t")
    (result,) = pre.preload_sync()
    assert result.ok
    assert thing.calls == 1


async def test_warm_pending_with_a_running_loop_schedules_a_task() -> None:
    pre = ModelPreloader()
    thing = AwarmThing()
    name = pre.register(thing, name="sched")
    assert pre.pending() == [name]
    assert thing.calls == 0  # registering contacts nothing
    assert pre.warm_pending() == ["sched"]
    assert pre.pending() == []
    assert pre.warm_pending() == []  # started once
    (task,) = pre._background
    (result,) = await task
    assert result.ok
    assert thing.calls == 1


def test_warm_pending_without_a_loop_warms_in_a_short_lived_thread() -> None:
    pre = ModelPreloader()
    warmed = threading.Event()

    async def warm(done: Callable[[str], None]) -> None:
        warmed.set()

    pre.register(warm, name="bg")
    assert pre.warm_pending() == ["bg"]
    assert warmed.wait(10)
    for thread in threading.enumerate():
        if thread.name == "fastpipe-preload":
            thread.join()  # it ends with its warm-up: nothing lives on
    assert pre.results["bg"].ok


async def test_preload_and_schedule_leave_nothing_pending() -> None:
    pre = ModelPreloader()
    pre.register(AwarmThing(), name="a")
    pre.register(AwarmThing(), name="b")
    await pre.preload(["a"])
    assert pre.pending() == ["b"]
    task = pre.schedule()
    assert pre.pending() == []  # taken at once, before the task runs
    await task
    pre.unregister("b")
    assert pre.warm_pending() == []


# --------------------------------------------------------------------------- ASGI lifespan
def lifespan_app(lifespan: Callable[[Any], Any]) -> Callable[..., Any]:
    """A minimal ASGI app running ``lifespan(app)`` the way Starlette's router does."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        assert message["type"] == "lifespan.startup"
        cm = lifespan(app)
        try:
            state = await cm.__aenter__()
        except BaseException as exc:
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            return
        scope.setdefault("state", {}).update(state or {})
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await cm.__aexit__(None, None, None)
        await send({"type": "lifespan.shutdown.complete"})

    return app


async def drive_lifespan(app: Callable[..., Any], between: Callable[[], Any]) -> list[str]:
    """Play the ASGI server's part: startup, ``between()``, shutdown; return sent types."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []
    startup_done = asyncio.Event()
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"].startswith("lifespan.startup."):
            startup_done.set()

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(startup_done.wait(), 10)
    if sent[-1] == "lifespan.startup.complete":
        await between(scope)
        await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 10)
    return sent


async def test_lifespan_warms_at_startup_and_cleans_up_at_shutdown() -> None:
    async def parked(seconds: float) -> None:
        await asyncio.Event().wait()

    pre = ModelPreloader(sleep=parked)
    server = FakeLocalServer()
    thing = AwarmThing()
    pre.register(server)
    pre.register(thing, name="thing", refresh_every=60)
    seen: dict[str, Any] = {}

    async def between(scope: dict[str, Any]) -> None:
        seen["results"] = scope["state"]["fastpipe_preload"]
        seen["refreshing"] = list(pre._refresh_tasks)
        seen["running"] = server.is_running

    app = lifespan_app(lambda app: fastpipe_lifespan(app, preloader=pre))
    sent = await drive_lifespan(app, between)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert [r.status for r in seen["results"]] == [PreloadStatus.OK, PreloadStatus.OK]
    assert seen["refreshing"] == ["thing"]
    assert seen["running"] is True
    assert thing.calls == 1
    assert server.stopped == 1  # the lifespan started it, so it stops it
    assert pre._refresh_tasks == {}


async def test_lifespan_failed_warmup_still_serves_unless_asked() -> None:
    async def broken(done: Callable[[str], None]) -> None:
        raise RuntimeError("model server down")

    pre = ModelPreloader()
    pre.register(broken, name="broken")

    async def nothing(scope: dict[str, Any]) -> None:
        assert scope["state"]["fastpipe_preload"][0].status is PreloadStatus.FAILED

    ok_app = lifespan_app(lambda app: fastpipe_lifespan(app, preloader=pre))
    assert await drive_lifespan(ok_app, nothing) == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    strict = lifespan_app(lambda app: fastpipe_lifespan(app, preloader=pre, raise_on_error=True))
    assert await drive_lifespan(strict, nothing) == ["lifespan.startup.failed"]


async def test_lifespan_without_wait_warms_in_background() -> None:
    gate = asyncio.Event()
    warmed = asyncio.Event()

    async def slow(done: Callable[[str], None]) -> None:
        await gate.wait()
        warmed.set()

    pre = ModelPreloader()
    pre.register(slow, name="slow")

    async def between(scope: dict[str, Any]) -> None:
        # Serving already although the warm-up has not finished.
        assert scope["state"]["fastpipe_preload"] == []
        assert not warmed.is_set()
        gate.set()
        await asyncio.wait_for(warmed.wait(), 5)

    app = lifespan_app(lambda app: fastpipe_lifespan(app, preloader=pre, wait=False))
    sent = await drive_lifespan(app, between)
    assert sent[-1] == "lifespan.shutdown.complete"


def test_env_registration_at_import_never_fails_the_import() -> None:
    import os
    import subprocess
    import sys

    code = (
        "import importlib; p = importlib.import_module('langchain_fastpipe.preload'); "
        "print(p.default_preloader.names())"
    )
    env = {
        **os.environ,
        "FASTPIPE_PRELOAD": "ollama:llama3@http://127.0.0.1:9, nonsense, openai:gpt-x",
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['ollama:llama3@http://127.0.0.1:9', 'openai:gpt-x']"
    assert "'nonsense'" in done.stderr  # logged, not raised


def test_sync_preload_runs_async_warmups_on_short_lived_loops() -> None:
    pre = ModelPreloader()
    loops: list[asyncio.AbstractEventLoop] = []

    async def warm(done: Callable[[str], None]) -> None:
        loops.append(asyncio.get_running_loop())

    before = threading.active_count()
    pre.register(warm, name="m")
    assert pre.preload_sync()[0].ok
    assert pre.preload_sync()[0].ok
    # No loop thread lives on for the process: each run had its own loop, closed at its
    # end (after closing the pools' async clients it opened).
    assert all(loop.is_closed() for loop in loops)
    assert loops[0] is not loops[1]
    assert threading.active_count() == before


def test_sync_preload_cancels_a_timed_out_async_warmup() -> None:
    pre = ModelPreloader()
    cancelled = threading.Event()

    async def hang(done: Callable[[str], None]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pre.register(hang, name="hang", timeout=0.05)
    (result,) = pre.preload_sync()
    assert result.status is PreloadStatus.TIMED_OUT
    assert cancelled.is_set()  # nothing left running after the report


async def test_aclose_awaits_the_cancelled_background_warmups() -> None:
    pre = ModelPreloader()
    started, cleaned = asyncio.Event(), asyncio.Event()

    async def hang(done: Callable[[str], None]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    pre.register(hang, name="hang")
    task = pre.schedule()
    await started.wait()
    await pre.aclose()
    assert task.done()  # awaited, not just asked to cancel
    assert task.cancelled()
    assert cleaned.is_set()


def _chat(**kwargs: Any) -> ChatFastpipe:
    return ChatFastpipe(
        provider="openai", model="m", base_url="http://127.0.0.1:9/v1", pooling=False, **kwargs
    )


async def test_chat_models_warm_through_their_public_warmup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warmed: list[tuple[str, str]] = []

    async def awarmup(self: ChatFastpipe) -> ResponseInfo:
        warmed.append(("async", self.model_name))
        return ResponseInfo(status_code=200)

    def warmup(self: ChatFastpipe) -> ResponseInfo:
        warmed.append(("sync", self.model_name))
        return ResponseInfo(status_code=200)

    monkeypatch.setattr(ChatFastpipe, "awarmup", awarmup)
    monkeypatch.setattr(ChatFastpipe, "warmup", warmup)
    pre = ModelPreloader()
    pre.register(_chat(), name="chat")
    (result,) = await pre.preload()
    assert (result.ok, result.steps) == (True, ("model_load",))  # pooling off: no pool step
    (result,) = pre.preload_sync()
    assert result.ok
    assert warmed == [("async", "m"), ("sync", "m")]


def _config(**sections: Any) -> FastpipeConfig:
    backend = {"provider": "ollama", "base_url": "http://127.0.0.1:9", "model": "base"}
    return FastpipeConfig(backend=backend, **sections)


def test_from_config_registers_the_preload_models_with_the_config_timeout() -> None:
    config = _config(
        performance_optimizations={"preload_timeout_seconds": 7.5, "http2": False},
        preload={"models": ["llama3:8b", "gemma3"], "keep_alive_refresh_seconds": 120},
    )
    pre = ModelPreloader.from_config(config)
    assert pre.names() == [
        "ollama:llama3:8b@http://127.0.0.1:9",
        "ollama:gemma3@http://127.0.0.1:9",
    ]
    entries = [pre._entries[n] for n in pre.names()]
    assert [(e.timeout, e.refresh_every) for e in entries] == [(7.5, 120.0), (7.5, 120.0)]
    chat = entries[0].target
    assert isinstance(chat, ChatFastpipe)
    assert (chat.provider, chat.model_name, chat.preload) == ("ollama", "llama3:8b", False)
    assert chat.endpoint_config.http2 is False  # built with the config's backend settings


def test_from_config_falls_back_to_the_backend_model_and_honours_the_flag() -> None:
    assert ModelPreloader.from_config(_config()).names() == ["ollama:base@http://127.0.0.1:9"]
    off = _config(
        performance_optimizations={"enable_model_preloading": False},
        preload={"models": ["a", "b"]},
    )
    assert ModelPreloader.from_config(off).names() == []


# --------------------------------------------------------------------------- prompt warm-ups
PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer briefly."),
        MessagesPlaceholder("history", optional=True),
        ("human", "Context: {context}\nQuestion: {question}"),
    ]
)


def test_warmup_messages_render_the_template_with_empty_inputs() -> None:
    (messages,) = warmup_messages(PROMPT)
    assert [(m.type, m.content) for m in messages] == [
        ("system", "Answer briefly."),
        ("human", "Context: \nQuestion: "),
    ]
    (given,) = warmup_messages(PROMPT, inputs={"context": "none", "unused": 1})
    assert given[-1].content == "Context: none\nQuestion: "
    required = ChatPromptTemplate.from_messages([MessagesPlaceholder("chat"), ("human", "{q}")])
    (rendered,) = warmup_messages(required)
    assert [m.content for m in rendered] == [""]


def test_warmup_messages_of_messages_and_of_several_prompts() -> None:
    (messages,) = warmup_messages([("system", "S"), ("human", "H")])
    assert [(m.type, m.content) for m in messages] == [("system", "S"), ("human", "H")]
    assert [m.content for m in warmup_messages("just text")[0]] == ["just text"]
    two = warmup_messages([PROMPT, ChatPromptTemplate.from_messages([("human", "x{y}")])])
    assert [m[-1].content for m in two] == ["Context: \nQuestion: ", "x"]


def test_find_prompts_keeps_the_templates_feeding_the_model() -> None:
    llm, other = _chat(), _chat(temperature=0.5)

    def found(chain: Any, model: Any = None) -> list[tuple[str, str]]:
        names = {id(PROMPT): "PROMPT", id(other_prompt): "other_prompt"}
        return [
            (names[id(p)], "llm" if m is llm else "other") for p, m in find_prompts(chain, model)
        ]

    other_prompt = ChatPromptTemplate.from_messages([("human", "other {q}")])
    chain = RunnableParallel(
        a=PROMPT | llm.bind(stop=["\n"]) | StrOutputParser(),
        b=other_prompt | other,
        c=PROMPT | llm.with_config(run_name="again"),  # the same template: found once
    ).with_fallbacks([other_prompt | llm])
    assert found(chain, llm) == [("PROMPT", "llm"), ("other_prompt", "llm")]
    assert found(chain, other) == [("other_prompt", "other")]
    assert found(chain) == [("PROMPT", "llm"), ("other_prompt", "other"), ("other_prompt", "llm")]
    structured = PROMPT | llm.with_structured_output({"title": "T", "type": "object"})
    assert found(structured, llm) == [("PROMPT", "llm")]
    assert found(RunnableLambda(lambda x: x) | llm, llm) == []


def test_register_rejects_prompts_it_cannot_send() -> None:
    pre = ModelPreloader()
    llm, other = _chat(), _chat()
    with pytest.raises(PreloadError, match="no prompt template in RunnableSequence feeds"):
        pre.register(llm, prompt=PROMPT | other)
    with pytest.raises(PreloadError, match="only be carried by a chat model's warm-up"):
        pre.register(LocalModelServer(), prompt=PROMPT)
    with pytest.raises(PreloadError, match="needs warmup=True"):
        pre.register(llm, prompt=PROMPT, warmup=False)
    with pytest.raises(PreloadError, match="feed 2 ChatFastpipe models"):
        pre.register(RunnableParallel(a=PROMPT | llm, b=PROMPT | other))
    with pytest.raises(PreloadError, match="cannot render the warm-up prompt"):
        pre.register(llm, prompt=[("nobody", "x")])
    assert pre.names() == []


async def test_chat_warmup_with_a_prompt_sends_it_instead_of_the_generic_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[str, list[str], dict[str, Any]]] = []

    async def ainvoke(self: ChatFastpipe, messages: Any, config: Any = None, **kw: Any) -> Any:
        sent.append(("async", [m.content for m in messages], {**kw, **config}))

    def invoke(self: ChatFastpipe, messages: Any, config: Any = None, **kw: Any) -> Any:
        sent.append(("sync", [m.content for m in messages], {**kw, **config}))

    async def awarmup(self: ChatFastpipe) -> ResponseInfo:
        raise AssertionError("the generic warm-up must not be sent with a prompt")

    monkeypatch.setattr(ChatFastpipe, "ainvoke", ainvoke)
    monkeypatch.setattr(ChatFastpipe, "invoke", invoke)
    monkeypatch.setattr(ChatFastpipe, "awarmup", awarmup)
    monkeypatch.setattr(ChatFastpipe, "warmup", awarmup)
    pre = ModelPreloader()
    pre.register(_chat(), prompt=[PROMPT, [("human", "Hi")]], prompt_inputs={"question": "Q?"})
    (result,) = await pre.preload()
    assert (result.ok, result.steps) == (True, ("model_load", "prompt_prefix"))
    (result,) = pre.preload_sync()
    assert result.ok, result.error
    options = {"max_tokens": 1, "run_name": WARMUP_RUN_NAME, "tags": [WARMUP_RUN_NAME]}
    first = ["Answer briefly.", "Context: \nQuestion: Q?"]
    assert sent == [
        ("async", first, options),
        ("async", ["Hi"], options),
        ("sync", first, options),
        ("sync", ["Hi"], options),
    ]


# --------------------------------------------------------------------------- nothing at import
_IMPORT_PROBE = """
import asyncio, gc, importlib, json, os, threading
import langchain_fastpipe
for name in (
    "bench cli config emulator errors local pipeline preload prometheus prompts "
    "providers stats streaming transport chat_models"
).split():
    module = importlib.import_module(f"langchain_fastpipe.{name}")
    for attr in module.__all__:
        getattr(module, attr)
for attr in langchain_fastpipe.__all__:
    getattr(langchain_fastpipe, attr)
from langchain_fastpipe import ChatFastpipe
from langchain_fastpipe._runtime import runtime
llm = ChatFastpipe(provider="ollama", model="eager", base_url="http://127.0.0.1:9", preload=True)
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # the directory listing's own descriptor, closed by now
        pass
print(json.dumps({
    "threads": threading.active_count(),
    "sockets": [fd for fd in fds if fd.startswith("socket:")],
    "loops": sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects()),
    "names": runtime().preloader.names(),
    "pending": runtime().preloader.pending(),
}))
"""


def test_importing_every_public_module_starts_nothing_and_only_records_models() -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "FASTPIPE_PRELOAD": "ollama:llama3@http://127.0.0.1:9,openai:gpt-x@http://127.0.0.1:9/v1",
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", _IMPORT_PROBE],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["threads"] == 1  # no thread, daemon or not
    assert report["sockets"] == []  # nothing contacted
    assert report["loops"] == 0  # no event loop, so no task
    expected = [
        "ollama:llama3@http://127.0.0.1:9",
        "openai:gpt-x@http://127.0.0.1:9/v1",
        "ollama:eager@http://127.0.0.1:9",  # ChatFastpipe(preload=True) only registers
    ]
    assert report["names"] == expected
    assert report["pending"] == expected  # warmed at startup, or at a first call


async def test_first_call_of_a_preload_model_starts_the_pending_warmups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_fastpipe._runtime import runtime

    pre = ModelPreloader()
    monkeypatch.setattr(runtime(), "_preloader", pre)
    monkeypatch.setattr(chat_preload, "_preloaded", set())
    other = AwarmThing()
    pre.register(other, name="other")
    llm = ChatFastpipe(
        provider="openai",
        model="first-call",
        base_url="http://127.0.0.1:9/v1",
        pooling=False,  # the warm-up is then only the (faked) model load
        preload=True,
    )
    assert pre.names() == ["other", "openai:first-call@http://127.0.0.1:9/v1"]
    assert other.calls == 0  # construction started nothing
    assert not pre._background
    monkeypatch.setattr(ChatFastpipe, "awarmup", _fake_awarmup)
    llm.pool  # noqa: B018 - the first call's first step
    (task,) = pre._background
    results = await task
    assert [r.ok for r in results] == [True, True]
    assert other.calls == 1
    assert pre.pending() == []
    llm.pool  # noqa: B018 - later calls: one attribute read, nothing started
    assert not pre._background


async def _fake_awarmup(self: ChatFastpipe) -> ResponseInfo:
    return ResponseInfo(status_code=200)
