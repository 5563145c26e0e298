"""Provider adapters: pure payload building and reply parsing for OpenAI and Ollama.

``get_provider("openai" | "ollama")`` returns the adapter (a :class:`Provider`:
:class:`OpenAIProvider` or :class:`OllamaProvider`); the chat model does the I/O. The
decoders, tool conversions and environment lookups the chat model uses live in private
modules.

An adapter's module is imported when it is first asked for (by :func:`get_provider` or by
name, PEP 562): importing the chat model needs only the provider names, and a program
speaking one wire format never loads the other's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from langchain_fastpipe._lazy import lazy_names
from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.providers._base import Provider, ProviderName

if TYPE_CHECKING:
    from langchain_fastpipe.providers._ollama import OllamaProvider
    from langchain_fastpipe.providers._openai import OpenAIProvider

__all__ = ["OllamaProvider", "OpenAIProvider", "Provider", "get_provider"]

#: The provider names, in the order error messages list them.
PROVIDERS: tuple[ProviderName, ...] = ("openai", "ollama")

#: Provider name -> (module, class) of its adapter.
_ADAPTERS: dict[str, tuple[str, str]] = {
    "openai": ("langchain_fastpipe.providers._openai", "OpenAIProvider"),
    "ollama": ("langchain_fastpipe.providers._ollama", "OllamaProvider"),
}
#: Adapter class name -> its module, for ``providers.OpenAIProvider`` and the like.
_CLASSES: dict[str, str] = {cls: module for module, cls in _ADAPTERS.values()}

#: The shared adapter of each provider name asked for so far.
_INSTANCES: dict[str, Provider] = {}


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
        pass
    try:
        module, cls = _ADAPTERS[name]
    except (KeyError, TypeError):
        msg = f"provider must be one of {', '.join(map(repr, PROVIDERS))}, got {name!r}"
        raise ConfigError(msg) from None
    adapter: Provider = getattr(importlib.import_module(module), cls)()
    return _INSTANCES.setdefault(name, adapter)  # one shared adapter, whichever thread won


__getattr__, __dir__ = lazy_names(__name__, _CLASSES, globals())
