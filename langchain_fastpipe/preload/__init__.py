"""Model preloading: warm every registered model at startup, concurrently.

Warming a model means opening its pooled connections (TCP, TLS and HTTP/2 handshakes)
and making the server load the model, so the first real query pays neither:

* Ollama: ``POST /api/generate`` with the model, no prompt, ``keep_alive`` and exactly
  the ``options`` real requests send (Ollama reloads a model whenever an allocation
  option such as ``num_ctx`` differs, ollama/ollama#8903);
* OpenAI-compatible servers: a 1-token chat request;
* a managed :class:`~langchain_fastpipe.local.LocalModelServer`: starting it;
* anything else with an ``async def awarm()``: calling it.

A chat model may also be registered with the application's prompt
(``register(llm, prompt=FEW_SHOT_PROMPT)``, a list of messages, or a chain such as
``prompt | llm``): its warm-up then sends that prompt, rendered with empty inputs, as a
1-token request, so a server with a prompt cache (llama.cpp's ``cache_prompt``, on by
default; Ollama; vLLM's prefix caching) already holds the prompt's fixed prefix when
the first real query comes and only processes the question. With several slots
(``--parallel``; :class:`~langchain_fastpipe.local.LocalModelServer` starts 4) llama-server
gives a request the idle slot whose cached prompt shares the most with it (above
``--slot-prompt-similarity``, 0.1 by default), so the first query finds the warmed slot;
with the similarity set to 0 it takes the least recently used slot and misses the prefix.
Prompts beyond the number of slots stay in its host-memory prompt cache (``--cache-ram``,
8 GiB by default) and are restored from there.

A failed warm-up never breaks the application: :meth:`ModelPreloader.preload` reports
it in a :class:`PreloadResult` and the model still works (it just pays the cold start).

Registering records a model and contacts nothing; warm-ups run where the application
starts:

* ``await preload()`` or ``preload_sync()`` at startup;
* ``FastAPI(lifespan=fastpipe_lifespan)`` (any ASGI framework with lifespan support);
* models registered by ``ChatFastpipe(..., preload=True)`` or by the ``FASTPIPE_PRELOAD``
  environment variable (read when the default preloader is created, at the import of
  this module at the latest), e.g.
  ``FASTPIPE_PRELOAD="ollama:llama3@http://127.0.0.1:11434,openai:gpt-4o-mini"``, are
  warmed by those; when nothing did, the first call of a ``preload=True`` model starts
  the warm-ups of every model not yet warmed, in the background
  (:meth:`ModelPreloader.warm_pending`).

Importing this module starts nothing (no thread, no task, no socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableParallel,
    RunnableSequence,
    RunnableWithFallbacks,
)
from langchain_core.runnables.passthrough import RunnableAssign

from langchain_fastpipe import _metrics as m
from langchain_fastpipe._metrics import Node
from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.errors import PreloadError
from langchain_fastpipe.stats import Histogram, registry
from langchain_fastpipe.transport import aclose_pools, get_pool

if TYPE_CHECKING:
    from langchain_fastpipe.config import FastpipeConfig

__all__ = [
    "ModelPreloader",
    "PreloadResult",
    "PreloadStatus",
    "Warmable",
    "default_preloader",
    "fastpipe_lifespan",
    "preload",
    "preload_sync",
    "register",
]

logger = logging.getLogger(__name__)

#: Environment variable listing models the default preloader records.
PRELOAD_ENV = "FASTPIPE_PRELOAD"

#: A warm-up: receives a callback to report each step done ("connections", ...).
WarmFn = Callable[[Callable[[str], None]], Awaitable[None]]
#: The blocking form of a warm-up, used by :meth:`ModelPreloader.preload_sync`.
SyncWarmFn = Callable[[Callable[[str], None]], None]
SleepFn = Callable[[float], Awaitable[None]]

#: The run name (and tag) of the 1-token requests that carry a registered prompt.
WARMUP_RUN_NAME = "fastpipe_warmup"
_WARMUP_CONFIG: RunnableConfig = {"run_name": WARMUP_RUN_NAME, "tags": [WARMUP_RUN_NAME]}


@runtime_checkable
class Warmable(Protocol):
    """Anything that can warm itself: ``await obj.awarm()``."""

    def awarm(self) -> Awaitable[None]:
        """Warm up (open connections, load the model, start the server...)."""
        ...


class PreloadStatus(str, enum.Enum):
    """Outcome of one model's warm-up."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class PreloadResult:
    """What one model's warm-up did.

    Attributes:
        name: The registered name of the model.
        status: ok, failed or timed_out.
        seconds: Time the warm-up took (by the preloader's clock).
        steps: The steps completed, in order, e.g. ``("connections", "model_load")``.
        error: ``"ErrorType: message"`` when it failed or timed out, else None.
    """

    name: str
    status: PreloadStatus
    seconds: float
    steps: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the warm-up succeeded."""
        return self.status is PreloadStatus.OK

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serializable form."""
        return {
            "name": self.name,
            "status": self.status.value,
            "seconds": self.seconds,
            "steps": list(self.steps),
            "error": self.error,
        }


