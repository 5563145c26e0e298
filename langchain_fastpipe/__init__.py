"""langchain-fastpipe: fast LangChain chat models.

Pooled HTTP/2 transport, token streaming, model preloading and ranked fallbacks for
OpenAI-compatible servers and Ollama. The public surface is re-exported here; the
mechanics live in private modules.
"""

from __future__ import annotations

from importlib import metadata

from langchain_fastpipe.chat_models import ChatFastpipe
from langchain_fastpipe.config import FastpipeConfig, get_config, set_config
from langchain_fastpipe.pipeline import AnswerPipeline, RankedFallbacks
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

try:
    __version__ = metadata.version(__package__ or "langchain-fastpipe")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

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
