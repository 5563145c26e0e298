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
  environment variable (read when the default preloader is created, at its first use),
  e.g.
  ``FASTPIPE_PRELOAD="ollama:llama3@http://127.0.0.1:11434,openai:gpt-4o-mini"``, are
  warmed by those; when nothing did, the first call of a ``preload=True`` model starts
  the warm-ups of every model not yet warmed, in the background
  (:meth:`ModelPreloader.warm_pending`).

Importing this module starts nothing (no thread, no task, no socket) and creates nothing:
the default preloader is the runtime's, built when first asked for.
"""

from typing import Any

from langchain_fastpipe._runtime import runtime
from langchain_fastpipe.preload._lifespan import (
    fastpipe_lifespan,
    preload,
    preload_sync,
    register,
)
from langchain_fastpipe.preload._lifespan import register_from_env as register_from_env
from langchain_fastpipe.preload._preloader import ModelPreloader, PreloadResult, PreloadStatus
from langchain_fastpipe.preload._preloader import SleepFn as SleepFn
from langchain_fastpipe.preload._prompt import PromptLike as PromptLike
from langchain_fastpipe.preload._prompt import find_prompts as find_prompts
from langchain_fastpipe.preload._prompt import warmup_messages as warmup_messages
from langchain_fastpipe.preload._spec import PRELOAD_ENV as PRELOAD_ENV
from langchain_fastpipe.preload._spec import PreloadSpec as PreloadSpec
from langchain_fastpipe.preload._spec import parse_duration as parse_duration
from langchain_fastpipe.preload._spec import parse_preload_env as parse_preload_env
from langchain_fastpipe.preload._spec import refresh_interval_for as refresh_interval_for
from langchain_fastpipe.preload._warm import WARMUP_RUN_NAME as WARMUP_RUN_NAME
from langchain_fastpipe.preload._warm import SyncWarmFn as SyncWarmFn
from langchain_fastpipe.preload._warm import Warmable
from langchain_fastpipe.preload._warm import WarmFn as WarmFn

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

#: The default preloader: the runtime's (``FASTPIPE_PRELOAD`` and ``preload=True`` models),
#: built at its first use (``runtime().preloader``, looked up by ``__getattr__`` below).
#: Creating it records the ``FASTPIPE_PRELOAD`` models (invalid entries are logged and
#: skipped); nothing is contacted until a warm-up runs.
default_preloader: ModelPreloader


def __getattr__(name: str) -> Any:
    """``default_preloader``: the runtime's preloader, built at the first access (PEP 562)."""
    if name == "default_preloader":
        return runtime().preloader
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