# --------------------------------------------------------------------------- pure helpers
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | None) -> float | None:
    """Seconds from an Ollama-style duration (``"5m"``, ``"90s"``, ``"1h"``, ``300``).

    Args:
        value: A number of seconds, a string with an optional ms/s/m/h unit, or None.

    Returns:
        The seconds (negative means "forever" for Ollama), or None for None.

    Raises:
        ValueError: The string is not a duration.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (expected e.g. 300, '90s', '5m', '1h')")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def refresh_interval_for(keep_alive: str | float | None, *, fraction: float = 0.8) -> float | None:
    """How often to re-warm so a server keeping a model ``keep_alive`` never unloads it.

    Args:
        keep_alive: The keep-alive sent with requests (Ollama's default is 5 minutes).
        fraction: Re-warm after this fraction of the keep-alive has passed.

    Returns:
        Seconds between refreshes, or None when no refresh is needed (kept forever,
        or unloaded at once so refreshing cannot help).
    """
    seconds = parse_duration(keep_alive if keep_alive is not None else "5m")
    if seconds is None or seconds <= 0:
        return None
    return seconds * fraction


@dataclass(frozen=True)
class PreloadSpec:
    """One model named in ``FASTPIPE_PRELOAD``: ``provider:model[@base_url]``.

    Attributes:
        provider: ``"ollama"`` or ``"openai"``.
        model: The model name (may contain ``:``, e.g. ``llama3:8b``).
        base_url: The server, or None for the provider's default.
    """

    provider: str
    model: str
    base_url: str | None = None

    @property
    def name(self) -> str:
        """The name it is registered under."""
        where = f"@{self.base_url}" if self.base_url else ""
        return f"{self.provider}:{self.model}{where}"


_PROVIDERS = ("ollama", "openai")


def parse_preload_env(text: str) -> tuple[list[PreloadSpec], list[str]]:
    """Parse a ``FASTPIPE_PRELOAD`` value (pure; never raises).

    Entries are separated by commas, semicolons or whitespace; each is
    ``provider:model`` optionally followed by ``@base_url``.

    Args:
        text: The variable's value.

    Returns:
        ``(specs, errors)``: the valid entries, and one message per invalid entry.
    """
    specs: list[PreloadSpec] = []
    errors: list[str] = []
    for raw in re.split(r"[,;\s]+", text.strip()):
        if not raw:
            continue
        head, _, url = raw.partition("@")
        provider, sep, model = head.partition(":")
        provider = provider.strip().lower()
        if not sep or not model:
            errors.append(f"{PRELOAD_ENV} entry {raw!r}: expected provider:model[@base_url]")
            continue
        if provider not in _PROVIDERS:
            errors.append(
                f"{PRELOAD_ENV} entry {raw!r}: unknown provider {provider!r} "
                f"(expected one of {', '.join(_PROVIDERS)})"
            )
            continue
        if url and not re.match(r"^https?://[^/\s]+", url):
            errors.append(f"{PRELOAD_ENV} entry {raw!r}: base_url {url!r} is not http(s)://host")
            continue
        specs.append(PreloadSpec(provider=provider, model=model, base_url=url or None))
    return specs, errors


def _describe(exc: BaseException) -> str:
    """``"ErrorType: message"`` for a result (typed errors never carry keys)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- prompts
def _chat_model_of(step: object) -> BaseChatModel | None:
    """The chat model a chain step runs first, or None when it runs none.

    The model itself, bound or configured (``bind``, ``with_config``, ``bind_tools``),
    or the head of a sequence such as the one ``with_structured_output`` returns.
    """
    while True:
        if isinstance(step, BaseChatModel):
            return step
        if isinstance(step, RunnableBinding):
            step = step.bound
        elif isinstance(step, RunnableSequence):
            step = step.first
        else:
            return None


def _children(node: object) -> list[object]:
    """The runnables nested in ``node`` that :func:`find_prompts` looks into."""
    if isinstance(node, RunnableSequence):
        return list(node.steps)
    if isinstance(node, RunnableParallel):
        return list(node.steps__.values())
    if isinstance(node, RunnableAssign):
        return [node.mapper]
    if isinstance(node, RunnableBinding):
        return [node.bound]
    if isinstance(node, RunnableWithFallbacks):
        return [node.runnable, *node.fallbacks]
    # RankedFallbacks (its strategies' runnables) and AnswerPipeline (its ranked step).
    found: list[object] = []
    ranked = getattr(node, "ranked", None)
    if isinstance(ranked, Runnable):
        found.append(ranked)
    strategies = getattr(node, "strategies", None)
    if isinstance(strategies, (list, tuple)):
        found.extend(getattr(s, "runnable", None) for s in strategies)
    return [child for child in found if isinstance(child, Runnable)]


def find_prompts(
    chain: Runnable[Any, Any], model: BaseChatModel | None = None
) -> list[tuple[BasePromptTemplate[Any], BaseChatModel]]:
    """The prompt templates of ``chain`` that feed a chat model directly (pure).

    Looks into sequences, parallel and assign steps, bindings, ``with_fallbacks``,
    :class:`~langchain_fastpipe.pipeline.RankedFallbacks` and
    :class:`~langchain_fastpipe.pipeline.AnswerPipeline`. A template counts when the
    step right after it is a chat model (also bound, configured or with structured output).

    Args:
        chain: The application's chain, e.g. ``prompt | llm | StrOutputParser()``.
        model: Keep only the templates feeding this model (by identity); None: any.

    Returns:
        ``(template, model)`` pairs in the order found, each template once per model.
    """
    pairs: list[tuple[BasePromptTemplate[Any], BaseChatModel]] = []
    seen: set[tuple[int, int]] = set()
    visited: set[int] = set()
    stack: list[object] = [chain]
    while stack:  # depth first, in the order the chain is written
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, RunnableSequence):
            steps = node.steps
            for step, after in itertools.pairwise(steps):
                target = _chat_model_of(after)
                if not isinstance(step, BasePromptTemplate) or target is None:
                    continue
                if model is not None and target is not model:
                    continue
                if (id(step), id(target)) not in seen:
                    seen.add((id(step), id(target)))
                    pairs.append((step, target))
        stack.extend(reversed(_children(node)))
    return pairs


