"""Provider adapters: pure payload building and reply parsing for OpenAI and Ollama.

``get_provider("openai" | "ollama")`` returns the adapter; the chat model does the I/O.
Also public here: the tool conversions the chat model binds with (:func:`convert_tools`,
:func:`tool_choice_to_openai`) and the one resolution of a provider's default base URL
and API key from the environment (:func:`env_base_url`, :func:`env_api_key`).
"""

from __future__ import annotations

from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.providers._base import (
    ChatRequest,
    Provider,
    ProviderName,
    StreamParser,
    StreamParserBase,
    WarmupRequest,
    env_api_key,
    env_base_url,
)
from langchain_fastpipe.providers._convert import convert_tools, tool_choice_to_openai
from langchain_fastpipe.providers._decoders import NDJSONDecoder, SSEDecoder, SSEEvent
from langchain_fastpipe.providers._ollama import OllamaProvider
from langchain_fastpipe.providers._openai import OpenAIProvider

__all__ = [
    "PROVIDERS",
    "ChatRequest",
    "NDJSONDecoder",
    "OllamaProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderName",
    "SSEDecoder",
    "SSEEvent",
    "StreamParser",
    "StreamParserBase",
    "WarmupRequest",
    "convert_tools",
    "env_api_key",
    "env_base_url",
    "get_provider",
    "tool_choice_to_openai",
]

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
