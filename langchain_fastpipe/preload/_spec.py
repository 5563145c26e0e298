"""What the preloader records: ``FASTPIPE_PRELOAD`` entries, durations, names (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from langchain_fastpipe.chat_models import ChatFastpipe

#: Environment variable listing models the default preloader records.
PRELOAD_ENV = "FASTPIPE_PRELOAD"


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


def _default_name(target: object) -> str:
    """A stable registration name for a model object."""
    from langchain_fastpipe.local import LocalModelServer

    if isinstance(target, LocalModelServer):
        return f"local:{target.model}"
    if isinstance(target, ChatFastpipe):
        return f"{target.provider}:{target.model_name}@{target.base_url}"
    return f"{type(target).__name__}@{id(target):x}"