#: What a warm-up can carry: a prompt template, a list of messages, or a chain.
PromptLike = BasePromptTemplate[Any] | Sequence[Any] | Runnable[Any, Any]


def _placeholder_names(template: BasePromptTemplate[Any]) -> set[str]:
    """The variables of ``template`` that take a list of messages."""
    if not isinstance(template, ChatPromptTemplate):
        return set()
    return {m.variable_name for m in template.messages if isinstance(m, MessagesPlaceholder)}


def _render(template: BasePromptTemplate[Any], inputs: Mapping[str, Any]) -> list[BaseMessage]:
    """``template`` formatted with ``inputs``; a missing variable is empty ("" or [])."""
    lists = _placeholder_names(template)
    values = {
        name: inputs.get(name, [] if name in lists else "") for name in template.input_variables
    }
    return template.format_prompt(**values).to_messages()


def warmup_messages(
    prompt: PromptLike,
    *,
    model: BaseChatModel | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> list[list[BaseMessage]]:
    """The message lists a warm-up sends for ``prompt`` (pure).

    Each list is what the application will send, up to its inputs: templates are
    rendered with ``inputs`` and every other variable empty (``""``, or no messages for
    a ``MessagesPlaceholder``), so the rendered text shares with every real request the
    prefix before the first variable, which is what a server's prompt cache can reuse.

    Args:
        prompt: A prompt template; a list of messages (anything
            ``convert_to_messages`` takes); a chain (see :func:`find_prompts`); or a
            list or tuple of several prompts, holding at least one template or chain
            (its other items are then message lists).
        model: For chains: only the templates feeding this model.
        inputs: Values for some of the templates' variables (e.g. a typical question).

    Returns:
        One message list per prompt, in order.

    Raises:
        PreloadError: A chain has no template feeding ``model``, the messages cannot be
            converted, or a template cannot be rendered.
    """
    values = dict(inputs or {})
    if isinstance(prompt, (list, tuple)) and any(isinstance(p, Runnable) for p in prompt):
        return [m for p in prompt for m in warmup_messages(p, model=model, inputs=values)]
    try:
        if isinstance(prompt, BasePromptTemplate):
            return [_render(prompt, values)]
        if isinstance(prompt, Runnable):
            pairs = find_prompts(prompt, model)
            if not pairs:
                whose = f"the model {_default_name(model)}" if model is not None else "a chat model"
                raise PreloadError(
                    f"register: no prompt template in {type(prompt).__name__} feeds {whose}; "
                    "pass the template itself or a chain such as prompt | llm"
                )
            return [_render(template, values) for template, _ in pairs]
        if isinstance(prompt, str):
            return [convert_to_messages([prompt])]
        return [convert_to_messages(prompt)]
    except PreloadError:
        raise
    except Exception as exc:  # KeyError, ValueError, NotImplementedError of langchain-core
        raise PreloadError(f"register: cannot render the warm-up prompt: {_describe(exc)}") from exc


def _model_of_chain(
    chain: Runnable[Any, Any], inputs: Mapping[str, Any] | None
) -> tuple[ChatFastpipe, list[list[BaseMessage]]]:
    """The one ChatFastpipe a chain's prompts feed, and those prompts rendered.

    Raises:
        PreloadError: No ChatFastpipe, or several, is fed by a template of ``chain``.
    """
    pairs = find_prompts(chain)
    chats: list[ChatFastpipe] = []
    for _, target in pairs:
        if isinstance(target, ChatFastpipe) and all(target is not c for c in chats):
            chats.append(target)
    if len(chats) != 1:
        found = "no ChatFastpipe" if not chats else f"{len(chats)} ChatFastpipe models"
        raise PreloadError(
            f"register: cannot warm a {type(chain).__name__}: its prompt templates feed "
            f"{found}; register each model with prompt=chain instead"
        )
    (chat,) = chats
    values = dict(inputs or {})
    return chat, [_render(template, values) for template, target in pairs if target is chat]


# --------------------------------------------------------------------------- warmers
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


def _default_name(target: object) -> str:
    """A stable registration name for a model object."""
    from langchain_fastpipe.local import LocalModelServer

    if isinstance(target, LocalModelServer):
        return f"local:{target.model}"
    if isinstance(target, ChatFastpipe):
        return f"{target.provider}:{target.model_name}@{target.base_url}"
    return f"{type(target).__name__}@{id(target):x}"


def _late(entry: _Entry, limit: float) -> str:
    """The error text of a timed-out warm-up."""
    return f"TimeoutError: warm-up of {entry.name} exceeded {limit:g}s"


def _raise_if_asked(results: Sequence[PreloadResult], raise_on_error: bool) -> None:
    """Raise PreloadError naming every failed warm-up, when asked to."""
    bad = [r for r in results if not r.ok]
    if raise_on_error and bad:
        detail = "; ".join(f"{r.name}: {r.status.value} ({r.error})" for r in bad)
        raise PreloadError(f"{len(bad)} of {len(results)} warm-ups failed: {detail}")


# --------------------------------------------------------------------------- stats
class _PreloadStats:
    """Counters of every warm-up, reported as the ``"preload"`` stats source."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = Histogram()
        self.counts = dict.fromkeys((s.value for s in PreloadStatus), 0)
        self.last: dict[str, dict[str, Any]] = {}
        self.refreshes = 0

    def record(self, result: PreloadResult) -> None:
        with self._lock:
            self.counts[result.status.value] += 1
            self.last[result.name] = result.as_dict()
        self.seconds.record(result.seconds)

    def count_refresh(self) -> None:
        with self._lock:
            self.refreshes += 1

    def snapshot(self) -> Node:
        """The ``preload_*`` metric families (``models``: the last result per name)."""
        node = Node()
        with self._lock:
            warmups = node.child("warmups")
            for status, count in self.counts.items():
                warmups.put(m.PRELOAD_WARMUPS, count, status=status)
            node.put(m.PRELOAD_REFRESHES, self.refreshes)
            node.put(m.PRELOAD_SECONDS, self.seconds)
            models = node.child("models")
            for name, last in sorted(self.last.items()):
                entry = models.child(name, key_label="model")
                entry.update(last)
                entry.put(m.PRELOAD_STATUS, last["status"])
                entry.put(m.PRELOAD_MODEL_SECONDS, last["seconds"])
        return node


_stats = _PreloadStats()


# --------------------------------------------------------------------------- the preloader
@dataclass
class _Entry:
    name: str
    target: object
    warm: WarmFn
    timeout: float
    refresh_every: float | None
    warm_sync: SyncWarmFn | None = None
    started_server: bool = field(default=False)


class ModelPreloader:
    """A set of models to warm, warmed concurrently by :meth:`preload`.

    Use the default one (``default_preloader``, :func:`register`, :func:`preload`) or your
    own instances.

    Args:
        clock: Monotonic clock for the seconds in results (injectable for tests).
        sleep: Sleep used by the keep-alive refresh loop (injectable for tests).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        """Create an empty preloader."""
        self._clock = clock
        self._sleep = sleep
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._refresh_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._pending: dict[str, None] = {}  # registered, no warm-up started (ordered set)
        self.results: dict[str, PreloadResult] = {}

    def __repr__(self) -> str:
        """List the registered names."""
        return f"ModelPreloader(models={self.names()!r})"

    @classmethod
    def from_config(
        cls,
        config: FastpipeConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
    ) -> ModelPreloader:
        """A preloader holding the models a configuration asks to warm.

        Registers one chat model per name of ``config.preload_models()`` (``preload.models``,
        else ``backend.model``), built with the backend settings (provider, base URL, key,
        pool and timeouts); each may take ``preload_timeout_seconds`` and is re-warmed every
        ``preload.keep_alive_refresh_seconds`` while :meth:`start_refresh` runs. With
        ``enable_model_preloading`` off nothing is registered. Nothing is contacted here.

        Args:
            config: The configuration.
            clock: Monotonic clock for the seconds in results.
            sleep: Sleep of the keep-alive refresh loop.

        Returns:
            The new preloader; call :meth:`preload` (or use :func:`fastpipe_lifespan`).

        Raises:
            ConfigError: A chat model cannot be built from the configuration.
        """
        preloader = cls(clock=clock, sleep=sleep)
        timeout = config.performance_optimizations.preload_timeout_seconds
        refresh = config.preload.keep_alive_refresh_seconds
        for model in config.preload_models():
            # preload=False: registered here instead, with this preloader's settings.
            chat = ChatFastpipe.from_config(config, model=model, preload=False)
            preloader.register(chat, timeout=timeout, refresh_every=refresh)
        return preloader

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        with self._lock:
            return list(self._entries)

    def register(
        self,
        model: object,
        *,
        warmup: bool = True,
        timeout: float = 60.0,
        name: str | None = None,
        refresh_every: float | None = None,
        prompt: PromptLike | None = None,
        prompt_inputs: Mapping[str, Any] | None = None,
    ) -> str:
        """Register a model to warm (replacing any entry of the same name).

        Args:
            model: A ``ChatFastpipe``, a ``LocalModelServer``, a :class:`PreloadSpec`,
                an object with ``async awarm()``, an async callable taking a
                ``done(step)`` callback, or a chain with exactly one ChatFastpipe fed by a
                prompt template (``prompt | llm``: that model, warmed with that prompt).
            warmup: For chat models: also load the model (Ollama ``/api/generate``,
                1-token request); False only opens the pooled connections.
            timeout: Seconds the warm-up may take before it is reported ``timed_out``.
            name: Registration name; defaults to ``provider:model@base_url`` (or
                ``local:<alias>`` for a local server).
            refresh_every: Re-warm every this many seconds while :meth:`start_refresh`
                runs (see :func:`refresh_interval_for`); None: never.
            prompt: For chat models: the application's prompt, which the warm-up sends
                (rendered with empty inputs, 1 token) instead of the generic load
                request, so the server's prompt cache holds its prefix before the first
                query. A ``ChatPromptTemplate``, a list of messages, a chain
                (``prompt | llm``, an ``AnswerPipeline``: the templates feeding this
                model), or a list of templates and chains; see :func:`warmup_messages`.
            prompt_inputs: Values for some of the prompt's variables (default: empty).

        Returns:
            The name it was registered under.

        Raises:
            PreloadError: The model is of no kind the preloader can warm, the timeout
                or refresh interval is not positive, a prompt is given for something
                other than a chat model (or with ``warmup=False``), or the prompt cannot
                be rendered.
        """
        if timeout <= 0:
            raise PreloadError(f"register: timeout must be > 0 seconds, got {timeout}")
        if refresh_every is not None and refresh_every <= 0:
            raise PreloadError(f"register: refresh_every must be > 0 seconds, got {refresh_every}")
        chain_prompts: list[list[BaseMessage]] = []
        if isinstance(model, Runnable) and not isinstance(model, ChatFastpipe):
            model, chain_prompts = _model_of_chain(model, prompt_inputs)
        prompts = chain_prompts
        if prompt is not None:
            if not isinstance(model, (ChatFastpipe, PreloadSpec)):
                raise PreloadError(
                    f"register: a prompt can only be carried by a chat model's warm-up, "
                    f"not a {type(model).__name__}'s"
                )
            chat = model if isinstance(model, ChatFastpipe) else None
            prompts = chain_prompts + warmup_messages(prompt, model=chat, inputs=prompt_inputs)
        if prompts and not warmup:
            raise PreloadError("register: a prompt needs warmup=True (it is sent to the model)")
        warm: WarmFn
        warm_sync: SyncWarmFn | None = None
        if isinstance(model, PreloadSpec):
            lazy = _LazyChat(functools.partial(_spec_chat, model))
            warm = _chat_warmer(lazy, load_model=warmup, prompts=prompts)
            warm_sync = _chat_warmer_sync(lazy, load_model=warmup, prompts=prompts)
            default = model.name
        elif isinstance(model, ChatFastpipe):
            warm = _chat_warmer(model, load_model=warmup, prompts=prompts)
            warm_sync = _chat_warmer_sync(model, load_model=warmup, prompts=prompts)
            default = _default_name(model)
        elif isinstance(model, Warmable):
            warm = _awarm_warmer(model)
            default = _default_name(model)
        elif callable(model):
            warm = model
            default = getattr(model, "__name__", None) or _default_name(model)
        else:
            raise PreloadError(
                f"register: cannot warm a {type(model).__name__}: expected ChatFastpipe, "
                "LocalModelServer, PreloadSpec, a prompt | ChatFastpipe chain, an object "
                "with async awarm() or an async callable"
            )
        key = name or default
        with self._lock:
            self._entries[key] = _Entry(
                name=key,
                target=model,
                warm=warm,
                timeout=timeout,
                refresh_every=refresh_every,
                warm_sync=warm_sync,
            )
            self._pending[key] = None
        return key

    def unregister(self, name: str) -> None:
        """Forget a model (and stop its refresh task, if any)."""
        with self._lock:
            self._entries.pop(name, None)
            self._pending.pop(name, None)
            task = self._refresh_tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _warm_one(self, entry: _Entry, timeout: float | None) -> PreloadResult:
        """Warm one entry on the running loop, never raising: the outcome is the result."""
        steps: list[str] = []
        start = self._clock()
        limit = entry.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(entry.warm(steps.append), timeout=limit)
        except asyncio.TimeoutError:
            return self._finish(entry, start, steps, PreloadStatus.TIMED_OUT, _late(entry, limit))
        except Exception as exc:
            return self._finish(entry, start, steps, PreloadStatus.FAILED, _describe(exc))
        return self._finish(entry, start, steps, PreloadStatus.OK, None)

    def _warm_one_blocking(self, entry: _Entry, timeout: float | None) -> PreloadResult:
        """Warm one entry from this thread (its sync form when it has one), never raising.

        An entry without a sync form runs its async warm-up on a short-lived event loop of
        this thread (cancelled at its timeout), which closes the async clients it opened
        before it ends. A blocking warm-up cannot be interrupted: past its timeout it is
        reported ``timed_out`` and left to finish (bounded by its own HTTP timeout) in its
        daemon thread.
        """
        if entry.warm_sync is None:
            return asyncio.run(self._warm_on_own_loop(entry, timeout))
        steps: list[str] = []
        start = self._clock()
        limit = entry.timeout if timeout is None else timeout
        box: dict[str, BaseException] = {}
        warm_sync = entry.warm_sync

        def run() -> None:
            try:
                warm_sync(steps.append)
            except BaseException as exc:  # reported in the result
                box["error"] = exc

        worker = threading.Thread(target=run, name=f"fastpipe-warm-{entry.name}", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            return self._finish(
                entry, start, list(steps), PreloadStatus.TIMED_OUT, _late(entry, limit)
            )
        if "error" in box:
            return self._finish(entry, start, steps, PreloadStatus.FAILED, _describe(box["error"]))
        return self._finish(entry, start, steps, PreloadStatus.OK, None)

    async def _warm_on_own_loop(self, entry: _Entry, timeout: float | None) -> PreloadResult:
        """:meth:`_warm_one`, then close the pools' clients of this (short-lived) loop."""
        try:
            return await self._warm_one(entry, timeout)
        finally:
            await aclose_pools()

    def _finish(
        self,
        entry: _Entry,
        start: float,
        steps: list[str],
        status: PreloadStatus,
        error: str | None,
    ) -> PreloadResult:
        """Build, log, keep and record the result of one warm-up."""
        result = PreloadResult(
            name=entry.name,
            status=status,
            seconds=self._clock() - start,
            steps=tuple(steps),
            error=error,
        )
        if result.ok and "server_start" in steps:
            entry.started_server = True
        if not result.ok:
            logger.warning("preload of %s %s: %s", entry.name, status.value, error)
        self.results[entry.name] = result
        _stats.record(result)
        return result

    async def preload(
        self,
        names: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
        raise_on_error: bool = False,
    ) -> list[PreloadResult]:
        """Warm the registered models concurrently (the total is about the slowest one).

        Args:
            names: Only these registered names (default: all).
            timeout: Overrides each model's own timeout.
            raise_on_error: Raise :class:`PreloadError` if any warm-up did not succeed
                (after all of them finished).

        Returns:
            One result per model, in registration order.

        Raises:
            PreloadError: Only with ``raise_on_error``, or for an unknown name.
        """
        entries = self._select(names)
        results = list(await asyncio.gather(*(self._warm_one(e, timeout) for e in entries)))
        _raise_if_asked(results, raise_on_error)
        return results

    def preload_sync(
        self,
        names: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
        raise_on_error: bool = False,
    ) -> list[PreloadResult]:
        """Blocking :meth:`preload`, for scripts and sync apps (safe inside a running loop).

        Each model warms in its own thread, concurrently. Chat models warm their *sync*
        client (the one ``invoke``/``stream`` use) and load the model on the server;
        other models run their async warm-up on a short-lived event loop of that thread.
        The server-side model load and a started local server serve every later caller.

        Args:
            names: Only these registered names (default: all).
            timeout: Overrides each model's own timeout.
            raise_on_error: Raise :class:`PreloadError` if any warm-up failed.

        Returns:
            One result per model, in registration order.

        Raises:
            PreloadError: Only with ``raise_on_error``, or for an unknown name.
        """
        entries = self._select(names)
        results: list[PreloadResult | None] = [None] * len(entries)

        def run(index: int, entry: _Entry) -> None:
            results[index] = self._warm_one_blocking(entry, timeout)

        threads = [
            threading.Thread(target=run, args=(i, e), name="fastpipe-preload", daemon=True)
            for i, e in enumerate(entries)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done = [r for r in results if r is not None]
        _raise_if_asked(done, raise_on_error)
        return done

    def _select(self, names: Iterable[str] | None) -> list[_Entry]:
        """The entries to warm now (no longer pending)."""
        with self._lock:
            wanted = list(self._entries) if names is None else list(names)
            unknown = [n for n in wanted if n not in self._entries]
            if unknown:
                raise PreloadError(
                    f"preload: unknown model name(s) {unknown}; registered: {list(self._entries)}"
                )
            for name in wanted:
                self._pending.pop(name, None)
            return [self._entries[n] for n in wanted]

    def pending(self) -> list[str]:
        """Registered names whose warm-up nothing has started yet."""
        with self._lock:
            return list(self._pending)

    def warm_pending(self) -> list[str]:
        """Start warming the :meth:`pending` models in the background; never raises.

        What the first call of a ``preload=True`` model does when nothing warmed the
        registered models yet. With a running event loop the warm-up is a task of that
        loop (:meth:`schedule`); otherwise a short-lived thread runs :meth:`preload_sync`
        and ends with it. Failures are logged and recorded in the stats.

        Returns:
            The names whose warm-up started (empty when none was pending).
        """
        with self._lock:
            names = list(self._pending)
            self._pending.clear()
        if not names:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            threading.Thread(
                target=self._warm_quietly, args=(names,), name="fastpipe-preload"
            ).start()
        else:
            self.schedule(names)
        return names

    def _warm_quietly(self, names: list[str]) -> None:
        """Thread body of :meth:`warm_pending`: warm, log, never raise."""
        try:
            self.preload_sync(names)
        except Exception:  # pragma: no cover - preload_sync reports rather than raises
            logger.exception("background preload of %s failed", names)

    # ------------------------------------------------------------ keep-alive refresh
    def start_refresh(self) -> list[str]:
        """Start a refresh task for each model registered with ``refresh_every``.

        Each task sleeps ``refresh_every`` seconds (with the injected sleep), then
        re-warms its model, until :meth:`stop_refresh`. Must be called from a running
        event loop.

        Returns:
            The names now being refreshed.
        """
        with self._lock:
            entries = [
                e
                for e in self._entries.values()
                if e.refresh_every is not None and e.name not in self._refresh_tasks
            ]
            for entry in entries:
                self._refresh_tasks[entry.name] = asyncio.get_running_loop().create_task(
                    self._refresh_loop(entry), name=f"fastpipe-refresh-{entry.name}"
                )
            return list(self._refresh_tasks)

    async def _refresh_loop(self, entry: _Entry) -> None:
        interval = entry.refresh_every
        assert interval is not None  # noqa: S101 - guaranteed by start_refresh
        while True:
            await self._sleep(interval)
            _stats.count_refresh()
            await self._warm_one(entry, None)

    async def stop_refresh(self) -> None:
        """Cancel the refresh tasks and wait for them to end."""
        with self._lock:
            tasks = list(self._refresh_tasks.values())
            self._refresh_tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def schedule(self, names: Iterable[str] | None = None) -> asyncio.Task[list[PreloadResult]]:
        """Start :meth:`preload` as a background task of the running loop.

        The task is kept referenced until it ends; its failures are only reported.
        """
        chosen = [entry.name for entry in self._select(names)]  # no longer pending
        task = asyncio.get_running_loop().create_task(self.preload(chosen))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def aclose(self, *, stop_servers: bool = True) -> None:
        """Stop refreshing and stop any local server that a warm-up started.

        Args:
            stop_servers: Also stop ``LocalModelServer`` instances this preloader started.
        """
        await self.stop_refresh()
        loop = asyncio.get_running_loop()
        background = [t for t in self._background if t.get_loop() is loop]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if not stop_servers:
            return
        with self._lock:
            started = [e for e in self._entries.values() if e.started_server]
        for entry in started:
            stop = getattr(entry.target, "astop", None)
            if stop is not None:
                with contextlib.suppress(Exception):
                    await stop()
            entry.started_server = False


def register(model: object, **kwargs: Any) -> str:
    """Register ``model`` with the default preloader (see :meth:`ModelPreloader.register`)."""
    return runtime().preloader.register(model, **kwargs)


async def preload(**kwargs: Any) -> list[PreloadResult]:
    """Warm every model of the default preloader (see :meth:`ModelPreloader.preload`)."""
    return await runtime().preloader.preload(**kwargs)


def preload_sync(**kwargs: Any) -> list[PreloadResult]:
    """Blocking :func:`preload` (see :meth:`ModelPreloader.preload_sync`)."""
    return runtime().preloader.preload_sync(**kwargs)


def register_from_env(
    preloader: ModelPreloader | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Register the models named in ``FASTPIPE_PRELOAD`` (never raises).

    Nothing is contacted: each entry becomes a :class:`PreloadSpec` whose ChatFastpipe is
    built at its first warm-up. Invalid entries are logged and skipped. The default
    preloader does this once, when it is created.

    Args:
        preloader: Defaults to the default preloader.
        environ: Defaults to ``os.environ``.

    Returns:
        The names registered.
    """
    target = preloader if preloader is not None else runtime().preloader
    text = (environ if environ is not None else os.environ).get(PRELOAD_ENV, "")
    specs, errors = parse_preload_env(text)
    for message in errors:
        logger.warning("ignored: %s", message)
    names: list[str] = []
    for spec in specs:
        try:
            names.append(target.register(spec))
        except Exception as exc:  # pragma: no cover - register of a spec cannot fail
            logger.warning("ignored %s entry %s: %s", PRELOAD_ENV, spec.name, _describe(exc))
    return names


@contextlib.asynccontextmanager
async def fastpipe_lifespan(
    app: object = None,
    *,
    preloader: ModelPreloader | None = None,
    wait: bool = True,
    refresh: bool = True,
    raise_on_error: bool = False,
    stop_servers: bool = True,
) -> AsyncIterator[dict[str, Any]]:
    """An ASGI lifespan: warm every model at startup, clean up at shutdown.

    Usable directly as ``FastAPI(lifespan=fastpipe_lifespan)`` or
    ``Starlette(lifespan=fastpipe_lifespan)``; use ``functools.partial`` for options.
    The yielded state (``request.state.fastpipe_preload`` in Starlette) holds the
    results when ``wait`` is True.

    Args:
        app: The ASGI app (unused; the lifespan protocol passes it).
        preloader: Defaults to the default preloader.
        wait: Finish warming before serving (True) or warm in the background (False).
        refresh: Run the keep-alive refresh tasks while the app runs.
        raise_on_error: Abort startup if a warm-up fails (default: report and serve).
        stop_servers: Stop local servers the warm-up started when the app shuts down.

    Yields:
        The lifespan state: ``{"fastpipe_preload": [PreloadResult, ...]}``.
    """
    target = preloader if preloader is not None else runtime().preloader
    results: list[PreloadResult] = []
    if wait:
        results = await target.preload(raise_on_error=raise_on_error)
    else:
        target.schedule()
    if refresh:
        target.start_refresh()
    try:
        yield {"fastpipe_preload": results}
    finally:
        await target.aclose(stop_servers=stop_servers)


registry.register("preload", _stats.snapshot)

#: The default preloader: the runtime's (``FASTPIPE_PRELOAD`` and ``preload=True`` models).
#: Creating it records the ``FASTPIPE_PRELOAD`` models (invalid entries are logged and
#: skipped); nothing is contacted until a warm-up runs.
default_preloader: ModelPreloader = runtime().preloader
