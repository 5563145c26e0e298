"""The warm-up steps of one model: pooled connections, model load, prompt prefix."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.preload._spec import PreloadSpec
from langchain_fastpipe.transport import get_pool

#: A warm-up: receives a callback to report each step done ("connections", ...).
WarmFn = Callable[[Callable[[str], None]], Awaitable[None]]
#: The blocking form of a warm-up, used by :meth:`ModelPreloader.preload_sync`.
SyncWarmFn = Callable[[Callable[[str], None]], None]

#: The run name (and tag) of the 1-token requests that carry a registered prompt.
WARMUP_RUN_NAME = "fastpipe_warmup"
_WARMUP_CONFIG: RunnableConfig = {"run_name": WARMUP_RUN_NAME, "tags": [WARMUP_RUN_NAME]}


@runtime_checkable
class Warmable(Protocol):
    """Anything that can warm itself: ``await obj.awarm()``."""

    def awarm(self) -> Awaitable[None]:
        """Warm up (open connections, load the model, start the server...)."""
        ...


def _chat_warmer(
    model: ChatFastpipe | Callable[[], ChatFastpipe],
    *,
    load_model: bool,
    prompts: Sequence[list[BaseMessage]] = (),
) -> WarmFn:
    """The async warm-up of a ChatFastpipe: its pool's connections, then the model load.

    ``model`` may be a factory, called at the first warm-up (env specs, configs). With
    ``prompts`` the model is loaded by sending each of them as a 1-token request (with
    the model's own settings, so the server sees the application's prompt), one after
    the other: steps ``model_load`` after the first, ``prompt_prefix`` after the last.
    """

    async def warm(done: Callable[[str], None]) -> None:
        chat = model if isinstance(model, ChatFastpipe) else model()
        pool = get_pool(chat.endpoint_config)
        if pool.config.pooling:  # without pooling there is nothing to keep open
            await pool.awarm()
            done("connections")
        if not load_model:
            return
        if not prompts:
            await chat.awarmup()
            done("model_load")
            return
        for index, messages in enumerate(prompts):
            await chat.ainvoke(messages, config=_WARMUP_CONFIG, max_tokens=1)
            if index == 0:
                done("model_load")
        done("prompt_prefix")

    return warm


def _chat_warmer_sync(
    model: ChatFastpipe | Callable[[], ChatFastpipe],
    *,
    load_model: bool,
    prompts: Sequence[list[BaseMessage]] = (),
) -> SyncWarmFn:
    """The blocking warm-up of a ChatFastpipe: warms its sync client (for sync calls)."""

    def warm(done: Callable[[str], None]) -> None:
        chat = model if isinstance(model, ChatFastpipe) else model()
        pool = get_pool(chat.endpoint_config)
        if pool.config.pooling:
            pool.warm()
            done("connections")
        if not load_model:
            return
        if not prompts:
            chat.warmup()
            done("model_load")
            return
        for index, messages in enumerate(prompts):
            chat.invoke(messages, config=_WARMUP_CONFIG, max_tokens=1)
            if index == 0:
                done("model_load")
        done("prompt_prefix")

    return warm


def _awarm_warmer(target: Any) -> WarmFn:
    """The warm-up of an object with ``awarm()``.

    For a LocalModelServer the step is ``"server_start"`` when this warm-up started it
    (the preloader then owns it and stops it in :meth:`ModelPreloader.aclose`), and
    ``"server_running"`` when it already ran.
    """
    from langchain_fastpipe.local import LocalModelServer

    is_server = isinstance(target, LocalModelServer)

    async def warm(done: Callable[[str], None]) -> None:
        was_running = is_server and target.is_running
        await target.awarm()
        if not is_server:
            done("awarm")
        else:
            done("server_running" if was_running else "server_start")

    return warm


class _LazyChat:
    """A ChatFastpipe built at its first warm-up (not at import), then kept."""

    def __init__(self, build: Callable[[], ChatFastpipe]) -> None:
        self._build = build
        self._model: ChatFastpipe | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ChatFastpipe:
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model


def _spec_chat(spec: PreloadSpec) -> ChatFastpipe:
    """The ChatFastpipe of an env spec (no I/O)."""
    kwargs: dict[str, Any] = {"provider": spec.provider, "model": spec.model}
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    return ChatFastpipe(**kwargs)
