"""ChatFastpipe's constructor keys: the ``from_config`` mapping and the checks of keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_fastpipe._validation import suggest
from langchain_fastpipe.errors import ConfigError
from langchain_fastpipe.transport._config import wire_knobs

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from langchain_fastpipe.config import FastpipeConfig

__all__ = ["REMOVED_FIELDS", "check_fields", "config_kwargs", "reject_removed_fields"]

#: Fields of earlier versions, and what replaced them (they would be silently ignored).
REMOVED_FIELDS: Mapping[str, str] = {
    "breaker_failure_threshold": (
        "breaker_min_calls and breaker_failure_rate (breakers now judge the failure rate of "
        "calls over breaker_window, per model)"
    ),
    "breaker_recovery_time": "breaker_cooldown (growing up to breaker_max_cooldown)",
}


def reject_removed_fields(data: Mapping[str, Any]) -> None:
    """Raise ConfigError for a field that no longer exists, naming its replacement."""
    for name, replacement in REMOVED_FIELDS.items():
        if name in data:
            msg = f"ChatFastpipe.{name} was removed (got {data[name]!r}): use {replacement}"
            raise ConfigError(msg)


def config_kwargs(config: FastpipeConfig, knobs: Mapping[str, str]) -> dict[str, Any]:
    """ChatFastpipe's fields from a configuration (see ``ChatFastpipe.from_config``).

    Args:
        config: The configuration.
        knobs: ChatFastpipe's transport fields -> their knob paths in EndpointConfig.
    """
    po, backend = config.performance_optimizations, config.backend
    wire = wire_knobs(config)
    kwargs: dict[str, Any] = {name: wire[path] for name, path in knobs.items() if path in wire}
    kwargs.update(
        provider=backend.provider,
        streaming=po.enable_response_streaming,
        preload=po.enable_model_preloading,
    )
    if not po.enable_response_streaming:
        kwargs["disable_streaming"] = True
    optional = {"model": backend.model, "base_url": backend.base_url, "api_key": backend.api_key}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return kwargs


def check_fields(
    fields: Mapping[str, FieldInfo], kwargs: Mapping[str, Any], overrides: set[str]
) -> None:
    """Raise ConfigError naming every key of ``kwargs`` that is not one of ``fields``.

    Args:
        fields: ChatFastpipe's ``model_fields`` (their aliases are accepted too).
        kwargs: The constructor keys.
        overrides: The keys that came from code (the rest came from the configuration).
    """
    accepted = set(fields) | {f.alias for f in fields.values() if f.alias}
    unknown = sorted(k for k in kwargs if k not in accepted)
    if not unknown:
        return
    problems = []
    for key in unknown:
        origin = "override" if key in overrides else "configuration setting"
        hint = suggest(key, sorted(accepted))
        problems.append(f"{key!r} ({origin})" + (f", did you mean {hint!r}?" if hint else ""))
    msg = f"ChatFastpipe has no field for: {'; '.join(problems)}"
    raise ConfigError(msg)
