"""Provider adapters: pure payload building and reply parsing for OpenAI and Ollama.

``get_provider("openai" | "ollama")`` returns the adapter (a :class:`Provider`:
:class:`OpenAIProvider` or :class:`OllamaProvider`); the chat model does the I/O. The
decoders, tool conversions and environment lookups the chat model uses live in private
modules.
"""

from __future__ import annotations

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.providers._base import Provider, ProviderName
from langchain_fastpipe.providers._ollama import OllamaProvider
from langchain_fastpipe.providers._openai import OpenAIProvider

__all__ = ["OllamaProvider", "OpenAIProvider", "Provider", "get_provider"]

#: The provider names, in the order error messages list them.
PROVIDERS: tuple[ProviderName, ...] = ("openai", "ollama")

_INSTANCES: dict[str, Provider] = {"openai": OpenAIProvider(), "ollama": OllamaProvider()}


def get_provider(name: str) -> Provider:
    """The adapter for ``name``.

    Args:
        name: ``"openai"`` (any OpenAI-compatible server) or ``"ollama"`` (native API).

    Returns:
        A stateless provider (shared; parsers come from ``stream_parser()``).

    Raises:
        ConfigError: ``name`` is not one of the allowed values.
    """
    try:
        return _INSTANCES[name]
    except (KeyError, TypeError):
        msg = f"provider must be one of {', '.join(map(repr, PROVIDERS))}, got {name!r}"
        raise ConfigError(msg) from None
