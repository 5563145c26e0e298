"""langchain-fastpipe: fast LangChain chat models.

Pooled HTTP/2 transport, token streaming, model preloading and ranked fallbacks for
OpenAI-compatible servers and Ollama.
"""

from __future__ import annotations

from importlib import metadata

from langchain_fastpipe.stats import get_stats

try:
    __version__ = metadata.version(__package__ or "langchain-fastpipe")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "__version__",
    "get_stats",
]
