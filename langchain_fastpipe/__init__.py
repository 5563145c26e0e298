"""langchain-fastpipe: fast LangChain chat models.

Pooled HTTP/2 transport, token streaming, model preloading and ranked fallbacks for
OpenAI-compatible servers and Ollama. The public surface is re-exported here; the
mechanics live in private modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_fastpipe._lazy import lazy_names

if TYPE_CHECKING:
    __version__: str

    from langchain_fastpipe.chat_models import ChatFastpipe
    from langchain_fastpipe.config import (
        FastpipeConfig,
        get_config,
        set_config,
    )
    from langchain_fastpipe.pipeline import (
        AnswerPipeline,
        RankedFallbacks,
    )
    from langchain_fastpipe.preload import (
        ModelPreloader,
        PreloadResult,
        default_preloader,
        fastpipe_lifespan,
    )
    from langchain_fastpipe.stats import get_stats
    from langchain_fastpipe.streaming import (
        StreamingChunk,
        StreamResult,
        StreamStats,
        TimeToFirstTokenHandler,
        acollect,
        aconsume,
        astream_chunks,
        collect,
        consume,
        guard_stream,
        stream_chunks,
    )
    from langchain_fastpipe.transport import (
        BreakerPolicy,
        EndpointConfig,
        PooledClient,
        PoolLimits,
        RetryPolicy,
        aclose_pools,
        get_pool,
    )

#: Public name -> the module that defines it, imported on first access (PEP 562).
_EXPORTS: dict[str, str] = {
    "ChatFastpipe": "langchain_fastpipe.chat_models",
    "FastpipeConfig": "langchain_fastpipe.config",
    "get_config": "langchain_fastpipe.config",
    "set_config": "langchain_fastpipe.config",
    "AnswerPipeline": "langchain_fastpipe.pipeline",
    "RankedFallbacks": "langchain_fastpipe.pipeline",
    "ModelPreloader": "langchain_fastpipe.preload",
    "PreloadResult": "langchain_fastpipe.preload",
    "default_preloader": "langchain_fastpipe.preload",
    "fastpipe_lifespan": "langchain_fastpipe.preload",
    "get_stats": "langchain_fastpipe.stats",
    "StreamingChunk": "langchain_fastpipe.streaming",
    "StreamResult": "langchain_fastpipe.streaming",
    "StreamStats": "langchain_fastpipe.streaming",
    "TimeToFirstTokenHandler": "langchain_fastpipe.streaming",
    "acollect": "langchain_fastpipe.streaming",
    "aconsume": "langchain_fastpipe.streaming",
    "astream_chunks": "langchain_fastpipe.streaming",
    "collect": "langchain_fastpipe.streaming",
    "consume": "langchain_fastpipe.streaming",
    "guard_stream": "langchain_fastpipe.streaming",
    "stream_chunks": "langchain_fastpipe.streaming",
    "BreakerPolicy": "langchain_fastpipe.transport",
    "EndpointConfig": "langchain_fastpipe.transport",
    "PooledClient": "langchain_fastpipe.transport",
    "PoolLimits": "langchain_fastpipe.transport",
    "RetryPolicy": "langchain_fastpipe.transport",
    "aclose_pools": "langchain_fastpipe.transport",
    "get_pool": "langchain_fastpipe.transport",
}


# ``default_preloader`` is looked up on every access: the runtime's object, replaceable.
_lazy_getattr, __dir__ = lazy_names(__name__, _EXPORTS, globals(), fresh={"default_preloader"})


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use, so ``import langchain_fastpipe`` is cheap.

    ``from langchain_fastpipe import ChatFastpipe`` loads the chat model and the transport's
    configuration classes, not the pool (imported at the first call), the pipeline,
    streaming, configuration or preloading modules. ``__version__`` is read from the
    package metadata on first use.
    """
    if name == "__version__":
        version = globals()["__version__"] = _version()
        return version
    return _lazy_getattr(name)


def _version() -> str:
    """The installed distribution's version (read on first access of ``__version__``).

    Reading it searches ``sys.path`` for the package metadata: ~0.6 ms at import otherwise.
    """
    from importlib import metadata

    try:
        return metadata.version(__package__ or "langchain-fastpipe")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


__all__ = [
    "AnswerPipeline",
    "BreakerPolicy",
    "ChatFastpipe",
    "EndpointConfig",
    "FastpipeConfig",
    "ModelPreloader",
    "PoolLimits",
    "PooledClient",
    "PreloadResult",
    "RankedFallbacks",
    "RetryPolicy",
    "StreamResult",
    "StreamStats",
    "StreamingChunk",
    "TimeToFirstTokenHandler",
    "__version__",
    "aclose_pools",
    "acollect",
    "aconsume",
    "astream_chunks",
    "collect",
    "consume",
    "default_preloader",
    "fastpipe_lifespan",
    "get_config",
    "get_pool",
    "get_stats",
    "guard_stream",
    "set_config",
    "stream_chunks",
]
